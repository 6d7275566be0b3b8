"""``lrp compare --report`` and ``lrp evaluate --report``: the same kind of self-contained page
as ``lrp explain --report`` (lrp_cli.htmlpage), for their pictures and results."""

from __future__ import annotations

import html
import re

import pytest

from .test_cli import error_lines, run, tiny_model, tiny_weights, write_npy
from .test_report import CHROMIUM, ODD, chromium

__all__ = ["tiny_weights"]  # a fixture used here


def figures(page: str) -> list[str]:
    return re.findall(r'<a href="([^"]*)"><img src="data:image/png;base64,', page)


def test_compare_page_shows_each_input_picture_and_what_was_not_drawn(tmp_path, tiny_weights):
    inputs = [write_npy(tmp_path / f"{name}.npy", seed=i) for i, name in enumerate(("a", ODD))]
    (tmp_path / "broken.yaml").write_text("rules: [{match: {type: Conv}, rule: nope}]\n")
    out, page = tmp_path / "out", tmp_path / "pages" / "compare.html"
    options = ["-o", out, "--grid", out / "grid.png", "--report", page, "--device", "cpu"]
    columns = ["-c", "zero", "-c", "gradient", "-c", tmp_path / "broken.yaml"]
    result = run(["compare", *inputs, *tiny_model(tiny_weights), *columns, *options])
    assert result.exit_code == 1, result.stderr
    assert len(error_lines(result.stderr)) == 1 and f"report -> {page}" in result.stderr
    text = page.read_text()
    links = [html.unescape(h) for h in figures(text)]  # one per input; the grid repeats them
    assert links == ["../out/a.compare.png", f"../out/{ODD}.compare.png"]
    assert all((page.parent / link).is_file() for link in links)
    assert ODD not in text and html.escape(ODD) in text  # escaped wherever it appears
    assert "Not drawn" in text and "nope" in text
    assert "http://" not in text and "https://" not in text and "<link" not in text


def test_evaluate_page_has_the_results_table_and_the_plot(tmp_path, tiny_weights):
    pytest.importorskip("matplotlib")
    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i) for i in range(2)]
    page, plot = tmp_path / "evaluate.html", tmp_path / "curves.png"
    options = ["--region", "16", "--steps", "4", "--baseline", "random", "-q"]
    args = ["evaluate", *inputs, *tiny_model(tiny_weights), *options, "--plot", plot]
    result = run([*args, "--report", page])
    assert result.exit_code == 0, result.stderr
    text = page.read_text()
    rows = re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td>", text)
    assert sorted(rows) == sorted(
        (m, o) for m in ("epsilon-plus-flat", "random") for o in ("morf", "lerf")
    )
    assert "16 x 16 regions, 4 steps" in text and figures(text) == ["curves.png"]


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_compare_page_renders_in_headless_chromium(tmp_path, tiny_weights):
    inputs = [write_npy(tmp_path / f"x{i}.npy", seed=i) for i in range(3)]
    page = tmp_path / "compare.html"
    options = ["-c", "zero", "-c", "epsilon", "-o", tmp_path / "out", "--report", page]
    result = run(["compare", *inputs, *tiny_model(tiny_weights), *options])
    assert result.exit_code == 0, result.stderr
    dom = chromium(page.resolve().as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-status="ok"' in body and 'data-images="3/3"' in body, body
    assert not [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
