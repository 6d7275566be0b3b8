"""End to end on real torchvision architectures (random seeded weights, float64).

With every bias and BatchNorm shift zero, LRP-0 conserves exactly: sum(relevance) equals the
target logit. That one number catches a lost branch, a doubled residual or a wrong split at a
concatenation. LRP-0 everywhere also equals gradient x input on these (piecewise linear) nets.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lrp_cli.config import load_config
from lrp_cli.engine import (
    AlphaBetaRule,
    Composite,
    EpsilonRule,
    Explainer,
    GammaRule,
    ProportionalRule,
    UnsupportedModelError,
    ZeroRule,
)
from lrp_cli.models import load_model

from .conftest import randomize_batchnorm, zero_biases

DT = torch.float64
ARCHITECTURES = {
    "vgg11": 32, "vgg11_bn": 32, "alexnet": 64, "resnet18": 32, "resnext50_32x4d": 32,
    "wide_resnet50_2": 32, "densenet121": 32, "mobilenet_v2": 32, "googlenet": 32,
    "squeezenet1_0": 48, "squeezenet1_1": 48, "shufflenet_v2_x0_5": 32, "regnet_x_400mf": 32,
}  # fmt: skip


def _build(name):
    kwargs = {"num_classes": 10}
    if name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(name, **kwargs)


def _lrp0(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Explainer(model, Composite(default=ZeroRule(), proportional=ProportionalRule(0.0)))


def _scaled_up(model):
    """Some inits (GoogLeNet's truncated normal 0.01) give vanishing logits; rescale per layer."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.mul_((2.0 / fan_in) ** 0.5 / m.weight.std().clamp_min(1e-12))
    return model


# Slow: the widest float64 nets, whose properties smaller ones here share (grouped and wide
# bottlenecks: resnet18 and regnet; inverted residuals with ReLU6: the built-in model below).
SLOW_ARCHITECTURES = {"resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2"}


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHITECTURES else a
        for a in ARCHITECTURES
    ],
)
def architecture(request):
    torch.manual_seed(3)
    model = _scaled_up(zero_biases(randomize_batchnorm(_build(request.param), zero_shift=True)))
    model = model.to(DT).eval()
    x = torch.randn(2, 3, ARCHITECTURES[request.param], ARCHITECTURES[request.param], dtype=DT)
    return request.param, model, x


def test_lrp0_conserves_the_logit(architecture):
    name, model, x = architecture
    result = _lrp0(model)(x)
    torch.testing.assert_close(result.logits, model(x), rtol=1e-9, atol=1e-12)
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    assert logit.abs().min() > 1e-8, "degenerate test model"
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), logit, rtol=1e-6, atol=0)


def test_lrp0_equals_gradient_times_input(architecture):
    name, model, x = architecture
    if any(isinstance(m, nn.ReLU6) for m in model.modules()):
        pytest.skip(
            "ReLU6 clips: its gradient is not relevance-preserving, so LRP-0 != grad x input"
        )
    result = _lrp0(model)(x, target=4)
    leaf = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(leaf)[:, 4].sum(), leaf)
    scale = (grad * x).abs().max()
    assert (result.relevance - grad * x).abs().max() <= 1e-9 * scale


@pytest.mark.parametrize("preset", ["epsilon-plus-flat", "epsilon-gamma-box"])
def test_presets_conserve_on_every_architecture(architecture, preset):
    """With zero biases, flat, z-box, gamma, z-plus and the sum rule all conserve; only the
    presets' 1e-6 stabilisers absorb a little (measured: at most 2e-5 relative, regnet's z-plus
    4e-4). The exception: on ShuffleNet z-plus loses ~80% of the relevance, and zennit's
    EpsilonPlusFlat gives the same map (checked by hand to 1e-9), so that is the rule's doing.
    """
    name, model, x = architecture
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = Explainer(model, load_config(preset).composite(), input_bounds=(-3.0, 3.0))
    result = explainer(x)
    assert result.relevance.shape == x.shape and torch.isfinite(result.relevance).all()
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    ratio = result.relevance.sum((1, 2, 3)) / logit
    if (name, preset) == ("shufflenet_v2_x0_5", "epsilon-plus-flat"):
        assert ((ratio > 0.05) & (ratio < 0.5)).all(), ratio
    else:
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-3)


def test_builtin_efficientnet_lite_conserves():
    torch.manual_seed(0)
    model = load_model("efficientnet_lite0").module
    zero_biases(randomize_batchnorm(model, zero_shift=True)).to(DT)
    x = torch.randn(1, 3, 128, 128, dtype=DT)  # any size: "same" padding, adaptive pool
    result = _lrp0(model)(x)
    torch.testing.assert_close(result.logits, model(x), rtol=1e-9, atol=1e-12)
    logit = result.logits[0, result.targets[0]]
    torch.testing.assert_close(result.relevance.sum(), logit, rtol=1e-6, atol=0)


def test_model_is_left_untouched():
    model = randomize_batchnorm(torchvision.models.resnet18(num_classes=10)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explainer = Explainer(model, load_config("epsilon-gamma-box").composite(),
                          input_bounds=(-2.0, 2.0))  # fmt: skip
    explainer(torch.randn(2, 3, 32, 32))
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks
                   for m in model.modules())  # fmt: skip
    assert not any(p.grad is not None for p in model.parameters())


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        h = self.conv(x)
        h = h * torch.sigmoid(h)  # a data-dependent product, not a gate (no pooled branch)
        return self.fc(h.mean((2, 3)))


class _Custom(nn.Module):
    def forward(self, x):
        return torch.cumsum(x.flatten(1), 1)


def test_gate_and_unknown_ops_are_refused():
    with pytest.raises(UnsupportedModelError, match="node 'mul'.*two data-dependent tensors"):
        Explainer(_Gated())
    with pytest.raises(UnsupportedModelError, match="node 'cumsum'"):
        Explainer(_Custom())


class _Mixed(nn.Module):
    """Functional ops, a shared module, residual and concatenation, in-place ops."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        a = self.relu(self.conv(x))
        b = self.conv(a)  # the same module twice
        b += a  # in-place residual
        h = torch.cat([a, torch.nn.functional.relu(b)], dim=1)
        h = self.bn(h)  # a BatchNorm after a concatenation: its own affine layer
        h = torch.nn.functional.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.head(h)


def test_functional_and_shared_layers_conserve():
    model = zero_biases(randomize_batchnorm(_Mixed(), zero_shift=True)).to(DT).eval()
    x = torch.randn(3, 3, 8, 8, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = Explainer(
            model,
            Composite(default=ZeroRule(), batchnorm=ZeroRule(), proportional=ProportionalRule(0.0)),
        )
    result = explainer(x)
    torch.testing.assert_close(result.logits, model(x))
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), logit, rtol=1e-9, atol=0)


@pytest.mark.parametrize(
    "preset", ["epsilon-plus-flat", "epsilon-alpha2-beta1-flat", "epsilon-gamma-box"]
)
def test_float32_stays_close_to_float64_on_the_builtin_model(preset):
    """Guards against algebra that cancels in float32 (e.g. W- a computed as W a - W+ a);
    float32 on the CPU also runs channels-last, float64 does not."""
    from lrp_cli.images import crop_image, load_image, to_tensor

    loaded = load_model("efficientnet_lite0")
    path = Path(__file__).parent.parent / "sample_images" / "coffee-cup.jpg"
    photo = crop_image(load_image(path), loaded.preprocessing)
    x = to_tensor(photo, loaded.preprocessing)[None]
    explainer = Explainer(loaded.module, load_config(preset).composite(),
                          input_bounds=loaded.preprocessing.bounds())  # fmt: skip
    single = explainer(x).relevance.double()
    double = explainer(x.double()).relevance
    assert (single - double).abs().max() <= 1e-4 * double.abs().max()


@pytest.mark.parametrize("preset", ["epsilon-plus", "epsilon-gamma-box"])
def test_channels_last_changes_only_rounding(preset):
    torch.manual_seed(0)
    model = randomize_batchnorm(_build("resnet18")).eval()
    x = torch.randn(2, 3, 48, 48)
    bounds = (-2.2, 2.7)
    results = {
        layout: Explainer(
            model, load_config(preset).composite(), input_bounds=bounds, channels_last=layout
        )(x).relevance
        for layout in (False, True)
    }
    assert all(r.is_contiguous() for r in results.values())  # the input's layout back
    difference = (results[True] - results[False]).abs().max()
    assert difference <= 1e-4 * results[False].abs().max()


@pytest.mark.parametrize("chunk_bytes", [1, 40_000])
@pytest.mark.parametrize(
    "preset", ["epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat"]
)
def test_slicing_the_batch_does_not_change_a_number(preset, chunk_bytes):
    """Large layers get their rule applied to slices of the batch (bounded temporaries):
    1 byte means one sample at a time everywhere; 40 kB gives uneven slices (2+2+1, 4+1) in
    the middle layers and the whole batch at the end."""
    torch.manual_seed(0)
    model = randomize_batchnorm(_build("resnet18")).to(DT).eval()
    x = torch.randn(5, 3, 32, 32, dtype=DT)
    composite = load_config(preset).composite()
    whole = Explainer(model, composite, input_bounds=(-2.2, 2.7), chunk_bytes=None)(x)
    sliced = Explainer(model, composite, input_bounds=(-2.2, 2.7), chunk_bytes=chunk_bytes)(x)
    torch.testing.assert_close(sliced.relevance, whole.relevance, rtol=1e-12, atol=1e-15)


def test_slices_keep_the_channels_last_layout():
    torch.manual_seed(0)
    model = _build("vgg11").eval()
    x = torch.randn(3, 3, 32, 32)
    composite = load_config("epsilon-gamma-box").composite()
    results = [
        Explainer(model, composite, input_bounds=(-2.2, 2.7), chunk_bytes=limit)(x).relevance
        for limit in (None, 1)
    ]
    assert results[1].is_contiguous()
    torch.testing.assert_close(
        results[1], results[0], rtol=1e-5, atol=1e-6 * results[0].abs().max()
    )


@pytest.mark.parametrize("bad", [0, -5, 1.5, "big", True])
def test_chunk_bytes_is_validated(bad):
    with pytest.raises(ValueError, match="chunk_bytes"):
        Explainer(_build("resnet18").eval(), chunk_bytes=bad)


def test_logits_survive_a_model_ending_in_a_view_of_a_sum():
    """The relevance pass reuses a sum's memory for its signal, but not when the logits the
    caller gets back are (a view of) that sum."""

    class PoolHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.flatten(nn.functional.adaptive_avg_pool2d(self.conv(x), 1), 1)

    torch.manual_seed(0)
    model = PoolHead().to(DT).eval()
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    result = Explainer(model, load_config("epsilon").composite())(x)
    torch.testing.assert_close(result.logits, model(x))


def test_explaining_never_imports_sympy():
    """torch.autograd.grad's shape checks import sympy on first use (0.5-0.65 s per process):
    the engine's vector-Jacobian products go around them."""
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "from lrp_cli.engine import Composite, Explainer, EpsilonRule\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.ZeroPad2d(1), nn.MaxPool2d(2),"
        " nn.Flatten(), nn.Linear(64, 5)).eval()\n"
        "for pool in ('winner-take-all', 'average'):\n"
        "    Explainer(model, Composite(default=EpsilonRule(), maxpool=pool))("
        "torch.randn(2, 3, 8, 8))\n"
        "print('sympy' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]


def test_optional_forward_arguments_are_fixed_at_their_defaults():
    """A forward with optional extras (timm's ViT: ``attn_mask=None, is_causal=False``) is
    explained as called on the image batch alone; the defaults shape the traced graph."""

    class Extras(nn.Module):
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(6, 3, bias=False)

        def forward(self, x, mask=None, scale: float = 2.0, double: bool = False):
            x = x.flatten(1) * scale
            if mask is not None:
                x = x * mask
            return self.dense(x + x if double else x)

    model = Extras().to(DT).eval()
    x = torch.randn(2, 6, dtype=DT)
    result = _lrp0(model)(x)
    torch.testing.assert_close(result.logits, model(x))
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    torch.testing.assert_close(result.relevance.sum(1), logit, rtol=1e-12, atol=0)
    assert list(model.forward.__defaults__) == [None, 2.0, False]  # the model is untouched


class _Functional(nn.Module):
    """Layers called functionally in the model's own forward (as timm's Linear does), and a
    nearest upsampling (HRNet's fuse layers)."""

    def __init__(self, conv: nn.Conv2d, dense: nn.Linear):
        super().__init__()
        self.conv_weight, self.conv_bias = conv.weight, conv.bias
        self.dense_weight, self.dense_bias = dense.weight, dense.bias

    def forward(self, x):
        x = F.conv2d(x, self.conv_weight, self.conv_bias, 2, 1).relu()
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.linear(x.flatten(1), self.dense_weight, self.dense_bias)


def test_functional_layers_get_the_rules_of_their_modules():
    torch.manual_seed(0)
    conv, dense = nn.Conv2d(3, 4, 3), nn.Linear(4 * 8 * 8, 3)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Upsample(scale_factor=2),
                          nn.Flatten(), dense).to(DT).eval()  # fmt: skip
    plain[0].load_state_dict(conv.state_dict())
    functional = _Functional(plain[0], dense).to(DT).eval()
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    composite = Composite(default=GammaRule(0.25), proportional=ProportionalRule(0.0))
    ours = Explainer(functional, composite)
    expected = Explainer(plain, composite)(x).relevance
    torch.testing.assert_close(ours(x).relevance, expected, rtol=1e-12, atol=1e-14)
    rules = [(row.type, row.position, row.rule) for row in ours.layer_rules]
    assert rules == [(r.type, r.position, r.rule) for r in Explainer(plain, composite).layer_rules]
    assert sum("gamma" in rule for *_, rule in rules) == 2  # the conv and the dense layer


class _Standardised(nn.Module):
    """NFNet's weight standardisation and BEiT's concatenated biases: a layer's weight and
    bias computed from the model's tensors in its own forward."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.gain = nn.Parameter(torch.rand(4, 1, 1, 1) + 0.5)
        self.first, self.last = nn.Parameter(torch.randn(2)), nn.Parameter(torch.randn(1))

    def standardised(self):
        mean = self.weight.mean((1, 2, 3), keepdim=True)
        return self.gain * (self.weight - mean) / self.weight.std((1, 2, 3), keepdim=True)

    def forward(self, x):
        bias = torch.cat((self.first, torch.zeros_like(self.last), self.last))
        return F.conv2d(x, self.standardised(), bias, 1, 1).relu().flatten(1)


def test_a_computed_weight_gets_the_rule_of_the_stored_weight_it_equals():
    torch.manual_seed(0)
    model = nn.Sequential(_Standardised(), nn.Linear(4 * 8 * 8, 3)).to(DT).eval()
    plain = nn.Sequential(nn.Conv2d(3, 4, 3, 1, 1), nn.ReLU(), nn.Flatten(), model[1])
    plain = plain.to(DT).eval()
    with torch.no_grad():
        plain[0].weight.copy_(model[0].standardised())
        plain[0].bias.copy_(torch.cat((model[0].first, torch.zeros(1, dtype=DT), model[0].last)))
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    torch.testing.assert_close(model(x), plain(x), rtol=1e-12, atol=1e-14)
    for rule in (GammaRule(0.25), AlphaBetaRule(2, 1), EpsilonRule(0.1)):  # weights modified
        composite = Composite(default=rule, proportional=ProportionalRule(0.0))
        ours = Explainer(model, composite)
        expected = Explainer(plain, composite)(x)
        result = ours(x)
        torch.testing.assert_close(result.logits, expected.logits, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(result.relevance, expected.relevance, rtol=1e-10, atol=1e-14)
    assert [row.name for row in ours.layer_rules] == ["0", "1"]  # the module that computed it
    with torch.no_grad():  # computed anew whenever the explainer prepares its weights
        model[0].gain.mul_(2.0)
    changed = ours(x.float()).logits  # another dtype: prepared again
    torch.testing.assert_close(changed, model(x).float(), rtol=1e-5, atol=1e-6)


def test_a_layer_weight_that_depends_on_the_input_is_refused():
    class InputWeighted(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(3, 12))

        def forward(self, x):
            return F.linear(x.flatten(1), self.weight * x.mean())

    with pytest.raises(UnsupportedModelError, match="linear.*its weight depends on the input"):
        Explainer(InputWeighted().eval(), Composite(default=ZeroRule()))
