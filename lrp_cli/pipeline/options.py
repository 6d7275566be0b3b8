"""What an explain run does with each input, and what it counted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..images import DEFAULT_MAX_PIXELS
from .prepare import SetupError

__all__ = ["EXISTING", "ExplainOptions", "Summary"]

EXISTING = ("error", "overwrite", "skip")


@dataclass(frozen=True)
class ExplainOptions:
    """What ``lrp explain`` does with each input; defaults match the command's.

    ``target``: None or ``"top1"`` (each input's top class), a class index or a class name.
    ``existing``: what to do when an input's outputs exist: ``"error"`` (that input fails),
    ``"overwrite"``, or ``"skip"`` (resume: an input counts as done when all its outputs exist).
    ``vmax``: fixed colour-scale limit (comparable maps); None scales each map to its max |R|.
    ``start``: where relevance starts: ``"logit"`` (the target's logit) or ``"log-odds"``
    (Montavon et al.'s top layer; see :class:`lrp_cli.engine.Explainer`).
    ``crop``: the model's own preprocessing (resize, centre crop); False explains the whole
    image, its shorter side resized to the model's resize size (models that take any size).
    Overlays are drawn on the original photo at its resolution either way.
    """

    out: Path = Path("lrp-out")
    target: str | int | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "float32"
    cmap: str = "bwr"
    overlay: bool = False
    alpha: float = 0.5
    vmax: float | None = None
    existing: str = "error"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int | None = None  # decoding processes; None: up to 4, fewer than the cores
    start: str = "logit"
    crop: bool = True

    def check(self) -> None:
        """Raise :class:`SetupError` for a value no run can use."""
        if self.batch_size < 1:
            raise SetupError(f"batch size must be at least 1, got {self.batch_size}")
        if self.existing not in EXISTING:
            raise SetupError(f"existing must be one of {', '.join(EXISTING)}")
        if self.vmax is not None and not self.vmax > 0:
            raise SetupError(f"--vmax must be a positive number, got {self.vmax}")
        if not 0.0 <= self.alpha <= 1.0:
            raise SetupError(f"--alpha must be between 0 and 1, got {self.alpha}")


@dataclass
class Summary:
    """Counts of one run, by input file (``heatmaps`` counts samples written)."""

    inputs: int = 0
    explained: int = 0
    failed: int = 0
    skipped: int = 0
    heatmaps: int = 0
    interrupted: bool = False  # Ctrl-C
    stopped: bool = False  # the records' reader went away

    def count(self, records: list[dict]) -> None:
        """Count one input's records."""
        status = {r["status"] for r in records}
        if "failed" in status:
            self.failed += 1
        elif status == {"skipped"}:
            self.skipped += 1
        else:
            self.explained += 1
        self.heatmaps += sum(r["status"] == "explained" for r in records)
