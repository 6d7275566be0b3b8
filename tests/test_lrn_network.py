"""End-to-end LRP through a CaffeNet-like CNN with LocalResponseNorm layers (issue 4).

The LRN rule itself is tested against a per-neuron loop in ``test_lrn.py``; here the whole
network is explained by the engine and compared with an independent layer-by-layer reference,
and the conservation properties that actually hold in such a network are checked.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lrp_cli.config import parse_config
from lrp_cli.engine import (
    AlphaBetaRule,
    Composite,
    EpsilonRule,
    Explainer,
    LRNRule,
    ProportionalRule,
    ZeroRule,
    lrn_relevance,
)

DT = torch.float64
CLASSES = 5
# LRN parameters large enough that the layer really changes its input (CaffeNet's alpha=1e-4
# on 0..255 activations would be nearly the identity on these O(1) activations), an odd and an
# even window, and k != 1.
LRN1 = dict(size=5, alpha=1.0, beta=0.75, k=2.0)
LRN2 = dict(size=4, alpha=0.5, beta=0.75, k=1.5)


class CaffeLike(nn.Module):
    """conv-ReLU-LRN-maxpool twice, a third conv, then two dense layers (CaffeNet's layout)."""

    def __init__(self, functional: bool = False):
        super().__init__()
        self.functional = functional
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.lrn1 = nn.LocalResponseNorm(**LRN1)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(**LRN2)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1)
        self.fc1 = nn.Linear(16 * 3 * 3, 20)
        self.fc2 = nn.Linear(20, CLASSES)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        if self.functional:  # positional and keyword arguments, as user code writes them
            x = F.local_response_norm(x, 5, alpha=1.0, beta=0.75, k=2.0)
        else:
            x = self.lrn1(x)
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv2(x))
        if self.functional:
            x = F.local_response_norm(x, size=4, alpha=0.5, k=1.5)  # beta: default 0.75
        else:
            x = self.lrn2(x)
        x = F.max_pool2d(x, 2)
        x = F.relu(self.conv3(x))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        return self.fc2(x)


def _model(seed: int = 0, zero_bias: bool = False, functional: bool = False) -> CaffeLike:
    torch.manual_seed(seed)
    model = CaffeLike(functional=functional).to(DT).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.normal_(0, (2.0 / m.weight[0].numel()) ** 0.5)  # He init: O(1) values
                if zero_bias:
                    m.bias.zero_()
                else:
                    m.bias.normal_(0, 0.1)
    return model


def _input(seed: int = 1, n: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 12, 12, generator=gen, dtype=DT)


# ------------------------------------------------------------------ an independent reference
def _stab(z, eps):
    return z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype)


def _transpose(fn, w, a_shape, s):
    """``W^T s``: the gradient of ``fn(a, w)`` w.r.t. ``a`` with output gradient ``s``."""
    leaf = torch.zeros(a_shape, dtype=s.dtype, requires_grad=True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(fn(leaf, w, None), leaf, s)
    return g


def _ref_linear(fn, layer, a, r, rule):
    w, b = layer.weight, layer.bias
    if rule[0] == "epsilon":
        z = fn(a, w, b)
        return a * _transpose(fn, w, a.shape, r / _stab(z, rule[1]) if rule[1] else r / z)
    # alpha-beta with signed inputs: positive part a+ w+ + a- w- (+ b+), negative the mirror
    alpha, beta, eps = rule[1], rule[2], 1e-6
    ap, an = a.clamp(min=0), a.clamp(max=0)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    zp = fn(ap, wp, b.clamp(min=0)) + fn(an, wn, None)
    zn = fn(ap, wn, b.clamp(max=0)) + fn(an, wp, None)
    sp, sn = r / _stab(zp, eps), r / _stab(zn, eps)
    pos = ap * _transpose(fn, wp, a.shape, sp) + an * _transpose(fn, wn, a.shape, sp)
    neg = ap * _transpose(fn, wn, a.shape, sn) + an * _transpose(fn, wp, a.shape, sn)
    return alpha * pos - beta * neg


def _ref_maxpool(a, r):
    leaf = a.detach().requires_grad_()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(F.max_pool2d(leaf, 2), leaf, r)
    return g


def _reference(model: CaffeLike, x, target, rule, lrn1: dict, lrn2: dict | None = None):
    """Layer-by-layer LRP written out by hand (ReLU: pass; maxpool: winner-take-all).

    ``lrn1``/``lrn2``: keyword arguments of ``lrn_relevance`` (mode, epsilon, sign_beta) for
    each LRN layer; ``lrn2`` defaults to ``lrn1``.
    """
    lrn2 = lrn1 if lrn2 is None else lrn2
    conv = F.conv2d
    lin = F.linear

    def conv_fn(a, w, b):
        return conv(a, w, b, padding=1)

    a0 = x
    a1 = F.relu(model.conv1(a0))
    a2 = model.lrn1(a1)
    a3 = F.max_pool2d(a2, 2)
    a4 = F.relu(model.conv2(a3))
    a5 = model.lrn2(a4)
    a6 = F.max_pool2d(a5, 2)
    a7 = F.relu(model.conv3(a6))
    a8 = torch.flatten(a7, 1)
    a9 = F.relu(model.fc1(a8))
    logits = model.fc2(a9)

    def lrn(a, r, p, how):
        return lrn_relevance(a, r, p["size"], p["alpha"], p["beta"], p["k"], **how)

    r = torch.zeros_like(logits)
    r[torch.arange(len(target)), target] = logits[torch.arange(len(target)), target]
    r = _ref_linear(lin, model.fc2, a9, r, rule)
    r = _ref_linear(lin, model.fc1, a8, r, rule)
    r = r.reshape(a7.shape)
    r = _ref_linear(conv_fn, model.conv3, a6, r, rule)
    r = lrn(a4, _ref_maxpool(a5, r), LRN2, lrn2)
    r = _ref_linear(conv_fn, model.conv2, a3, r, rule)
    r = lrn(a1, _ref_maxpool(a2, r), LRN1, lrn1)
    return _ref_linear(conv_fn, model.conv1, a0, r, rule)


# The experiment's columns (Binder et al. 2016, Table 3) plus LRP-0.
COLUMNS = {
    "zero": (ZeroRule(), ("epsilon", 0.0), {}),
    "eps0.01": (EpsilonRule(0.01), ("epsilon", 0.01), {"epsilon": 0.01}),
    "eps1": (EpsilonRule(1.0), ("epsilon", 1.0), {"epsilon": 1.0}),
    "eps100": (EpsilonRule(100.0), ("epsilon", 100.0), {"epsilon": 100.0}),
    "beta0": (AlphaBetaRule(alpha=1.0, beta=0.0), ("alpha_beta", 1.0, 0.0), {"beta": 0.0}),
    "beta1": (AlphaBetaRule(alpha=2.0, beta=1.0), ("alpha_beta", 2.0, 1.0), {"beta": 1.0}),
}


@pytest.mark.parametrize("mode", ["identity", "taylor"])
@pytest.mark.parametrize("column", list(COLUMNS))
def test_end_to_end_matches_layerwise_reference(column, mode):
    engine_rule, ref_rule, lrn_kw = COLUMNS[column]
    model = _model()
    before = copy.deepcopy(model.state_dict())
    x = _input()
    lrn_rule = LRNRule(mode=mode, **lrn_kw)
    explainer = Explainer(model, Composite(default=engine_rule, lrn=lrn_rule))
    assert [r.rule for r in explainer.layer_rules if r.type == "LocalResponseNorm"] == [
        lrn_rule.describe()
    ] * 2
    target = torch.tensor([0, 3, 4])
    exp = explainer(x, target=target)
    how = {"mode": mode, "epsilon": lrn_kw.get("epsilon", 0.0), "sign_beta": lrn_kw.get("beta")}
    ref = _reference(model, x, target, ref_rule, how)
    assert exp.relevance.shape == x.shape and exp.relevance.dtype == DT
    assert torch.isfinite(exp.relevance).all()
    torch.testing.assert_close(exp.logits, model(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exp.relevance, ref, rtol=1e-9, atol=1e-10)
    for key, value in model.state_dict().items():  # the model is only read
        assert torch.equal(value, before[key])


def test_taylor_differs_from_identity():
    # The LRN layers here are far from the identity, so the Taylor rule must change the heatmap
    # (else the tests above could not tell the modes apart).
    model, x = _model(), _input()
    heat = {
        mode: Explainer(model, Composite(default=EpsilonRule(0.01), lrn=LRNRule(mode)))(
            x, target=1
        ).relevance
        for mode in ("identity", "taylor")
    }
    diff = (heat["taylor"] - heat["identity"]).abs().max()
    assert diff > 1e-3 * heat["identity"].abs().max()


# ------------------------------------------------------------------ conservation
def _lrp0(lrn: LRNRule) -> Composite:
    return Composite(default=ZeroRule(), lrn=lrn, proportional=ProportionalRule(0.0))


@pytest.mark.parametrize(
    "lrn", [LRNRule("identity"), LRNRule("taylor", epsilon=0.0)], ids=["identity", "taylor"]
)
def test_lrp0_conserves_the_logit_with_either_lrn_mode(lrn):
    # Why this holds although the LRN layer is not linear: conservation is a property of each
    # layer's *rule*, not of the function. With zero biases, LRP-0 gives
    # sum_j R_j = sum_k (sum_j a_j w_jk / z_k) R_k = sum_k R_k for any incoming R; ReLU passes
    # and winner-take-all max pooling moves relevance. The identity LRN rule passes R unchanged,
    # and the normalised Taylor rule (epsilon 0) has weights summing to one per output neuron,
    # so both conserve across the LRN layer, and the input relevance sums to the target logit.
    # (A neuron whose denominator is zero would absorb its relevance; at LRN neurons with
    # x_k = 0 the arriving relevance is 0 anyway, since y_k = 0 feeds the next LRP-0 layer.)
    # What identity does NOT mean is "the network without the LRN": see the test below.
    model, x = _model(zero_bias=True), _input(n=4)
    exp = Explainer(model, _lrp0(lrn))(x, target=torch.tensor([0, 1, 2, 3]))
    chosen = exp.logits.gather(1, exp.targets[:, None]).squeeze(1)
    torch.testing.assert_close(exp.relevance.sum(dim=(1, 2, 3)), chosen, rtol=1e-10, atol=1e-12)


def test_relevance_across_the_lrn_layer():
    # The relevance arriving at lrn2's output is what explaining the sub-network above lrn2
    # gives for lrn2's output (same activations, same rules, same start); explaining the
    # sub-network that starts with lrn2 gives the relevance of lrn2's input. Taylor (epsilon 0)
    # must conserve between the two; identity must copy; both must be lrn_relevance's result.
    model, x = _model(zero_bias=True), _input(n=4)
    target = torch.tensor([4, 3, 2, 1])

    class Bottom(nn.Module):  # input -> lrn2's input
        def forward(self, x):
            x = F.max_pool2d(model.lrn1(F.relu(model.conv1(x))), 2)
            return F.relu(model.conv2(x))

    class Top(nn.Module):  # (lrn2 ->) maxpool -> ... -> logits
        def __init__(self, with_lrn):
            super().__init__()
            self.with_lrn = with_lrn
            self.lrn2, self.conv3 = model.lrn2, model.conv3
            self.fc1, self.fc2 = model.fc1, model.fc2

        def forward(self, x):
            if self.with_lrn:
                x = self.lrn2(x)
            x = F.relu(self.conv3(F.max_pool2d(x, 2)))
            return self.fc2(F.relu(self.fc1(torch.flatten(x, 1))))

    with torch.no_grad():
        h_in = Bottom()(x)
        h_out = model.lrn2(h_in)
        logit = model(x).gather(1, target[:, None]).squeeze(1)
    r_out = Explainer(Top(False), _lrp0(LRNRule()))(h_out, target=target).relevance
    torch.testing.assert_close(r_out.sum(dim=(1, 2, 3)), logit, rtol=1e-10, atol=1e-12)
    for rule in (LRNRule("identity"), LRNRule("taylor", epsilon=0.0)):
        r_in = Explainer(Top(True), _lrp0(rule))(h_in, target=target).relevance
        expected = lrn_relevance(h_in, r_out, **LRN2, mode=rule.mode)
        torch.testing.assert_close(r_in, expected, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(
            r_in.sum(dim=(1, 2, 3)), r_out.sum(dim=(1, 2, 3)), rtol=1e-10, atol=1e-12
        )
        # and the full network's input relevance still sums to the same logit
        full = Explainer(model, _lrp0(rule))(x, target=target).relevance
        torch.testing.assert_close(full.sum(dim=(1, 2, 3)), logit, rtol=1e-10, atol=1e-12)
    # the Taylor rule really redistributes here (it is not the identity in disguise)
    taylor = lrn_relevance(h_in, r_out, **LRN2, mode="taylor")
    assert (taylor - r_out).abs().max() > 1e-3 * r_out.abs().max()


def test_identity_rule_is_not_removing_the_layer():
    # "Identity" treats the LRN's relevance map as the identity; the forward pass still
    # normalises. Removing the layer from the model changes the activations, the logit and
    # hence the heatmap: the two must not be confused.
    model, x = _model(zero_bias=True), _input()
    stripped = copy.deepcopy(model)
    stripped.lrn1 = nn.Identity()
    stripped.lrn2 = nn.Identity()
    with_lrn = Explainer(model, _lrp0(LRNRule("identity")))(x, target=2)
    without = Explainer(stripped, _lrp0(LRNRule("identity")))(x, target=2)
    assert not torch.allclose(with_lrn.logits, without.logits)
    assert not torch.allclose(with_lrn.relevance, without.relevance)
    torch.testing.assert_close(  # each conserves its own logit
        without.relevance.sum(dim=(1, 2, 3)), without.logits[:, 2], rtol=1e-10, atol=1e-12
    )


# ------------------------------------------------------------------ functional LRN, beta = 0
@pytest.mark.parametrize(
    "lrn",
    [LRNRule("identity"), LRNRule("taylor", epsilon=0.01), LRNRule("taylor", beta=1.0)],
    ids=["identity", "taylor-eps", "taylor-beta1"],
)
def test_functional_lrn_is_handled_like_the_module(lrn):
    module_model = _model(seed=3)
    functional_model = _model(seed=3, functional=True)
    x = _input(seed=4)
    composite = Composite(default=EpsilonRule(0.1), lrn=lrn)
    a = Explainer(module_model, composite)(x, target=None)
    explainer = Explainer(functional_model, composite)
    b = explainer(x, target=None)
    lrn_rows = [r for r in explainer.layer_rules if r.rule.startswith("lrn")]
    assert len(lrn_rows) == 2 and all(r.rule == lrn.describe() for r in lrn_rows)
    torch.testing.assert_close(b.logits, a.logits, rtol=1e-12, atol=1e-12)
    assert torch.equal(b.targets, a.targets)
    torch.testing.assert_close(b.relevance, a.relevance, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "default", [EpsilonRule(0.01), AlphaBetaRule(alpha=1.0, beta=0.0)], ids=["eps", "alpha1beta0"]
)
def test_taylor_beta0_after_relu_equals_identity_end_to_end(default):
    # Both LRN layers follow a ReLU: every off-centre Taylor term is <= 0, so with the
    # sign-split variant at beta = 0 each output keeps all of its relevance (neurons with
    # x_k = 0 receive none to begin with).
    model, x = _model(seed=5), _input(seed=6)
    ident = Explainer(model, Composite(default=default, lrn=LRNRule("identity")))(x, target=2)
    taylor = Explainer(model, Composite(default=default, lrn=LRNRule("taylor", beta=0.0)))(
        x, target=2
    )
    torch.testing.assert_close(taylor.relevance, ident.relevance, rtol=1e-10, atol=1e-12)


def test_yaml_config_per_layer_lrn_rules():
    config = parse_config(
        """
rules:
  - match: {name: lrn2}
    rule: lrn
    mode: taylor
    epsilon: 0.01
default: {rule: epsilon, epsilon: 0.01}
lrn: {mode: identity}
"""
    )
    model, x = _model(), _input()
    explainer = Explainer(model, config.composite())
    rules = {r.name: r.rule for r in explainer.layer_rules}
    assert rules["lrn1"] == "lrn(identity)" and rules["lrn2"] == "lrn(taylor, epsilon=0.01)"
    target = torch.tensor([0, 1, 2])
    got = explainer(x, target=target).relevance
    ref = _reference(
        model, x, target, ("epsilon", 0.01), {"mode": "identity"},
        {"mode": "taylor", "epsilon": 0.01},
    )  # fmt: skip
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10)
    # and it is neither the all-identity nor the all-Taylor heatmap
    for lrn in (LRNRule(), LRNRule("taylor", epsilon=0.01)):
        other = Explainer(model, Composite(default=EpsilonRule(0.01), lrn=lrn))(x, target)
        assert not torch.allclose(got, other.relevance)
