"""timm models (``-m timm:NAME``): their own layers through the engine, and the loader.

timm builds BatchNorm + activation as one module that calls ``F.batch_norm`` (BatchNormAct2d),
squeeze-excitation from ``x.mean`` and a sigmoid gate, and attention from ``unbind`` and
``F.scaled_dot_product_attention``. Random weights, float64, every additive term zero: LRP-0
then conserves exactly, which a lost or doubled branch would break.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lrp_cli.cli import main
from lrp_cli.config import load_config
from lrp_cli.engine import (
    AttentionRule,
    Composite,
    Explainer,
    GammaRule,
    ProportionalRule,
    UnsupportedModelError,
    ZeroRule,
)
from lrp_cli.models import ModelError, load_model

from .test_beyond_cnns import zero_shifts
from .test_cli import SAMPLES

timm = pytest.importorskip("timm")
DT = torch.float64


@pytest.mark.parametrize(
    "name, side",
    [("resnet50", 32), ("efficientnet_b0", 32), ("convnext_tiny", 32),
     ("vit_small_patch16_224", 224), ("mobilenetv3_small_100", 64), ("hrnet_w18_small", 64),
     ("poolformer_s12", 64), ("nfnet_l0", 64), ("resmlp_12_224", 224),
     pytest.param("swin_tiny_patch4_window7_224", 224, marks=pytest.mark.slow),
     pytest.param("beit_base_patch16_224", 224, marks=pytest.mark.slow),
     pytest.param("eva02_tiny_patch14_224", 224, marks=pytest.mark.slow)],
)  # fmt: skip
def test_lrp0_conserves_on_timm_models(name, side):
    """NFNet: weights standardised in the forward; ResMLP: per-channel affines as addcmul;
    BEiT: attention biases concatenated in the forward; EVA-02: a gated MLP (SwiGLU), so
    its products are split uniformly (refused otherwise)."""
    torch.manual_seed(0)
    model = zero_shifts(timm.create_model(name, num_classes=10)).to(DT).eval()
    x = torch.randn(2, 3, side, side, dtype=DT)
    composite = load_config("zero").composite()
    if name.startswith("eva02"):
        composite = dataclasses.replace(composite, products="uniform")
    result = Explainer(model, composite)(x)
    torch.testing.assert_close(result.logits, model(x), rtol=1e-9, atol=1e-12)
    logit = result.logits.gather(1, result.targets[:, None]).squeeze(1)
    assert logit.abs().min() > 1e-6, "degenerate test model"
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), logit, rtol=1e-9, atol=0)


class _Affine(nn.Module):
    """timm's Affine (ResMLP) written as a scale and a sum."""

    def __init__(self, affine):
        super().__init__()
        self.alpha, self.beta = affine.alpha, affine.beta

    def forward(self, x):
        return x * self.alpha + self.beta


class _Casting(nn.Module):
    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x).type_as(x)


def test_addcmul_is_the_sum_it_computes():
    from timm.models.mlp_mixer import Affine

    torch.manual_seed(0)
    affine = Affine(5)
    with torch.no_grad():
        affine.alpha.uniform_(-1.5, 1.5)
        affine.beta.normal_(0, 0.5)
    first, last = nn.Linear(6, 5), nn.Linear(5, 3)
    ours = nn.Sequential(first, _Casting(affine), nn.ReLU(), last, nn.Flatten()).to(DT).eval()
    plain = nn.Sequential(first, _Affine(affine), nn.ReLU(), last, nn.Flatten()).to(DT).eval()
    x = torch.randn(4, 1, 6, dtype=DT)  # tokens, as in ResMLP (its alpha is (1, 1, dim))
    composite = Composite(default=ZeroRule(), proportional=ProportionalRule(0.1))  # stabilised
    found = Explainer(ours, composite)(x).relevance
    torch.testing.assert_close(found, Explainer(plain, composite)(x).relevance, rtol=1e-12, atol=0)

    class Squaring(nn.Module):  # addcmul of two data tensors: a product, not a sum
        def forward(self, x):
            return torch.addcmul(torch.zeros(()), x, x)

    with pytest.raises(UnsupportedModelError, match="addcmul"):
        Explainer(nn.Sequential(first, Squaring(), last, nn.Flatten()).eval(), composite)


def test_batchnorm_act_folds_like_a_plain_batchnorm():
    """timm's BatchNormAct2d (F.batch_norm + ReLU in its own forward) gives the relevance of
    Conv2d -> BatchNorm2d -> ReLU with the same tensors, under a rule that sees the fold."""
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU)
    with torch.no_grad():
        bn.running_mean.normal_(0, 0.2)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.2)
    plain = nn.BatchNorm2d(4)
    plain.load_state_dict(bn.state_dict())
    head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ours = nn.Sequential(conv, bn, head).to(DT).eval()
    reference = nn.Sequential(conv, plain, nn.ReLU(), head).to(DT).eval()
    x = torch.randn(2, 3, 8, 8, dtype=DT)
    # gamma on the conv: folding the BatchNorm first changes its numbers, so equality with
    # the plain model shows the functional BatchNorm was folded the same way
    composite = Composite(default=GammaRule(0.25), proportional=ProportionalRule(0.0))
    found = Explainer(ours, composite)(x).relevance
    expected = Explainer(reference, composite)(x).relevance
    torch.testing.assert_close(found, expected, rtol=1e-12, atol=1e-14)
    unfolded = Explainer(nn.Sequential(conv, nn.Identity(), plain, nn.ReLU(), head).to(DT).eval(),
                         composite)(x).relevance  # fmt: skip
    assert not torch.allclose(unfolded, expected)


def test_functional_batchnorm_in_training_mode_is_refused():
    from timm.layers import BatchNormAct2d

    bn = BatchNormAct2d(3, act_layer=nn.ReLU, track_running_stats=False)  # batch statistics
    model = nn.Sequential(nn.Conv2d(3, 3, 1), bn, nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    with pytest.raises(UnsupportedModelError, match="batch_norm.*training mode"):
        Explainer(model, Composite(default=ZeroRule()))


class _Tokens(nn.Module):
    """Tokens through one attention block, averaged, then a head: (B, N, C) -> (B, classes)."""

    def __init__(self, attention: nn.Module, dim: int):
        super().__init__()
        self.attention, self.head = attention, nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.attention(x).mean(1))


class _MultiHead(nn.Module):
    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        self.inner = attention

    def forward(self, x):
        return self.inner(x, x, x, need_weights=False)[0]


@pytest.mark.parametrize("mode", ["cp", "attnlrp"])
def test_timm_attention_equals_multihead_attention(mode):
    """timm's Attention (qkv Linear, reshape, unbind, scaled_dot_product_attention, proj) and
    nn.MultiheadAttention with the same weights get the same relevance under both rules."""
    from timm.models.vision_transformer import Attention

    torch.manual_seed(0)
    dim, heads = 16, 4
    ours = Attention(dim, num_heads=heads, qkv_bias=True)
    mha = nn.MultiheadAttention(dim, heads, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(ours.qkv.weight)
        mha.in_proj_bias.copy_(ours.qkv.bias)
        mha.out_proj.weight.copy_(ours.proj.weight)
        mha.out_proj.bias.copy_(ours.proj.bias)
    timm_model = _Tokens(ours, dim).to(DT).eval()
    reference = _Tokens(_MultiHead(mha), dim).to(DT).eval()
    reference.head.load_state_dict(timm_model.head.state_dict())
    x = torch.randn(2, 5, dim, dtype=DT)
    composite = Composite(
        default=ZeroRule(), proportional=ProportionalRule(0.0), attention=AttentionRule(mode, 0.0)
    )
    found = Explainer(timm_model, composite)(x, target=1).relevance
    expected = Explainer(reference, composite)(x, target=1).relevance
    torch.testing.assert_close(timm_model(x), reference(x))
    assert found.abs().max() > 0
    torch.testing.assert_close(found, expected, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ the loader and the CLI
@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("timm") / "resnet18.pt"
    torch.save(timm.create_model("resnet18", num_classes=1000).state_dict(), path)
    return path


def test_timm_model_by_name_with_a_weights_file(resnet18_weights):
    loaded = load_model("timm:resnet18", resnet18_weights)
    assert loaded.name == "timm:resnet18" and not loaded.module.training
    assert loaded.class_name(281) == "tabby"
    cfg = timm.models.get_pretrained_cfg("resnet18")
    pre = loaded.preprocessing
    assert pre.input_size == cfg.input_size[-1] and pre.interpolation == cfg.interpolation
    assert pre.resize == int(cfg.input_size[-1] / cfg.crop_pct)
    assert (pre.mean, pre.std) == (tuple(cfg.mean), tuple(cfg.std))


def test_timm_weights_come_from_the_hugging_face_cache_only(tmp_path, monkeypatch):
    """With no -w, the pretrained file is read from the local cache, as timm would have stored
    it; absent there, a one-line error (never a download)."""
    from safetensors.torch import save_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = timm.models.get_pretrained_cfg("resnet18").hf_hub_id
    with pytest.raises(ModelError, match=f"no offline weights for timm:resnet18.*{repo}"):
        load_model("timm:resnet18")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    folder = tmp_path / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    torch.manual_seed(1)
    state = timm.create_model("resnet18").state_dict()
    save_file(state, folder / "snapshots" / "abc123" / "model.safetensors")
    loaded = load_model("timm:resnet18")
    assert loaded.weights.endswith("model.safetensors")
    torch.testing.assert_close(loaded.module.state_dict()["fc.weight"], state["fc.weight"])


def test_timm_errors_are_one_line(monkeypatch):
    with pytest.raises(ModelError, match="unknown timm model 'resnet1'; did you mean resnet18"):
        load_model("timm:resnet1")
    with pytest.raises(ModelError, match="1000 classes; to use 10 classes also give --weights"):
        load_model("timm:resnet18", num_classes=10)
    monkeypatch.setitem(sys.modules, "timm", None)  # as if the extra were not installed
    with pytest.raises(ModelError, match=r"pip install 'lrp-cli\[timm\]'"):
        load_model("timm:resnet18")


def test_explain_a_photo_with_a_timm_model(tmp_path, resnet18_weights):
    args = ["explain", SAMPLES / "chelsea-cat.jpg", "-m", "timm:resnet18", "-w", resnet18_weights]
    args += ["-o", tmp_path, "--jsonl", "-", "--device", "cpu"]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    (record,) = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert record["status"] == "explained" and record["model"] == "timm:resnet18"
    relevance = np.load(tmp_path / "chelsea-cat.npy")
    assert relevance.shape == (224, 224) and np.abs(relevance).max() > 0
    missing = CliRunner().invoke(main, ["explain", str(SAMPLES), "-m", "timm:resnet1"])
    assert missing.exit_code == 2 and "unknown timm model" in missing.stderr
