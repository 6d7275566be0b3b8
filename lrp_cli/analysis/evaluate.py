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

The score recorded for each step is the target logit (``score="logit"``) or the softmax
probability of the target (``score="probability"``). ``curves[:, k]`` is ``f(x^(k))`` for
``k = 0..steps``; column 0 is the unperturbed input.

Randomness: all random numbers (noise first, then the random order) are drawn from
``generator`` on the generator's own device (CPU when ``generator`` is None, using torch's global
generator) and then moved to the input's device, so the same seed gives the same numbers on the
CPU and on CUDA. Give each method a freshly seeded generator to compare methods on identical
noise.

The model is not switched to eval mode here: the caller must do it (a model in training mode,
with batch normalisation or dropout, would make scores depend on the batch).
"""

from __future__ import annotations

import math
import os
import tempfile
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
    "plot_curves",
    "random_attribution",
    "region_perturbation_curve",
    "results_to_json",
    "summarize",
]

PERTURBATIONS = ("uniform", "blur", "constant")
ORDERS = ("morf", "lerf", "random")
SCORES = ("logit", "probability")

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
        perturbation: ``"uniform"``, ``"blur"`` or ``"constant"`` (see the module docstring).
        order: ``"morf"``, ``"lerf"`` or ``"random"``.
        score: ``"logit"`` or ``"probability"``.
        batch_size: number of perturbed copies per forward pass.
        generator: source of the noise and of the random order.
        bounds: ``(low, high)`` for ``"uniform"``: numbers or per-channel sequences.
        sigma: Gaussian standard deviation in pixels for ``"blur"`` (default ``region / 2``).
        value: replacement for ``"constant"``: a number or per-channel sequence.

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
            out = model(torch.where(mask, replacement[img], x[img]))
            if not isinstance(out, Tensor) or out.dim() != 2 or out.shape[0] != flat.shape[0]:
                got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise ValueError(f"model must return (batch, classes) logits; got {got}")
            if start == 0 and int(target.max()) >= out.shape[1]:
                raise ValueError(
                    f"target must be < the number of classes, {out.shape[1]}; got {target.tolist()}"
                )
            if score == "probability":
                out = torch.softmax(out.float(), dim=1)
            chunks.append(out.gather(1, target[img, None]).squeeze(1))
        if chunks:
            curves = torch.cat(chunks).view(n, length)
        else:
            curves = torch.empty(0, length, device=x.device, dtype=x.dtype)
    return curves.clone()  # a normal tensor, usable outside inference mode


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


@dataclass
class MethodResult:
    """Summary of one method and order over a set of images.

    ``to_json`` gives the documented JSON shape; the spreads (population standard deviation over
    images, 0 for a single image) and ``score`` are for tables and plots only.
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
        }


def summarize(
    method: str,
    order: str,
    curves: Tensor,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    score: str = "logit",
) -> MethodResult:
    """Mean AOPC, AUC and curve over images (N, steps + 1), with per-image AOPC by input."""
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
    return MethodResult(
        method=str(method),
        order=order,
        aopc=float(per_aopc.mean()),
        auc=float(per_auc.mean()),
        curve=curves.mean(dim=0).tolist(),
        per_image=[{"input": p, "aopc": float(a)} for p, a in zip(inputs, per_aopc, strict=True)],
        aopc_std=float(per_aopc.std(correction=0)),
        auc_std=float(per_auc.std(correction=0)),
        curve_std=curves.std(dim=0, correction=0).tolist(),
        score=score,
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


BASELINES: dict[str, Callable[..., Tensor]] = {
    "random": random_attribution,
    "gradient": gradient_attribution,
    "gradient-x-input": gradient_x_input_attribution,
}


# --------------------------------------------------------------------------------------------
# plot


def plot_curves(
    results: Sequence[MethodResult], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Write a PNG with one line (mean curve, +-1 std band) per method/order; returns the path.

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
    for r in results:
        steps = list(range(len(r.curve)))
        (line,) = ax.plot(steps, r.curve, label=f"{r.method} ({r.order})")
        if len(r.curve_std) == len(r.curve) and any(s > 0 for s in r.curve_std):
            low = [m - s for m, s in zip(r.curve, r.curve_std, strict=True)]
            high = [m + s for m, s in zip(r.curve, r.curve_std, strict=True)]
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("perturbation steps")
    ax.set_ylabel("target score (logit)" if scores.pop() == "logit" else "target probability")
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()

    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fig.savefig(fh, format="png")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path
