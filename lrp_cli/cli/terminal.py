"""What every command shows and how it ends: one-line errors and warnings and the progress
bar on stderr (stdout is for what a command produces), set-up errors as exit status 2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from ..config import ConfigError
from ..models import ModelError
from ..outputs import OutputError

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 1, 2, 130, 141


class CliError(click.ClickException):
    """A usage, config or model problem found before any work: one line, exit status 2."""

    exit_code = EXIT_USAGE

    def show(self, file: Any = None) -> None:
        say_error(self.format_message())


_CONSOLE = None


def stderr_console():
    """rich's stderr console: colour only on a terminal, and NO_COLOR / TERM=dumb honoured."""
    global _CONSOLE
    if _CONSOLE is None:
        from rich.console import Console

        _CONSOLE = Console(stderr=True, soft_wrap=True, highlight=False)
    return _CONSOLE


def say(message: str, kind: str = "") -> None:
    """One line on stderr, prefixed ``error: `` or ``warning: `` (coloured on a terminal)."""
    from rich.text import Text

    styles = {"error": "bold red", "warning": "yellow"}
    prefix = (f"{kind}: ", styles[kind]) if kind else ""
    stderr_console().print(Text.assemble(prefix, " ".join(message.splitlines())))


def say_error(message: str) -> None:
    say(message, "error")


@contextmanager
def before_work() -> Iterator[None]:
    """Turn set-up errors (config, model, rules, device, output folder) into exit status 2."""
    from ..engine import CompositeError, UnsupportedModelError
    from ..pipeline.prepare import SetupError

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
def progress(enabled: bool, total: int, what: str):
    """A rich progress bar on stderr, only when it is a terminal (and not --quiet)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = stderr_console()
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


def table_console():
    """A rich console for tables on stdout; a file or pipe never folds them into narrow columns."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=1000)


def missing(module: str) -> bool:
    from importlib.util import find_spec

    return find_spec(module) is None


def write_page(path: Path, write: Callable, *args: Any) -> None:
    """An analysis page (--report); a page that cannot be written is a one-line error."""
    try:
        write(path, *args)
    except (OutputError, OSError) as error:
        raise CliError(f"report not written: {' '.join(str(error).split())}") from None
    say(f"report -> {path}")
