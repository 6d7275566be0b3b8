"""Each linear rule against a direct loop over its formula (lrp-notes section 2, zennit's
definitions), on a tiny Linear layer and, through its Jacobian (dense matrix), a tiny Conv2d;
plus per-layer conservation for the conserving rules."""

import pytest
import torch
from torch import nn

from lrp_cli.engine import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    LinearRule,
    WSquareRule,
    ZBoxRule,
    ZeroRule,
    ZPlusRule,
)
from lrp_cli.engine.linear import make_linear_op

DT = torch.float64


def stab(z, eps):
    return z + eps * (1.0 if z >= 0 else -1.0)


def reference(rule, W, b, a, R, low=None, high=None):
    """Direct double loop: W (K, J) dense weights, b (K,), a (J,), R (K,) -> R_in (J,)."""
    K, J = W.shape
    z = [sum(a[j] * W[k, j] for j in range(J)) + b[k] for k in range(K)]
    out = torch.zeros(J, dtype=DT)
    pos, neg = (lambda v: max(v, 0.0)), (lambda v: min(v, 0.0))
    for k in range(K):
        w = [float(W[k, j]) for j in range(J)]
        x = [float(a[j]) for j in range(J)]
        bk = float(b[k])
        if isinstance(rule, EpsilonRule):  # also LRP-0
            num = [x[j] * w[j] for j in range(J)]
            den = sum(num) + bk
            share = [n / stab(den, rule.stabilizer) if den != 0 else 0.0 for n in num]
        elif isinstance(rule, GammaRule):
            g = rule.gamma
            if z[k] > 0:
                num = [pos(x[j]) * (w[j] + g * pos(w[j])) + neg(x[j]) * (w[j] + g * neg(w[j]))
                       for j in range(J)]  # fmt: skip
                den = sum(num) + bk + g * pos(bk)
            elif z[k] < 0:
                num = [pos(x[j]) * (w[j] + g * neg(w[j])) + neg(x[j]) * (w[j] + g * pos(w[j]))
                       for j in range(J)]  # fmt: skip
                den = sum(num) + bk + g * neg(bk)
            else:
                num, den = [0.0] * J, 1.0
            share = [n / stab(den, rule.stabilizer) for n in num]
        elif isinstance(rule, AlphaBetaRule):  # also z-plus
            p = [pos(x[j]) * pos(w[j]) + neg(x[j]) * neg(w[j]) for j in range(J)]
            n = [pos(x[j]) * neg(w[j]) + neg(x[j]) * pos(w[j]) for j in range(J)]
            pden, nden = sum(p) + pos(bk), sum(n) + neg(bk)
            share = [rule.alpha * p[j] / stab(pden, rule.stabilizer) for j in range(J)]
            if rule.beta:
                share = [share[j] - rule.beta * n[j] / stab(nden, rule.stabilizer)
                         for j in range(J)]  # fmt: skip
        elif isinstance(rule, ZBoxRule):
            num = [x[j] * w[j] - low[j] * pos(w[j]) - high[j] * neg(w[j]) for j in range(J)]
            share = [v / stab(sum(num), rule.stabilizer) for v in num]
        elif isinstance(rule, WSquareRule):
            num = [v * v for v in w]
            share = [v / stab(sum(num) + bk * bk, rule.stabilizer) for v in num]
        elif isinstance(rule, FlatRule):
            num = [1.0 if v != 0 else 0.0 for v in w]  # receptive field (W is dense here)
            share = [v / stab(sum(num), rule.stabilizer) for v in num]
        for j in range(J):
            out[j] += share[j] * float(R[k])
    return out


RULES = {
    "zero": lambda: ZeroRule(),
    "epsilon": lambda: EpsilonRule(0.1),
    "gamma": lambda: GammaRule(gamma=0.25, stabilizer=1e-6),
    "alpha2beta1": lambda: AlphaBetaRule(2.0, 1.0, 1e-6),
    "alpha1beta0": lambda: AlphaBetaRule(1.0, 0.0, 1e-6),
    "zplus": lambda: ZPlusRule(1e-6),
    "zbox": lambda: ZBoxRule(low=-1.5, high=2.0, stabilizer=1e-6),
    "wsquare": lambda: WSquareRule(1e-6),
    "flat": lambda: FlatRule(1e-6),
}


def _run(rule, op, a, R, nonnegative=False):
    z = op.forward(a, op.weight, op.bias)
    return rule.relevance(op, a, z, R, nonnegative=nonnegative, bounds=(-1.5, 2.0))


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "relu-input"])
def test_rule_on_linear_layer_matches_formula(name, signed):
    rule = RULES[name]()
    layer = nn.Linear(6, 4).to(DT)
    a = torch.randn(1, 6, dtype=DT)
    a = a if signed else a.abs()
    R = torch.randn(1, 4, dtype=DT)
    op = make_linear_op(layer, None, DT, "cpu")
    ours = _run(rule, op, a, R, nonnegative=not signed)[0]
    W, b = layer.weight.detach(), layer.bias.detach()
    expected = reference(rule, W, b, a[0], R[0], low=[-1.5] * 6, high=[2.0] * 6)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


def _dense(conv, shape):
    """The conv as a dense matrix (K_out_flat, J_in_flat): its Jacobian."""
    jac = torch.autograd.functional.jacobian(
        lambda x: nn.functional.conv2d(
            x, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups
        ),  # fmt: skip
        torch.zeros(shape, dtype=DT),
    )
    return jac.reshape(-1, int(torch.tensor(shape).prod()))


@pytest.mark.parametrize("name", RULES)
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "relu-input"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_rule_on_conv_layer_matches_formula(name, groups, signed, bias):
    """Also after a ReLU (the rules' shortcuts for a >= 0) and without bias, where a zero
    input patch makes z exactly 0 (no relevance, no division by zero)."""
    rule = RULES[name]()
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=groups, bias=bias).to(DT)
    with torch.no_grad():  # nonzero weights, so the dense matrix's zeros mark the field edge
        conv.weight.copy_(conv.weight.sign() * (conv.weight.abs() + 0.05))
    a = torch.randn(1, 2, 5, 5, dtype=DT)
    a = a if signed else a.relu()
    a[..., :3, :3] = 0  # a dead patch
    op = make_linear_op(conv, None, DT, "cpu")
    z = op.forward(a, op.weight, op.bias)
    assert bias or (z == 0).any()
    R = torch.randn_like(z)
    ours = _run(rule, op, a, R, nonnegative=not signed).flatten()
    W = _dense(conv, (1, 2, 5, 5))
    b = (conv.bias.detach() if bias else torch.zeros(4, dtype=DT)).repeat_interleave(
        z[0, 0].numel()
    )
    n = a.numel()
    expected = reference(rule, W, b, a.flatten(), R.flatten(), low=[-1.5] * n, high=[2.0] * n)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["zero", "gamma", "alpha2beta1", "zplus", "zbox", "wsquare",
                                  "flat"])  # fmt: skip
def test_conserving_rules_conserve_without_bias(name):
    rule = RULES[name]()
    rule.stabilizer = 0.0  # exact conservation needs no stabiliser
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).to(DT)
    a = torch.randn(2, 3, 6, 6, dtype=DT)
    if name == "zbox":
        a = a.clamp(-1.5, 2.0)
    op = make_linear_op(conv, None, DT, "cpu")
    R = torch.rand(2, 5, 6, 6, dtype=DT)
    ours = _run(rule, op, a, R)
    torch.testing.assert_close(ours.sum((1, 2, 3)), R.sum((1, 2, 3)), rtol=1e-10, atol=0)


def test_epsilon_absorbs_relevance():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).to(DT)
    op = make_linear_op(conv, None, DT, "cpu")
    a = torch.randn(1, 3, 6, 6, dtype=DT)
    R = op.forward(a, op.weight, None)  # relevance = activation, as at the top of a network
    kept = _run(EpsilonRule(10.0), op, a, R).sum()
    assert 0 < kept < R.sum() or R.sum() < kept < 0


def test_nonnegative_shortcut_agrees():
    """Skipping the negative-input terms after a ReLU changes numbers only by rounding."""
    conv = nn.Conv2d(3, 4, 3).to(DT)
    op = make_linear_op(conv, None, DT, "cpu")
    a = torch.randn(2, 3, 7, 7, dtype=DT).relu()
    R = torch.randn(2, 4, 5, 5, dtype=DT)
    for name in ("gamma", "alpha2beta1", "zplus"):
        rule = RULES[name]()
        fast, full = _run(rule, op, a, R, nonnegative=True), _run(rule, op, a, R)
        torch.testing.assert_close(fast, full, rtol=1e-12, atol=1e-15)


def test_zero_bias_option_ignores_bias():
    layer = nn.Linear(5, 3).to(DT)
    op = make_linear_op(layer, None, DT, "cpu")
    unbiased = make_linear_op(nn.Linear(5, 3, bias=False).to(DT), None, DT, "cpu")
    unbiased.weight = op.weight
    a, R = torch.randn(2, 5, dtype=DT), torch.randn(2, 3, dtype=DT)
    for make in (lambda zb: EpsilonRule(0.1, zero_bias=zb),
                 lambda zb: GammaRule(0.25, zero_bias=zb),
                 lambda zb: AlphaBetaRule(2.0, 1.0, zero_bias=zb)):  # fmt: skip
        torch.testing.assert_close(_run(make(True), op, a, R), _run(make(False), unbiased, a, R))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: EpsilonRule(-1.0), "epsilon"),
        (lambda: GammaRule(gamma=-0.5), "gamma"),
        (lambda: AlphaBetaRule(3.0, 1.0), "alpha - beta"),
        (lambda: AlphaBetaRule(1.0, -0.0 - 1.0), "beta"),
        (lambda: ZBoxRule(low=0.0), "both"),
        (lambda: GammaRule(gamma="big"), "number"),
        (lambda: FlatRule(float("nan")), "finite"),
        (lambda: EpsilonRule(0.1, 1.0), "zero_bias"),
    ],
)
def test_rule_parameters_are_validated(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_batchnorm_folding_is_exact():
    conv = nn.Conv2d(3, 4, 3).to(DT)
    bn = nn.BatchNorm2d(4).to(DT).eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2)
        bn.weight.normal_()
        bn.bias.normal_()
    op = make_linear_op(conv, bn, DT, "cpu")
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    torch.testing.assert_close(
        op.forward(x, op.weight, op.bias), bn(conv(x)), rtol=1e-13, atol=1e-13
    )


@pytest.mark.parametrize("layer", ["dense", "conv", "grouped-conv", "batchnorm"])
@pytest.mark.parametrize("signed", [True, False], ids=["signed-input", "relu-input"])
def test_gamma_closed_form_matches_general_mechanism(layer, signed):
    """GammaRule's one-denominator form against the same groups through the general
    mechanism (LinearRule.relevance), with dead units (z == 0) included."""
    module, shape = {
        "dense": (nn.Linear(6, 5), (3, 6)),
        "conv": (nn.Conv2d(3, 5, 3, padding=1), (2, 3, 6, 6)),
        "grouped-conv": (nn.Conv2d(4, 6, 3, padding=1, groups=2), (2, 4, 6, 6)),
        "batchnorm": (nn.BatchNorm2d(3), (2, 3, 4, 4)),
    }[layer]
    module = module.to(DT).eval()
    if layer == "batchnorm":
        with torch.no_grad():
            module.weight.uniform_(-1, 1), module.bias.uniform_(-1, 1)
    op = make_linear_op(module, None, DT, "cpu")
    a = torch.randn(shape, dtype=DT)
    a = a if signed else a.relu()
    a[0] = 0  # z == bias: dead units where the bias is 0 too
    z = op.forward(a, op.weight, op.bias)
    R = torch.randn_like(z)
    for gamma in (0.25, 3.0):
        rule = GammaRule(gamma=gamma, stabilizer=1e-3)
        fast = rule.relevance(op, a, z, R, nonnegative=not signed)
        general = LinearRule.relevance(rule, op, a, z, R, nonnegative=not signed)
        torch.testing.assert_close(fast, general, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", RULES)
def test_channels_last_input_gives_the_same_relevance(name):
    conv = nn.Conv2d(3, 8, 3, padding=1).to(DT)
    op = make_linear_op(conv, None, DT, "cpu")
    a = torch.randn(2, 3, 7, 7, dtype=DT).relu()
    R = torch.randn(2, 8, 7, 7, dtype=DT)
    plain = _run(RULES[name](), op, a, R, nonnegative=True)
    op.weight = op.weight.contiguous(memory_format=torch.channels_last)
    last = _run(RULES[name](), op, a.contiguous(memory_format=torch.channels_last),
                R.contiguous(memory_format=torch.channels_last), nonnegative=True)  # fmt: skip
    torch.testing.assert_close(last, plain, rtol=1e-9, atol=1e-12)  # summation order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stabilizer_sign_of_zero_and_tiny_values(dtype):
    """sign(0) = +1 for both zeros (zennit's convention); tiny values keep their sign."""
    from lrp_cli.engine.terms import divide, group_indicators, stabilize

    z = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 2.5, -2.5], dtype=dtype)
    expected = torch.tensor([1e-3, 1e-3, 1e-3, -1e-3, 2.501, -2.501], dtype=dtype)
    assert torch.equal(stabilize(z, 1e-3), expected)
    r = torch.ones_like(z)
    assert torch.equal(divide(r, z.clone(), 1e-3, scratch=True), r / expected)
    positive, negative = torch.empty_like(z), torch.empty_like(z)
    group_indicators(z, positive, negative)
    assert positive.tolist() == [0, 0, 1, 0, 1, 0] and negative.tolist() == [0, 0, 0, 1, 0, 1]


@pytest.mark.parametrize("maxpool", ["winner-take-all", "average"])
def test_maxpool_treatments_through_a_model_match_a_hand_computation(maxpool):
    """conv -> ReLU -> 2x2 max pool -> dense, LRP-0: each pooling window hands its relevance to
    its largest input (winner-take-all) or to all its inputs in proportion (average)."""
    from lrp_cli.engine import Composite, Explainer, ProportionalRule

    torch.manual_seed(0)
    conv, dense = nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.Linear(3 * 4 * 4, 2, bias=False)
    model = nn.Sequential(conv, nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), dense).to(DT).eval()
    x = torch.randn(1, 2, 8, 8, dtype=DT)
    composite = Composite(default=ZeroRule(), proportional=ProportionalRule(0.0), maxpool=maxpool)
    ours = Explainer(model, composite)(x, target=1).relevance

    with torch.no_grad():
        z = conv(x)
        a = z.clamp_min(0)
        windows = a.unfold(2, 2, 2).unfold(3, 2, 2)  # (1, 3, 4, 4, 2, 2)
        pooled = windows.amax((-2, -1))
        r_pooled = dense.weight[1].view(1, 3, 4, 4) * pooled  # LRP-0 on the dense layer
        if maxpool == "average":  # an all-zero window (after the ReLU) has nothing to share
            total = windows.sum((-2, -1), keepdim=True)
            share = torch.where(total > 0, windows / total.clamp_min(1e-300), 0.0)
        else:  # the first largest input, as max_pool2d's indices
            flat = windows.flatten(-2)
            share = nn.functional.one_hot(flat.argmax(-1), 4).to(DT).view_as(windows)
        r_a = (share * r_pooled[..., None, None]).permute(0, 1, 2, 4, 3, 5).reshape(1, 3, 8, 8)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad((conv(leaf) * (r_a / z)).sum(), leaf)  # LRP-0 on the conv
    torch.testing.assert_close(ours, leaf.detach() * grad, rtol=1e-10, atol=1e-12)
    spread = ((share > 0).sum((-2, -1)) > 1).any()  # some window shares among inputs
    assert spread == (maxpool == "average")  # the two treatments really differ here
