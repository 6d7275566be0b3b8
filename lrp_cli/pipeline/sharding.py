"""Splitting one run's inputs among several processes: ``--shard INDEX/COUNT``.

Any launcher can start the processes (torchrun, a Slurm job array, a shell loop): each keeps the
inputs whose output-relative path hashes to its index, so the split depends neither on the
order in which inputs are listed nor on the machine, the shards are disjoint, and together they
cover every input once. Without ``--shard`` the index and count come from torchrun's
``RANK``/``WORLD_SIZE`` or from a Slurm array's ``SLURM_ARRAY_TASK_ID``/``..._COUNT``. Resuming
a shard is ``--skip-existing``, as for any run. Imports nothing heavy.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TypeVar

__all__ = ["Shard", "ShardError", "parse_shard", "records_file", "resolve_shard"]

T = TypeVar("T")


class ShardError(ValueError):
    """A malformed ``--shard`` or launcher variable; the message is one line."""


@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    source: str = "--shard"  # where the numbers came from, for messages

    def holds(self, relative: PurePath | str) -> bool:
        """Whether the input with this output-relative path belongs to this shard."""
        key = PurePath(relative).as_posix().encode("utf-8", "surrogateescape")
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % self.count == self.index

    def select(self, items: Sequence[T]) -> list[T]:
        """The items (with a ``relative`` path, as :class:`lrp_cli.images.InputItem`) it holds."""
        return [item for item in items if self.holds(item.relative)]

    def __str__(self) -> str:
        return f"shard {self.index}/{self.count} ({self.source})"


def parse_shard(text: str, source: str = "--shard") -> Shard:
    """``"INDEX/COUNT"`` with ``0 <= INDEX < COUNT``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ShardError(f"{source}: expected INDEX/COUNT such as 0/4, got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1 or index >= count:
        raise ShardError(f"{source}: INDEX must be 0 to COUNT - 1 and COUNT at least 1: {text!r}")
    return Shard(index, count, source)


def resolve_shard(flag: str | None, environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard of this process: ``--shard`` if given, else the launcher's variables, else
    None (a whole run)."""
    if flag is not None:
        return parse_shard(flag)
    if "WORLD_SIZE" in environ and "RANK" in environ:
        text = f"{environ['RANK']}/{environ['WORLD_SIZE']}"
        return parse_shard(text, "torchrun's RANK/WORLD_SIZE")
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        try:  # arrays may start anywhere (--array=1-8): count from the first task
            index = int(environ["SLURM_ARRAY_TASK_ID"]) - int(
                environ.get("SLURM_ARRAY_TASK_MIN", "0")
            )
        except ValueError:
            raise ShardError("SLURM_ARRAY_TASK_ID/_MIN must be integers") from None
        text = f"{index}/{environ['SLURM_ARRAY_TASK_COUNT']}"
        return parse_shard(text, "the Slurm array's SLURM_ARRAY_TASK_ID/COUNT")
    return None


def records_file(target: str, shard: Shard | None) -> str:
    """Where ``--jsonl TARGET`` writes: a folder (existing, or named with a trailing slash)
    gets ``records-INDEX-of-COUNT.jsonl`` (``records.jsonl`` for a whole run); a file or ``-``
    is used as given."""
    if target == "-" or not (target.endswith(("/", os.sep)) or Path(target).is_dir()):
        return target
    name = "records.jsonl" if shard is None else f"records-{shard.index}-of-{shard.count}.jsonl"
    try:
        Path(target).mkdir(parents=True, exist_ok=True)
    except OSError:  # opening the file then fails with the one-line reason
        pass
    return str(Path(target) / name)
