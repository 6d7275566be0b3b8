"""The runner behind ``lrp spray``: relevance maps from a run's files, SpRAy per class, outputs.

Maps come either from an earlier ``lrp explain`` run (its ``.npy`` files, and from its JSON-lines
records the class each map explains, so that maps are grouped by class) or from explaining the
inputs here with :class:`lrp_cli.pipeline.ExplainRun`, which writes the same files and
records into ``OUT/maps/``; both then go through :func:`run`. Maps are read one file at a time
and only their downscaled features are kept, so a class of tens of thousands of maps fits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..images import InputItem
from ..outputs import RecordWriter
from ..pipeline.prepare import SetupError
from . import spray
from .spray_report import ClassAnalysis, write_outputs

if TYPE_CHECKING:
    from PIL import Image

    from ..config import RuleConfig
    from ..models import LoadedModel, Preprocessing
    from ..pipeline import ExplainOptions

__all__ = ["MapSource", "SprayRun", "SpraySettings", "explain_inputs", "read_run", "run"]

RECORDS_NAME = "records.jsonl"  # the records of the maps lrp spray explains, in OUT/maps/


@dataclass(frozen=True)
class MapSource:
    """One relevance map on disk and what it explains (from its ``lrp explain`` record)."""

    relevance: Path
    name: str  # the input (with ``[k]`` for a sample of an (N, C, H, W) .npy)
    input: Path | None = None
    sample: int | None = None
    target: int | None = None
    class_name: str | None = None
    model: str | None = None


@dataclass(frozen=True)
class SpraySettings:
    """How :func:`run` analyses each class (the defaults of ``lrp spray``)."""

    size: int = spray.DEFAULT_SIZE
    absolute: bool = False
    neighbors: int = spray.DEFAULT_NEIGHBORS
    eigenvalues: int = spray.DEFAULT_EIGENVALUES
    clusters: int | None = None
    seed: int = 0
    view: str = "tsne"
    examples: int = 6
    min_maps: int = 10
    classes: tuple[str, ...] = ()  # only these (index or name); empty: every class
    cmap: str = "bwr"


@dataclass
class SprayRun:
    """What :func:`run` did; every message is one line."""

    analyses: list[ClassAnalysis] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # maps that could not be read
    skipped: list[str] = field(default_factory=list)  # classes with too few maps


# --------------------------------------------------------------------------------------------
# where the maps come from


def read_run(source: Path) -> tuple[list[MapSource], list[str]]:
    """The maps of an ``lrp explain`` run: a records file, or a folder with records in it.

    Records (``*.jsonl``, found recursively) give each explained map with its class; a folder
    without records gives its ``.npy`` maps as one group of unknown class. Returns the maps
    and one-line warnings.
    """
    source = Path(source)
    if source.is_file():
        return _from_records([source]), []
    if not source.is_dir():
        raise SetupError(f"{source}: no such folder or records file")
    record_files = sorted(source.rglob("*.jsonl"))
    if record_files:
        return _from_records(record_files), []
    maps = [
        MapSource(path, str(path.relative_to(source)))
        for path in sorted(source.rglob("*.npy"))
        if _is_map(path)
    ]
    warning = f"{source}: no records (*.jsonl) found, so the classes are unknown: one group"
    return maps, [warning] if maps else []


def _from_records(files: Sequence[Path]) -> list[MapSource]:
    maps, seen = [], set()
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SetupError(f"{file}:{number}: not a JSON record ({error.msg})") from None
            outputs = record.get("outputs") or {}
            if record.get("status") != "explained" or not outputs.get("relevance"):
                continue
            path = _locate(Path(outputs["relevance"]), file.parent)
            if str(path) in seen:  # the same map listed twice (records files of reruns)
                continue
            seen.add(str(path))
            sample = record.get("sample")
            name = str(record.get("input"))
            maps.append(
                MapSource(
                    relevance=path,
                    name=name if sample is None else f"{name}[{sample}]",
                    input=Path(record["input"]) if record.get("input") else None,
                    sample=sample,
                    target=record.get("target"),
                    class_name=record.get("class_name"),
                    model=record.get("model"),
                )
            )
    return maps


def _locate(path: Path, records_folder: Path) -> Path:
    """A record's path as written (relative to where explain ran), else next to the records."""
    for candidate in (path, records_folder / path, records_folder / path.name):
        if candidate.exists():
            return candidate
    return path


def _is_map(path: Path) -> bool:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False).ndim == 2
    except (OSError, ValueError):
        return False


def explain_inputs(
    model: LoadedModel,
    config: RuleConfig,
    items: Sequence[InputItem],
    options: ExplainOptions,
    on_item: Callable[[], object] = lambda: None,
) -> tuple[list[MapSource], list[str], list[str]]:
    """Explain ``items`` as ``lrp explain`` does into ``options.out`` (records there too).

    Returns the maps, one-line errors of inputs that failed, and the engine's warnings.
    """
    from ..pipeline import ExplainRun

    runner = ExplainRun(model, config, options)
    path = Path(options.out) / RECORDS_NAME
    writer = RecordWriter(path)
    errors: list[str] = []

    def write(records: list[dict[str, Any]]) -> bool:
        for record in records:
            if record["error"]:
                errors.append(record["error"])
            writer.write(record)
        on_item()
        return True

    try:
        summary = runner.run(items, write)
    finally:
        writer.close()
    if summary.interrupted:
        raise KeyboardInterrupt
    return _from_records([path]), errors, runner.warnings


# --------------------------------------------------------------------------------------------
# analysis per class


def run(
    maps: Sequence[MapSource],
    out: Path,
    settings: SpraySettings = SpraySettings(),
    preprocessing: Preprocessing | None = None,
) -> SprayRun:
    """SpRAy on each class of ``maps``, then the outputs in ``out`` (see ``spray_report``).

    ``preprocessing``: how the inputs were cropped, for the report's thumbnails (default: the
    recorded model's, where known without loading it).
    """
    result = SprayRun()
    for key, members in _by_class(maps, settings.classes).items():
        if len(members) < max(settings.min_maps, 3):
            result.skipped.append(
                f"class {_label(members[0])}: {len(members)} maps, fewer than --min-maps "
                f"{max(settings.min_maps, 3)}: not analysed"
            )
            continue
        analysis = _analyse(key, members, settings, preprocessing, result.errors)
        if analysis is not None:
            result.analyses.append(analysis)
    if result.analyses:
        chosen = {k: v for k, v in vars(settings).items() if k not in ("classes", "min_maps")}
        result.written = write_outputs(
            Path(out), result.analyses, chosen, settings.examples, settings.cmap
        )
    return result


def _by_class(maps: Sequence[MapSource], wanted: tuple[str, ...]) -> dict[str, list[MapSource]]:
    """Maps grouped by target class, classes in index order; only ``wanted`` ones if given."""
    groups: dict[str, list[MapSource]] = {}
    names = {w.strip().casefold() for w in wanted}
    for source in maps:
        if names and not names & {str(source.target), str(source.class_name).casefold()}:
            continue
        key = "all" if source.target is None else str(source.target)
        groups.setdefault(key, []).append(source)
    return dict(sorted(groups.items(), key=lambda kv: (not kv[0].isdigit(), _number(kv[0]))))


def _number(key: str) -> int:
    return int(key) if key.isdigit() else 0


def _label(source: MapSource) -> str:
    if source.target is None:
        return "all (unknown)"
    return f"{source.target} {source.class_name}" if source.class_name else str(source.target)


def _analyse(key, members, settings: SpraySettings, preprocessing, errors) -> ClassAnalysis | None:
    readable, features = [], []
    for source in members:
        try:
            one = _load_map(source.relevance)
        except ValueError as error:
            errors.append(f"{source.relevance}: {error}")
            continue
        readable.append(source)
        features.append(spray.prepare(one[None], settings.size, settings.absolute)[0])
    if len(readable) < 3:
        return None
    result = spray.analyse(
        np.stack(features),
        neighbors=settings.neighbors,
        eigenvalues=settings.eigenvalues,
        clusters=settings.clusters,
        seed=settings.seed,
    )
    loaded = (_load_map(s.relevance) for s in readable)
    means = spray.cluster_means(loaded, result.labels, settings.absolute)
    view_name = "t-SNE" if settings.view == "tsne" else "spectral coordinates 2 and 3"
    config = {**result.settings, "size": settings.size, "absolute": settings.absolute}
    result = replace(result, means=means, settings={**config, "view": view_name})
    shape = means.shape[1:]
    return ClassAnalysis(
        key=key,
        label=_label(readable[0]),
        target=readable[0].target,
        class_name=readable[0].class_name,
        names=[s.name for s in readable],
        relevance_paths=[str(s.relevance) for s in readable],
        result=result,
        view=spray.view_2d(result, settings.view, seed=settings.seed),
        relevance=lambda i: _load_map(readable[i].relevance),
        photo=lambda i: _photo(readable[i], preprocessing, shape),
    )


def _load_map(path: Path) -> np.ndarray:
    """A relevance map ``(H, W)`` as ``lrp explain`` writes it; ValueError if it is not one."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the relevance map: {error}") from None
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"not a relevance map (H, W) of floats: {array.dtype} {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("the relevance map holds NaN or infinite values")
    return array


def _photo(source: MapSource, preprocessing, shape) -> Image.Image | None:
    """The input as the model saw it (cropped), for thumbnails; None if it cannot be shown."""
    from ..images import ImageError, crop_image, denormalize, load_image, read_npy_input
    from ..models import Preprocessing, known_preprocessing

    if source.input is None or not source.input.is_file():
        return None
    if preprocessing is None and source.model:
        preprocessing = known_preprocessing(source.model)
    if preprocessing is None or preprocessing.input_size != shape[0]:
        side = int(shape[0])
        preprocessing = Preprocessing(input_size=side, resize=round(side * 256 / 224))
    try:
        if source.input.suffix.lower() == ".npy":
            import torch

            array = read_npy_input(source.input)
            array = array[source.sample or 0] if array.ndim == 4 else array
            return denormalize(torch.from_numpy(array), preprocessing)
        return crop_image(load_image(source.input), preprocessing)
    except (ImageError, ValueError, OSError):
        return None
