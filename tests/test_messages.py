"""One-line messages: odd file names and multi-line errors never break a line."""

from pathlib import Path

from lrp_cli.messages import error_reason, one_line


def test_one_line_escapes_control_characters_and_keeps_the_rest():
    assert one_line(Path("a\nb\tc.jpg")) == "a\\nb\\tc.jpg"
    assert one_line("caf\u00e9 \udcff.png") == "caf\u00e9 \\udcff.png"  # undecodable byte
    assert one_line("plain name.png") == "plain name.png"


def test_error_reason_is_one_short_line():
    assert error_reason(ValueError("first\n  second\tthird")) == "first second third"
    assert error_reason(KeyError()) == "KeyError"  # no message: the type's name
    long = error_reason(RuntimeError("x" * 500))
    assert len(long) == 200 and long.endswith("...")
    assert error_reason(OSError("bad \x1b[31mname")) == "bad \\x1b[31mname"
