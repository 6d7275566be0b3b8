"""The options several commands share, and the one way options reach the Python API
(:func:`fill`)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

from ..config import list_presets
from ..images import DEFAULT_MAX_PIXELS
from ..models import BUILTIN_MODEL
from .terminal import say_error

DEFAULT_CONFIG = "epsilon-plus-flat"


def option(*names: str, **kwargs: Any) -> Callable:
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


class Names(click.ParamType):
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


def evaluate_names(attribute: str) -> Callable[[], Iterable[str]]:
    def names() -> Iterable[str]:
        from ..analysis import evaluate

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
model_options = _options(
    option(
        "-m",
        "--model",
        default=BUILTIN_MODEL,
        help="Model: the built-in efficientnet_lite0, a torchvision classification model "
        "name (resnet50, vgg16...), timm:NAME (the timm extra), or package.module:callable "
        "for your own.",
    ),
    option(
        "-w",
        "--weights",
        type=click.Path(dir_okay=False),
        help="State dict (.pt/.pth read without running code, or .safetensors). "
        "Default: the model's pretrained weights, if available offline.",
    ),
    option(
        "--input-size",
        type=click.IntRange(min=1),
        help="Side of the square model input in pixels (default: the model's).",
    ),
    option("--mean", type=_Floats(), help="Per-channel normalisation mean (default: model's)"),
    option("--std", type=_Floats(), help="Per-channel normalisation std (default: model's)"),
    option(
        "--num-classes",
        type=click.IntRange(min=1),
        help="Number of classes of the model in --weights (default: the model's).",
    ),
)


input_file_options = _options(
    option(
        "-0",
        "--null",
        is_flag=True,
        help="With '-': the paths on stdin are separated by NUL bytes (find -print0).",
    ),
    option(
        "--max-pixels",
        type=click.IntRange(min=1),
        default=DEFAULT_MAX_PIXELS,
        help="Refuse images with more pixels (decompression-bomb guard).",
    ),
)


input_options = _options(click.argument("inputs", nargs=-1, required=True), input_file_options)


device_options = _options(
    option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        help="Where to compute: auto picks a CUDA GPU when PyTorch sees one.",
    ),
    option(
        "--precision",
        type=click.Choice(["float32", "float64"]),
        default="float32",
        help="Floating-point precision of the computation.",
    ),
)


target_option = option(
    "-t", "--target", default="top1", help="Class: top1, a class index or a class name."
)


def out_folder_option(default: str, help: str) -> Callable:
    """``-o/--out``: the command's output folder."""
    return option(
        "-o",
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path(default),
        help=help,
    )


config_option = option(
    "-c",
    "--config",
    default=DEFAULT_CONFIG,
    shell_complete=_complete_presets,
    help="Rule config: a preset name (see 'lrp presets') or a YAML file.",
)


# explain, inspect, evaluate: without -c, the model's recommended preset (see model_config)
model_config_option = option(
    "-c",
    "--config",
    default=None,
    shell_complete=_complete_presets,
    help="Rule config: a preset name (see 'lrp presets') or a YAML file. Default: the model's "
    f"recommended preset (epsilon-gamma-box for the built-in model), else {DEFAULT_CONFIG}.",
)


def model_config(loaded) -> str:
    """The preset used when no -c is given: the model's recommendation, else the default."""
    return loaded.recommended_config or DEFAULT_CONFIG


start_option = option(
    "--start",
    type=click.Choice(["logit", "log-odds"]),
    default="logit",
    help="Where relevance starts: the target's logit, or its log-odds log p/(1-p) "
    "(Montavon et al.'s top layer: softmin over the class margins, LRP-0 on the last layer).",
)


cam_layer_option = option(
    "--cam-layer",
    metavar="NAME",
    help="Module whose output Grad-CAM uses (default: the last one with a spatial output).",
)


def configs_option(default: list[str], help: str) -> Callable:
    """``-c/--config`` given several times: the configs (or baselines) to put side by side."""
    return option(
        "-c",
        "--config",
        "configs",
        multiple=True,
        default=default,
        shell_complete=_complete_presets,
        help=help,
    )


def model_from(opt: dict[str, Any]):
    """The model that the model options name (after the config: that check is quicker)."""
    from ..models import load_model

    return load_model(
        opt["model"],
        opt["weights"],
        input_size=opt["input_size"],
        mean=opt["mean"],
        std=opt["std"],
        num_classes=opt["num_classes"],
    )


def collect(inputs: tuple[str, ...], null: bool, exclude: Iterable[Path] = (), say=True):
    """The input files; each spec that yields nothing is reported on stderr (with ``say``)."""
    from ..images import collect_inputs

    items, problems = collect_inputs(
        list(inputs), stdin=sys.stdin, null_separated=null, exclude=list(exclude)
    )
    for problem in problems if say else ():
        say_error(problem)
    return items, problems


def fill(settings: type, opt: dict[str, Any], **given: Any):
    """The options dataclass ``settings`` from the command's options of the same names: the
    one way options reach the Python API (``given`` adds those that have no option)."""
    from dataclasses import fields

    names = {f.name for f in fields(settings) if f.init}
    chosen = {name: opt[name] for name in names if name in opt and name not in given}
    return settings(**chosen, **given)
