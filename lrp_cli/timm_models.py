"""timm models by name (``-m timm:NAME``): built by timm, weights read without running code.

timm is an optional extra (``pip install 'lrp-cli[timm]'``), imported only here. Weights come
from ``--weights FILE`` or from the local Hugging Face cache, where timm's own download would
have put them; nothing is ever downloaded. Preprocessing follows the model's
``pretrained_cfg`` (input size, crop fraction, interpolation, mean and std).
"""

from __future__ import annotations

import difflib
import math
import os
from typing import Any

from .messages import error_reason
from .models import (
    LoadedModel,
    ModelError,
    Preprocessing,
    imagenet_categories,
    load_into,
    read_weights,
)

__all__ = ["PREFIX", "load_timm_model", "timm_preprocessing"]

PREFIX = "timm:"
# the files timm's hub loader looks for, in its order of preference
_HUB_FILES = ("model.safetensors", "pytorch_model.bin")


def _timm():
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need the timm package: pip install 'lrp-cli[timm]'") from None
    return timm


def load_timm_model(
    name: str, weights: str | os.PathLike[str] | None, num_classes: int | None
) -> LoadedModel:
    """``timm.create_model(name)`` with ``weights`` (a file) or the cached pretrained ones."""
    timm = _timm()
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown timm model {name!r}{hint}")
    cfg = timm.models.get_pretrained_cfg(name) or {}
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    default_classes = int(cfg.get("num_classes") or 1000)
    spec = f"{PREFIX}{name}"
    if weights is None:
        if num_classes not in (None, default_classes):
            raise ModelError(
                f"{spec}'s pretrained weights have {default_classes} classes; "
                f"to use {num_classes} classes also give --weights FILE"
            )
        weights = _cached_weights(spec, cfg)
    classes = num_classes or default_classes
    try:
        module = timm.create_model(name, pretrained=False, num_classes=classes)
    except Exception as exc:  # timm's own argument checks
        raise ModelError(f"timm cannot build {name}: {error_reason(exc)}") from None
    load_into(module, read_weights(weights), weights, classes_hint=num_classes is None)
    categories = imagenet_categories() if classes == 1000 else None
    return LoadedModel(spec, module, timm_preprocessing(module), categories, str(weights))


def timm_preprocessing(module: Any) -> Preprocessing:
    """The evaluation transform timm uses for the model: resize to ``size / crop_pct``, centre
    crop ``size``, the model's mean and std."""
    cfg = getattr(module, "pretrained_cfg", None) or {}
    size = int(cfg.get("input_size", (3, 224, 224))[-1])
    crop = float(cfg.get("crop_pct") or 0.875)
    return Preprocessing(
        input_size=size,
        resize=math.floor(size / crop),
        mean=tuple(float(m) for m in cfg.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(s) for s in cfg.get("std", (0.229, 0.224, 0.225))),
        interpolation=str(cfg.get("interpolation") or "bilinear"),
    )


def _cached_weights(spec: str, cfg: dict) -> str:
    """The pretrained weights file in the local Hugging Face cache (never a download)."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise ModelError(f"{spec} has no pretrained weights on the Hugging Face hub; pass -w FILE")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        try_to_load_from_cache = None
    if try_to_load_from_cache is not None:
        for filename in _HUB_FILES:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    raise ModelError(
        f"no offline weights for {spec}: pass --weights FILE, or download {repo} into the "
        "Hugging Face cache first (this tool never downloads)"
    )
