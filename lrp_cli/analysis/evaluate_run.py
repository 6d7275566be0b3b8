"""The runner behind ``lrp evaluate``: compare rule configs and baselines by region perturbation.

It joins the pieces that ``lrp explain`` uses (model, engine, input loading) to the measurement
in :mod:`lrp_cli.analysis.evaluate`, so that the command itself only parses options and prints.
Every method is measured on the same inputs, targets and noise (one seed per curve). The
attributions are kept, so that :meth:`Evaluation.run` can be called again after changing
``settings`` (another perturbation, say) without recomputing them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..images import DEFAULT_MAX_PIXELS, InputItem
from ..pipeline.decoding import decode_all
from ..pipeline.prepare import (
    SetupError,
    build_explainer,
    prepare_model,
)
from . import evaluate

if TYPE_CHECKING:
    from ..config import RuleConfig
    from ..models import LoadedModel

# Inputs per engine call when computing attributions (LRP keeps every layer's activations).
_ATTRIBUTION_BATCH = 8


@dataclass(frozen=True)
class EvaluationSettings:
    """How :class:`Evaluation` measures; the defaults are ``lrp evaluate``'s (chosen by
    measurement: README, "How faithful is a heatmap?")."""

    device: str = "auto"
    precision: str = "float32"
    target: str | int | None = None
    region: int = 32
    steps: int = 12
    perturbation: str = "blur"
    orders: tuple[str, ...] = ("morf", "lerf")
    score: str = "logit"
    seed: int = 0
    batch_size: int = 32  # perturbed copies per forward pass
    start: str = "logit"
    noise: float = 0.01  # ROAD's
    cam_layer: str | None = None


class Evaluation:
    """One comparison: configs and baselines x orders on the inputs given to :meth:`load`.

    Construction checks everything that can be wrong before any work (device, target, region
    and step counts, rules) and raises :class:`SetupError` or the engine's errors.
    """

    def __init__(
        self,
        model: LoadedModel,
        configs: Sequence[RuleConfig],
        baselines: Sequence[str],
        settings: EvaluationSettings = EvaluationSettings(),
    ) -> None:
        s = settings
        size = model.preprocessing.input_size
        regions = math.ceil(size / s.region) ** 2
        if s.steps > regions:
            raise SetupError(
                f"--steps {s.steps} is more than the {regions} regions of {s.region} x "
                f"{s.region} pixels in a {size} x {size} input; use --steps {regions} or a "
                "smaller --region"
            )
        self.model, self.device, self.dtype, self.target = prepare_model(model, s)
        #: the arguments of ``evaluate.region_perturbation_curve`` (may be changed between runs)
        self.settings = dict(
            region=s.region,
            steps=s.steps,
            perturbation=s.perturbation,
            score=s.score,
            batch_size=s.batch_size,
            bounds=model.preprocessing.bounds(),
            noise=s.noise,
        )
        self.orders, self.seed = list(s.orders), s.seed
        self.methods: dict[str, Callable] = {}
        self.warnings: list[str] = []
        for config in configs:
            explainer, warnings = build_explainer(self.model, config, s.start)
            name = config.name if config.name not in self.methods else config.source
            self.methods[name] = _lrp(explainer)
            self.warnings += warnings
        for name in baselines:
            self.methods[name] = _baseline(self.model.module, name, s.seed, s.cam_layer)
        self.inputs: list[str] = []
        self._x: list[torch.Tensor] = []
        self._attributions: dict[str, torch.Tensor] = {}  # kept for another run()

    @property
    def tasks(self) -> int:
        """Curves to compute, for a progress bar."""
        return len(self.methods) * len(self.orders)

    def describe(self) -> str:
        s = self.settings
        road = f" (noise {s['noise']:g})" if s["perturbation"] == "road" else ""
        return (
            f"{self.model.name}, {s['perturbation']}{road} perturbation, {s['region']} x "
            f"{s['region']} regions, {s['steps']} steps, {s['score']}"
        )

    def load(
        self, items: Sequence[InputItem], max_pixels: int | None = DEFAULT_MAX_PIXELS
    ) -> list[str]:
        """Decode the inputs (as ``lrp explain`` does); returns one message per failed input."""
        decoded, errors = decode_all(items, self.model.preprocessing, max_pixels=max_pixels)
        for item, rows in decoded:
            path = str(item.path)
            names = [path] if len(rows) == 1 else [f"{path}[{k}]" for k in range(len(rows))]
            self.inputs += names
            self._x.append(torch.from_numpy(rows))
        self._attributions.clear()
        return errors

    def run(self, advance: Callable[[], object] = lambda: None):
        """Every method's curves: (list of ``evaluate.MethodResult``, one-line errors).

        A method measured both most- and least-relevant-first gets its symmetric relevance
        gain (``srg``) on both results. ``self.seconds`` then holds the time the curves took
        (attributions excluded) and ``self.forwards`` the number of perturbed copies scored.
        """
        x = torch.cat(self._x).to(self.device, self.dtype)
        targets = self._targets(x)
        results, errors = [], []
        random_curves = None
        score = self.settings["score"]
        self.seconds, self.forwards = 0.0, 0
        for method, attribute in self.methods.items():
            try:
                attribution, curves = None, {}
                for order in self.orders:
                    if order == "random":  # the attribution plays no part: measure it once
                        if random_curves is None:
                            random_curves = self._curves(x, None, targets, order)
                        curves[order] = random_curves
                    else:
                        if attribution is None:
                            attribution = self._attributions.get(method)
                        if attribution is None:
                            attribution = _chunked(attribute, x, targets)
                            self._attributions[method] = attribution
                        curves[order] = self._curves(x, attribution, targets, order)
                    advance()
            except (ValueError, RuntimeError) as error:
                errors.append(f"{method}: cannot be evaluated: {' '.join(str(error).split())}")
                continue
            srg = None
            if "morf" in curves and "lerf" in curves:
                srg = evaluate.symmetric_relevance_gain(curves["morf"], curves["lerf"])
            for order, values in curves.items():
                gain = srg if order in ("morf", "lerf") else None
                results.append(
                    evaluate.summarize(method, order, values, self.inputs, score=score, srg=gain)
                )
        return results, errors

    def timing(self) -> str:
        """How long the curves took, per image and step (after :meth:`run`)."""
        steps = self.settings["steps"] + 1
        per_copy = self.seconds / max(self.forwards, 1)
        return (
            f"{self.forwards} perturbed copies ({len(self.inputs)} inputs x {steps} steps x "
            f"{self.forwards // max(len(self.inputs) * steps, 1)} curves) in "
            f"{self.seconds:.1f} s: {per_copy * 1e3:.1f} ms per image and step"
        )

    def _targets(self, x: torch.Tensor) -> torch.Tensor:
        if self.target is not None:
            return torch.full((len(x),), self.target, dtype=torch.long, device=x.device)
        with torch.no_grad():  # not inference_mode: the gradient baselines index with these
            return torch.cat([self.model.module(c).argmax(dim=1) for c in x.split(32)])

    def _curves(self, x, attribution, targets, order: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        start = time.perf_counter()
        curves = evaluate.region_perturbation_curve(
            self.model.module,
            x,
            attribution,
            targets,
            order=order,
            generator=generator,
            **self.settings,
        )
        self.seconds += time.perf_counter() - start
        self.forwards += len(x) * (self.settings["steps"] + 1)
        return curves


def _lrp(explainer) -> Callable:
    return lambda x, target: explainer(x, target).relevance.sum(dim=1)


def _baseline(module, name: str, seed: int, cam_layer: str | None = None) -> Callable:
    """The baseline ``name`` of :data:`evaluate.BASELINES` as ``(x, targets) -> (N, H, W)``."""
    generator, function = torch.Generator().manual_seed(seed), evaluate.BASELINES[name]
    if name == "gradcam":
        return lambda x, target: function(module, x, target, generator, layer=cam_layer)
    return lambda x, target: function(module, x, target, generator)


def _chunked(attribute: Callable, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    parts = zip(x.split(_ATTRIBUTION_BATCH), targets.split(_ATTRIBUTION_BATCH), strict=True)
    return torch.cat([attribute(xs, ts).detach() for xs, ts in parts])
