"""``lrp explain``: maps its options onto :class:`lrp_cli.pipeline.ExplainRun` and an executor."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..outputs import CMAP_NAMES, OutputError
from .options import (
    device_options,
    fill,
    input_options,
    model_config,
    model_config_option,
    model_from,
    model_options,
    option,
    out_folder_option,
    start_option,
)
from .terminal import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PIPE,
    CliError,
    before_work,
    progress,
    say,
    say_error,
)


@click.command()
@input_options
@model_options
@model_config_option
@option(
    "-t",
    "--target",
    default="top1",
    help="Class to explain: top1 (each input's top class), a class index or a class name.",
)
@out_folder_option(
    "lrp-out", "Output folder; inputs from a folder keep their sub-folders under it."
)
@option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@device_options
@option(
    "--cmap",
    type=click.Choice(CMAP_NAMES),
    default="bwr",
    help="Diverging colour map (red positive, zero in the middle, blue negative).",
)
@option(
    "--vmax",
    type=click.FloatRange(min=0, min_open=True),
    help="Fixed colour-scale limit, for maps comparable across inputs "
    "(default: each map's largest |relevance|).",
)
@option(
    "--crop/--no-crop",
    default=True,
    help="The model's preprocessing (resize, centre crop), or --no-crop: the whole image, its "
    "shorter side resized to the model's resize size (models that take any input size).",
)
@option(
    "--overlay",
    is_flag=True,
    help="Also write NAME.overlay.png: the heatmap over the original photo at its resolution "
    "(cropped-away margins dimmed).",
)
@option("--alpha", type=click.FloatRange(0, 1), default=0.5, help="Heatmap opacity in overlays.")
@option(
    "--jsonl",
    metavar="PATH|-",
    help="Write one JSON record per input here ('-': stdout; a folder: records.jsonl in it, "
    "records-INDEX-of-COUNT.jsonl for a shard).",
)
@option(
    "--shard",
    metavar="INDEX/COUNT",
    help="Explain only this part of the inputs (0/4 ... 3/4), split by a hash of each input's "
    "path: start one process per part, on any machines. Default: torchrun's RANK/WORLD_SIZE or "
    "a Slurm array's task id and count, when set.",
)
@option(
    "--report",
    metavar="PATH",
    is_flag=False,
    flag_value="",
    default=None,
    help="At the end, write one self-contained HTML page of the run (thumbnails, classes, "
    "failures; filter and sort in the browser) to PATH, or OUT/index.html without a value "
    "(then give it after the inputs, or as --report=PATH: a bare --report takes the next word).",
)
@option("--overwrite", is_flag=True, help="Replace existing outputs.")
@option(
    "--skip-existing",
    is_flag=True,
    help="Keep inputs whose outputs all exist (resume an interrupted run).",
)
@option(
    "--workers",
    type=click.IntRange(min=0),
    help="Image-decoding processes of the local executor (default: up to 4, fewer than the CPU "
    "cores); Ray workers decode their own chunks.",
)
@option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="Where the work runs: here, or on a Ray cluster (pip install 'lrp-cli[ray]'), whose "
    "workers each hold the model and write their outputs (inputs and OUT must then be on a "
    "filesystem every node sees).",
)
@option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster to join (HOST:6379, ray://HOST:10001, auto). Default: RAY_ADDRESS, "
    "else a local Ray started for the run.",
)
@option(
    "--ray-workers",
    type=click.IntRange(min=1),
    default=1,
    help="Ray workers (actors), each with its own copy of the model.",
)
@option(
    "--cpus-per-worker",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    help="CPUs each Ray worker reserves (also its torch threads).",
)
@option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0.0,
    help="GPUs each Ray worker reserves (0.5: two workers share one GPU).",
)
@start_option
@option("-q", "--quiet", is_flag=True, help="Print errors only: no progress, no summary.")
def explain(inputs: tuple[str, ...], **opt: Any) -> None:
    """Explain images: heatmaps, relevance arrays and records.

    Writes a heatmap, the relevance and a JSON record for each input.

    INPUTS are image files, folders (searched recursively), glob patterns, '-' (paths read
    from stdin, one per line) and .npy files holding preprocessed inputs (C,H,W) or (N,C,H,W),
    explained as they are. For each input NAME this writes, at the model's input resolution:

    \b
      OUT/NAME.png          heatmap: red positive, white zero, blue negative
      OUT/NAME.npy          relevance summed over colour channels, float32 (H, W)
      OUT/NAME.overlay.png  with --overlay: the heatmap over the original photo
      OUT/index.html        with --report: one page of the whole run

    An (N,C,H,W) .npy file gives NAME.0.png, NAME.1.png, ... one per sample.

    Existing outputs are never replaced silently: pass --overwrite, or --skip-existing to
    resume an interrupted run. Exit status: 0 all inputs explained, 1 some failed (the others
    are done; one line each on stderr), 2 usage, config or model error, 130 interrupted.

    \b
    Examples:
      lrp explain sample_images/
      lrp explain cat.jpg dog.jpg --target "golden retriever" --overlay --cmap seismic
      lrp explain 'photos/**/*.jpg' -o heatmaps/ --skip-existing
      lrp explain photos/ -m resnet18 -w my_resnet18.pt --num-classes 10 -t 3
      lrp explain x.npy -m mypkg.nets:Net -w net.pt --input-size 32 \\
          --mean 0.5,0.5,0.5 --std 0.5,0.5,0.5
      ls *.jpg | lrp explain - --jsonl - | jq -r '[.input, .class_name] | @tsv'
    """
    from ..models import known_preprocessing
    from ..outputs import RecordWriter
    from ..pipeline import ExplainOptions, ExplainRun, early_decoder, select_inputs
    from ..pipeline.sharding import ShardError, records_file, resolve_shard

    if opt["overwrite"] and opt["skip_existing"]:
        raise click.UsageError("--overwrite and --skip-existing exclude each other")
    existing = "overwrite" if opt["overwrite"] else "skip" if opt["skip_existing"] else "error"
    options = fill(ExplainOptions, opt, existing=existing)
    try:
        shard = resolve_shard(opt["shard"])
    except ShardError as error:
        raise CliError(str(error)) from None
    # refused inputs are reported as records by the run, or here if it never starts
    selected = select_inputs(
        inputs, stdin=sys.stdin, null_separated=opt["null"], exclude=[opt["out"]], shard=shard
    )
    if shard is not None and not opt["quiet"]:
        say(f"{shard}: {len(selected.items)} of {selected.listed} inputs")
    known = known_preprocessing(
        opt["model"], input_size=opt["input_size"], mean=opt["mean"], std=opt["std"]
    )
    local = opt["executor"] == "local"  # Ray workers decode for themselves
    decoder = early_decoder(
        selected.items, known if opt["crop"] and local else None, opt["max_pixels"], opt["workers"]
    )
    try:
        with before_work():
            executor = _executor(opt, decoder)  # first: a missing extra is found at once
            rules = load_config(opt["config"]) if opt["config"] else None  # quicker: first
            loaded = model_from(opt)
            rules = rules or load_config(model_config(loaded))
            run = ExplainRun(loaded, rules, options)
            writer = RecordWriter(records_file(opt["jsonl"], shard)) if opt["jsonl"] else None
    except BaseException:
        for problem in selected.refused:
            say_error(problem)
        if decoder is not None:
            decoder.close()
        raise
    quiet = opt["quiet"]
    if not quiet:
        for warning in run.warnings:
            say(warning, "warning")
    report = None if opt["report"] is None else Path(opt["report"] or opt["out"] / "index.html")
    kept: list[dict] = []  # the records, for the report
    total = len(selected.items) + len(selected.refused)
    try:
        with progress(not quiet, total, "explaining") as advance:

            def on_records(records: list[dict]) -> bool:
                if report is not None:
                    kept.extend(records)
                for record in records:
                    if record["error"]:
                        say_error(record["error"])
                    if writer is not None and not writer.write(record):
                        return False
                advance()
                return True

            with before_work():  # an executor that cannot start: exit 2 too
                summary = run.run(
                    selected.items, on_records, refused=selected.refused, executor=executor
                )
    finally:
        if writer is not None:
            writer.close()
    failed = summary.failed
    if summary.stopped:
        sys.exit(EXIT_PIPE)
    # written last, so that its presence means the run is complete
    unreported = report is not None and not summary.interrupted
    unreported = unreported and not _write_report(report, kept, run, quiet)
    if not quiet or summary.interrupted:
        say(_explain_summary(summary, failed, opt["out"]))
    failed = failed or unreported
    sys.exit(EXIT_INTERRUPTED if summary.interrupted else EXIT_FAILED if failed else 0)


def _executor(opt: dict[str, Any], decoder):
    """The executor that --executor names (Ray is imported only when chosen)."""
    if opt["executor"] == "local":
        from ..pipeline import LocalExecutor

        return LocalExecutor(decoder)
    from ..pipeline.raydata import RayExecutor

    return RayExecutor(
        opt["ray_address"],
        opt["ray_workers"],
        opt["gpus_per_worker"],
        cpus_per_worker=opt["cpus_per_worker"],
    )


def _write_report(path: Path, records: list[dict], runner, quiet: bool) -> bool:
    """Write the run's HTML report; False (and one line on stderr) if it cannot be written."""
    from ..report import write_report

    try:
        write_report(
            path,
            records,
            runner.preprocessing,
            alpha=runner.options.alpha,
            max_pixels=runner.options.max_pixels,
        )
    except OutputError as error:
        say_error(f"report not written: {error}")
        return False
    if not quiet:
        say(f"report -> {path}")
    return True


def _explain_summary(summary, failed: int, out: Path) -> str:
    folder = f"{out}" if str(out).endswith(os.sep) else f"{out}{os.sep}"
    done = f"explained {summary.explained} of {summary.inputs} inputs"
    if not summary.interrupted and summary.explained + summary.skipped == summary.inputs:
        done = f"explained {summary.explained} inputs"
    counts = f"{summary.heatmaps} heatmaps, {failed} failed"
    if summary.skipped:
        counts += f", {summary.skipped} skipped (already done)"
    line = f"{done} -> {folder} ({counts})"
    if summary.interrupted:
        return f"interrupted: {line}; rerun with --skip-existing to finish"
    return line
