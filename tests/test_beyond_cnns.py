"""Gates, LayerNorm and attention: every torchvision classification family, against LXT and
against direct formulas.

Conservation: with every bias, BatchNorm and LayerNorm shift, position embedding and class
token zero, LRP-0 (the ``zero`` preset: no stabiliser anywhere) gives ``sum(R) == logit``.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lrp_cli.config import load_config, parse_config
from lrp_cli.engine import Composite, Explainer, UnsupportedModelError, ZeroRule
from lrp_cli.engine.rules import AttentionRule, LayerNormRule, ProportionalRule

from .conftest import randomize_batchnorm, zero_biases

DT = torch.float64
# one model of every torchvision classification family: (name, image side, build kwargs)
FAMILIES = {
    "alexnet": (64, {}), "vgg11": (32, {}), "resnet18": (32, {}), "resnext50_32x4d": (32, {}),
    "wide_resnet50_2": (32, {}), "densenet121": (32, {}),
    "googlenet": (32, {"aux_logits": False, "init_weights": True}),
    "inception_v3": (80, {"aux_logits": False, "init_weights": True}),
    "squeezenet1_1": (48, {}), "mobilenet_v2": (32, {}), "mobilenet_v3_small": (32, {}),
    "mnasnet0_5": (32, {}), "shufflenet_v2_x0_5": (32, {}), "regnet_x_400mf": (32, {}),
    "regnet_y_400mf": (32, {}), "efficientnet_b0": (32, {}), "efficientnet_v2_s": (32, {}),
    "convnext_tiny": (32, {}), "vit_b_16": (64, {"image_size": 64}), "swin_t": (64, {}),
    "swin_v2_t": (64, {}), "maxvit_t": (224, {}),
}  # fmt: skip
FAST = {"mobilenet_v3_small", "efficientnet_b0", "regnet_y_400mf", "convnext_tiny", "vit_b_16",
        "swin_t", "mnasnet0_5"}  # fmt: skip


def build(name: str) -> nn.Module:
    side, kwargs = FAMILIES[name]
    return torchvision.models.get_model(name, num_classes=10, **kwargs)


def zero_shifts(model: nn.Module) -> nn.Module:
    """Zero every additive term that absorbs relevance like a bias; give ViT a head."""
    model = zero_biases(randomize_batchnorm(model, zero_shift=True))
    with torch.no_grad():
        for module in model.modules():
            for attr in (
                "class_token",
                "pos_embedding",
                "cls_token",
                "pos_embed",
                "reg_token",
                "dist_token",
            ):
                if isinstance(getattr(module, attr, None), torch.Tensor):
                    getattr(module, attr).zero_()
            for name, parameter in module.named_parameters(recurse=False):
                if name in ("q_bias", "v_bias", "beta"):  # BEiT's attention, timm's Affine
                    parameter.zero_()
            if isinstance(module, nn.MultiheadAttention) and module.in_proj_bias is not None:
                module.in_proj_bias.zero_()
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)  # not all ones: the affine is exercised
                module.bias.zero_()
            if isinstance(module, (nn.Conv2d, nn.Linear)):  # some inits give vanishing logits
                if not module.weight.any():  # zero-initialised heads (ViT, MLP-Mixer, ResMLP)
                    nn.init.normal_(module.weight)
                fan_in = module.weight[0].numel()
                module.weight.mul_((2.0 / fan_in) ** 0.5 / module.weight.std().clamp_min(1e-12))
    return model


def _family(name):
    torch.manual_seed(0)
    model = zero_shifts(build(name)).to(DT).eval()
    side = FAMILIES[name][0]
    return model, torch.randn(2, 3, side, side, dtype=DT)


@pytest.mark.parametrize(
    "name", [n if n in FAST else pytest.param(n, marks=pytest.mark.slow) for n in FAMILIES]
)
def test_lrp0_conserves_on_every_family(name):
    model, x = _family(name)
    result = Explainer(model, load_config("zero").composite())(x)
    torch.testing.assert_close(result.logits, model(x), rtol=1e-9, atol=1e-12)
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    assert logit.abs().min() > 1e-6, "degenerate test model"
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), logit, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ attention vs LXT
def _random_vit(image_size: int) -> nn.Module:
    """vit_b_16 with random weights, every bias and LayerNorm affine non-trivial."""
    torch.manual_seed(1)
    model = torchvision.models.vit_b_16(num_classes=10, image_size=image_size)
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.02)
        for module in model.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.05)
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor) and not isinstance(module, nn.LayerNorm):
                bias.normal_(0, 0.02)
            if isinstance(module, nn.MultiheadAttention):
                module.in_proj_bias.normal_(0, 0.02)
        model.class_token.normal_(0, 0.02)
    return model.to(DT).eval()


@pytest.mark.parametrize(
    "image_size", [64, pytest.param(224, marks=pytest.mark.slow)], ids=["64px", "224px"]
)
def test_vit_cp_lrp_equals_lxt(image_size):
    pytest.importorskip("lxt", reason="LXT is the oracle (installed by the Makefile)")
    from .lxt_reference import lxt_cp_lrp_relevance

    model = _random_vit(image_size)
    x = torch.randn(2, 3, image_size, image_size, dtype=DT)
    ours = Explainer(model, load_config("zero").composite())(x, target=3).relevance
    # LXT's GELU divides by input + 1e-10 (1e-6 of max|R| off at 224 px); compared as it is at
    # 64 px, with that guard at 0 at 224 px (our GELU passes relevance exactly)
    theirs = lxt_cp_lrp_relevance(model, x, 3, gelu_epsilon=None if image_size < 224 else 0.0)
    assert ours.abs().max() > 0
    assert (ours - theirs).abs().max() <= 1e-6 * ours.abs().max()


# ------------------------------------------------------------------ gates
class _HandWrittenSE(nn.Module):
    """Squeeze-excitation written by hand: the gate comes from the signal through a mean."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(6, 3), nn.Linear(3, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        s = torch.relu(self.conv(x))
        g = torch.sigmoid(self.fc2(torch.relu(self.fc1(s.mean((2, 3))))))
        y = s * g[:, :, None, None]
        return self.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))


def _gradient_times_input_with_detached_gate(model: _HandWrittenSE, x, target):
    """Independent reference: on a ReLU net with zero biases, LRP-0 is gradient x input with
    every gate a constant (detached)."""
    leaf = x.clone().requires_grad_()
    s = torch.relu(model.conv(leaf))
    g = torch.sigmoid(model.fc2(torch.relu(model.fc1(s.mean((2, 3))))))
    y = s * g[:, :, None, None].detach()
    out = model.head(torch.flatten(torch.nn.functional.adaptive_avg_pool2d(y, 1), 1))
    out[:, target].sum().backward()
    return leaf.grad * x


@pytest.mark.parametrize("model_kind", ["hand-written", "torchvision SqueezeExcitation"])
def test_gates_take_all_signal(model_kind):
    torch.manual_seed(2)
    if model_kind == "hand-written":
        model = zero_biases(_HandWrittenSE()).to(DT).eval()
    else:
        from torchvision.ops import SqueezeExcitation

        model = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), SqueezeExcitation(6, 3, nn.ReLU,
            nn.Hardsigmoid), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4),
        )  # fmt: skip
        model = zero_biases(model).to(DT).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DT)
    explainer = Explainer(model, load_config("zero").composite())
    result = explainer(x, target=1)
    gates = [row for row in explainer.layer_rules if row.type == "gate"]
    assert len(gates) == 1 and gates[0].rule.startswith("signal-take-all")
    assert not all(row.relevance for row in explainer.layer_rules), "gate branch marked dead"
    torch.testing.assert_close(
        result.relevance.sum((1, 2, 3)), result.logits[:, 1], rtol=1e-9, atol=0
    )
    if model_kind == "hand-written":
        expected = _gradient_times_input_with_detached_gate(model, x, 1)
        torch.testing.assert_close(result.relevance, expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ products, AttnLRP
class _Product(nn.Module):
    """A product of two data tensors that is no gate (a gated MLP)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(5, 4), nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.a(x) * torch.tanh(self.b(x)))


def test_bare_product_is_refused_unless_the_config_asks_for_the_uniform_split():
    model = _Product().to(DT).eval()
    with pytest.raises(UnsupportedModelError, match="node 'mul'.*products: uniform"):
        Explainer(model)
    composite = Composite(default=ZeroRule(), proportional=ProportionalRule(0.0),
                          attention=AttentionRule("cp", 0.0), products="uniform")  # fmt: skip
    x = torch.randn(2, 5, dtype=DT)
    result = Explainer(model, composite)(x, target=0)
    # direct formula: R_head_in = LRP-0 of the head; each factor of u * v gets half
    with torch.no_grad():
        u, v = model.a(x), torch.tanh(model.b(x))
        h = u * v
        r_h = h * model.head.weight[0] * (result.logits[:, :1] / model.head(h)[:, :1])
        r_u = r_h / 2  # and the tanh passes the other half to b's output
        r_x = x * ((r_u / model.a(x)) @ model.a.weight + (r_h / 2 / model.b(x)) @ model.b.weight)
    torch.testing.assert_close(result.relevance, r_x, rtol=1e-9, atol=1e-12)


class _TinyAttention(nn.Module):
    """Attention written out in the graph (as MaxViT does): einsum, softmax, einsum."""

    def __init__(self, d=4):
        super().__init__()
        self.qkv, self.head = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, 2, bias=False)

    def forward(self, x):  # x: (N, tokens, d)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        a = torch.softmax(torch.einsum("nid,njd->nij", q, k) * 0.5, dim=-1)
        o = torch.einsum("nij,njd->nid", a, v)
        return self.head(o.sum(1))


def _tiny_attention_reference(model, x, target, mode):
    """Direct formulas: CP (A constant) or AttnLRP (Taylor softmax, uniform products)."""
    d = x.shape[-1]
    w_q, w_k, w_v = model.qkv.weight.split(d)
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    logits = torch.einsum("nid,njd->nij", q, k) * 0.5
    a = torch.softmax(logits, -1)
    o = torch.einsum("nij,njd->nid", a, v)
    pooled = o.sum(1)
    out = pooled @ model.head.weight.T
    r_pooled = (
        pooled
        * model.head.weight[target]
        * (out[:, target : target + 1] / out[:, target : target + 1])
    )
    r_o = o * (r_pooled / pooled)[:, None, :]  # the sum's proportional split
    if mode == "cp":
        r_v = v * torch.einsum("nij,nid->njd", a, r_o / o)
        return x * ((r_v / v) @ w_v)
    t = r_o / (2 * o)
    r_a, r_v = a * torch.einsum("nid,njd->nij", t, v), v * torch.einsum("nij,nid->njd", a, t)
    r_logits = logits * (r_a - a * r_a.sum(-1, keepdim=True))
    s = r_logits / (2 * logits)
    r_q = q * torch.einsum("nij,njd->nid", s * 0.5, k)
    r_k = k * torch.einsum("nij,nid->njd", s * 0.5, q)
    return x * ((r_q / q) @ w_q + (r_k / k) @ w_k + (r_v / v) @ w_v)


@pytest.mark.parametrize("mode", ["cp", "attnlrp"])
def test_attention_in_the_graph_matches_the_formulas(mode):
    torch.manual_seed(4)
    model = _TinyAttention().to(DT).eval()
    x = torch.randn(2, 3, 4, dtype=DT)
    composite = Composite(default=ZeroRule(), proportional=ProportionalRule(0.0),
                          attention=AttentionRule(mode, 0.0))  # fmt: skip
    result = Explainer(model, composite)(x, target=1)
    expected = _tiny_attention_reference(model, x, 1, mode)
    torch.testing.assert_close(result.relevance, expected, rtol=1e-9, atol=1e-12)
    if mode == "cp":  # CP-LRP conserves (no biases)
        torch.testing.assert_close(result.relevance.sum((1, 2)), result.logits[:, 1])


def _mha_reference(mha: nn.MultiheadAttention, x, r_out, mode):
    """Direct formulas for self-attention (batch first, no biases, one head)."""
    w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
    w_o = mha.out_proj.weight
    q, k, v = x @ w_q.T, x @ w_k.T, x @ w_v.T
    logits = q @ k.transpose(1, 2) / q.shape[-1] ** 0.5
    a = torch.softmax(logits, -1)
    o = a @ v
    out = o @ w_o.T
    s = r_out / out
    if mode == "cp":
        return x * ((a.transpose(1, 2) @ (s @ w_o)) @ w_v)
    r_o = o * (s @ w_o)
    t = r_o / (2 * o)
    r_a, r_v = a * (t @ v.transpose(1, 2)), v * (a.transpose(1, 2) @ t)
    r_logits = logits * (r_a - a * r_a.sum(-1, keepdim=True))
    u = r_logits / (2 * logits) / q.shape[-1] ** 0.5
    r_q, r_k = q * (u @ k), k * (u.transpose(1, 2) @ q)
    return x * ((r_q / q) @ w_q + (r_k / k) @ w_k + (r_v / v) @ w_v)


class _MHABlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 1, bias=False, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0].sum(1)


@pytest.mark.parametrize("mode", ["cp", "attnlrp"])
def test_multihead_attention_matches_the_formulas(mode):
    torch.manual_seed(5)
    model = _MHABlock().to(DT).eval()
    x = torch.randn(2, 3, 4, dtype=DT)
    composite = Composite(default=ZeroRule(), proportional=ProportionalRule(0.0),
                          attention=AttentionRule(mode, 0.0))  # fmt: skip
    result = Explainer(model, composite)(x, target=2)
    with torch.no_grad():
        out = model.attn(x, x, x, need_weights=False)[0]
        r_out = out * (result.logits[:, 2:3] / out.sum(1)[:, 2:3])[:, None, :]
        r_out = torch.zeros_like(out).index_copy_(2, torch.tensor([2]), r_out[..., 2:3])
        expected = _mha_reference(model.attn, x, r_out, mode)
    torch.testing.assert_close(result.relevance, expected, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------ refusals
class _Cumulative(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.cumsum(x, 1))


class _AlwaysDropping(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.nn.functional.dropout(x, 0.5))  # training=True by default


def test_refusals_name_the_node():
    with pytest.raises(UnsupportedModelError, match="node 'dropout'.*training mode"):
        Explainer(_AlwaysDropping().eval())
    with pytest.raises(UnsupportedModelError, match="module 'features.*Dropout|training mode"):
        Explainer(torchvision.models.vgg11(num_classes=3).train())
    with pytest.raises(UnsupportedModelError, match="node 'cumsum'.*no LRP rule for this function"):
        Explainer(_Cumulative().eval())
    with pytest.raises(UnsupportedModelError, match="softmax"):
        Explainer(nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=1)).eval())


# ------------------------------------------------------------------ LayerNorm, config
def test_layernorm_rule_against_the_formula_and_zero_bias():
    torch.manual_seed(6)
    ln = nn.LayerNorm(5).to(DT)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_(0, 0.3)
    model = nn.Sequential(ln, nn.Linear(5, 3, bias=False)).to(DT).eval()
    x = torch.randn(4, 5, dtype=DT)
    for zero_bias in (False, True):
        composite = Composite(default=ZeroRule(), layernorm=LayerNormRule(0.0, zero_bias))
        result = Explainer(model, composite)(x, target=0)
        with torch.no_grad():
            y = ln(x)
            r_y = y * model[1].weight[0]
            sigma = (x.var(-1, unbiased=False, keepdim=True) + ln.eps).sqrt()
            z = y - ln.bias if zero_bias else y
            u = (r_y / z) * ln.weight / sigma
            expected = x * (u - u.mean(-1, keepdim=True))
        torch.testing.assert_close(result.relevance, expected, rtol=1e-9, atol=1e-12)
        if zero_bias:  # beta left out of the denominator: the rule conserves
            torch.testing.assert_close(result.relevance.sum(1), r_y.sum(1), rtol=1e-9, atol=0)


class _FunctionalGroupNorm(nn.Module):
    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x):  # as timm's GroupNorm1 calls it
        n = self.norm
        return F.group_norm(x, n.num_groups, n.weight, n.bias, n.eps)


@pytest.mark.parametrize("functional", [False, True], ids=["module", "F.group_norm"])
def test_groupnorm_gets_the_layernorm_rule_within_each_group(functional):
    """GroupNorm: the LN-rule per group, written here as the gradient of the norm with each
    group's sigma held constant (an independent form), and conserving under zero_bias."""
    torch.manual_seed(7)
    gn = nn.GroupNorm(2, 4).to(DT)
    with torch.no_grad():
        gn.weight.uniform_(0.5, 1.5)
        gn.bias.normal_(0, 0.3)
    norm = _FunctionalGroupNorm(gn) if functional else gn
    model = nn.Sequential(norm, nn.Flatten(), nn.Linear(4 * 3 * 3, 3, bias=False)).to(DT).eval()
    x = torch.randn(2, 4, 3, 3, dtype=DT).contiguous(memory_format=torch.channels_last)
    for zero_bias in (False, True):
        composite = Composite(default=ZeroRule(), layernorm=LayerNormRule(0.0, zero_bias))
        result = Explainer(model, composite)(x, target=0)
        leaf = x.detach().clone().requires_grad_()
        groups = leaf.reshape(2, 2, -1)
        mean = groups.mean(-1, keepdim=True)
        sigma = (groups.var(-1, unbiased=False, keepdim=True) + gn.eps).sqrt().detach()
        y = ((groups - mean) / sigma).reshape(x.shape) * gn.weight.view(1, -1, 1, 1)
        y = y + gn.bias.view(1, -1, 1, 1)
        with torch.no_grad():
            r_y = y * model[2].weight[0].view(1, 4, 3, 3)
            z = y - gn.bias.view(1, -1, 1, 1) if zero_bias else y
        (grad,) = torch.autograd.grad(y, leaf, r_y / z)
        torch.testing.assert_close(result.relevance, x * grad, rtol=1e-9, atol=1e-12)
        if zero_bias:
            total = result.relevance.sum((1, 2, 3))
            torch.testing.assert_close(total, r_y.sum((1, 2, 3)), rtol=1e-9, atol=0)


def test_config_keys_for_the_new_nodes():
    config = parse_config(
        "default: {rule: epsilon, epsilon: 1.0e-6}\n"
        "layernorm: {epsilon: 0.01, zero_bias: true}\n"
        "attention: {mode: attnlrp, epsilon: 1.0e-3}\n"
        "products: uniform\n"
        "norm: {stabilizer: 0}\n",  # the proportional rule's old key still works
        source="t.yaml",
    )
    composite = config.composite()
    assert composite.layernorm == LayerNormRule(0.01, True)
    assert composite.attention == AttentionRule("attnlrp", 1e-3)
    assert composite.products == "uniform" and composite.proportional.stabilizer == 0
    assert composite.origin("attention") == "t.yaml:3"
    for text, message in [
        ("attention: {mode: fancy}", "t.yaml:1: attention: mode must be cp or attnlrp"),
        ("products: maybe", "t.yaml:1: products must be refuse or uniform"),
        ("layernorm: {epsilon: -1}", "t.yaml:1: epsilon must be a non-negative number"),
        ("norm: {stabilizer: 0}\nproportional: {stabilizer: 0}", "t.yaml:1: give 'proportional'"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_config(text, source="t.yaml")


def test_inspect_rows_show_gates_norms_and_attention():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = Explainer(build("vit_b_16").eval(), load_config("zero").composite())
    kinds = {row.type for row in explainer.layer_rules}
    assert {"LayerNorm", "MultiheadAttention", "Linear", "Conv2d"} <= kinds
    attention = [row for row in explainer.layer_rules if row.type == "MultiheadAttention"]
    assert attention[0].rule == "cp-lrp(epsilon=0.0)" and attention[0].source.endswith(":5")


# ------------------------------------------------------------------ through the command line
@pytest.mark.parametrize(
    "name, side",
    [("convnext_tiny", 32), pytest.param("efficientnet_b0", 32, marks=pytest.mark.slow),
     pytest.param("vit_b_16", 224, marks=pytest.mark.slow),
     pytest.param("swin_v2_t", 64, marks=pytest.mark.slow)],
)  # fmt: skip
def test_lrp0_conserves_through_the_command_line(tmp_path, name, side):
    import json

    import numpy as np
    from click.testing import CliRunner

    from lrp_cli.cli import main

    torch.manual_seed(0)
    model = zero_shifts(torchvision.models.get_model(name, num_classes=10)).eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((3, side, side)))
    args = ["explain", tmp_path / "x.npy", "-m", name, "-w", tmp_path / "weights.pt", "-c",
            "zero", "--precision", "float64", "--input-size", side, "--num-classes", 10,
            "-o", tmp_path / "out",
            "--jsonl", "-", "--device", "cpu"]  # fmt: skip
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert abs(record["logit"]) > 1e-6
    assert record["relevance_sum"] == pytest.approx(record["logit"], rel=1e-6)
