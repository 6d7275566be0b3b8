"""The first stage of a run: which inputs it explains (collected, then this shard's part),
and their decoding started early, before the model is loaded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from ..images import InputItem, InputProblem, collect_inputs
from .decoding import Decoder
from .sharding import Shard

__all__ = ["RunInputs", "early_decoder", "select_inputs"]


@dataclass
class RunInputs:
    """The inputs of one run (this shard's), and the specs refused while collecting them."""

    items: list[InputItem] = field(default_factory=list)
    refused: list[InputProblem] = field(default_factory=list)
    shard: Shard | None = None
    listed: int = 0  # inputs found before the shard took its part


def select_inputs(
    specs: Sequence[str],
    *,
    stdin: TextIO | None = None,
    null_separated: bool = False,
    exclude: Iterable[str | os.PathLike[str]] = (),
    shard: Shard | None = None,
) -> RunInputs:
    """Files, folders, globs and ``-`` (see :func:`lrp_cli.images.collect_inputs`), and of
    those the part that ``shard`` holds (all without one)."""
    items, refused = collect_inputs(
        list(specs), stdin=stdin, null_separated=null_separated, exclude=list(exclude)
    )
    listed = len(items)
    if shard is not None:
        items = shard.select(items)
        refused = [p for p in refused if shard.holds(p.input)]
    return RunInputs(items, refused, shard, listed)


def early_decoder(
    items: Sequence[InputItem], preprocessing, max_pixels: int | None, workers: int | None
) -> Decoder | None:
    """Decoding started before torch is imported (seconds), when the model's preprocessing is
    known without loading it (see :func:`lrp_cli.models.known_preprocessing`); None when it
    is not, or for a single input. The run uses it only if it decodes as the run needs."""
    if preprocessing is None or len(items) < 2:
        return None
    return Decoder(items, preprocessing, max_pixels=max_pixels, workers=workers)
