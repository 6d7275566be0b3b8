"""``lrp spray``: SpRAy over the heatmaps of a run, or of inputs it explains first."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..outputs import CMAP_NAMES, OutputError
from .options import (
    collect,
    config_option,
    device_options,
    fill,
    input_file_options,
    model_from,
    model_options,
    option,
    out_folder_option,
    target_option,
)
from .terminal import (
    EXIT_FAILED,
    CliError,
    before_work,
    progress,
    say,
    say_error,
    table_console,
)


@click.command()
@click.argument("inputs", nargs=-1)
@input_file_options
@option(
    "--from",
    "source",
    type=click.Path(exists=True, path_type=Path),
    help="Reuse an earlier 'lrp explain' run: its output folder or its --jsonl records file "
    "(records give each map's class; without them all maps are one group).",
)
@model_options
@config_option
@target_option
@out_folder_option(
    "spray-out",
    "Output folder: spray.json, spray.html, clusters/ (and maps/ when explaining here).",
)
@option(
    "--class",
    "classes",
    multiple=True,
    help="Analyse only this class (index or name); repeat for more. Default: every class.",
)
@option("--clusters", type=click.IntRange(min=1), help="Fix the number of clusters per class "
         "(default: chosen by the eigengap).")  # fmt: skip
@option("--neighbors", type=click.IntRange(min=1), default=10, help="k of the kNN graph.")
@option(
    "--eigenvalues",
    type=click.IntRange(min=2),
    default=10,
    help="The eigengap is looked for among this many smallest eigenvalues.",
)
@option("--size", type=click.IntRange(min=2), default=32, help="Side maps are downscaled to.")
@option("--absolute", is_flag=True, help="Cluster |relevance| instead of signed relevance.")
@option("--seed", type=int, default=0, help="Seed of the eigensolver, k-means and t-SNE.")
@option(
    "--view",
    type=click.Choice(["tsne", "spectral"]),
    default="tsne",
    help="2-D picture of the embedding in the report: t-SNE, or two spectral coordinates.",
)
@option("--examples", type=click.IntRange(min=0), default=6, help="Inputs shown per cluster.")
@option("--min-maps", type=click.IntRange(min=3), default=10, help="Skip smaller classes.")
@option("--cmap", type=click.Choice(CMAP_NAMES), default="bwr", help="Heatmap colour map.")
@option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@device_options
@option("-q", "--quiet", is_flag=True, help="Print errors only: no progress, no table.")
def spray(inputs: tuple[str, ...], **opt: Any) -> None:
    """Find groups of heatmaps per class: Spectral Relevance Analysis (SpRAy).

    Lapuschkin et al. (2019), Unmasking Clever Hans predictors. Explains INPUTS (as 'lrp
    explain' does, into OUT/maps/ with its records) or reuses an earlier run with --from.
    Per class: maps downscaled and normalised, a k-nearest-neighbour graph, the eigenvectors
    of its normalised Laplacian, the number of clusters at the largest relative gap among the
    smallest eigenvalues (--clusters fixes it), and k-means. A small cluster cut off from the
    rest ('most atypical') is where to look for a shortcut such as a watermark.

    \b
    Writes:
      OUT/spray.json      per input its class, cluster, coordinates, distance to the centre;
                          per class the eigenvalues and eigengap; per cluster its size
      OUT/spray.html      the report (offline, self-contained)
      OUT/clusters/CLASS/cluster-J.png   the mean heatmap of each cluster

    Needs scikit-learn and scipy: pip install 'lrp-cli[analysis]'. Exit status: 0 done, 1 some
    input or map failed or nothing could be analysed, 2 usage, model or missing extra.

    \b
    Examples:
      lrp explain photos/ -o run/ --jsonl run/records.jsonl && lrp spray --from run/ -o spray/
      lrp spray data/horses/ -m resnet50 -w r50.pth -t horse -o spray/
      lrp spray --from run/ --class 3 --clusters 4 --seed 1
    """
    from ..analysis import spray_run
    from ..analysis.spray import MissingExtra, require_extra

    try:
        require_extra()
    except MissingExtra as error:
        raise CliError(str(error)) from None
    if bool(inputs) == bool(opt["source"]):
        raise click.UsageError("give INPUTS to explain or --from an earlier run (not both)")
    settings = fill(spray_run.SpraySettings, opt)
    errors: list[str] = []
    preprocessing = None
    if opt["source"] is not None:
        with before_work():
            maps, warnings = spray_run.read_run(opt["source"])
    else:
        maps, errors, warnings, preprocessing = _explain_for_spray(inputs, opt)
    if not opt["quiet"]:
        for warning in warnings:
            say(warning, "warning")
    try:
        result = spray_run.run(maps, opt["out"], settings, preprocessing)
    except (OutputError, OSError) as error:
        raise CliError(" ".join(str(error).split())) from None
    for message in result.errors:
        say_error(message)
    if not opt["quiet"]:
        for message in result.skipped:
            say(message, "warning")
    if not result.analyses:
        say_error("no class had enough maps to analyse (see --min-maps)")
        sys.exit(EXIT_FAILED)
    if not opt["quiet"]:
        _print_spray(result)
        say(f"report -> {opt['out'] / 'spray.html'}")
    sys.exit(EXIT_FAILED if errors or result.errors else 0)


def _explain_for_spray(inputs: tuple[str, ...], opt: dict[str, Any]):
    """Explain the inputs into OUT/maps/ as lrp explain does: (maps, errors, warnings, crop)."""
    from ..analysis.spray_run import explain_inputs
    from ..pipeline import ExplainOptions

    items, problems = collect(inputs, opt["null"], exclude=[opt["out"]])
    options = fill(ExplainOptions, opt, out=opt["out"] / "maps", existing="overwrite")
    with before_work():
        loaded = model_from(opt)
        rules = load_config(opt["config"])
        with progress(not opt["quiet"], len(items), "explaining") as advance:
            maps, errors, warnings = explain_inputs(loaded, rules, items, options, advance)
    for message in errors:
        say_error(message)
    return maps, problems + errors, warnings, loaded.preprocessing


def _print_spray(result) -> None:
    """One row per cluster: its class, size and isolation; the most atypical one flagged."""
    from rich.table import Table

    table = Table(
        title="SpRAy: clusters per class",
        caption="isolation: share of its neighbour-graph weight inside the cluster",
    )
    for column in ("class", "maps", "k", "eigengap", "cluster", "size", "isolation", ""):
        table.add_column(column, justify="left" if column in ("class", "") else "right")
    for analysis in result.analyses:
        r = analysis.result
        how = f"{r.k}" if r.chosen_by == "eigengap" else f"{r.k} (fixed)"
        for c in r.clusters:
            first = c.index == 0
            table.add_row(
                analysis.label if first else "",
                str(len(r.labels)) if first else "",
                how if first else "",
                f"{r.eigengap:.3g}" if first else "",
                str(c.index),
                f"{c.size} ({c.share:.0%})",
                f"{c.isolation:.2f}",
                "[bold red]most atypical[/]" if c.index == r.atypical else "",
            )
    table_console().print(table)
