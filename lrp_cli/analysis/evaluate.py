"""Faithfulness of heatmaps by region perturbation (Samek et al. 2017).

The computational core of ``lrp evaluate``: torch only (matplotlib is imported lazily, inside
:func:`plot_curves`), no command-line code.

Procedure
---------
The image is cut into a **non-overlapping grid** of ``region x region`` patches; where the
height or width is not a multiple of ``region`` the last row/column of patches is partial (it
is kept, not dropped, so every pixel belongs to exactly one region). Each region's score is the
sum of the channel-summed attribution over its pixels. Samek et al. sort *locations* by relevance
and perturb the 9x9 neighbourhood of each in turn (neighbourhoods may overlap); the fixed grid is
the common reproducible variant: every step perturbs exactly one fresh patch and the result does
not depend on how overlaps are resolved. Partial edge patches have fewer pixels, so their summed
score is naturally smaller in magnitude, as it should be for a sum of relevance.

Regions are visited in the chosen ``order``: ``"morf"`` (most relevant first: descending score),
``"lerf"`` (least relevant first: ascending score) or ``"random"`` (a random permutation drawn
from ``generator``; the attribution is then ignored). Ties keep grid order (row-major), because
the sort is stable. Step ``k`` replaces the first ``k`` regions of that order, cumulatively, by
the matching pixels of one *replacement image* drawn once per image (so a region, once
perturbed, keeps the same values at every later step):

* ``"uniform"``: uniform noise within per-channel bounds ``(low, high)``; by default each
  image's own per-channel minimum and maximum (per image, so that results do not depend on what
  else is in the batch). Pass the bounds of valid pixels in normalised space, e.g.
  ``((0 - mean) / std, (1 - mean) / std)``, to draw from the full valid range.
* ``"blur"``: a Gaussian-blurred copy of the image (``sigma`` pixels, default ``region / 2``;
  separable kernel truncated at 3 sigma, edges replicated).
* ``"constant"``: the value ``value`` (default 0, which is the dataset mean in normalised space).
* ``"road"``: ROAD's noisy linear imputation (Rong et al. 2022): at every step the removed
  pixels are solved for anew from the pixels still present, each removed pixel being the
  weighted mean of its eight neighbours (weight 1/6 for the four direct, 1/12 for the four
  diagonal ones, over the neighbours inside the image), then Gaussian noise of standard
  deviation ``noise`` is added (one noise field per image, drawn once, like the replacement
  images above). See :func:`noisy_linear_imputation`. It stays closer to the data than noise
  patches, and leaks less of the removed shape than a constant.

The score recorded for each step is the target logit (``score="logit"``), the softmax
probability of the target (``score="probability"``) or its log-odds ``log p / (1 - p)``,
computed as ``z_target - logsumexp(other logits)`` (``score="log-odds"``). ``curves[:, k]``
is ``f(x^(k))`` for ``k = 0..steps``; column 0 is the unperturbed input.

Randomness: all random numbers (noise first, then the random order) are drawn from
``generator`` on the generator's own device (CPU when ``generator`` is None, using torch's global
generator) and then moved to the input's device, so the same seed gives the same numbers on the
CPU and on CUDA. Give each method a freshly seeded generator to compare methods on identical
noise.

Both orders together give the symmetric relevance gain of Blücher et al. 2024,
``SRG = AUC(LeRF) - AUC(MoRF)`` (:func:`symmetric_relevance_gain`): large when removing the
most relevant regions hurts the score and removing the least relevant ones does not. Effects of
the perturbation itself (a model that reacts to noise patches anywhere) appear in both curves
and cancel; a random map has an SRG near 0.

The model is not switched to eval mode here: the caller must do it (a model in training mode,
with batch normalisation or dropout, would make scores depend on the batch).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = [
    "BASELINES",
    "ORDERS",
    "PERTURBATIONS",
    "SCORES",
    "MethodResult",
    "aopc",
    "area_under_curve",
    "gradient_attribution",
    "gradient_x_input_attribution",
    "gradcam_attribution",
    "noisy_linear_imputation",
    "plot_curves",
    "random_attribution",
    "region_perturbation_curve",
    "results_to_json",
    "summarize",
    "symmetric_relevance_gain",
]

PERTURBATIONS = ("uniform", "blur", "constant", "road")
ORDERS = ("morf", "lerf", "random")
SCORES = ("logit", "probability", "log-odds")

# (low, high): each a number, a per-channel sequence of numbers or a tensor
Bounds = tuple[object, object]


# --------------------------------------------------------------------------------------------
# validation helpers


def _choice(name: str, value: object, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(a) for a in allowed)}; got {value!r}"
        )
    return value


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
    return value


def _as_target(target: int | Sequence[int] | Tensor, n: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(target, device=device)
    if t.dim() == 0:
        t = t.expand(n)
    if t.dim() != 1 or t.shape[0] != n:
        raise ValueError(
            f"target must be an int or have shape (N,) = ({n},); got shape {tuple(t.shape)}"
        )
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"target must hold integer class indices; got dtype {t.dtype}")
    if n and int(t.min()) < 0:
        raise ValueError(f"target must hold class indices >= 0; got {t.tolist()}")
    return t.long()


def _channel_summed(attribution: Tensor, x: Tensor) -> Tensor:
    n, c, h, w = x.shape
    if attribution.dim() == 4:
        if attribution.shape[0] != n or attribution.shape[2:] != (h, w):
            raise ValueError(
                f"attribution must have shape (N, H, W) = ({n}, {h}, {w}) or (N, C, H, W); "
                f"got {tuple(attribution.shape)}"
            )
        attribution = attribution.sum(dim=1)
    elif attribution.dim() != 3 or attribution.shape != (n, h, w):
        raise ValueError(
            f"attribution must have shape (N, H, W) = ({n}, {h}, {w}) or (N, C, H, W); "
            f"got {tuple(attribution.shape)}"
        )
    if attribution.is_complex() or not attribution.is_floating_point():
        attribution = attribution.double()
    if not bool(torch.isfinite(attribution).all()):
        raise ValueError("attribution contains NaN or infinite values")
    return attribution.to(x.device)


def _per_channel(name: str, value: object, c: int, ref: Tensor) -> Tensor:
    t = torch.as_tensor(value, dtype=ref.dtype).to(ref.device)
    if t.dim() == 0:
        t = t.expand(c)
    if t.dim() != 1 or t.shape[0] != c:
        raise ValueError(f"{name} must be a number or {c} per-channel numbers; got {value!r}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return t.view(1, c, 1, 1)


# --------------------------------------------------------------------------------------------
# regions and replacements


def _grid(h: int, w: int, region: int) -> tuple[int, int]:
    return math.ceil(h / region), math.ceil(w / region)


def _region_ids(h: int, w: int, region: int, device: torch.device) -> Tensor:
    """(H, W) index of the grid region each pixel belongs to (row-major over the grid)."""
    _, nw = _grid(h, w, region)
    rows = torch.arange(h, device=device) // region
    cols = torch.arange(w, device=device) // region
    return rows[:, None] * nw + cols[None, :]


def _region_scores(attribution: Tensor, region: int) -> Tensor:
    """(N, R) sum of the (N, H, W) attribution over each grid region."""
    n, h, w = attribution.shape
    nh, nw = _grid(h, w, region)
    padded = torch.nn.functional.pad(attribution, (0, nw * region - w, 0, nh * region - h))
    return padded.view(n, nh, region, nw, region).sum(dim=(2, 4)).reshape(n, nh * nw)


def _rand(shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(tuple(shape), generator=generator, device=device)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, radius, radius), mode="replicate")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out


def _neighbour_sum(p: Tensor) -> Tensor:
    """``sum_j w_j p[neighbour j]`` over the eight neighbours inside the image, (B, H, W).

    The weights are ``outer((1, 2, 1), (1, 2, 1)) / 12`` less the centre's ``4 / 12``: two
    separable passes of shifted in-place sums (zero outside the image), cheaper than eight
    shifted copies.
    """
    v = p * 2
    v[:, 1:] += p[:, :-1]
    v[:, :-1] += p[:, 1:]
    out = v * 2
    out[:, :, 1:] += v[:, :, :-1]
    out[:, :, :-1] += v[:, :, 1:]
    return out.div_(12).sub_(p, alpha=1 / 3)


def _impute(x: Tensor, removed: Tensor, tol: float, max_iter: int | None) -> Tensor:
    """The noise-free imputation: removed pixels = weighted mean of their neighbours.

    For the removed pixels ``u`` this is the linear system ``d_i u_i - sum_j w_ij u_j =
    sum_k w_ik v_k`` (``j`` removed and ``k`` kept neighbours, ``d_i`` the sum of the weights of
    all of pixel i's neighbours inside the image), symmetric and positive definite whenever
    some pixel is kept; it is solved by conjugate gradients on all channels and images at
    once, until each system's residual is below ``tol`` times its right-hand side.
    """
    n, c, h, w = x.shape
    m = removed.to(x.dtype).reshape(n, 1, h, w).expand(n, c, h, w).reshape(n * c, h, w)
    known = x.reshape(n * c, h, w) * (1 - m)
    degree = _neighbour_sum(torch.ones(1, h, w, dtype=x.dtype, device=x.device))
    b = m * _neighbour_sum(known)
    u = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = (r * r).sum(dim=(1, 2), keepdim=True)
    stop = (tol**2) * rr
    limit = max_iter if max_iter is not None else 4 * (h + w) + 100
    for _ in range(limit):
        if not bool((rr > stop).any()):
            break
        ap = m * (degree * p - _neighbour_sum(p))
        pap = (p * ap).sum(dim=(1, 2), keepdim=True)
        alpha = torch.where(pap > 0, rr / pap.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        u += alpha * p
        r -= alpha * ap
        rr_new = (r * r).sum(dim=(1, 2), keepdim=True)
        beta = torch.where(rr > 0, rr_new / rr.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        p = r + beta * p
        rr = rr_new
    return (known + m * u).reshape(n, c, h, w)


def noisy_linear_imputation(
    x: Tensor,
    removed: Tensor,
    *,
    noise: float = 0.01,
    generator: torch.Generator | None = None,
    tol: float = 1e-4,
    max_iter: int | None = None,
) -> Tensor:
    """ROAD's noisy linear imputation (Rong et al. 2022) of the ``removed`` pixels of ``x``.

    Each removed pixel becomes the weighted mean of its eight neighbours (1/6 direct, 1/12
    diagonal; neighbours outside the image are left out and the weights of the others are not
    renormalised to the border, as in the reference implementation and Quantus), removed
    neighbours included, so all removed pixels are solved for together; kept pixels are
    unchanged. Then Gaussian noise of standard deviation ``noise`` (in ``x``'s units) is added
    to the removed pixels, drawn from ``generator`` (on its device, CPU when None).

    Args:
        x: (N, C, H, W) images; every channel is imputed alike.
        removed: (N, H, W) or (N, 1, H, W) boolean mask, True where a pixel is removed.
        tol: relative residual at which the conjugate-gradient solve stops.
        max_iter: at most this many iterations (default ``4 (H + W) + 100``).

    An image whose every pixel is removed has no data to impute from: it becomes 0 plus
    the noise (0 is the dataset mean in normalised space).
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError("x must be a floating-point (N, C, H, W) tensor")
    n, c, h, w = x.shape
    if removed.shape not in ((n, h, w), (n, 1, h, w)):
        raise ValueError(f"removed must have shape (N, H, W) = ({n}, {h}, {w})")
    removed = removed.reshape(n, 1, h, w).to(device=x.device, dtype=torch.bool)
    out = _impute(x, removed, float(tol), max_iter)
    if noise:
        field = _randn((n, c, h, w), generator).to(device=x.device, dtype=x.dtype)
        out = out + removed * (noise * field)
    return out


def _randn(shape: Sequence[int], generator: torch.Generator | None) -> Tensor:
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=device)


def _replacement(
    x: Tensor,
    perturbation: str,
    generator: torch.Generator | None,
    bounds: Bounds | None,
    sigma: float,
    value: float | Sequence[float] | Tensor,
) -> Tensor:
    n, c, h, w = x.shape
    if perturbation == "uniform":
        if bounds is None:
            low = x.amin(dim=(2, 3), keepdim=True)
            high = x.amax(dim=(2, 3), keepdim=True)
        else:
            low = _per_channel("bounds[0] (low)", bounds[0], c, x)
            high = _per_channel("bounds[1] (high)", bounds[1], c, x)
        u = _rand((n, c, h, w), generator).to(device=x.device, dtype=x.dtype)
        return low + (high - low) * u
    if perturbation == "blur":
        return _gaussian_blur(x, sigma)
    if perturbation == "road":  # the imputation is computed per step; here: its noise
        return _randn((n, c, h, w), generator).to(device=x.device, dtype=x.dtype)
    return _per_channel("value", value, c, x).expand(n, c, h, w)


def _order(
    scores: Tensor, n: int, n_regions: int, order: str, generator: torch.Generator | None
) -> Tensor:
    """(N, R) region indices in the order they are perturbed."""
    if order == "random":
        device = generator.device if generator is not None else torch.device("cpu")
        perms = [torch.randperm(n_regions, generator=generator, device=device) for _ in range(n)]
        return torch.stack(perms) if perms else torch.empty(0, n_regions, dtype=torch.long)
    return torch.sort(scores, dim=1, descending=(order == "morf"), stable=True).indices


# --------------------------------------------------------------------------------------------
# the curve


def region_perturbation_curve(
    model: nn.Module | Callable[[Tensor], Tensor],
    x: Tensor,
    attribution: Tensor | None,
    target: int | Sequence[int] | Tensor,
    *,
    region: int = 9,
    steps: int = 100,
    perturbation: str = "uniform",
    order: str = "morf",
    score: str = "logit",
    batch_size: int = 32,
    generator: torch.Generator | None = None,
    bounds: Bounds | None = None,
    sigma: float | None = None,
    value: float | Sequence[float] | Tensor = 0.0,
    noise: float = 0.01,
    tol: float = 1e-4,
) -> Tensor:
    """Score of the target class as regions are perturbed in relevance order.

    Args:
        model: classifier mapping (B, C, H, W) to (B, classes) logits; put it in eval mode first.
        x: (N, C, H, W) preprocessed inputs.
        attribution: (N, H, W) or (N, C, H, W) relevance (summed over channels); may be None
            when ``order="random"``.
        target: (N,) class indices (or one int for all images).
        region: side of the square grid regions in pixels (>= 1).
        steps: number of regions perturbed in total, 1 <= steps <= number of regions
            (``ceil(H / region) * ceil(W / region)``); a larger value is an error, not clamped,
            so that curves of the same length are always comparable.
        perturbation: ``"uniform"``, ``"blur"``, ``"constant"`` or ``"road"`` (see the module
            docstring).
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        score: ``"logit"``, ``"probability"`` or ``"log-odds"``.
        batch_size: number of perturbed copies per forward pass.
        generator: source of the noise and of the random order.
        bounds: ``(low, high)`` for ``"uniform"``: numbers or per-channel sequences.
        sigma: Gaussian standard deviation in pixels for ``"blur"`` (default ``region / 2``).
        value: replacement for ``"constant"``: a number or per-channel sequence.
        noise: standard deviation of ROAD's noise (``"road"``), in ``x``'s units.
        tol: relative residual of ROAD's linear solve (:func:`noisy_linear_imputation`).

    Returns:
        (N, steps + 1) scores on ``x``'s device; column ``k`` is the score after ``k`` regions.
    """
    if not isinstance(x, Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a (N, C, H, W) tensor; got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor; got dtype {x.dtype}")
    region = _positive_int("region", region)
    steps = _positive_int("steps", steps)
    batch_size = _positive_int("batch_size", batch_size)
    perturbation = _choice("perturbation", perturbation, PERTURBATIONS)
    order = _choice("order", order, ORDERS)
    score = _choice("score", score, SCORES)
    if sigma is None:
        sigma = region / 2
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"sigma must be a number > 0; got {sigma!r}")
    for name, number in (("noise", noise), ("tol", tol)):
        if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
            raise ValueError(f"{name} must be a number >= 0; got {number!r}")
    if not (bounds is None or (isinstance(bounds, (tuple, list)) and len(bounds) == 2)):
        raise ValueError(f"bounds must be a (low, high) pair; got {bounds!r}")

    n, c, h, w = x.shape
    nh, nw = _grid(h, w, region)
    n_regions = nh * nw
    if steps > n_regions:
        raise ValueError(
            f"steps must be at most the number of regions, {n_regions} "
            f"({nh} x {nw} regions of {region} px in a {h} x {w} image); got {steps}"
        )
    target = _as_target(target, n, x.device)
    if attribution is None:
        if order != "random":
            raise ValueError(f"attribution is required for order {order!r}")
        scores = None
    else:
        if not isinstance(attribution, Tensor):
            raise ValueError(f"attribution must be a tensor; got {type(attribution).__name__}")
        scores = _region_scores(_channel_summed(attribution, x), region)

    with torch.inference_mode():
        x = x.detach()
        # Noise first, then the permutation: a same-seeded generator gives every method the
        # same noise, whatever its order.
        replacement = _replacement(x, perturbation, generator, bounds, float(sigma), value)
        visit = _order(scores, n, n_regions, order, generator).to(x.device)
        # rank[i, r] = position of region r in image i's order
        rank = torch.empty_like(visit)
        positions = torch.arange(n_regions, device=x.device).expand(n, n_regions)
        rank.scatter_(1, visit, positions)
        rank_map = rank[:, _region_ids(h, w, region, x.device)]  # (N, H, W)

        length = steps + 1
        total = n * length
        chunks = []
        for start in range(0, total, batch_size):
            flat = torch.arange(start, min(start + batch_size, total), device=x.device)
            img, k = flat // length, flat % length
            mask = (rank_map[img] < k[:, None, None]).unsqueeze(1)
            if perturbation == "road":
                imputed = _impute(x[img], mask, float(tol), None)
                out = model(imputed + mask * (noise * replacement[img]))
            else:
                out = model(torch.where(mask, replacement[img], x[img]))
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != flat.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"model must return (batch, classes) logits; got {got}")
            if start == 0 and int(target.max()) >= out.shape[1]:
                raise ValueError(
                    f"target must be < the number of classes, {out.shape[1]}; got {target.tolist()}"
                )
            chunks.append(_score(out, target[img], score))
        if chunks:
            curves = torch.cat(chunks).view(n, length)
        else:
            curves = torch.empty(0, length, device=x.device, dtype=x.dtype)
    return curves.clone()  # a normal tensor, usable outside inference mode


def _score(logits: Tensor, target: Tensor, score: str) -> Tensor:
    """(B,) score of the target: its logit, probability or log-odds."""
    if score == "probability":
        logits = torch.softmax(logits.float(), dim=1)
    own = logits.gather(1, target[:, None]).squeeze(1)
    if score != "log-odds":
        return own
    others = logits.scatter(1, target[:, None], float("-inf"))
    return own - torch.logsumexp(others, dim=1)


# --------------------------------------------------------------------------------------------
# summaries of curves


def _check_curves(curves: Tensor) -> Tensor:
    if not isinstance(curves, Tensor) or curves.dim() != 2 or curves.shape[1] < 2:
        shape = tuple(curves.shape) if isinstance(curves, Tensor) else type(curves).__name__
        raise ValueError(f"curves must have shape (N, steps + 1) with steps >= 1; got {shape}")
    return curves


def aopc(curves: Tensor) -> Tensor:
    """Area over the perturbation curve, per image: ``mean_k (f(x^(0)) - f(x^(k)))``.

    That is ``1/(L+1) * sum_{k=0..L} (f(x^(0)) - f(x^(k)))`` with ``L = steps``; the mean over
    images (Samek et al.'s AOPC) is ``aopc(curves).mean()``. Larger is better for MoRF.
    """
    curves = _check_curves(curves)
    return (curves[:, :1] - curves).mean(dim=1)


def area_under_curve(curves: Tensor) -> Tensor:
    """Area under the perturbation curve, per image, by the trapezoid rule on a 0..1 axis.

    Step ``k`` sits at ``k / L``, so the value is on the scale of the score itself (a constant
    curve at ``s`` has area ``s``). Smaller is better for MoRF.
    """
    curves = _check_curves(curves)
    return torch.trapezoid(curves, dx=1.0 / (curves.shape[1] - 1), dim=1)


def symmetric_relevance_gain(morf: Tensor, lerf: Tensor) -> Tensor:
    """Blücher et al.'s symmetric relevance gain per image: ``AUC(LeRF) - AUC(MoRF)``.

    ``morf`` and ``lerf`` are the (N, steps + 1) curves of the same images, method and
    perturbation in the two orders; larger is better, a random map gives about 0.
    """
    morf, lerf = _check_curves(morf), _check_curves(lerf)
    if morf.shape != lerf.shape:
        raise ValueError(
            f"morf and lerf curves must have the same shape; got {tuple(morf.shape)} "
            f"and {tuple(lerf.shape)}"
        )
    return area_under_curve(lerf) - area_under_curve(morf)


@dataclass
class MethodResult:
    """Summary of one method and order over a set of images.

    ``to_json`` gives the documented JSON shape: the original keys (method, order, aopc, auc,
    curve, per_image) and, beside them, the spreads (population standard deviation over
    images, 0 for a single image) and ``srg`` / ``srg_std`` (None unless the method was
    measured in both orders, MoRF and LeRF: then both results carry the same value).
    """

    method: str
    order: str
    aopc: float
    auc: float
    curve: list[float]
    per_image: list[dict[str, object]]
    aopc_std: float = 0.0
    auc_std: float = 0.0
    curve_std: list[float] = field(default_factory=list)
    score: str = "logit"
    srg: float | None = None
    srg_std: float | None = None

    @property
    def steps(self) -> int:
        return len(self.curve) - 1

    def to_json(self) -> dict[str, object]:
        return {
            "method": self.method,
            "order": self.order,
            "aopc": self.aopc,
            "auc": self.auc,
            "curve": list(self.curve),
            "per_image": [dict(p) for p in self.per_image],
            "aopc_std": self.aopc_std,
            "auc_std": self.auc_std,
            "srg": self.srg,
            "srg_std": self.srg_std,
        }


def summarize(
    method: str,
    order: str,
    curves: Tensor,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    score: str = "logit",
    srg: Tensor | None = None,
) -> MethodResult:
    """Mean AOPC, AUC and curve over images (N, steps + 1), with per-image values by input.

    ``srg``: the per-image symmetric relevance gain (:func:`symmetric_relevance_gain`) of this
    method, when both orders were measured; its mean and spread go into the result.
    """
    order = _choice("order", order, ORDERS)
    score = _choice("score", score, SCORES)
    curves = _check_curves(curves).detach().double().cpu()
    inputs = [os.fspath(p) for p in inputs]
    if len(inputs) != curves.shape[0]:
        raise ValueError(
            f"inputs must name one input per curve: {curves.shape[0]} curves, {len(inputs)} inputs"
        )
    if curves.shape[0] == 0:
        raise ValueError("curves must hold at least one image")
    per_aopc = aopc(curves)
    per_auc = area_under_curve(curves)
    per_image = [
        {"input": p, "aopc": float(a), "auc": float(u)}
        for p, a, u in zip(inputs, per_aopc, per_auc, strict=True)
    ]
    if srg is not None:
        srg = srg.detach().double().cpu().reshape(-1)
        if srg.shape[0] != curves.shape[0]:
            raise ValueError(f"srg must hold one value per curve; got {srg.shape[0]}")
        for entry, value in zip(per_image, srg.tolist(), strict=True):
            entry["srg"] = value
    return MethodResult(
        method=str(method),
        order=order,
        aopc=float(per_aopc.mean()),
        auc=float(per_auc.mean()),
        curve=curves.mean(dim=0).tolist(),
        per_image=per_image,
        aopc_std=float(per_aopc.std(correction=0)),
        auc_std=float(per_auc.std(correction=0)),
        curve_std=curves.std(dim=0, correction=0).tolist(),
        score=score,
        srg=None if srg is None else float(srg.mean()),
        srg_std=None if srg is None else float(srg.std(correction=0)),
    )


def results_to_json(results: Sequence[MethodResult]) -> dict[str, object]:
    """``{"steps": L, "results": [MethodResult.to_json(), ...]}``; all results share L."""
    results = list(results)
    if not results:
        raise ValueError("results must hold at least one MethodResult")
    steps = {r.steps for r in results}
    if len(steps) != 1:
        raise ValueError(f"results must all have the same number of steps; got {sorted(steps)}")
    return {"steps": steps.pop(), "results": [r.to_json() for r in results]}


# --------------------------------------------------------------------------------------------
# baseline attributions: (model, x, target, generator) -> (N, H, W)


def _input_gradient(model: Callable[[Tensor], Tensor], x: Tensor, target: Tensor) -> Tensor:
    with torch.enable_grad():
        xg = x.detach().clone().requires_grad_(True)
        out = model(xg)
        (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xg)
    return grad


def gradient_attribution(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: int | Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sensitivity analysis: ``|d f_target / d x|`` summed over channels, (N, H, W)."""
    grad = _input_gradient(model, x, _as_target(target, x.shape[0], x.device))
    return grad.abs().sum(dim=1)


def gradient_x_input_attribution(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: int | Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Signed ``x * d f_target / d x`` summed over channels, (N, H, W)."""
    grad = _input_gradient(model, x, _as_target(target, x.shape[0], x.device))
    return (grad * x.detach()).sum(dim=1)


def random_attribution(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    target: int | Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Uniform random map from ``generator``, (N, H, W); MoRF on it is a random order."""
    n, _, h, w = x.shape
    return _rand((n, h, w), generator).to(device=x.device, dtype=x.dtype)


def _spatial(out: object) -> bool:
    return isinstance(out, Tensor) and out.dim() == 4 and out.shape[2] * out.shape[3] > 1


def _spatial_layer(model: nn.Module, x: Tensor, layer: str | None) -> tuple[str, nn.Module]:
    """The module whose output Grad-CAM uses: ``layer`` by name, else the last module run
    (in execution order) with a spatial output: (N, C, h, w) with h x w > 1."""
    modules = dict(model.named_modules())
    if layer is not None:
        if layer not in modules:
            near = [name for name in modules if name and layer in name][:5]
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(f"cam layer {layer!r} is not a module of the model{hint}")
        return layer, modules[layer]
    seen: list[str] = []
    hooks = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: seen.append(name) if _spatial(out) else None
        )
        for name, module in modules.items()
        if name and not list(module.children())
    ]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    if not seen:
        raise ValueError(
            "Grad-CAM needs a layer with a spatial (N, C, h, w) output and the model has none"
        )
    return seen[-1], modules[seen[-1]]


def gradcam_attribution(
    model: nn.Module,
    x: Tensor,
    target: int | Sequence[int] | Tensor,
    generator: torch.Generator | None = None,
    layer: str | None = None,
) -> Tensor:
    """Grad-CAM (Selvaraju et al. 2017), upsampled to the input: (N, H, W), >= 0.

    ``relu(sum_k alpha_k A_k)`` with ``A`` the output of ``layer`` (a module name; default the
    last module with a spatial (N, C, h, w) output, h x w > 1, in execution order) and
    ``alpha_k`` the spatial mean of ``d f_target / d A_k``; bilinearly upsampled to the
    input's H x W.
    """
    target = _as_target(target, x.shape[0], x.device)
    _, module = _spatial_layer(model, x, layer)
    kept: list[Tensor] = []
    hook = module.register_forward_hook(lambda _m, _i, out: kept.append(out))
    try:
        with torch.enable_grad():
            out = model(x.detach())
            if not kept or not isinstance(kept[-1], Tensor) or kept[-1].dim() != 4:
                raise ValueError(f"cam layer {layer!r} has no 4-D (N, C, h, w) output")
            activation = kept[-1]
            (grad,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), activation)
    finally:
        hook.remove()
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    cam = torch.nn.functional.interpolate(
        cam, size=x.shape[2:], mode="bilinear", align_corners=False
    )
    return cam[:, 0]


BASELINES: dict[str, Callable[..., Tensor]] = {
    "random": random_attribution,
    "gradient": gradient_attribution,
    "gradient-x-input": gradient_x_input_attribution,
    "gradcam": gradcam_attribution,
}


# --------------------------------------------------------------------------------------------
# plot


def plot_curves(
    results: Sequence[MethodResult], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write a PNG with one line (mean curve, +-1 std band) per method/order; returns the path.

    One colour per method, one line style per order (MoRF solid, LeRF dashed, random dotted);
    the bands are drawn for up to four curves (more would cover each other).

    Written atomically: to a temporary file in the same folder, then renamed over ``path``.
    Needs matplotlib (``pip install 'lrp-cli[plots]'``); uses the Agg canvas directly, so no
    global backend is changed.
    """
    results = list(results)
    if not results:
        raise ValueError("results must hold at least one MethodResult")
    scores = {r.score for r in results}
    if len(scores) != 1:
        raise ValueError(f"results must all use the same score; got {sorted(scores)}")
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "plotting needs matplotlib: pip install 'lrp-cli[plots]' (or matplotlib)"
        ) from exc

    path = Path(path)
    fig = Figure(figsize=(6.4, 4.4), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cycle = [c["color"] for c in matplotlib.rcParams["axes.prop_cycle"]]
    colours = {
        m: cycle[k % len(cycle)] for k, m in enumerate(dict.fromkeys(r.method for r in results))
    }
    styles = {"morf": "-", "lerf": "--", "random": ":"}
    for r in results:
        steps = list(range(len(r.curve)))
        colour = colours[r.method]
        ax.plot(steps, r.curve, styles[r.order], color=colour, label=f"{r.method} ({r.order})")
        if len(results) <= 4 and len(r.curve_std) == len(r.curve) and any(r.curve_std):
            low = [m - s for m, s in zip(r.curve, r.curve_std, strict=True)]
            high = [m + s for m, s in zip(r.curve, r.curve_std, strict=True)]
            ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
    ax.set_xlabel("perturbation steps")
    labels = {"logit": "target score (logit)", "probability": "target probability"}
    ax.set_ylabel(labels.get(scores.pop(), "target log-odds"))
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()

    from ..outputs import atomic_write

    atomic_write(path, lambda handle: fig.savefig(handle, format="png"))
    return path
