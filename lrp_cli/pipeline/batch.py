"""The explain-and-write step of a run: one batch of decoded inputs in, their records out.

Every executor runs this same step (the local one in the main process, the Ray one in each
actor), which is why outputs, records and failures are the same under all of them. Set-up
happens once, at construction; :meth:`BatchWork.explain` never raises for an input's problem:
each becomes a failed record.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import numpy as np

from ..images import ImageError, Uncropped, denormalize, image_size, input_region, load_image
from ..messages import error_reason, show_traceback
from ..outputs import (
    OutputError,
    color_limit,
    degenerate_reason,
    overlay,
    overlay_on_photo,
    render_heatmap,
    save_npy,
    save_png,
)
from .options import ExplainOptions
from .plan import sample_outputs
from .prepare import (
    SetupError,
    build_explainer,
    prepare_model,
)
from .records import Job, RunInfo, failed_record, make_record, sample_error

if TYPE_CHECKING:
    from ..config import RuleConfig
    from ..models import LoadedModel

__all__ = ["BatchFiller", "BatchWork", "Decoded"]

#: A decoded input of a batch: the job and its (n, C, H, W) rows (numpy or torch).
Decoded = tuple[Job, Any]
#: Writes one sample's files and returns its record; safe to run on another thread.
Writing = Callable[[], dict[str, Any]]

Key = TypeVar("Key")


class BatchFiller(Generic[Key]):
    """Forms batches as every executor forms them, which keeps outputs the same bit for bit
    under all of them: the inputs that loaded, in order; only same-size inputs together
    (``--no-crop`` images differ); full at ``batch_size`` samples."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.pending: list[tuple[Key, Any]] = []

    def add(self, key: Key, rows) -> Iterator[list[tuple[Key, Any]]]:
        """The batches that adding ``(key, rows)`` completes: none, one or two."""
        if self.pending and rows.shape[1:] != self.pending[0][1].shape[1:]:
            yield self._take()
        self.pending.append((key, rows))
        if sum(len(r) for _, r in self.pending) >= self.batch_size:
            yield self._take()

    def rest(self) -> Iterator[list[tuple[Key, Any]]]:
        """The last, partial batch, if any."""
        if self.pending:
            yield self._take()

    def _take(self) -> list[tuple[Key, Any]]:
        batch, self.pending = self.pending, []
        return batch


class BatchWork:
    """Explains batches of one run's inputs and writes their heatmaps, arrays and overlays.

    Construction checks the options and does all the set-up that can fail for a usage reason
    (device, precision, target, rules; the model on the device, as a copy if it moves), so
    that a caller can report it before any work.
    """

    def __init__(self, model: LoadedModel, config: RuleConfig, options: ExplainOptions) -> None:
        options.check()
        self.options = options
        self.source = (model, config)  # as given, for executors that build their own
        self.model, self.device, self.dtype, self.target = prepare_model(model, options)
        self.explainer, self.warnings = build_explainer(self.model, config, options.start)
        #: how images become model inputs in this run (the model's, or uncropped)
        self.preprocessing = (
            model.preprocessing if options.crop else Uncropped.of(model.preprocessing)
        )
        if not options.crop:
            self._check_any_size()
        self.info = RunInfo(
            model=model.name,
            weights=model.weights,
            config=config.name,
            config_source=config.source,
            cmap=options.cmap,
            device=str(self.device),
            precision=options.precision,
            overlay=options.overlay,
        )

    def __call__(self, batch: Sequence[Decoded]) -> list[list[dict[str, Any]]]:
        """Explain and write ``batch`` here and now: per job, its records."""
        return [[write() for write in writings] for writings in self.explain(batch)]

    def explain(self, batch: Sequence[Decoded]) -> list[list[Writing]]:
        """Explain ``batch`` in one engine call: per job, one writing per sample."""
        import torch

        rows = [torch.as_tensor(r) for _, r in batch]
        x = torch.cat(rows).to(self.device, self.dtype)
        start = time.perf_counter()
        try:
            result = self.explainer(x, self.target)
        except Exception as error:  # the engine failed on this batch: its inputs fail, not the run
            show_traceback(error)
            problem = f"explaining failed: {error_reason(error)}"
            return [[functools.partial(failed_record, self.info, job, problem)] for job, _ in batch]
        maps = result.relevance.sum(dim=1).float().cpu().numpy()
        # in the engine's precision: a float64 run's record is not rounded to the .npy's float32
        sums = result.relevance.sum(dim=(1, 2, 3), dtype=torch.float64).cpu().tolist()
        logits = result.logits.detach().double().cpu()
        probabilities = torch.softmax(logits, dim=1)
        targets = result.targets.cpu().tolist()
        share = (time.perf_counter() - start) / len(x)
        writings, row = [], 0
        for (job, _), sample_rows in zip(batch, rows, strict=True):
            if len(job.outputs) != len(sample_rows):  # the .npy file changed since planning
                job.outputs = sample_outputs(Path(self.options.out), job.item, len(sample_rows))
            mine = []
            for k, sample in enumerate(sample_rows):
                i = row + k
                scores = (logits[i], probabilities[i], targets[i], sums[i])
                mine.append(functools.partial(self._finish, job, k, maps[i], sample, scores, share))
            writings.append(mine)
            row += len(sample_rows)
        return writings

    # ------------------------------------------------------------------------------ inside
    def _finish(self, job: Job, k: int, relevance, x, scores, share: float) -> dict[str, Any]:
        """Check one sample's result, write its files, return its record."""
        logits, probabilities, target, relevance_sum = scores
        start = time.perf_counter()
        fields: dict[str, Any] = {
            "target": target,
            "class_name": self.model.class_name(target),
            "logit": float(logits[target]),
            "probability": float(probabilities[target]),
        }
        if not bool(logits.isfinite().all()):
            problem = "the model's output is NaN or infinite for this input"
            advice = "check the input's values and the model's weights"
        else:
            problem = degenerate_reason(relevance)
            advice = "no heatmap was written; try another --config or --target"
        if problem is not None:
            return make_record(
                self.info, job, k, error=sample_error(job, k, problem, advice), **fields
            )
        fields["region"] = self._region(job)
        relevance = np.ascontiguousarray(relevance, dtype=np.float32)
        vmax = color_limit(relevance, vmax=self.options.vmax)
        try:
            self._write(job, k, relevance, x, vmax, fields["region"])
        except (OutputError, ImageError) as error:
            return make_record(self.info, job, k, error=str(error), **fields)
        except Exception as error:  # rendering failed: this sample fails, not the run
            show_traceback(error)
            problem = f"writing its outputs failed: {error_reason(error)}"
            return make_record(self.info, job, k, error=sample_error(job, k, problem, ""), **fields)
        seconds = round(share + time.perf_counter() - start, 6)
        return make_record(
            self.info,
            job,
            k,
            status="explained",
            relevance_sum=relevance_sum,
            vmax=vmax,
            seconds=seconds,
            **fields,
        )

    def _region(self, job: Job) -> list[float] | None:
        """The box of the original photo that the model input covers; None for a ``.npy``."""
        if job.item.path.suffix.lower() == ".npy":
            return None
        try:
            width, height = image_size(job.item.path)
        except Exception:  # the file changed since it was decoded
            return None
        return [round(v, 4) for v in input_region(width, height, self.preprocessing)]

    def _write(self, job: Job, k: int, relevance: np.ndarray, x, vmax: float, region) -> None:
        """Write one sample's files; if cut off half way, remove the ones already written."""
        paths, options = job.outputs[k], self.options
        heatmap = render_heatmap(relevance, options.cmap, vmax=vmax)
        written: list[Path] = []
        try:
            save_npy(relevance, paths.relevance)
            written.append(paths.relevance)
            if options.overlay and region is None:  # a .npy: over the model input
                photo = denormalize(x, self.model.preprocessing)
                save_png(overlay(heatmap, photo, options.alpha), paths.overlay)
                written.append(paths.overlay)
            elif options.overlay:  # over the original photo, at its resolution
                photo = load_image(job.item.path, options.max_pixels)
                picture = overlay_on_photo(
                    relevance, photo, region, options.cmap, vmax, options.alpha
                )
                save_png(picture, paths.overlay)
                written.append(paths.overlay)
            save_png(heatmap, paths.heatmap)
        except BaseException:
            for path in written:
                path.unlink(missing_ok=True)
            raise

    def _check_any_size(self) -> None:
        """--no-crop needs a model that takes any input size: run it once on an odd one."""
        import torch

        pre = self.preprocessing
        height, width = pre.resize, pre.resize * 4 // 3 + 1  # not square, not the crop size
        x = torch.zeros(1, len(pre.mean), height, width, device=self.device, dtype=self.dtype)
        try:
            with torch.no_grad():
                self.model.module(x)
        except Exception as error:
            raise SetupError(
                f"--no-crop: model {self.model.name} takes only {pre.input_size} x "
                f"{pre.input_size} inputs (a {height} x {width} input fails: "
                f"{error_reason(error, 120)}); explain it with --crop"
            ) from None
