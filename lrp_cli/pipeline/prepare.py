"""Set-up shared by every command that runs the engine: device, precision, target, explainer.

``lrp explain``, ``inspect``, ``compare``, ``evaluate`` and ``spray`` all go through these, so
that a device or target problem reads the same everywhere and is found before any work.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import warnings
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    import torch

    from ..config import RuleConfig
    from ..engine import Explainer
    from ..models import LoadedModel

__all__ = [
    "DEVICES",
    "PRECISIONS",
    "SetupError",
    "Placed",
    "build_explainer",
    "place_model",
    "prepare_model",
    "resolve_device",
    "resolve_dtype",
    "resolve_target",
]

PRECISIONS = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")


class SetupError(Exception):
    """A problem found before any input is explained (device, output folder); one line."""


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when PyTorch sees a GPU; ``cuda`` without one is a set-up error.
    Under torchrun (``LOCAL_RANK``) each process takes its own GPU of the node."""
    import torch

    if name not in DEVICES:
        raise SetupError(f"unknown device {name!r}; use one of {', '.join(DEVICES)}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise SetupError("--device cuda: PyTorch sees no CUDA GPU here; use --device cpu or auto")
    local_rank = os.environ.get("LOCAL_RANK", "")
    if name == "cuda" and local_rank.isdigit():  # torchrun: one GPU per process on a node
        return torch.device("cuda", int(local_rank) % torch.cuda.device_count())
    return torch.device(name)


def resolve_dtype(precision: str) -> torch.dtype:
    import torch

    if precision not in PRECISIONS:
        raise SetupError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    return getattr(torch, precision)


def resolve_target(model: LoadedModel, target: str | int | None) -> int | None:
    """None for each input's top class (``top1``), else the class index (name or number)."""
    if target is None or str(target).strip().lower() in ("", "top1"):
        return None
    return model.class_index(target)


def place_model(model: LoadedModel, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """``model`` on ``device`` in ``dtype``: the same object when it is there already, else a
    moved copy, so the caller's model never changes under it."""
    tensors = [*model.module.parameters(), *model.module.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if all(t.device == device for t in tensors) and all(t.dtype == dtype for t in floating):
        return model
    module = copy.deepcopy(model.module).to(device=device, dtype=dtype)
    return dataclasses.replace(model, module=module)


class Placed(NamedTuple):
    """A command's model where it runs, and the target it explains (None: each input's top)."""

    model: LoadedModel
    device: torch.device
    dtype: torch.dtype
    target: int | None


class _Settings(Protocol):
    device: str
    precision: str
    target: str | int | None


def prepare_model(model: LoadedModel, settings: _Settings) -> Placed:
    """``model`` placed as ``settings`` say (``device``, ``precision``, ``target``), each
    checked first, so that a bad one is a :class:`SetupError` before anything is copied."""
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.precision)
    target = resolve_target(model, settings.target)
    return Placed(place_model(model, device, dtype), device, dtype, target)


def build_explainer(
    model: LoadedModel, config: RuleConfig, start: str = "logit"
) -> tuple[Explainer, list[str]]:
    """The engine for ``model`` (where it is: see :func:`place_model`) under ``config``, and
    its warnings as one-line messages.

    The warnings (config entries that match no layer) are collected, not printed, so that the
    caller can show each once. ``start``: ``"logit"`` or ``"log-odds"``, where relevance
    starts (see ``Explainer``). Raises the engine's ``UnsupportedModelError`` /
    ``CompositeError``.
    """
    from ..engine import Explainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(
            model.module,
            config.composite(),
            input_bounds=model.preprocessing.bounds(),
            start=start,
        )
    return explainer, [" ".join(str(w.message).split()) for w in caught]
