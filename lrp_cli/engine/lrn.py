"""Relevance propagation through ``torch.nn.LocalResponseNorm`` (Binder et al. 2016).

PyTorch's LRN computes, per pixel over the channel axis (dim 1),

    y_c = x_c * s_c^(-beta),   s_c = k + alpha/n * sum_{i in W(c)} x_i^2,
    W(c) = [c - floor(n/2), c + floor((n-1)/2)]   (zero padded, divisor always n).

Two rules are offered:

``identity``
    The layer is ignored: ``R_in = R_out``.

``taylor``
    The normalised first-order Taylor redistribution of Binder et al. 2016. For output
    neuron ``k`` (with ``a = alpha/n``)

        T_kk = x_k * (k + a x_k^2)^(-beta)
        T_jk = -2 a beta x_k x_j^2 s_k^(-beta-1)       for j in W(k), j != k

    and ``R_j = sum_k v_jk R_k`` with either

    * the epsilon variant (``sign_beta is None``):
      ``v_jk = T_jk / (D_k + epsilon * sign(D_k))``, ``D_k = sum_j' T_j'k``, sign(0) = +1;
    * the sign-split (alpha-beta) variant (``sign_beta = b``, alpha = 1 + b):
      ``v_jk = (1+b) T_jk^+ / P_k - b T_jk^- / N_k`` with ``P_k = sum_j' T_j'k^+`` and
      ``N_k = sum_j' T_j'k^-``. ``epsilon`` is not used in this variant.

Zero denominators: wherever a denominator is exactly zero (``D_k + epsilon*sign(D_k)`` can
only be zero when ``epsilon == 0``; ``P_k`` / ``N_k`` are zero exactly when all their terms
are), it is replaced by 1 and the matching quotient is set to zero, so the relevance ``R_k``
(or its positive / negative share) is absorbed instead of producing inf/nan. In particular a
neuron with ``x_k == 0`` (all its terms are zero, as is ``y_k``) passes no relevance on.

Vectorised form (no loop over neurons; one short loop over the ``n - 1`` window offsets).
Every off-centre term factorises as ``T_jk = c_k x_j^2`` with
``c_k = -2 a beta x_k s_k^(-beta-1)``, so ``T_jk^+ = c_k^+ x_j^2`` and
``T_jk^- = c_k^- x_j^2``. With ``O2_k = sum_{j in W(k), j != k} x_j^2`` the sums are
``D_k = T_kk + c_k O2_k``, ``P_k = T_kk^+ + c_k^+ O2_k``, ``N_k = T_kk^- + c_k^- O2_k``.
Each variant then has the form ``v_kk = centre weight`` and ``v_jk = e_k x_j^2`` (j != k):

    R_j = v_jj R_j + x_j^2 * sum_{k : j in W(k), k != j} e_k R_k.

The last sum is a *transposed* window sum: ``j in W(k)`` iff
``k in [j - floor((n-1)/2), j + floor(n/2)]``, the mirror image of ``W(j)`` for even ``n``.
Both window sums are computed by shifting along the channel axis (zero filled) for each
offset ``d in [-floor(n/2), floor((n-1)/2)]``, ``d != 0``: the window sum of ``u`` at ``k``
adds ``u[k + d]``, the transposed sum at ``j`` adds ``u[j - d]``.

The functions here only use device-agnostic tensor ops (CPU and CUDA alike).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LRN_MODES", "lrn_relevance"]

LRN_MODES = ("identity", "taylor")


def _shift(t: Tensor, d: int) -> Tensor:
    """Shift along dim 1: ``out[:, c] = t[:, c - d]``, zero where ``c - d`` is out of range."""
    if d == 0:
        return t
    channels = t.shape[1]
    if abs(d) >= channels:
        return torch.zeros_like(t)
    pad = t.new_zeros((t.shape[0], abs(d), *t.shape[2:]))
    if d > 0:
        return torch.cat([pad, t.narrow(1, 0, channels - d)], dim=1)
    return torch.cat([t.narrow(1, -d, channels + d), pad], dim=1)


def _offsets(size: int, channels: int) -> list[int]:
    """Non-zero offsets ``d`` such that channel ``c + d`` is in ``W(c)`` for some ``c``."""
    lo, hi = size // 2, (size - 1) // 2
    return [d for d in range(-lo, hi + 1) if d != 0 and abs(d) < channels]


def _safe_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` where ``den != 0``, exactly 0 where ``den == 0``."""
    zero = den == 0
    safe_den = torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.zeros_like(num), num / safe_den)


def _validate(
    x: Tensor,
    relevance: Tensor,
    size: int,
    mode: str,
    epsilon: float,
    sign_beta: float | None,
) -> None:
    if mode not in LRN_MODES:
        raise ValueError(f"LRN mode must be one of {', '.join(LRN_MODES)}; got {mode!r}")
    if not (isinstance(epsilon, (int, float)) and math.isfinite(epsilon) and epsilon >= 0):
        raise ValueError(f"LRN epsilon must be a finite number >= 0; got {epsilon!r}")
    if sign_beta is not None and not (
        isinstance(sign_beta, (int, float)) and math.isfinite(sign_beta) and sign_beta >= 0
    ):
        raise ValueError(f"LRN sign_beta must be None or a finite number >= 0; got {sign_beta!r}")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"LRN size must be an integer >= 1; got {size!r}")
    if x.dim() < 2:
        raise ValueError(f"LRN input must have shape (N, C, *spatial); got {tuple(x.shape)}")
    if x.shape != relevance.shape:
        raise ValueError(
            f"LRN input and relevance shapes differ: {tuple(x.shape)} vs {tuple(relevance.shape)}"
        )


def lrn_relevance(
    x: Tensor,
    relevance: Tensor,
    size: int,
    alpha: float,
    beta: float,
    k: float,
    mode: str = "taylor",
    epsilon: float = 0.0,
    sign_beta: float | None = None,
) -> Tensor:
    """Relevance of the input of ``LocalResponseNorm(size, alpha, beta, k)``.

    Args:
        x: the LRN input, shape (N, C, *spatial) (any number of spatial dims, including none).
        relevance: relevance of the LRN output, same shape as ``x``.
        size, alpha, beta, k: the LRN parameters, in PyTorch's convention.
        mode: ``"identity"`` (relevance passes unchanged) or ``"taylor"`` (Binder et al. 2016).
        epsilon: stabiliser of the Taylor denominator (epsilon variant only), >= 0.
        sign_beta: ``None`` for the epsilon variant, else ``b >= 0`` for the sign-split
            variant with weights ``(1+b) T^+/P - b T^-/N``.

    Returns:
        The input relevance, same shape, dtype and device as ``relevance``.
    """
    _validate(x, relevance, size, mode, epsilon, sign_beta)
    if mode == "identity":
        return relevance.clone()

    out_dtype = relevance.dtype
    dtype = torch.promote_types(x.dtype, relevance.dtype)
    if dtype not in (torch.float32, torch.float64):
        dtype = torch.float32
    x = x.to(dtype)
    rel = relevance.to(dtype)

    offsets = _offsets(size, x.shape[1])
    a = alpha / size
    x2 = x * x
    # sum of x_j^2 over the window of k without the centre (computed directly, no cancellation)
    off2 = torch.zeros_like(x2)
    for d in offsets:
        off2 = off2 + _shift(x2, -d)
    s = k + a * (x2 + off2)
    t_centre = x * (k + a * x2).pow(-beta)  # T_kk
    c = (-2.0 * a * beta) * x * s.pow(-beta - 1.0)  # T_jk = c_k * x_j^2 for j != k

    if sign_beta is None:
        d_sum = t_centre + c * off2
        sign = torch.where(d_sum >= 0, torch.ones_like(d_sum), -torch.ones_like(d_sum))
        q = _safe_ratio(rel, d_sum + epsilon * sign)  # R_k / stabilised D_k
        centre = t_centre * q
        e_rel = c * q
    else:
        b = float(sign_beta)
        t_pos, t_neg = t_centre.clamp(min=0), t_centre.clamp(max=0)
        c_pos, c_neg = c.clamp(min=0), c.clamp(max=0)
        q_pos = _safe_ratio((1.0 + b) * rel, t_pos + c_pos * off2)  # (1+b) R_k / P_k
        q_neg = _safe_ratio(b * rel, t_neg + c_neg * off2)  # b R_k / N_k
        centre = t_pos * q_pos - t_neg * q_neg
        e_rel = c_pos * q_pos - c_neg * q_neg

    # transposed window sum: R_j += x_j^2 * sum_{k : j in W(k), k != j} e_k R_k, k = j - d
    spread = torch.zeros_like(e_rel)
    for d in offsets:
        spread = spread + _shift(e_rel, d)
    return (centre + x2 * spread).to(out_dtype)
