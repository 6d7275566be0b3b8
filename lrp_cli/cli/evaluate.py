"""``lrp evaluate``: region perturbation of heatmaps, as a table, JSON, a plot or a page."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..config import load_config
from ..outputs import OutputError
from .options import (
    DEFAULT_CONFIG,
    Names,
    cam_layer_option,
    collect,
    configs_option,
    device_options,
    evaluate_names,
    fill,
    input_options,
    model_config,
    model_from,
    model_options,
    option,
    start_option,
    target_option,
)
from .terminal import (
    EXIT_FAILED,
    CliError,
    before_work,
    missing,
    progress,
    say,
    say_error,
    table_console,
    write_page,
)


@click.command()
@input_options
@model_options
@configs_option(
    [],
    "Rule config to evaluate (preset or YAML file); repeat to compare several. Default: "
    "the model's recommended preset (epsilon-gamma-box for the built-in model), else "
    f"{DEFAULT_CONFIG}.",
)
@option(
    "--baseline",
    type=Names(evaluate_names("BASELINES")),
    default="random",
    help="Comparison methods: random, gradient, gradient-x-input, gradcam (comma-separated; none).",
)
@cam_layer_option
@option("--region", type=click.IntRange(min=1), default=32, help="Side of the square regions.")
@option(
    "--steps",
    type=click.IntRange(min=1),
    default=12,
    help="Regions perturbed in all (12 of the 49 regions of 32 px in a 224 px input: a quarter).",
)
@option(
    "--perturbation",
    type=Names(evaluate_names("PERTURBATIONS"), single=True),
    default="blur",
    help="Replace regions by: blur (a Gaussian-blurred copy, sigma = region / 2), uniform "
    "(noise), constant (0) or road (ROAD's noisy linear imputation from the neighbouring "
    "pixels: nearest the data, about 4x slower).",
)
@option(
    "--noise",
    type=click.FloatRange(min=0),
    default=0.01,
    help="Standard deviation of ROAD's noise (normalised input units).",
)
@option(
    "--order",
    type=Names(evaluate_names("ORDERS")),
    default="morf,lerf",
    help="Orders: morf (most relevant first), lerf (least relevant first), random; "
    "morf and lerf together give the SRG.",
)
@option(
    "--score",
    type=Names(evaluate_names("SCORES"), single=True),
    default="logit",
    help="What is measured: the target's logit, its probability or its log-odds.",
)
@start_option
@target_option
@option("--seed", type=int, default=0, help="Seed of the noise and random orders.")
@option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=32,
    help="Perturbed copies per forward pass.",
)
@device_options
@option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every curve (mean and per image) as JSON here.",
)
@option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a PNG plot of the mean curves here (needs matplotlib).",
)
@option(
    "--report",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write one self-contained HTML page of the results (and the --plot) here.",
)
@option("-q", "--quiet", is_flag=True, help="Print errors only: no progress.")
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
    from ..analysis.evaluate_run import Evaluation, EvaluationSettings

    if opt["plot"] is not None and missing("matplotlib"):
        raise CliError("--plot needs matplotlib: pip install 'lrp-cli[plots]'")
    if not opt["order"]:
        raise click.BadParameter("give at least one order", param_hint="--order")
    items, problems = collect(inputs, opt["null"])
    with before_work():
        rules = [load_config(name) for name in opt["configs"]]
        loaded = model_from(opt)
        rules = rules or [load_config(model_config(loaded))]
        settings = fill(EvaluationSettings, opt, orders=opt["order"])
        evaluation = Evaluation(loaded, rules, opt["baseline"], settings)
    if not opt["quiet"]:
        for warning in evaluation.warnings:
            say(warning, "warning")
    failures = evaluation.load(items, opt["max_pixels"])
    for message in failures:
        say_error(message)
    if not evaluation.inputs:
        say_error("no input could be loaded: nothing to evaluate")
        sys.exit(EXIT_FAILED)
    with progress(not opt["quiet"], evaluation.tasks, "evaluating") as advance:
        results, errors = evaluation.run(advance)
    for message in errors:
        say_error(message)
    if results:
        _print_results(results, evaluation)
        if not opt["quiet"]:
            say(evaluation.timing())
        _write_results(results, opt["json_path"], opt["plot"], evaluation)
        if opt["report"] is not None:
            from ..analysis.pages import write_evaluate_page

            page_args = (results, evaluation.describe(), opt["plot"])
            write_page(opt["report"], write_evaluate_page, *page_args)
    sys.exit(EXIT_FAILED if problems or failures or errors else 0)


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
    table_console().print(table)


def _write_results(results, json_path: Path | None, plot: Path | None, evaluation) -> None:
    import json

    from ..analysis.evaluate import plot_curves, results_to_json
    from ..outputs import atomic_write

    try:
        if json_path is not None:
            data = json.dumps(results_to_json(results), indent=1).encode("utf-8")
            atomic_write(json_path, lambda handle: handle.write(data))
            say(f"curves -> {json_path}")
        if plot is not None:
            plot_curves(results, plot, title=evaluation.describe())
            say(f"plot -> {plot}")
    except (OutputError, OSError) as error:
        raise CliError(" ".join(str(error).split())) from None
