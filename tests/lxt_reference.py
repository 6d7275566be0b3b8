"""Test-only oracle: LXT 2.1's CP-LRP relevance for torchvision's VisionTransformer.

LXT ("LRP eXplains Transformers", BSD-3) is installed by the Makefile next to the dev extras
and is never imported by ``lrp_cli``. This module imports it lazily, so collecting a test file
that imports this helper does not pull in LXT (and, through it, ``transformers``).

LXT's "efficient" recipe for torchvision's ViT is ``lxt.efficient.monkey_patch(
torchvision.models.vision_transformer)``: its default patch map for that module
(``lxt.efficient.models.vit_torch.cp_LRP``) replaces ``forward`` on the *classes*
``torch.nn.GELU``, ``torch.nn.LayerNorm`` and ``torch.nn.MultiheadAttention``, which is
process-wide: every module of those classes, in every model, would be affected. We therefore
patch inside :func:`lxt_cp_lrp_patched`, which snapshots the classes' attributes, applies
LXT's own ``monkey_patch`` exactly as documented, checks that every patch took, and restores
the snapshot in ``finally`` (a lock keeps two threads from interleaving patch/restore).
Relevance is then Gradient x Input at the image, as LXT defines it.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import warnings
from collections.abc import Iterator, Sequence

import torch
import torchvision

__all__ = ["lxt_cp_lrp", "lxt_cp_lrp_patched", "lxt_cp_lrp_relevance"]

_LOCK = threading.Lock()
_ABSENT = object()
_PATCHED_ATTRS = ("forward", "original_forward")


@contextlib.contextmanager
def lxt_cp_lrp_patched() -> Iterator[None]:
    """Within the block, torch.nn.{GELU,LayerNorm,MultiheadAttention} carry LXT's CP-LRP forwards.

    Raises RuntimeError if a class is already patched on entry (a leak from elsewhere) or if
    LXT reports a patch it could not apply. Everything is restored on exit, even on error.
    """
    import lxt.efficient
    from lxt.efficient.models import get_default_map
    from torchvision.models import vision_transformer

    with _LOCK:
        patch_map = get_default_map(vision_transformer)  # == lxt.efficient.models.vit_torch.cp_LRP
        targets = list(patch_map)
        for cls in targets:
            if cls.forward.__module__.startswith("lxt."):
                raise RuntimeError(f"{cls.__qualname__}.forward is already patched by LXT")
        saved = {
            cls: {name: cls.__dict__.get(name, _ABSENT) for name in _PATCHED_ATTRS}
            for cls in targets
        }
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                lxt.efficient.monkey_patch(vision_transformer)
            failed = [str(w.message) for w in caught if "patch" in str(w.message).lower()]
            not_patched = [
                cls.__qualname__
                for cls in targets
                if not cls.__dict__["forward"].__module__.startswith("lxt.")
            ]
            if failed or not_patched:
                raise RuntimeError(f"LXT patching failed: {failed or not_patched}")
            yield
        finally:
            for cls, attrs in saved.items():
                for name, value in attrs.items():
                    if value is _ABSENT:
                        if name in cls.__dict__:
                            delattr(cls, name)
                    else:
                        setattr(cls, name, value)


def _targets(target: int | Sequence[int] | torch.Tensor, batch: int, device) -> torch.Tensor:
    t = torch.as_tensor(target, dtype=torch.long, device=device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"need one target per sample: got {t.numel()} for a batch of {batch}")
    return t


@contextlib.contextmanager
def _identity_rule_epsilon(epsilon: float | None) -> Iterator[None]:
    """Within the block, LXT's identity rule (GELU) divides by ``input + epsilon`` instead of
    its built-in ``input + 1e-10`` (None: leave it). That guard is relative error
    ``1e-10 / |input|`` for every unit, which adds up to about 1e-6 of max|R| on a 224 px
    vit_b_16: far above float64 rounding, so an exact comparison sets it to 0."""
    if epsilon is None:
        yield
        return
    from lxt.efficient.rules import identity_rule_implicit_fn

    forward = identity_rule_implicit_fn.forward
    saved = forward.__defaults__
    forward.__defaults__ = (epsilon,)
    try:
        yield
    finally:
        forward.__defaults__ = saved


def lxt_cp_lrp(
    model: torchvision.models.VisionTransformer,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    gelu_epsilon: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(relevance, logits) of LXT's CP-LRP on a deep copy of ``model`` in eval mode.

    ``x`` is (N, 3, H, W) and is cast to the model's dtype and device; ``target`` is one class
    index for the whole batch or one per sample. The relevance has x's shape and is
    ``x * d(sum_n logits[n, target[n]])/dx``; the logits are those of the patched forward.
    The caller's model and the global torch.nn classes are left untouched. ``gelu_epsilon``:
    see :func:`_identity_rule_epsilon`.
    """
    if not isinstance(model, torchvision.models.VisionTransformer):
        raise TypeError(
            f"LXT's vit_torch recipe is for torchvision VisionTransformer, "
            f"not {type(model).__name__}"
        )
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    param = next(net.parameters())
    inp = x.detach().to(device=param.device, dtype=param.dtype).clone().requires_grad_(True)
    idx = _targets(target, inp.shape[0], inp.device)
    with torch.enable_grad(), lxt_cp_lrp_patched(), _identity_rule_epsilon(gelu_epsilon):
        logits = net(inp)
        logits.gather(1, idx[:, None]).sum().backward()
    return (inp * inp.grad).detach(), logits.detach()


def lxt_cp_lrp_relevance(
    model: torchvision.models.VisionTransformer,
    x: torch.Tensor,
    target: int | Sequence[int] | torch.Tensor,
    gelu_epsilon: float | None = None,
) -> torch.Tensor:
    """LXT CP-LRP relevance (Gradient x Input at the image), same shape as ``x``."""
    return lxt_cp_lrp(model, x, target, gelu_epsilon)[0]
