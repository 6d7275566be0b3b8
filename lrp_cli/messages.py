"""One-line messages: whatever a file is called or an error says, the user gets one line.

Imports nothing but the standard library, so every module (decoding workers included) can use it.
"""

from __future__ import annotations

__all__ = ["error_reason", "one_line"]


def one_line(text: object) -> str:
    """Escape control characters and undecodable bytes (odd file names) as Python escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def error_reason(error: BaseException, limit: int = 200) -> str:
    """An exception's message on one line of at most ``limit`` characters (its type's name when
    it has no message): what goes after "failed:" in a message."""
    text = one_line(" ".join(str(error).split()) or type(error).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."
