"""Several rule configs side by side: the pictures behind ``lrp compare`` (no command-line code).

Choosing a config is partly a visual decision, so one picture shows an input next to its
heatmaps under each config (and the gradient baselines of ``lrp evaluate``), as in Figure 3 of
Montavon et al. Input loading, targets, device, engine set-up, rendering and atomic writing are
those of ``lrp explain`` and ``lrp evaluate``; only the layout is new here.

Layout: a header strip with the column labels (``input``, then one per column, in the order
given), then one row of square cells per input. A cell is the tile plus a grey border of
``PAD`` pixels, so a picture of R rows and C columns is ``C * cell`` wide and
``header + R * cell`` high; a per-input picture is the one-row case.

A column that cannot be used with this model (a config that does not load, a ``strict`` pattern
that matches nothing, a model the engine cannot trace) does not stop the others: its cells show
"n/a" and the reason, and the reason comes back as one line.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..config import load_config
from ..images import DEFAULT_MAX_PIXELS, InputItem, denormalize
from ..messages import error_reason, show_traceback
from ..models import LoadedModel
from ..outputs import (
    CMAP_NAMES,
    OutputError,
    color_limit,
    degenerate_reason,
    output_paths,
    render_heatmap,
    save_png,
)
from ..pipeline.decoding import decode_all
from ..pipeline.prepare import (
    SetupError,
    build_explainer,
    prepare_model,
)
from .evaluate_run import _baseline, _lrp

__all__ = [
    "COMPARE_BASELINES",
    "Column",
    "CompareResult",
    "CompareSettings",
    "compare",
    "header",
    "resolve_columns",
]

#: Baselines of ``lrp evaluate`` that make sense as pictures (``random`` does not).
COMPARE_BASELINES = ("gradient", "gradient-x-input", "gradcam")
PAD = 2  # grey border of a cell: white (zero) edges of neighbouring heatmaps stay apart
MIN_TILE = 128  # tiles of small models are enlarged so that captions fit
_BORDER, _NA, _WHITE, _INK = (160, 160, 160), (225, 225, 225), (255, 255, 255), (0, 0, 0)


@dataclass
class Column:
    """One column: its label and its attribution ``(x, targets) -> (N, H, W)``, or why not."""

    label: str
    attribute: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    problem: str | None = None


@dataclass
class CompareResult:
    """What :func:`compare` did; every message is one line."""

    written: list[Path] = field(default_factory=list)  # per-input pictures, then the grid
    problems: list[str] = field(default_factory=list)  # columns that could not be drawn
    errors: list[str] = field(default_factory=list)  # inputs or single cells that failed
    warnings: list[str] = field(default_factory=list)  # config entries matching no layer
    grid_size: tuple[int, int] = (0, 0)  # rows (inputs), columns (input + one per spec)
    labels: list[str] = field(default_factory=list)  # column labels, "input" first
    cell: int = 0  # pixel side of a cell (tile + border)
    header: int = 0  # pixel height of the label strip


def resolve_columns(
    model: LoadedModel,
    specs: Sequence[str],
    start: str = "logit",
    cam_layer: str | None = None,
) -> tuple[list[Column], list[str]]:
    """Columns for ``specs`` (presets, YAML files, baselines) of ``model`` where it is (see
    :func:`lrp_cli.pipeline.prepare.place_model`), in order, and engine warnings.

    A spec that fails (config error, rule refused, model not traceable) becomes a column with
    a ``problem`` instead of an exception, so that the other columns are still drawn.
    """
    columns, specs_of, warnings = [], [], []
    for spec in dict.fromkeys(str(s) for s in specs):
        specs_of.append(spec)
        if spec in COMPARE_BASELINES:
            columns.append(Column(spec, _baseline(model.module, spec, 0, cam_layer)))
            continue
        try:
            config = load_config(spec)
            explainer, caught = build_explainer(model, config, start)
        except (ValueError, TypeError, RuntimeError) as error:  # ConfigError, CompositeError...
            label = Path(spec).stem if Path(spec).suffix in (".yaml", ".yml") else spec
            columns.append(Column(label, problem=error_reason(error)))
            continue
        columns.append(Column(config.name, _lrp(explainer)))
        warnings += [f"{config.name}: {message}" for message in caught]
    counts = Counter(c.label for c in columns)
    for column, spec in zip(columns, specs_of, strict=True):
        if counts[column.label] > 1:  # a/x.yaml and b/x.yaml: tell them apart by path
            column.label = spec
    return columns, warnings


@dataclass(frozen=True)
class CompareSettings:
    """How :func:`compare` draws; the defaults are ``lrp compare``'s.

    Heatmaps are scaled symmetrically to their own max |R|, or with ``shared_scale`` to the
    largest max |R| of their row. ``tile`` is the heatmap side in pixels (default: the model's
    input size, at least ``MIN_TILE``). ``start``: where LRP's relevance starts, ``"logit"`` or
    ``"log-odds"``; ``cam_layer``: the module Grad-CAM reads (default: the last spatial one).
    """

    target: str | int | None = None
    shared_scale: bool = False
    cmap: str = "bwr"
    tile: int | None = None
    batch_size: int = 8
    device: str = "auto"
    precision: str = "float32"
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    workers: int | None = None
    start: str = "logit"
    cam_layer: str | None = None


def compare(
    model: LoadedModel,
    items: Sequence[InputItem],
    specs: Sequence[str],
    out: str | Path,
    settings: CompareSettings = CompareSettings(),
    *,
    grid: str | Path | None = None,
) -> CompareResult:
    """Write ``OUT/NAME.compare.png`` per input and, with ``grid``, all rows in one picture.

    Each column is computed for all inputs at once, ``settings.batch_size`` inputs per engine
    call. Existing pictures are replaced (they are derived views, like ``lrp evaluate
    --plot``). Raises :class:`SetupError` (and the model's errors for an unknown ``target``)
    before any work, or when no column can be drawn at all.
    """
    s = settings
    if s.batch_size < 1:
        raise SetupError(f"batch size must be at least 1, got {s.batch_size}")
    if s.cmap not in CMAP_NAMES:
        raise SetupError(f"unknown colour map {s.cmap!r}; use one of {', '.join(CMAP_NAMES)}")
    if s.tile is not None and s.tile < 16:
        raise SetupError(f"tile must be at least 16 pixels, got {s.tile}")
    model, where, dtype, fixed = prepare_model(model, s)
    columns, warnings = resolve_columns(model, specs, s.start, s.cam_layer)
    problems = [
        f"{c.label}: cannot be used with {model.name}: {c.problem}" for c in columns if c.problem
    ]
    if all(c.problem for c in columns):
        raise SetupError(f"no column can be drawn: {'; '.join(problems) or 'no columns given'}")
    tile, cmap, shared_scale, batch_size = s.tile, s.cmap, s.shared_scale, s.batch_size

    tile = tile or max(int(model.preprocessing.input_size), MIN_TILE)
    labels = ["input", *(c.label for c in columns)]
    result = CompareResult(warnings=warnings, labels=labels, cell=tile + 2 * PAD)
    result.header = header(labels[:1], result.cell).height
    names, paths, x = _load(model, items, Path(out), s.max_pixels, s.workers, result)
    if x is None:
        result.problems = problems
        return result
    x = x.to(where, dtype)
    targets, probabilities = _targets(model, x, fixed, batch_size)
    maps: dict[int, np.ndarray] = {}  # column -> (N, H, W)
    for k, column in enumerate(columns):
        if column.attribute is None:
            continue
        parts = zip(x.split(batch_size), targets.split(batch_size), strict=True)
        try:
            maps[k] = torch.cat(
                [column.attribute(*p).detach().float().cpu() for p in parts]
            ).numpy()
        except (ValueError, TypeError, RuntimeError) as error:
            show_traceback(error)
            column.problem = f"explaining failed: {error_reason(error)}"
            problems.append(f"{column.label}: {column.problem}")
    result.problems = problems

    rows = []
    for i, name in enumerate(names):
        t = int(targets[i])
        caption = [Path(name).name, f"{model.class_name(t) or t}  {probabilities[i, t]:.0%}"]
        photo = denormalize(x[i], model.preprocessing).resize((tile, tile), Image.BILINEAR)
        row: list[np.ndarray | str] = []  # a map, or why its cell is n/a
        for k, column in enumerate(columns):
            relevance = column.problem or maps[k][i]
            reason = None if isinstance(relevance, str) else degenerate_reason(relevance)
            if reason is not None:
                result.errors.append(f"{name}: {column.label}: {reason}")
            row.append(reason or relevance)
        rows.append([_caption(photo, caption), *_heatmaps(row, cmap, shared_scale, tile)])
        _write(_picture(labels, rows[-1:], result.cell), paths[i], result)
    result.grid_size = (len(rows), len(labels))
    if grid is not None:
        _write(_picture(labels, rows, result.cell), Path(grid), result)
    return result


def _targets(model: LoadedModel, x: torch.Tensor, fixed: int | None, batch_size: int):
    """One target per input for every column (top-1 of the model itself), and probabilities."""
    try:
        with torch.no_grad():
            logits = torch.cat([model.module(chunk) for chunk in x.split(batch_size)]).double()
    except RuntimeError as error:
        raise SetupError(
            f"{model.name} cannot run on these inputs: {error_reason(error)}"
        ) from None
    if fixed is not None and fixed >= logits.shape[1]:
        raise SetupError(f"class {fixed} is out of range: {model.name} has {logits.shape[1]}")
    targets = logits.argmax(dim=1)
    return (targets if fixed is None else torch.full_like(targets, fixed)), logits.softmax(1)


def _heatmaps(row: list, cmap: str, shared_scale: bool, tile: int) -> list[Image.Image]:
    """One row's tiles; the shared limit is the largest max |R| of the row's maps."""
    good = [r for r in row if not isinstance(r, str)]
    vmax = max(map(color_limit, good)) if shared_scale and good else None
    return [
        _not_available(r, tile)
        if isinstance(r, str)
        else render_heatmap(r, cmap, vmax=vmax).resize((tile, tile), Image.NEAREST)
        for r in row
    ]


# --------------------------------------------------------------------------------------------
# inputs and files


def _load(model, items, out: Path, max_pixels, workers, result: CompareResult):
    """Decode the inputs as ``lrp explain`` does: (row names, picture paths, (N, C, H, W))."""
    names, paths, rows = [], [], []
    decoded, errors = decode_all(items, model.preprocessing, max_pixels=max_pixels, workers=workers)
    result.errors += errors
    for item, part in decoded:
        stack = len(part) > 1
        for k, sample in enumerate(part):
            relative = item.relative
            if stack:  # NAME.K, as lrp explain names the samples of an (N, C, H, W) .npy
                relative = relative.with_name(f"{relative.stem}.{k}{relative.suffix}")
            try:
                heatmap = output_paths(out, relative).heatmap
            except OutputError as error:
                result.errors.append(str(error))
                continue
            names.append(f"{item.path}[{k}]" if stack else str(item.path))
            paths.append(heatmap.with_name(f"{heatmap.name[: -len('.png')]}.compare.png"))
            rows.append(torch.from_numpy(sample))
    return names, paths, (torch.stack(rows) if rows else None)


def _write(picture: Image.Image, path: Path, result: CompareResult) -> None:
    try:
        save_png(picture, path)
    except OutputError as error:
        result.errors.append(str(error))
    else:
        result.written.append(path)


# --------------------------------------------------------------------------------------------
# drawing (Pillow's default font: no new dependency)


@functools.cache
def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default()


def _line() -> int:
    """Height of a line of text, with a little leading."""
    return int(_font().getbbox("Ag")[3]) + 3


def _text(text: str) -> str:
    """The bitmap fallback font (Pillow without FreeType) knows Latin-1 only."""
    if isinstance(_font(), ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _fit(text: str, width: int, cut: bool = False) -> str:
    """``text`` shortened with ``...`` until it is at most ``width`` pixels wide."""
    text = _text(text)
    if not cut and _font().getlength(text) <= width:
        return text
    while text and _font().getlength(text + "...") > width:
        text = text[:-1]
    return text.rstrip() + "..."


def _wrap(text: str, width: int, lines: int) -> list[str]:
    """Greedy word wrap into at most ``lines`` lines; the last says ``...`` when cut."""
    out: list[str] = []
    for word in text.split():
        joined = f"{out[-1]} {word}" if out else word
        if out and _font().getlength(_text(joined)) <= width:
            out[-1] = joined
        else:
            out.append(word)
    out = [_fit(line, width) for line in out] or [""]
    return out if len(out) <= lines else [*out[: lines - 1], _fit(out[lines - 1], width, True)]


def header(labels: Sequence[str], cell: int) -> Image.Image:
    """The label strip: each label centred over its column (tests compare against it)."""
    strip = Image.new("RGB", (cell * len(labels), _line() + 6), _WHITE)
    draw = ImageDraw.Draw(strip)
    for k, label in enumerate(labels):
        text = _fit(label, cell - 4)
        left = k * cell + (cell - _font().getlength(text)) / 2
        draw.text((left, 3), text, fill=_INK, font=_font())
    return strip


def _caption(photo: Image.Image, lines: list[str]) -> Image.Image:
    """The input's name and explained class on a white band at the bottom of the photo."""
    photo = photo.convert("RGB")
    draw = ImageDraw.Draw(photo)
    top = photo.height - len(lines) * _line() - 4
    draw.rectangle((0, top, photo.width, photo.height), fill=_WHITE)
    for k, line in enumerate(lines):
        draw.text((3, top + 2 + k * _line()), _fit(line, photo.width - 6), fill=_INK, font=_font())
    return photo


def _not_available(reason: str, tile: int) -> Image.Image:
    """A grey tile saying ``n/a`` and why, in place of a heatmap."""
    image = Image.new("RGB", (tile, tile), _NA)
    draw = ImageDraw.Draw(image)
    lines = ["n/a:", *_wrap(reason, tile - 8, max(1, (tile - 8) // _line() - 1))]
    for k, line in enumerate(lines):
        draw.text((4, 4 + k * _line()), line, fill=_INK, font=_font())
    return image


def _picture(labels: Sequence[str], rows: Sequence[Sequence[Image.Image]], cell: int):
    """The header strip over rows of cells, each tile inside a ``PAD`` border."""
    strip = header(labels, cell)
    picture = Image.new("RGB", (strip.width, strip.height + cell * len(rows)), _BORDER)
    picture.paste(strip, (0, 0))
    for r, cells in enumerate(rows):
        for c, tile in enumerate(cells):
            picture.paste(tile, (c * cell + PAD, strip.height + r * cell + PAD))
    return picture
