"""The ``lrp`` command: a thin Click layer over lrp_cli's Python API.

Only click, PyYAML, Pillow and numpy are imported at start-up; torch, the engine and rich are
imported inside the commands, so that ``lrp --help`` answers at once. stdout carries only what
a command produces (records with ``--jsonl -``, tables); messages and progress go to stderr.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import ConfigError, list_presets, load_config
from .images import DEFAULT_MAX_PIXELS
from .messages import DEBUG_VARIABLE
from .models import BUILTIN_MODEL, ModelError
from .outputs import CMAP_NAMES, OutputError, silence_stdout

DEFAULT_CONFIG = "epsilon-plus-flat"
EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 1, 2, 130, 141


class CliError(click.ClickException):
    """A usage, config or model problem found before any work: one line, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        _say_error(self.format_message())


class _Lrp(click.Group):
    """Exit statuses of the conventions: 130 on Ctrl-C (not Click's 1), quiet on a closed pipe."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except click.Abort:
            _say_error("interrupted")
            code = EXIT_INTERRUPTED
        except click.ClickException as error:
            error.show()
            code = error.exit_code
        except BrokenPipeError:
            silence_stdout()
            code = EXIT_PIPE
        sys.exit(code if isinstance(code, int) else 0)


def console_main() -> None:
    """The ``lrp`` executable: :func:`main`, then, once torch is loaded, an exit that skips
    Python's teardown of torch (0.6 s per run here) after stdout and stderr are flushed;
    every output file is closed by then and worker processes and threads have finished."""
    try:
        main(prog_name="lrp")
        code = 0
    except SystemExit as done:
        code = done.code
    if not isinstance(code, int) or "torch" not in sys.modules:
        sys.exit(code)
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader went away, or stdout is closed
        code = code or EXIT_PIPE
    try:
        sys.stderr.flush()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(code)


# --------------------------------------------------------------------------------------------
# messages on stderr


_CONSOLE = None


def _console():
    """rich's stderr console: colour only on a terminal, and NO_COLOR / TERM=dumb honoured."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True, soft_wrap=True, highlight=False)
    return _CONSOLE


def _say(message: str, kind: str = "") -> None:
    """One line on stderr, prefixed ``error: `` or ``warning: `` (coloured on a terminal)."""
    from rich.text import Text

    styles = {"error": "bold red", "warning": "yellow"}
    prefix = (f"{kind}: ", styles[kind]) if kind else ""
    _console().print(Text.assemble(prefix, " ".join(message.splitlines())))


def _say_error(message: str) -> None:
    _say(message, "error")


@contextmanager
def _before_work() -> Iterator[None]:
    """Turn set-up errors (config, model, rules, device, output folder) into exit status 2."""
    from .engine import CompositeError, UnsupportedModelError
    from .pipeline.prepare import SetupError

    try:
        yield
    except (
        ConfigError,
        ModelError,
        UnsupportedModelError,
        CompositeError,
        SetupError,
        OutputError,
    ) as error:
        raise CliError(" ".join(str(error).split())) from None


@contextmanager
def _progress(enabled: bool, total: int, what: str):
    """A rich progress bar on stderr, only when it is a terminal (and not --quiet)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = _console()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not (enabled and console.is_terminal),
        transient=True,
    )
    with progress:
        task = progress.add_task(what, total=total)
        yield lambda: progress.advance(task)


# --------------------------------------------------------------------------------------------
# options shared by several commands


def _option(*names: str, **kwargs: Any) -> Callable:
    """click.option showing its environment variable (``LRP_<COMMAND>_<OPTION>``) in --help."""
    return click.option(*names, show_envvar=True, **kwargs)


class _Floats(click.ParamType):
    """Three comma-separated numbers, e.g. ``0.485,0.456,0.406``."""

    name = "R,G,B"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            numbers = tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a list of numbers such as 0.5,0.5,0.5", param, ctx)
        if len(numbers) != 3:
            self.fail(f"{value!r} needs 3 numbers (one per RGB channel)", param, ctx)
        return numbers


class _Names(click.ParamType):
    """Comma-separated names checked against a list that is loaded only when used.

    The evaluation names live in ``lrp_cli.analysis.evaluate`` (which imports torch): they are
    looked up when an option is parsed, never for ``--help``.
    """

    name = "NAME[,NAME...]"

    def __init__(self, names: Callable[[], Iterable[str]], single: bool = False) -> None:
        self.names = names
        self.single = single
        if single:
            self.name = "NAME"

    def convert(self, value, param, ctx):
        if isinstance(value, (tuple, list)):
            return value
        allowed = list(self.names())
        chosen = [v.strip() for v in str(value).split(",") if v.strip() and v.strip() != "none"]
        unknown = [v for v in chosen if v not in allowed]
        if unknown or (self.single and len(chosen) != 1):
            self.fail(f"{value!r}: choose from {', '.join(allowed)}", param, ctx)
        return chosen[0] if self.single else tuple(dict.fromkeys(chosen))


def _evaluate_names(attribute: str) -> Callable[[], Iterable[str]]:
    def names() -> Iterable[str]:
        from .analysis import evaluate

        return getattr(evaluate, attribute)

    return names


def _complete_presets(ctx, param, incomplete: str) -> list[str]:
    return [name for name in list_presets() if name.startswith(incomplete)]


def _options(*decorators: Callable) -> Callable:
    """Several Click decorators as one, applied in the order listed."""

    def apply(command: Callable) -> Callable:
        for decorator in reversed(decorators):
            command = decorator(command)
        return command

    return apply


# -m/--model, -w/--weights and the preprocessing overrides
_model_options = _options(
    _option(
        "-m",
        "--model",
        default=BUILTIN_MODEL,
        help="Model: the built-in efficientnet_lite0, a torchvision classification model "
        "name (resnet50, vgg16...), timm:NAME (the timm extra), or package.module:callable "
        "for your own.",
    ),
    _option(
        "-w",
        "--weights",
        type=click.Path(dir_okay=False),
        help="State dict (.pt/.pth read without running code, or .safetensors). "
        "Default: the model's pretrained weights, if available offline.",
    ),
    _option(
        "--input-size",
        type=click.IntRange(min=1),
        help="Side of the square model input in pixels (default: the model's).",
    ),
    _option("--mean", type=_Floats(), help="Per-channel normalisation mean (default: model's)"),
    _option("--std", type=_Floats(), help="Per-channel normalisation std (default: model's)"),
    _option(
        "--num-classes",
        type=click.IntRange(min=1),
        help="Number of classes of the model in --weights (default: the model's).",
    ),
)
_input_file_options = _options(
    _option(
        "-0",
        "--null",
        is_flag=True,
        help="With '-': the paths on stdin are separated by NUL bytes (find -print0).",
    ),
    _option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        help="Refuse images with more pixels (decompression-bomb guard).",
    ),
)
_input_options = _options(click.argument("inputs", nargs=-1, required=True), _input_file_options)
_device_options = _options(
    _option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        help="Where to compute: auto picks a CUDA GPU when PyTorch sees one.",
    ),
    _option(
        "--precision",
        type=click.Choice(["float32", "float64"]),
        default="float32",
        help="Floating-point precision of the computation.",
    ),
)
_target_option = _option(
    "-t", "--target", default="top1", help="Class: top1, a class index or a class name."
)


def _out_folder_option(default: str, help: str) -> Callable:
    """``-o/--out``: the command's output folder."""
    return _option(
        "-o",
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        help=help,
    )


_config_option = _option(
    "-c",
    "--config",
    default=DEFAULT_CONFIG,
    shell_complete=_complete_presets,
    help="Rule config: a preset name (see 'lrp presets') or a YAML file.",
)


# explain, inspect, evaluate: without -c, the model's recommended preset (see _model_config)
_model_config_option = _option(
    "-c",
    "--config",
    default=None,
    shell_complete=_complete_presets,
    help="Rule config: a preset name (see 'lrp presets') or a YAML file. Default: the model's "
    f"recommended preset (epsilon-gamma-box for the built-in model), else {DEFAULT_CONFIG}.",
)


def _model_config(loaded) -> str:
    """The preset used when no -c is given: the model's recommendation, else the default."""
    return loaded.recommended_config or DEFAULT_CONFIG


_start_option = _option(
    "--start",
    type=click.Choice(["logit", "log-odds"]),
    default="logit",
    help="Where relevance starts: the target's logit, or its log-odds log p/(1-p) "
    "(Montavon et al.'s top layer: softmin over the class margins, LRP-0 on the last layer).",
)
_cam_layer_option = _option(
    "--cam-layer",
    metavar="NAME",
    help="Module whose output Grad-CAM uses (default: the last one with a spatial output).",
)


def _configs_option(default: list[str], help: str) -> Callable:
    """``-c/--config`` given several times: the configs (or baselines) to put side by side."""
    return _option(
        "-c",
        "--config",
        "configs",
        multiple=True,
        default=default,
        shell_complete=_complete_presets,
        help=help,
    )


def _load_model(opt: dict[str, Any]):
    """The model that the model options name (after the config: that check is quicker)."""
    from .models import load_model

    return load_model(
        opt["model"],
        opt["weights"],
        input_size=opt["input_size"],
        mean=opt["mean"],
        std=opt["std"],
        num_classes=opt["num_classes"],
    )


def _collect(inputs: tuple[str, ...], null: bool, exclude: Iterable[Path] = (), say=True):
    """The input files; each spec that yields nothing is reported on stderr (with ``say``)."""
    from .images import collect_inputs

    items, problems = collect_inputs(
        list(inputs), stdin=sys.stdin, null_separated=null, exclude=list(exclude)
    )
    for problem in problems if say else ():
        _say_error(problem)
    return items, problems


# --------------------------------------------------------------------------------------------
# the commands


@click.group(
    cls=_Lrp,
    context_settings={
        "auto_envvar_prefix": "LRP",
        "show_default": True,
        "help_option_names": ["-h", "--help"],
        "max_content_width": 100,
    },
)
@click.version_option(__version__, "-V", "--version", prog_name="lrp")
@click.option(
    "--debug",
    is_flag=True,
    envvar="LRP_DEBUG",
    help="Also print the traceback of each unexpected error (an engine, model or decoder "
    "failure), which is otherwise one line.",
)
def main(debug: bool) -> None:
    """Explain PyTorch image classifiers with Layer-wise Relevance Propagation (LRP).

    Every option can also be set in the environment: LRP_<COMMAND>_<OPTION>, e.g.
    LRP_EXPLAIN_DEVICE=cpu (a flag on the command line wins).

    \b
    Examples:
      lrp explain sample_images/                 # heatmaps of the photos -> lrp-out/
      lrp explain cat.jpg -t tabby --overlay     # a chosen class, blended over the photo
      lrp explain photos/ -m resnet50 -w resnet50.pth -c epsilon-gamma-box
      find data -name '*.png' -print0 | lrp explain - -0 --jsonl - > records.jsonl
      lrp presets                                # the shipped rule configs
      lrp inspect -c montavon-vgg16 -m vgg16     # which layer gets which rule, and why
      lrp evaluate sample_images/ -c epsilon-plus-flat -c epsilon --baseline random,gradient
    """
    if debug:
        os.environ[DEBUG_VARIABLE] = "1"


@main.command()
@_input_options
@_model_options
@_model_config_option
@_option(
    "-t",
    "--target",
    default="top1",
    help="Class to explain: top1 (each input's top class), a class index or a class name.",
)
@_out_folder_option(
    "lrp-out", "Output folder; inputs from a folder keep their sub-folders under it."
)
@_option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@_device_options
@_option(
    "--cmap",
    type=click.Choice(CMAP_NAMES),
    default="bwr",
    help="Diverging colour map (red positive, zero in the middle, blue negative).",
)
@_option(
    "--vmax",
    type=click.FloatRange(min=0, min_open=True),
    help="Fixed colour-scale limit, for maps comparable across inputs "
    "(default: each map's largest |relevance|).",
)
@_option(
    "--crop/--no-crop",
    default=True,
    help="The model's preprocessing (resize, centre crop), or --no-crop: the whole image, its "
    "shorter side resized to the model's resize size (models that take any input size).",
)
@_option(
    "--overlay",
    is_flag=True,
    help="Also write NAME.overlay.png: the heatmap over the original photo at its resolution "
    "(cropped-away margins dimmed).",
)
@_option("--alpha", type=click.FloatRange(0, 1), default=0.5, help="Heatmap opacity in overlays.")
@_option(
    "--jsonl",
    metavar="PATH|-",
    help="Write one JSON record per input here ('-': stdout; a folder: records.jsonl in it, "
    "records-INDEX-of-COUNT.jsonl for a shard).",
)
@_option(
    "--shard",
    metavar="INDEX/COUNT",
    help="Explain only this part of the inputs (0/4 ... 3/4), split by a hash of each input's "
    "path: start one process per part, on any machines. Default: torchrun's RANK/WORLD_SIZE or "
    "a Slurm array's task id and count, when set.",
)
@_option(
    "--report",
    metavar="PATH",
    is_flag=False,
    flag_value="",
    default=None,
    help="At the end, write one self-contained HTML page of the run (thumbnails, classes, "
    "failures; filter and sort in the browser) to PATH, or OUT/index.html without a value "
    "(then give it after the inputs, or as --report=PATH: a bare --report takes the next word).",
)
@_option("--overwrite", is_flag=True, help="Replace existing outputs.")
@_option(
    "--skip-existing",
    is_flag=True,
    help="Keep inputs whose outputs all exist (resume an interrupted run).",
)
@_option(
    "--workers",
    type=click.IntRange(min=0),
    help="Image-decoding processes (default: up to 4, fewer than the CPU cores).",
)
@_option(
    "--executor",
    type=click.Choice(["local", "ray"]),
    default="local",
    help="Where the work runs: here, or on a Ray cluster (pip install 'lrp-cli[ray]'), whose "
    "workers each hold the model and write their outputs (inputs and OUT must then be on a "
    "filesystem every node sees).",
)
@_option(
    "--ray-address",
    metavar="ADDR",
    help="The Ray cluster to join (HOST:6379, ray://HOST:10001, auto). Default: RAY_ADDRESS, "
    "else a local Ray started for the run.",
)
@_option(
    "--ray-workers",
    type=click.IntRange(min=1),
    default=1,
    help="Ray workers (actors), each with its own copy of the model.",
)
@_option(
    "--cpus-per-worker",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    help="CPUs each Ray worker reserves (also its torch threads).",
)
@_option(
    "--gpus-per-worker",
    type=click.FloatRange(min=0),
    default=0.0,
    help="GPUs each Ray worker reserves (0.5: two workers share one GPU).",
)
@_start_option
@_option("-q", "--quiet", is_flag=True, help="Print errors only: no progress, no summary.")
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
    from .models import known_preprocessing
    from .outputs import RecordWriter
    from .pipeline import ExplainOptions, ExplainRun, early_decoder, select_inputs
    from .pipeline.sharding import ShardError, records_file, resolve_shard

    if opt["overwrite"] and opt["skip_existing"]:
        raise click.UsageError("--overwrite and --skip-existing exclude each other")
    existing = "overwrite" if opt["overwrite"] else "skip" if opt["skip_existing"] else "error"
    options = _fill(ExplainOptions, opt, existing=existing)
    try:
        shard = resolve_shard(opt["shard"])
    except ShardError as error:
        raise CliError(str(error)) from None
    # refused inputs are reported as records by the run, or here if it never starts
    selected = select_inputs(
        inputs, stdin=sys.stdin, null_separated=opt["null"], exclude=[opt["out"]], shard=shard
    )
    if shard is not None and not opt["quiet"]:
        _say(f"{shard}: {len(selected.items)} of {selected.listed} inputs")
    known = known_preprocessing(
        opt["model"], input_size=opt["input_size"], mean=opt["mean"], std=opt["std"]
    )
    local = opt["executor"] == "local"  # Ray workers decode for themselves
    decoder = early_decoder(
        selected.items, known if opt["crop"] and local else None, opt["max_pixels"], opt["workers"]
    )
    try:
        with _before_work():
            executor = _executor(opt, decoder)  # first: a missing extra is found at once
            rules = load_config(opt["config"]) if opt["config"] else None  # quicker: first
            loaded = _load_model(opt)
            rules = rules or load_config(_model_config(loaded))
            run = ExplainRun(loaded, rules, options)
            writer = RecordWriter(records_file(opt["jsonl"], shard)) if opt["jsonl"] else None
    except BaseException:
        for problem in selected.refused:
            _say_error(problem)
        if decoder is not None:
            decoder.close()
        raise
    quiet = opt["quiet"]
    if not quiet:
        for warning in run.warnings:
            _say(warning, "warning")
    report = None if opt["report"] is None else Path(opt["report"] or opt["out"] / "index.html")
    kept: list[dict] = []  # the records, for the report
    total = len(selected.items) + len(selected.refused)
    try:
        with _progress(not quiet, total, "explaining") as advance:

            def on_records(records: list[dict]) -> bool:
                if report is not None:
                    kept.extend(records)
                for record in records:
                    if record["error"]:
                        _say_error(record["error"])
                    if writer is not None and not writer.write(record):
                        return False
                advance()
                return True

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
        _say(_explain_summary(summary, failed, opt["out"]))
    failed = failed or unreported
    sys.exit(EXIT_INTERRUPTED if summary.interrupted else EXIT_FAILED if failed else 0)


def _fill(settings: type, opt: dict[str, Any], **given: Any):
    """The options dataclass ``settings`` from the command's options of the same names: the
    one way options reach the Python API (``given`` adds those that have no option)."""
    from dataclasses import fields

    names = {f.name for f in fields(settings) if f.init}
    chosen = {name: opt[name] for name in names if name in opt and name not in given}
    return settings(**chosen, **given)


def _executor(opt: dict[str, Any], decoder):
    """The executor that --executor names (Ray is imported only when chosen)."""
    if opt["executor"] == "local":
        from .pipeline import LocalExecutor

        return LocalExecutor(decoder)
    from .pipeline.raydata import RayExecutor

    return RayExecutor(
        opt["ray_address"],
        opt["ray_workers"],
        opt["gpus_per_worker"],
        cpus_per_worker=opt["cpus_per_worker"],
    )


def _write_report(path: Path, records: list[dict], runner, quiet: bool) -> bool:
    """Write the run's HTML report; False (and one line on stderr) if it cannot be written."""
    from .report import write_report

    try:
        write_report(
            path,
            records,
            runner.preprocessing,
            alpha=runner.options.alpha,
            max_pixels=runner.options.max_pixels,
        )
    except OutputError as error:
        _say_error(f"report not written: {error}")
        return False
    if not quiet:
        _say(f"report -> {path}")
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


@main.command()
def presets() -> None:
    """List the shipped rule configs (use a name with -c/--config).

    \b
    Examples:
      lrp presets
      lrp explain photo.jpg -c epsilon-gamma-box
      cp "$(python -c 'import lrp_cli.configs as c; print(c.__path__[0])')/epsilon.yaml" my.yaml
    """
    entries = list_presets()
    width = max(map(len, entries), default=0)
    for name, description in entries.items():
        click.echo(f"{name:<{width}}  {description}")


@main.command()
@_model_options
@_model_config_option
def inspect(**opt: Any) -> None:
    """Show the rule each layer of a model gets from a config.

    Lists every layer with the LRP rule the config gives it, and why: convolutions, dense
    layers, BatchNorms, LayerNorms, LRN, and the gates, attention blocks and products with
    their treatment. 'none reaches it' marks layers that get no relevance (a gate's branch,
    attention's queries and keys under CP-LRP).

    The 'source' column names the config entry (file:line) that chose the rule, or 'default'.
    Config entries that match no layer are listed at the end: usually a typo in a pattern.

    \b
    Examples:
      lrp inspect
      lrp inspect -m vgg16 -w vgg16.pth -c montavon-vgg16
      lrp inspect -m resnet18 -w model.pt --num-classes 10 -c my-rules.yaml
    """
    from rich.table import Table

    from .pipeline.prepare import build_explainer

    with _before_work():
        rules = load_config(opt["config"]) if opt["config"] else None
        loaded = _load_model(opt)
        rules = rules or load_config(_model_config(loaded))
        explainer, _ = build_explainer(loaded, rules)
    table = Table(title=f"{loaded.name} under {rules.name} ({rules.source})")
    for column in ("#", "layer", "type", "rule", "source", "folded BatchNorm", "relevance"):
        table.add_column(column, overflow="fold")
    for number, layer in enumerate(explainer.layer_rules, start=1):
        reached = "" if layer.relevance else "none reaches it"
        table.add_row(
            str(number), layer.name, layer.type, layer.rule, layer.source, layer.folded or "",
            reached,
        )  # fmt: skip
    console = _table_console()
    console.print(table)
    unmatched = explainer.assignment.unmatched
    if not unmatched:
        console.print("every config entry matches at least one layer")
    for entry in unmatched:
        console.print(
            f"unmatched: {entry.origin + ': ' if entry.origin else ''}{entry.match.describe()}",
            markup=False,
        )


@main.command()
@_input_options
@_model_options
@_configs_option(
    [],
    "Rule config to evaluate (preset or YAML file); repeat to compare several. Default: "
    "the model's recommended preset (epsilon-gamma-box for the built-in model), else "
    f"{DEFAULT_CONFIG}.",
)
@_option(
    "--baseline",
    type=_Names(_evaluate_names("BASELINES")),
    default="random",
    help="Comparison methods: random, gradient, gradient-x-input, gradcam (comma-separated; none).",
)
@_cam_layer_option
@_option("--region", type=click.IntRange(min=1), default=32, help="Side of the square regions.")
@_option(
    "--steps",
    type=click.IntRange(min=1),
    default=12,
    help="Regions perturbed in all (12 of the 49 regions of 32 px in a 224 px input: a quarter).",
)
@_option(
    "--perturbation",
    type=_Names(_evaluate_names("PERTURBATIONS"), single=True),
    default="blur",
    help="Replace regions by: blur (a Gaussian-blurred copy, sigma = region / 2), uniform "
    "(noise), constant (0) or road (ROAD's noisy linear imputation from the neighbouring "
    "pixels: nearest the data, about 4x slower).",
)
@_option(
    "--noise",
    type=click.FloatRange(min=0),
    default=0.01,
    help="Standard deviation of ROAD's noise (normalised input units).",
)
@_option(
    "--order",
    type=_Names(_evaluate_names("ORDERS")),
    default="morf,lerf",
    help="Orders: morf (most relevant first), lerf (least relevant first), random; "
    "morf and lerf together give the SRG.",
)
@_option(
    "--score",
    type=_Names(_evaluate_names("SCORES"), single=True),
    default="logit",
    help="What is measured: the target's logit, its probability or its log-odds.",
)
@_start_option
@_target_option
@_option("--seed", type=int, default=0, help="Seed of the noise and random orders.")
@_option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    help="Perturbed copies per forward pass.",
)
@_device_options
@_option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every curve (mean and per image) as JSON here.",
)
@_option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG plot of the mean curves here (needs matplotlib).",
)
@_option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML page of the results (and the --plot) here.",
)
@_option("-q", "--quiet", is_flag=True, help="Print errors only: no progress.")
def evaluate(inputs: tuple[str, ...], **opt: Any) -> None:
    """Measure how faithful heatmaps are (region perturbation: SRG, AOPC).

    Region perturbation as in Samek et al. (2017), Evaluating the visualization of what a deep
    neural network has learned, in both orders (Blücher et al. 2024).

    The image is cut into REGION x REGION squares; they are replaced one after another, most
    relevant first (morf) and least relevant first (lerf), and the target's score is measured
    after each step. The headline is the symmetric relevance gain SRG = AUC(lerf) - AUC(morf):
    large when removing the most relevant regions hurts and removing the least relevant does
    not; what the perturbation itself does to the model cancels out, and a random map gets
    about 0. AOPC (area over the curve: large for morf, small for lerf) and AUC are shown too;
    --order random measures a random order once (how much the perturbation alone moves the
    score). Every method sees the same noise (same --seed). The defaults (blur, 32 px regions,
    12 steps) were chosen by measurement: README.md, "How faithful is a heatmap?".

    \b
    Examples:
      lrp evaluate sample_images/
      lrp evaluate sample_images/ -c epsilon-gamma-box -c epsilon -c zero \\
          --baseline random,gradient,gradient-x-input,gradcam --plot curves.png
      lrp evaluate photos/ -m resnet50 -w r50.pth --perturbation road --json curves.json
    """
    from .analysis.evaluate_run import Evaluation, EvaluationSettings

    if opt["plot"] is not None and _missing("matplotlib"):
        raise CliError("--plot needs matplotlib: pip install 'lrp-cli[plots]'")
    if not opt["order"]:
        raise click.BadParameter("give at least one order", param_hint="--order")
    items, problems = _collect(inputs, opt["null"])
    with _before_work():
        rules = [load_config(name) for name in opt["configs"]]
        loaded = _load_model(opt)
        rules = rules or [load_config(_model_config(loaded))]
        settings = _fill(EvaluationSettings, opt, orders=opt["order"])
        evaluation = Evaluation(loaded, rules, opt["baseline"], settings)
    if not opt["quiet"]:
        for warning in evaluation.warnings:
            _say(warning, "warning")
    failures = evaluation.load(items, opt["max_pixels"])
    for message in failures:
        _say_error(message)
    if not evaluation.inputs:
        _say_error("no input could be loaded: nothing to evaluate")
        sys.exit(EXIT_FAILED)
    with _progress(not opt["quiet"], evaluation.tasks, "evaluating") as advance:
        results, errors = evaluation.run(advance)
    for message in errors:
        _say_error(message)
    if results:
        _print_results(results, evaluation)
        if not opt["quiet"]:
            _say(evaluation.timing())
        _write_results(results, opt["json_path"], opt["plot"], evaluation)
        if opt["report"] is not None:
            from .analysis.pages import write_evaluate_page

            page_args = (results, evaluation.describe(), opt["plot"])
            _write_page(opt["report"], write_evaluate_page, *page_args)
    sys.exit(EXIT_FAILED if problems or failures or errors else 0)


def _table_console():
    """A rich console for tables on stdout; a file or pipe never folds them into narrow columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=1000)


def _missing(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is None


def _print_results(results, evaluation) -> None:
    from rich.table import Table

    table = Table(
        title=f"region perturbation: {evaluation.describe()}",
        caption="mean ± spread (std) over images. SRG = AUC(LeRF) - AUC(MoRF): larger is "
        "better, a random map gives about 0. MoRF: larger AOPC is better; LeRF: smaller",
    )
    for column in ("method", "order", "SRG", "AOPC", "AUC", "images"):
        table.add_column(column, justify="left" if column in ("method", "order") else "right")
    for r in results:
        table.add_row(
            r.method,
            r.order,
            "" if r.srg is None else f"{r.srg:.4g} ± {r.srg_std:.2g}",
            f"{r.aopc:.4g} ± {r.aopc_std:.2g}",
            f"{r.auc:.4g} ± {r.auc_std:.2g}",
            str(len(r.per_image)),
        )
    _table_console().print(table)


def _write_results(results, json_path: Path | None, plot: Path | None, evaluation) -> None:
    import json

    from .analysis.evaluate import plot_curves, results_to_json
    from .outputs import atomic_write

    try:
        if json_path is not None:
            data = json.dumps(results_to_json(results), indent=1).encode("utf-8")
            atomic_write(json_path, lambda handle: handle.write(data))
            _say(f"curves -> {json_path}")
        if plot is not None:
            plot_curves(results, plot, title=evaluation.describe())
            _say(f"plot -> {plot}")
    except (OutputError, OSError) as error:
        raise CliError(" ".join(str(error).split())) from None


@main.command()
@_input_options
@_model_options
@_configs_option(
    ["epsilon", "epsilon-plus-flat", "epsilon-gamma-box", "gradient"],
    "A column: a preset, a YAML file, or the baseline gradient, gradient-x-input or gradcam; "
    "repeat for more columns, drawn in the order given.",
)
@_target_option
@_out_folder_option("lrp-out", "Output folder for NAME.compare.png, one picture per input.")
@_option(
    "--grid",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write every input in one picture here, one row per input.",
)
@_option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML page of all the pictures here.",
)
@_option(
    "--shared-scale",
    is_flag=True,
    help="One colour scale per row (its largest |relevance|) instead of one per heatmap.",
)
@_option(
    "--cmap",
    type=click.Choice(CMAP_NAMES),
    default="bwr",
    help="Diverging colour map (red positive, zero in the middle, blue negative).",
)
@_option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@_device_options
@_start_option
@_cam_layer_option
@_option("-q", "--quiet", is_flag=True, help="Print errors only: no warnings, no summary.")
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
    from .analysis.compare import CompareSettings
    from .analysis.compare import compare as draw

    items, problems = _collect(inputs, opt["null"], exclude=[opt["out"]])
    with _before_work():
        loaded = _load_model(opt)  # not via a config: one bad column must not stop the others
        settings = _fill(CompareSettings, opt)
        result = draw(loaded, items, opt["configs"], opt["out"], settings, grid=opt["grid"])
    if not opt["quiet"]:
        for warning in result.warnings:
            _say(warning, "warning")
    for message in result.problems + result.errors:
        _say_error(message)
    rows, columns = result.grid_size
    if not rows:
        _say_error("no input could be loaded: nothing to compare")
    elif not opt["quiet"]:
        count = len(result.written)
        _say(f"wrote {count} picture{'s' * (count != 1)} ({rows} inputs x {columns} columns)")
    if opt["report"] is not None and rows:
        from .analysis.pages import write_compare_page

        pictures = [p for p in result.written if p != opt["grid"]]  # the grid repeats them
        _write_page(opt["report"], write_compare_page, pictures, result.problems + result.errors)
    sys.exit(EXIT_FAILED if problems or result.problems or result.errors or not rows else 0)


def _write_page(path: Path, write: Callable, *args: Any) -> None:
    """An analysis page (--report); a page that cannot be written is a one-line error."""
    try:
        write(path, *args)
    except (OutputError, OSError) as error:
        raise CliError(f"report not written: {' '.join(str(error).split())}") from None
    _say(f"report -> {path}")


@main.command()
@click.argument("inputs", nargs=-1)
@_input_file_options
@_option(
    "--from",
    "source",
    type=click.Path(exists=True, path_type=Path),
    help="Reuse an earlier 'lrp explain' run: its output folder or its --jsonl records file "
    "(records give each map's class; without them all maps are one group).",
)
@_model_options
@_config_option
@_target_option
@_out_folder_option(
    "spray-out",
    "Output folder: spray.json, spray.html, clusters/ (and maps/ when explaining here).",
)
@_option(
    "--class",
    "classes",
    multiple=True,
    help="Analyse only this class (index or name); repeat for more. Default: every class.",
)
@_option("--clusters", type=click.IntRange(min=1), help="Fix the number of clusters per class "
         "(default: chosen by the eigengap).")  # fmt: skip
@_option("--neighbors", type=click.IntRange(min=1), default=10, help="k of the kNN graph.")
@_option(
    "--eigenvalues",
    type=click.IntRange(min=2),
    default=10,
    help="The eigengap is looked for among this many smallest eigenvalues.",
)
@_option("--size", type=click.IntRange(min=2), default=32, help="Side maps are downscaled to.")
@_option("--absolute", is_flag=True, help="Cluster |relevance| instead of signed relevance.")
@_option("--seed", type=int, default=0, help="Seed of the eigensolver, k-means and t-SNE.")
@_option(
    "--view",
    type=click.Choice(["tsne", "spectral"]),
    default="tsne",
    help="2-D picture of the embedding in the report: t-SNE, or two spectral coordinates.",
)
@_option("--examples", type=click.IntRange(min=0), default=6, help="Inputs shown per cluster.")
@_option("--min-maps", type=click.IntRange(min=3), default=10, help="Skip smaller classes.")
@_option("--cmap", type=click.Choice(CMAP_NAMES), default="bwr", help="Heatmap colour map.")
@_option("--batch-size", type=click.IntRange(min=1), default=8, help="Inputs per engine call.")
@_device_options
@_option("-q", "--quiet", is_flag=True, help="Print errors only: no progress, no table.")
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
    from .analysis import spray_run
    from .analysis.spray import MissingExtra, require_extra

    try:
        require_extra()
    except MissingExtra as error:
        raise CliError(str(error)) from None
    if bool(inputs) == bool(opt["source"]):
        raise click.UsageError("give INPUTS to explain or --from an earlier run (not both)")
    settings = _fill(spray_run.SpraySettings, opt)
    errors: list[str] = []
    preprocessing = None
    if opt["source"] is not None:
        with _before_work():
            maps, warnings = spray_run.read_run(opt["source"])
    else:
        maps, errors, warnings, preprocessing = _explain_for_spray(inputs, opt)
    if not opt["quiet"]:
        for warning in warnings:
            _say(warning, "warning")
    try:
        result = spray_run.run(maps, opt["out"], settings, preprocessing)
    except (OutputError, OSError) as error:
        raise CliError(" ".join(str(error).split())) from None
    for message in result.errors:
        _say_error(message)
    if not opt["quiet"]:
        for message in result.skipped:
            _say(message, "warning")
    if not result.analyses:
        _say_error("no class had enough maps to analyse (see --min-maps)")
        sys.exit(EXIT_FAILED)
    if not opt["quiet"]:
        _print_spray(result)
        _say(f"report -> {opt['out'] / 'spray.html'}")
    sys.exit(EXIT_FAILED if errors or result.errors else 0)


def _explain_for_spray(inputs: tuple[str, ...], opt: dict[str, Any]):
    """Explain the inputs into OUT/maps/ as lrp explain does: (maps, errors, warnings, crop)."""
    from .analysis.spray_run import explain_inputs
    from .pipeline import ExplainOptions

    items, problems = _collect(inputs, opt["null"], exclude=[opt["out"]])
    options = _fill(ExplainOptions, opt, out=opt["out"] / "maps", existing="overwrite")
    with _before_work():
        loaded = _load_model(opt)
        rules = load_config(opt["config"])
        with _progress(not opt["quiet"], len(items), "explaining") as advance:
            maps, errors, warnings = explain_inputs(loaded, rules, items, options, advance)
    for message in errors:
        _say_error(message)
    return maps, problems + errors, warnings, loaded.preprocessing


def _print_spray(result) -> None:
    """One row per cluster: its class, size and isolation; the most atypical one flagged."""
    from rich.console import Console
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
    console = Console()
    if not console.is_terminal:  # a file or pipe: never fold the table into narrow columns
        console = Console(width=1000)
    console.print(table)
