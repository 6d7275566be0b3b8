"""The batch runner behind ``lrp explain``, as a Python API (no command-line code here).

Why a runner and not a loop over files: worker processes decode the next images
while the engine explains the current batch, one bad file or one degenerate map fails only its
own input, and an interrupted run keeps what it finished (every file is written atomically and an
input's outputs are removed again if it is cut off half way), so ``skip_existing`` can resume it.

Batches are formed from the inputs that loaded, in order, so an input that fails to load never
changes the batches (and so the bits) of the others.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import numpy as np

from .decoding import Decoder
from .images import (
    DEFAULT_MAX_PIXELS,
    ImageError,
    InputItem,
    InputProblem,
    Uncropped,
    denormalize,
    image_size,
    input_region,
    load_image,
)
from .messages import error_reason, show_traceback
from .outputs import (
    OutputError,
    OutputPaths,
    color_limit,
    degenerate_reason,
    output_paths,
    overlay,
    overlay_on_photo,
    render_heatmap,
    save_npy,
    save_png,
)

if TYPE_CHECKING:
    import torch

    from .config import RuleConfig
    from .engine import Explainer
    from .models import LoadedModel

__all__ = [
    "BatchExplainer",
    "ExplainOptions",
    "SetupError",
    "Summary",
    "build_explainer",
    "iter_batches",
    "resolve_device",
    "resolve_target",
]

PRECISIONS = ("float32", "float64")
DEVICES = ("auto", "cpu", "cuda")
EXISTING = ("error", "overwrite", "skip")


class SetupError(Exception):
    """A problem found before any input is explained (device, output folder); one line."""


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


# --------------------------------------------------------------------------------------------
# Set-up shared by explain, inspect and evaluate


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


def resolve_target(model: LoadedModel, target: str | int | None) -> int | None:
    """None for each input's top class (``top1``), else the class index (name or number)."""
    if target is None or str(target).strip().lower() in ("", "top1"):
        return None
    return model.class_index(target)


def build_explainer(
    model: LoadedModel,
    config: RuleConfig,
    device: str = "cpu",
    precision: str = "float32",
    start: str = "logit",
) -> tuple[Explainer, list[str]]:
    """The engine for ``model`` under ``config``, and its warnings as one-line messages.

    The warnings (config entries that match no layer) are collected, not printed, so that the
    caller can show each once. The model is moved to ``device`` and ``precision`` in place.
    ``start``: ``"logit"`` or ``"log-odds"``, where relevance starts (see ``Explainer``).
    Raises the engine's ``UnsupportedModelError`` / ``CompositeError`` and :class:`SetupError`.
    """
    import torch

    from .engine import Explainer

    if precision not in PRECISIONS:
        raise SetupError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    model.module.to(device=resolve_device(device), dtype=getattr(torch, precision))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explainer = Explainer(
            model.module,
            config.composite(),
            input_bounds=model.preprocessing.bounds(),
            start=start,
        )
    return explainer, [" ".join(str(w.message).split()) for w in caught]


def iter_batches(
    items: Sequence[InputItem],
    model: LoadedModel,
    batch_size: int,
    *,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    decoder: Decoder | None = None,
) -> Iterator[dict[str, Any]]:
    """Decoded inputs in order, ``batch_size`` inputs at a time, errors included.

    Each batch has ``inputs`` (a (rows, C, H, W) tensor of the inputs that loaded, or None),
    ``index`` and ``counts`` (item index and number of rows of each of them, in order: split
    model outputs with ``torch.split(outputs, counts)``) and ``errors``, ``(index, message)``
    pairs. ``decoder``: one already decoding ``items`` (see :class:`lrp_cli.decoding.Decoder`);
    else worker processes are started here. Either way it is closed at the end.
    """
    if decoder is None:
        decoder = Decoder(items, model.preprocessing, max_pixels=max_pixels, workers=workers)
    with decoder:
        chunk: list = []
        for decoded in decoder:
            chunk.append(decoded)
            if len(chunk) == batch_size:
                yield _collate(chunk)
                chunk = []
        if chunk:
            yield _collate(chunk)


def _collate(chunk: list) -> dict[str, Any]:
    import torch

    good, counts, arrays, errors = [], [], [], []
    for index, array, error in chunk:
        if array is None:
            errors.append((index, error))
        elif arrays and array.shape[1:] != arrays[0].shape[1:]:
            errors.append((index, f"input shape {tuple(array.shape[1:])} differs from the batch's"))
        else:
            good.append(index)
            counts.append(int(array.shape[0]))
            arrays.append(torch.from_numpy(array))
    inputs = torch.cat(arrays) if arrays else None
    return {"inputs": inputs, "index": good, "counts": counts, "errors": errors}


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class _Entry:
    """One input on its way through a run; inputs are reported in the order given."""

    item: InputItem
    outputs: list[OutputPaths] = field(default_factory=list)  # one per sample
    indexed: bool = False  # outputs named NAME.0.png, NAME.1.png... (an (N,C,H,W) .npy)
    rows: Any = None  # the decoded (n, C, H, W) input
    records: list[dict[str, Any]] | None = None  # set once explained, failed or skipped
    writing: list[Future] | None = None  # its records, while its files are being written

    def settled(self, wait: bool) -> bool:
        """Whether its records are known; with ``wait``, wait for its files to be written."""
        if self.writing is not None and (wait or all(f.done() for f in self.writing)):
            self.records = [f.result() for f in self.writing]
            self.writing = None
        return self.records is not None


class BatchExplainer:
    """Explains inputs in batches and writes heatmaps, relevance arrays and records.

    Construction does all the set-up that can fail for a usage reason (device, precision,
    target, rules, output folder) so that the caller can report it before any work; then
    :meth:`run` never raises for an input's problem: each becomes an error record.
    """

    def __init__(self, model: LoadedModel, config: RuleConfig, options: ExplainOptions) -> None:
        import torch

        if options.batch_size < 1:
            raise SetupError(f"batch size must be at least 1, got {options.batch_size}")
        if options.existing not in EXISTING:
            raise SetupError(f"existing must be one of {', '.join(EXISTING)}")
        if options.vmax is not None and not options.vmax > 0:
            raise SetupError(f"--vmax must be a positive number, got {options.vmax}")
        if not 0.0 <= options.alpha <= 1.0:
            raise SetupError(f"--alpha must be between 0 and 1, got {options.alpha}")
        self.model = model
        self.config = config
        self.options = options
        self.target = resolve_target(model, options.target)
        self.device = resolve_device(options.device)
        self.dtype = getattr(torch, options.precision, None)
        self.explainer, self.warnings = build_explainer(
            model, config, self.device.type, options.precision, options.start
        )
        #: how images become model inputs in this run (the model's, or uncropped)
        self.preprocessing = (
            model.preprocessing if options.crop else Uncropped.of(model.preprocessing)
        )
        if not options.crop:
            self._check_any_size()
        self.out_dir = Path(options.out)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SetupError(
                f"{self.out_dir}: cannot create the output folder ({error.strerror or error}); "
                "choose another one with --out"
            ) from None
        _remove_stale_temporaries(self.out_dir)

    # ---------------------------------------------------------------------------- public
    def run(
        self,
        items: Sequence[InputItem],
        on_item: Callable[[list[dict[str, Any]]], bool | None] | None = None,
        decoder: Decoder | None = None,
        refused: Sequence[InputProblem] = (),
    ) -> Summary:
        """Explain ``items``; ``on_item(records)`` is called once per input, in input order.

        ``refused``: inputs refused while they were collected (see
        :func:`lrp_cli.images.collect_inputs`); each is reported first, as a failed record.

        ``on_item`` returning False stops the run (the reader of the records went away).
        Ctrl-C stops it too: finished outputs stay, the summary says it was interrupted.
        ``decoder``: a :class:`lrp_cli.decoding.Decoder` started early on the same ``items``
        (before the model was loaded); it is used if it decodes as the model needs, and closed
        either way.
        """
        summary = Summary(inputs=len(items))
        claimed: set[str] = set()  # output paths of this run, to catch two inputs sharing one

        def report(records: list[dict[str, Any]]) -> None:
            status = {r["status"] for r in records}
            if "failed" in status:
                summary.failed += 1
            elif status == {"skipped"}:
                summary.skipped += 1
            else:
                summary.explained += 1
            summary.heatmaps += sum(r["status"] == "explained" for r in records)
            if on_item is not None and on_item(records) is False:
                raise _Stop

        # heatmaps are rendered and written in a thread while the next batch is explained
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lrp-writer")
        try:
            for problem in refused:
                report([self.refused_record(problem)])
            entries = [self._plan(item, claimed) for item in items]
            todo = [i for i, e in enumerate(entries) if e.records is None]
            if decoder is not None and self._fits(decoder, items):
                decoder.only(todo)
            else:
                decoder = self._decoder_for(items, todo)
            self._explain(entries, decoder, report)
        except KeyboardInterrupt:
            summary.interrupted = True
        except _Stop:
            summary.stopped = True
        finally:  # a file being written is finished (atomically), queued ones are dropped
            if decoder is not None:
                decoder.close()
            self._writer.shutdown(wait=True, cancel_futures=True)
        return summary

    def _decoder_for(self, items: Sequence[InputItem], indices: list[int]) -> Decoder:
        """A decoder of the ``items`` at ``indices``, as this run's model needs them."""
        return Decoder(
            items,
            self.preprocessing,
            max_pixels=self.options.max_pixels,
            workers=self.options.workers,
            indices=indices,
        )

    def _fits(self, decoder: Decoder, items: Sequence[InputItem]) -> bool:
        """Whether an early decoder decodes ``items`` as this run needs; if not, it is closed."""
        same = (decoder.preprocessing, decoder.max_pixels, decoder.items)
        if same == (self.preprocessing, self.options.max_pixels, list(items)):
            return True
        decoder.close()
        return False

    # ---------------------------------------------------------------------------- planning
    def _plan(self, item: InputItem, claimed: set[str]) -> _Entry:
        """Name an input's outputs; settle it at once if it is to be skipped or refused."""
        entry = _Entry(item)
        try:
            samples = _npy_samples(item.path) if item.path.suffix.lower() == ".npy" else None
            entry.indexed = samples is not None
            entry.outputs = self._outputs(item, samples)
        except OutputError as error:
            entry.records = [self._record(entry, error=str(error))]
            return entry
        paths = [p for o in entry.outputs for p in self._files(o)]
        try:
            existing = [p for p in paths if p.exists()]
        except OSError as error:  # e.g. a name too long for the file system
            problem = f"cannot check its outputs: {error_reason(error)}"
            entry.records = [self._failed(entry, problem, "rename the input")]
            return entry
        clash = next((p for p in paths if _key(p) in claimed), None)
        if clash is not None:
            problem = f"its output {clash} is also the output of another input"
            entry.records = [self._failed(entry, problem, "rename one of the two inputs")]
            return entry
        claimed.update(_key(p) for p in paths)
        if self.options.existing == "skip" and existing and len(existing) == len(paths):
            entry.records = [
                self._record(entry, k, status="skipped") for k in range(len(entry.outputs))
            ]
        elif existing and self.options.existing == "error":
            problem = f"output {existing[0]} already exists"
            advice = "pass --overwrite to replace it or --skip-existing to keep it"
            entry.records = [self._failed(entry, problem, advice)]
        return entry

    def _outputs(self, item: InputItem, samples: int | None) -> list[OutputPaths]:
        """``OUT/NAME.*``, or ``OUT/NAME.K.*`` for each sample of an (N, C, H, W) ``.npy``."""
        relative = item.relative
        if samples is None:
            return [output_paths(self.out_dir, relative)]
        return [
            output_paths(self.out_dir, relative.with_name(f"{relative.stem}.{k}{relative.suffix}"))
            for k in range(samples)
        ]

    def _files(self, paths: OutputPaths) -> list[Path]:
        files = [paths.heatmap, paths.relevance]
        return files + [paths.overlay] if self.options.overlay else files

    # ---------------------------------------------------------------------------- explaining
    def _explain(self, entries: list[_Entry], decoder: Decoder, report) -> None:
        """Decode in workers; explain the inputs that loaded, in full batches, in order."""
        waiting = deque(entries)
        pending: list[_Entry] = []  # up to the last decoded input, in input order
        batches = iter_batches(  # uncropped inputs differ in size: regrouped in _settle
            [e.item for e in entries],
            self.model,
            self.options.batch_size if self.options.crop else 1,
            decoder=decoder,
        )
        for batch in batches:
            for index, message in batch["errors"]:
                entries[index].records = [self._record(entries[index], error=message)]
            if batch["counts"]:
                parts = batch["inputs"].split(batch["counts"])
                for index, rows in zip(batch["index"], parts, strict=True):
                    entries[index].rows = rows
            last = entries[max([*batch["index"], *(i for i, _ in batch["errors"])])]
            while not pending or pending[-1] is not last:
                pending.append(waiting.popleft())
            self._settle(pending, report, final=False)
        pending.extend(waiting)
        self._settle(pending, report, final=True)

    def _settle(self, pending: list[_Entry], report, final: bool) -> None:
        """Report settled inputs from the front; explain a batch whenever one is full."""
        while True:
            while pending and pending[0].settled(wait=final):
                report(pending.pop(0).records)
            group, rows, cut = [], 0, False
            for entry in pending:
                if entry.records is None and entry.writing is None:
                    if group and entry.rows.shape[1:] != group[0].rows.shape[1:]:
                        cut = True  # only same-size inputs share a batch (--no-crop)
                        break
                    group.append(entry)
                    rows += len(entry.rows)
                    if rows >= self.options.batch_size:
                        break
            if not group or (rows < self.options.batch_size and not final and not cut):
                return
            self._explain_group(group)
            for entry in pending[: pending.index(group[0])]:  # at most one batch behind
                entry.settled(wait=True)

    def _explain_group(self, group: list[_Entry]) -> None:
        """Explain a batch and write its outputs; every entry gets its records."""
        import torch

        # a new tensor (batches are regrouped from the decoded inputs), copied to the device:
        # pinned host memory would save about a millisecond per batch on a GPU (not measured)
        x = torch.cat([e.rows for e in group]).to(self.device, self.dtype)
        start = time.perf_counter()
        try:
            result = self.explainer(x, self.target)
        except Exception as error:  # the engine failed on this batch: its inputs fail, not the run
            show_traceback(error)
            for entry in group:
                entry.records = [self._failed(entry, f"explaining failed: {error_reason(error)}")]
            return
        maps = result.relevance.sum(dim=1).float().cpu().numpy()
        # in the engine's precision: a float64 run's record is not rounded to the .npy's float32
        sums = result.relevance.sum(dim=(1, 2, 3), dtype=torch.float64).cpu().tolist()
        logits = result.logits.detach().double().cpu()
        probabilities = torch.softmax(logits, dim=1)
        targets = result.targets.cpu().tolist()
        share = (time.perf_counter() - start) / len(x)
        row = 0
        for entry in group:
            if len(entry.outputs) != len(entry.rows):  # the .npy file changed since planning
                entry.outputs = self._outputs(entry.item, len(entry.rows))
            entry.writing = []
            for k, sample in enumerate(entry.rows):
                i = row + k
                scores = (logits[i], probabilities[i], targets[i], sums[i])
                work = (self._finish, entry, k, maps[i], sample, scores, share)
                entry.writing.append(self._writer.submit(*work))
            row += len(entry.rows)
            entry.rows = None

    def _finish(self, entry: _Entry, k: int, relevance, x, scores, share: float):
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
            return self._record(entry, k, error=_message(entry, k, problem, advice), **fields)
        fields["region"] = self._region(entry)
        relevance = np.ascontiguousarray(relevance, dtype=np.float32)
        vmax = color_limit(relevance, vmax=self.options.vmax)
        try:
            self._write(entry, k, relevance, x, vmax, fields["region"])
        except (OutputError, ImageError) as error:
            return self._record(entry, k, error=str(error), **fields)
        except Exception as error:  # rendering failed: this sample fails, not the run
            show_traceback(error)
            problem = f"writing its outputs failed: {error_reason(error)}"
            return self._record(entry, k, error=_message(entry, k, problem, ""), **fields)
        seconds = round(share + time.perf_counter() - start, 6)
        return self._record(
            entry,
            k,
            status="explained",
            relevance_sum=relevance_sum,
            vmax=vmax,
            seconds=seconds,
            **fields,
        )

    def _region(self, entry: _Entry) -> list[float] | None:
        """The box of the original photo that the model input covers; None for a ``.npy``."""
        if entry.item.path.suffix.lower() == ".npy":
            return None
        try:
            width, height = image_size(entry.item.path)
        except Exception:  # the file changed since it was decoded
            return None
        return [round(v, 4) for v in input_region(width, height, self.preprocessing)]

    def _write(self, entry: _Entry, k: int, relevance: np.ndarray, x, vmax: float, region) -> None:
        """Write one sample's files; if cut off half way, remove the ones already written."""
        paths = entry.outputs[k]
        heatmap = render_heatmap(relevance, self.options.cmap, vmax=vmax)
        written: list[Path] = []
        try:
            save_npy(relevance, paths.relevance)
            written.append(paths.relevance)
            if self.options.overlay and region is None:  # a .npy: over the model input
                photo = denormalize(x, self.model.preprocessing)
                save_png(overlay(heatmap, photo, self.options.alpha), paths.overlay)
                written.append(paths.overlay)
            elif self.options.overlay:  # over the original photo, at its resolution
                photo = load_image(entry.item.path, self.options.max_pixels)
                cmap, alpha = self.options.cmap, self.options.alpha
                picture = overlay_on_photo(relevance, photo, region, cmap, vmax, alpha)
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

    def refused_record(self, problem: InputProblem) -> dict[str, Any]:
        """The failed record of an input refused while inputs were collected: ``input`` is
        the path as given, ``error`` the one-line message."""
        entry = _Entry(InputItem(Path(problem.input), PurePath(problem.input)))
        return {**self._record(entry, error=str(problem)), "input": problem.input}

    def _failed(self, entry: _Entry, problem: str, advice: str = "") -> dict[str, Any]:
        return self._record(entry, error=str(ImageError(entry.item.path, problem, advice)))

    def _record(
        self,
        entry: _Entry,
        sample: int | None = None,
        *,
        status: str = "failed",
        error: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """One JSON-lines record; every record has the same keys, null where unknown."""
        outputs = None
        if sample is not None:
            paths = entry.outputs[sample]
            outputs = {
                "heatmap": str(paths.heatmap),
                "relevance": str(paths.relevance),
                "overlay": str(paths.overlay) if self.options.overlay else None,
            }
        return {
            "input": str(entry.item.path),
            "sample": sample if entry.indexed else None,
            "status": status,
            "error": error,
            "outputs": outputs,
            "model": self.model.name,
            "weights": self.model.weights,
            "config": self.config.name,
            "config_source": self.config.source,
            "target": fields.get("target"),
            "class_name": fields.get("class_name"),
            "logit": fields.get("logit"),
            "probability": fields.get("probability"),
            "relevance_sum": fields.get("relevance_sum"),
            "vmax": fields.get("vmax"),
            "cmap": self.options.cmap,
            "device": str(self.device),
            "precision": self.options.precision,
            "seconds": fields.get("seconds"),
            "region": fields.get("region"),
        }


# --------------------------------------------------------------------------------------------
# helpers


class _Stop(Exception):
    """The records' reader went away: stop quietly."""


def _npy_samples(path: Path) -> int | None:
    """Samples in an (N, C, H, W) ``.npy``, from its header only; None for anything else."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception:  # unreadable or not an array: loading reports it properly
        return None
    return int(array.shape[0]) if array.ndim == 4 and array.shape[0] > 0 else None


def _message(entry: _Entry, k: int, problem: str, advice: str) -> str:
    """A one-line problem of one sample: ``x.npy[2]: ...`` for a sample of a stack."""
    name = f"{entry.item.path}[{k}]" if entry.indexed else entry.item.path
    return str(ImageError(name, problem, advice))


def _key(path: Path) -> str:
    return str(path).casefold()


# outputs.atomic_write's temporary files: ``.NAME.PID-HEX.tmp``.
_TEMPORARY = re.compile(r"^\..+\.(\d+)-[0-9a-f]{8}\.tmp$")


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files left by a killed run (SIGKILL cannot clean up after itself).

    Only files whose writing process is gone are touched, so a run writing into the same
    folder at the same time keeps its own.
    """
    for root, _, files in os.walk(folder):
        for name in files:
            match = _TEMPORARY.match(name)
            if match and not _alive(int(match.group(1))):
                Path(root, name).unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True
