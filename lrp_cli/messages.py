"""One-line messages: whatever a file is called or an error says, the user gets one line.

Imports nothing but the standard library, so every module (decoding workers included) can use it.
"""

from __future__ import annotations

import os
import sys
import traceback

__all__ = ["DEBUG_VARIABLE", "debugging", "error_reason", "one_line", "show_traceback"]

#: ``lrp --debug`` sets it, so that decoding workers started later see it too
DEBUG_VARIABLE = "LRP_DEBUG"


def one_line(text: object) -> str:
    """Escape control characters and undecodable bytes (odd file names) as Python escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def error_reason(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line of at most ``limit`` characters (its type's name when
    it has no message): what goes after "failed:" in a message."""
    text = one_line(" ".join(str(error).split()) or type(error).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def debugging() -> bool:
    """Whether ``--debug`` or ``LRP_DEBUG=1`` asked for tracebacks."""
    return os.environ.get(DEBUG_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def show_traceback(error: BaseException) -> None:
    """Where an unexpected error becomes one line for the user (a bug in the engine, the
    user's model or a decoder), print its whole traceback on stderr too when debugging."""
    if debugging():
        sys.stderr.write("".join(traceback.format_exception(error)))
        sys.stderr.flush()
