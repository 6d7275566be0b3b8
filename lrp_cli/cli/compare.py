"""``lrp compare``: several configs' heatmaps side by side."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..outputs import CMAP_NAMES
from .options import (
    cam_layer_option,
    collect,
    configs_option,
    device_options,
    fill,
    input_options,
    model_from,
    model_options,
    option,
    out_folder_option,
    start_option,
    target_option,
)
from .terminal import EXIT_FAILED, before_work, say, say_error, write_page


@click.command()
@input_options
@model_options
@configs_option(
    ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "gradient"],
    "A column: a preset, a YAML file, or the baseline gradient, gradient-x-input or gradcam; "
    "repeat for more columns, drawn in the order given.",
)
@target_option
@out_folder_option("lrp-out", "Output folder for NAME.compare.png, one picture per input.")
@option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every input in one picture here, one row per input.",
)
@option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML page of all the pictures here.",
)
@option(
    "--shared-scale",
    is_flag=True,
    help="One colour scale per row (its largest |relevance|) instead of one per heatmap.",
)
@option(
    "--cmap",
    type=click.Choice(CMAP_NAMES),
    default="bwr",
    help="Diverging colour map (red positive, zero in the middle, blue negative).",
)
@option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@device_options
@start_option
@cam_layer_option
@option("-q", "--quiet", is_flag=True, help="Print errors only: no warnings, no summary.")
def compare(inputs: tuple[str, ...], **opt: Any) -> None:
    """Heatmaps of several rule configs side by side, one picture per input.

    For each input NAME, OUT/NAME.compare.png shows the input crop (with its name and the
    explained class) and then one heatmap per -c, labelled, in the order given. A column is a
    preset (see 'lrp presets'), a YAML file, or the baseline gradient or gradient-x-input.
    Each heatmap is scaled to its own largest |relevance|; --shared-scale uses one scale per
    row. Every column explains all inputs in batches; existing pictures are replaced.

    A column that cannot be used with the model (a config error, a strict pattern that
    matches no layer, a rule refused, a model LRP cannot trace) is drawn as "n/a" with the
    reason, and the other columns are still drawn. Exit status: 0 all drawn, 1 some column,
    input or heatmap failed (one line each on stderr), 2 usage or model error.

    \b
    Examples:
      lrp compare sample_images/chelsea-cat.jpg -c epsilon -c epsilon-plus-flat -c gradient
      lrp compare sample_images/ -c zero -c epsilon -c epsilon-plus-flat -c epsilon-gamma-box \\
          -o compare/ --grid compare/grid.png --shared-scale
      lrp compare cat.jpg -m vgg16 -w vgg16.pth -c montavon-vgg16 -c my-rules.yaml -t tabby
    """
    from ..analysis.compare import CompareSettings
    from ..analysis.compare import compare as draw

    items, problems = collect(inputs, opt["null"], exclude=[opt["out"]])
    with before_work():
        loaded = model_from(opt)  # not via a config: one bad column must not stop the others
        settings = fill(CompareSettings, opt)
        result = draw(loaded, items, opt["configs"], opt["out"], settings, grid=opt["grid"])
    if not opt["quiet"]:
        for warning in result.warnings:
            say(warning, "warning")
    for message in result.problems + result.errors:
        say_error(message)
    rows, columns = result.grid_size
    if not rows:
        say_error("no input could be loaded: nothing to compare")
    elif not opt["quiet"]:
        count = len(result.written)
        say(f"wrote {count} picture{'s' * (count != 1)} ({rows} inputs x {columns} columns)")
    if opt["report"] is not None and rows:
        from ..analysis.pages import write_compare_page

        pictures = [p for p in result.written if p != opt["grid"]]  # the grid repeats them
        write_page(opt["report"], write_compare_page, pictures, result.problems + result.errors)
    sys.exit(EXIT_FAILED if problems or result.problems or result.errors or not rows else 0)
