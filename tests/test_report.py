"""``lrp explain --report``: one self-contained HTML page per run, from the run's records.

The browser tests open pages in headless Chromium (skipped without one); the 1,000-card
measurement quoted in README is the slow test at the end (``pytest -m slow -s -k thousand``).
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrp_cli.models import Preprocessing
from lrp_cli.outputs import overlay, render_heatmap, save_npy, save_png
from lrp_cli.report import THUMB, render_report, write_report

from .test_cli import error_lines, records, run, tiny_model, tiny_weights, write_image

__all__ = ["tiny_weights"]  # a fixture used here

ODD = "<b>&\"'odd"  # a file name that must be escaped everywhere
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)


def cards(page: str) -> list[str]:
    return re.findall(r'<figure class="card"[^>]*>', page)


def test_report_of_a_run_lists_cards_and_failures_with_names_escaped(tmp_path, tiny_weights):
    photos = tmp_path / "photos"
    write_image(photos / f"{ODD}.png", size=(90, 60), seed=1)
    write_image(photos / "tall.png", size=(50, 90), seed=2)
    (photos / "broken.jpg").write_text("not a picture")
    missing = tmp_path / "missing.jpg"
    out = tmp_path / "out"
    args = ["explain", photos, missing, *tiny_model(tiny_weights), "-o", out, "--jsonl", "-"]
    result = run([*args, "--report", "--overlay"])  # --report without a value: OUT/index.html
    assert result.exit_code == 1, result.stderr
    assert len(error_lines(result.stderr)) == 2
    page = (out / "index.html").read_text("utf-8")
    assert f"report -> {out / 'index.html'}" in result.stderr
    found = cards(page)
    assert len(found) == 2
    assert len(re.findall(r"<img ", page)) == 6  # input, heatmap, overlay per card
    # each thumbnail at most THUMB pixels, as small base64 JPEGs
    sizes = [tuple(map(int, m)) for m in re.findall(r'width="(\d+)" height="(\d+)"', page)]
    assert sizes and all(max(s) == THUMB for s in sizes)
    assert page.count("data:image/jpeg;base64,") == 6
    # the odd name is escaped in text, attributes and links; no raw markup gets through
    assert "<b>&" not in page
    assert html.escape(ODD, quote=True) in page
    assert 'href="%3Cb%3E%26%22%27odd.png"' in page
    # failures with their one-line reasons, as in the records
    failed = [r for r in records(result.stdout) if r["status"] == "failed"]
    items = re.findall(r"<li>(.*?)</li>", page)
    assert sorted(html.unescape(i) for i in items) == sorted(r["error"] for r in failed)
    # each card shows what its record says
    by_name = {Path(r["input"]).name: r for r in records(result.stdout)}
    tall = next(c for c in re.split(r'(?=<figure class="card")', page) if "tall.png" in c)
    record = by_name["tall.png"]
    assert f'data-probability="{record["probability"]}"' in tall
    assert f"p = {record['probability']:.3f}" in tall
    assert f"relevance sum {record['relevance_sum']:.4g}" in tall
    assert record["config"] in tall
    # nothing is fetched: no external URL, no script or style from elsewhere
    assert not re.search(r'(src|href)="(https?:)?//', page)


def test_report_after_skip_existing_shows_the_earlier_outputs(tmp_path, tiny_weights):
    inputs = [write_image(tmp_path / f"x{i}.png", seed=i) for i in range(2)]
    out, report = tmp_path / "out", tmp_path / "elsewhere" / "run.html"
    first = run(["explain", *inputs, *tiny_model(tiny_weights), "-o", out])
    assert first.exit_code == 0, first.stderr
    again = run(["explain", *inputs, *tiny_model(tiny_weights), "-o", out, "--skip-existing"])
    assert again.exit_code == 0
    rerun = ["explain", *inputs, *tiny_model(tiny_weights), "-o", out, "--skip-existing"]
    result = run([*rerun, "--report", report])
    assert result.exit_code == 0, result.stderr
    page = report.read_text("utf-8")
    assert len(cards(page)) == 2 and page.count("<b>skipped</b>") == 2
    # model input and heatmap from the earlier run, overlay made from them; links relative
    assert len(re.findall(r"<img ", page)) == 6
    assert 'href="../out/x0.png"' in page


def test_report_is_not_written_when_it_cannot_be(tmp_path, tiny_weights):
    blocked = tmp_path / "file"
    blocked.write_text("a file where the report's folder would be")
    x = write_image(tmp_path / "x.png")
    result = run(
        ["explain", x, *tiny_model(tiny_weights), "-o", tmp_path / "o"]
        + ["--report", blocked / "index.html"]
    )
    assert result.exit_code == 1
    (line,) = error_lines(result.stderr)
    assert line.startswith("error: report not written:")
    assert (tmp_path / "o" / "x.png").exists()  # the run itself is done


# -------------------------------------------------------------------------------- synthetic
def synthetic_records(folder: Path, count: int, distinct: int = 12) -> tuple[list[dict], list]:
    """``count`` records of explained photos (cycling through ``distinct`` sets of files), a
    few failures, classes and probabilities varied; and the class names."""
    photos = sorted((Path(__file__).parent.parent / "sample_images").glob("*.jpg"))
    rng = np.random.default_rng(0)
    classes = ["tabby", "espresso", "<script>alert(1)</script>", "space shuttle", "lens cap"]
    files = []
    for k in range(distinct):
        yy, xx = np.mgrid[0:224, 0:224]
        cy, cx = rng.uniform(40, 184, 2)
        relevance = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 900.0) - 0.3 * rng.random()
        heatmap = render_heatmap(relevance)
        save_png(heatmap, folder / f"h{k}.png")
        save_npy(relevance.astype(np.float32), folder / f"h{k}.npy")
        photo = Image.open(photos[k % len(photos)]).convert("RGB").resize((224, 224))
        save_png(overlay(heatmap, photo), folder / f"h{k}.overlay.png")
        files.append(photos[k % len(photos)])
    out = []
    for i in range(count):
        k = i % distinct
        out.append(
            {
                "input": str(files[k]),
                "sample": None,
                "status": "explained",
                "error": None,
                "outputs": {
                    "heatmap": str(folder / f"h{k}.png"),
                    "relevance": str(folder / f"h{k}.npy"),
                    "overlay": str(folder / f"h{k}.overlay.png"),
                },
                "model": "efficientnet_lite0",
                "config": "epsilon-gamma-box",
                "target": i % len(classes),
                "class_name": classes[i % len(classes)],
                "probability": float(rng.random()),
                "relevance_sum": float(rng.normal()),
            }
        )
    for i in range(3):
        out.append(
            {
                "input": f"/photos/{ODD}{i}.jpg",
                "sample": None,
                "status": "failed",
                "error": f"/photos/{ODD}{i}.jpg: the file is empty (0 bytes); copy it again",
                "outputs": None,
            }
        )
    return out, classes


def chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    flags += [f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([*flags, *extra, url], capture_output=True, text=True, timeout=180)


def test_render_report_from_records_without_preprocessing(tmp_path):
    """Records alone (no model at hand): heatmap and overlay thumbnails, no model input."""
    found, classes = synthetic_records(tmp_path, 7, distinct=2)
    page = render_report(found, tmp_path)
    assert len(cards(page)) == 7 and len(re.findall(r"<img ", page)) == 14
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    options = re.findall(r'<option value="([^"]*)">', page)
    assert sorted(html.unescape(o) for o in options if o and o not in ("order", "desc", "asc")) == (
        sorted(classes)
    )


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_report_filters_and_sorts_in_headless_chromium(tmp_path):
    found, classes = synthetic_records(tmp_path, 40)
    page = write_report(tmp_path / "index.html", found, Preprocessing())
    wanted = classes[2]  # the one that looks like markup
    query = "?" + urllib.parse.urlencode({"class": wanted, "sort": "desc"})
    dom = chromium(page.resolve().as_uri() + query, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-status="ok"' in body, body
    assert 'data-images="120/120"' in body, body
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    expected = [r for r in found if r.get("class_name") == wanted]
    assert f'data-shown="{len(expected)}"' in body
    tags = re.findall(r'<figure class="card"[^>]*>', dom.stdout)
    visible = [float(re.search(r'data-probability="([^"]*)"', t).group(1)) for t in tags]
    visible = [p for p, t in zip(visible, tags, strict=True) if " hidden" not in t]
    assert len(tags) == 40
    assert visible == sorted((r["probability"] for r in expected), reverse=True)
    shot = tmp_path / "report.png"
    done = chromium(
        page.resolve().as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,900"
    )
    assert done.returncode == 0
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 80) & (pixels[..., 2] < 80)
    assert red.sum() > 500  # heatmaps are drawn, not only text


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary found")
def test_a_thousand_card_report_size_and_load_time(tmp_path):
    """The numbers in README: file size and the time headless Chromium takes to load it."""
    found, _ = synthetic_records(tmp_path, 1000)
    start = time.perf_counter()
    page = write_report(tmp_path / "index.html", found, Preprocessing())
    written = time.perf_counter() - start
    start = time.perf_counter()
    dom = chromium(page.resolve().as_uri(), tmp_path, "--dump-dom")
    loaded = time.perf_counter() - start
    body = re.search(r"<body([^>]*)>", dom.stdout).group(1)
    assert 'data-status="ok"' in body and 'data-images="3000/3000"' in body, body
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body>x</body></html>")
    start = time.perf_counter()
    chromium(empty.resolve().as_uri(), tmp_path, "--dump-dom")
    baseline = time.perf_counter() - start
    size = page.stat().st_size
    print(
        f"\n1000 cards: {size / 1e6:.1f} MB, written in {written:.1f} s, headless chromium "
        f"--dump-dom {loaded:.2f} s (an empty page: {baseline:.2f} s)"
    )
    assert size < 40e6 and loaded < 60
