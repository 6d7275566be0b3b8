"""``lrp presets`` and ``lrp inspect``: which rules there are, and which layer gets which."""

from __future__ import annotations

from typing import Any

import click

from ..config import list_presets, load_config
from .options import model_config, model_config_option, model_from, model_options
from .terminal import before_work, table_console


@click.command()
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


@click.command()
@model_options
@model_config_option
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

    from ..pipeline.prepare import build_explainer

    with before_work():
        rules = load_config(opt["config"]) if opt["config"] else None
        loaded = model_from(opt)
        rules = rules or load_config(model_config(loaded))
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
    console = table_console()
    console.print(table)
    unmatched = explainer.assignment.unmatched
    if not unmatched:
        console.print("every config entry matches at least one layer")
    for entry in unmatched:
        console.print(
            f"unmatched: {entry.origin + ': ' if entry.origin else ''}{entry.match.describe()}",
            markup=False,
        )
