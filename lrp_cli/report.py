"""``lrp explain --report``: one self-contained HTML page of a run, written from its records.

One card per explained (or skipped) sample: the model input, its heatmap and the overlay as
small JPEG thumbnails (:data:`THUMB` pixels, base64), class name, probability, relevance sum
and config; failed inputs are listed with their one-line reason. An inline script filters the
cards by class and sorts them by probability, without a server; nothing is fetched (see
:mod:`lrp_cli.htmlpage`). Each thumbnail links to the full-size file next to the page.

Thumbnails are made from the files the run wrote (heatmap, overlay) and from the input decoded
once more as the model saw it, one card at a time, so memory does not grow with the run.
"""

from __future__ import annotations

import os
import urllib.parse
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .htmlpage import escape, img, page
from .images import DEFAULT_MAX_PIXELS, InputItem, denormalize, try_decode_input
from .messages import one_line
from .outputs import atomic_write, overlay

__all__ = ["THUMB", "render_report", "write_report"]

THUMB = 160  # side of a card's thumbnails, pixels


def write_report(
    path: str | os.PathLike[str],
    records: Sequence[dict[str, Any]],
    preprocessing: Any = None,
    *,
    alpha: float = 0.5,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    title: str = "lrp explain",
) -> Path:
    """Write the report of ``records`` (as ``lrp explain`` writes them) atomically to ``path``.

    ``preprocessing``: the model's (:class:`lrp_cli.models.Preprocessing`), to show each
    input as the model saw it; None shows heatmaps only. Raises ``OutputError``.
    """
    path = Path(path)
    text = render_report(
        records, path.parent, preprocessing, alpha=alpha, max_pixels=max_pixels, title=title
    )
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
    return path


def render_report(
    records: Sequence[dict[str, Any]],
    folder: str | os.PathLike[str] = ".",
    preprocessing: Any = None,
    *,
    alpha: float = 0.5,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    title: str = "lrp explain",
) -> str:
    """The page as text; links are relative to ``folder`` (where the page will be)."""
    cards = [r for r in records if r["status"] in ("explained", "skipped")]
    failed = [r for r in records if r["status"] == "failed"]
    classes = Counter(_class_label(r) for r in cards)
    options = "".join(
        f'<option value="{escape(label)}">{escape(label)} ({count})</option>'
        for label, count in sorted(classes.items())
    )
    first = records[0] if records else {}
    facts = ", ".join(
        f"{key} {one_line(first[key])}"
        for key in ("model", "weights", "config", "cmap", "device", "precision")
        if first.get(key) is not None
    )
    explained = sum(r["status"] == "explained" for r in cards)
    skipped = len(cards) - explained
    summary = f"{explained} explained, {skipped} skipped (done before), {len(failed)} failed"
    photos = _Photos(preprocessing, max_pixels)
    grid = "".join(_card(r, i, Path(folder), photos, alpha) for i, r in enumerate(cards))
    body = (
        f"<h1>{escape(title)}</h1>"
        f'<p class="facts">{escape(summary)}. {escape(facts)}</p>'
        '<div class="controls"><label>class <select id="class">'
        f'<option value="">all ({len(cards)})</option>{options}</select></label> '
        '<label>sort <select id="sort"><option value="order">input order</option>'
        '<option value="desc">probability, highest first</option>'
        '<option value="asc">probability, lowest first</option></select></label> '
        f'<span id="shown">{len(cards)} of {len(cards)} shown</span></div>'
        f'<div id="grid" class="grid">{grid}</div>'
        f"{_failed_section(failed)}"
    )
    return page(title, _STYLE, body, _SCRIPT)


def _class_label(record: dict[str, Any]) -> str:
    if record.get("class_name") is not None:
        return one_line(record["class_name"])
    if record.get("target") is not None:
        return str(record["target"])
    return "(skipped: not known)" if record["status"] == "skipped" else "(unknown)"


def _name(record: dict[str, Any]) -> str:
    name = one_line(record["input"])
    return name if record.get("sample") is None else f"{name}[{record['sample']}]"


class _Photos:
    """The model input of a record's sample, decoded once more (None when it cannot be)."""

    def __init__(self, preprocessing: Any, max_pixels: int | None) -> None:
        self.preprocessing, self.max_pixels = preprocessing, max_pixels

    def __call__(self, record: dict[str, Any]) -> Image.Image | None:
        if self.preprocessing is None:
            return None
        import torch

        path = Path(record["input"])
        item = InputItem(path, Path(path.name))
        array, _ = try_decode_input(item, self.preprocessing, self.max_pixels)
        if array is None:
            return None
        if array.ndim == 4:
            sample = record.get("sample") or 0
            if sample >= len(array):
                return None
            array = array[sample]
        return denormalize(torch.from_numpy(np.ascontiguousarray(array)), self.preprocessing)


def _open(path: str | None) -> Image.Image | None:
    if not path:
        return None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError):
        return None


def _thumb_size(image: Image.Image) -> tuple[int, int]:
    width, height = image.size
    scale = THUMB / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _link(target: str, folder: Path, inner: str) -> str:
    relative = os.path.relpath(os.path.abspath(target), os.path.abspath(folder))
    href = urllib.parse.quote(Path(relative).as_posix())
    return f'<a href="{escape(href)}">{inner}</a>'


def _card(record: dict[str, Any], order: int, folder: Path, photos: _Photos, alpha: float) -> str:
    outputs = record.get("outputs") or {}
    heatmap = _open(outputs.get("heatmap"))
    photo = photos(record)
    shown = _open(outputs.get("overlay"))
    if shown is None and heatmap is not None and photo is not None:
        shown = overlay(heatmap, photo, alpha)
    cells = []
    for image, alt, file in (
        (photo, "model input", None),
        (heatmap, "heatmap", outputs.get("heatmap")),
        (shown, "overlay", outputs.get("overlay")),
    ):
        if image is None:
            continue
        tag = img(image, _thumb_size(image), alt, smooth=True, format="JPEG")
        cells.append(_link(file, folder, tag) if file else tag)
    probability = record.get("probability")
    shown_p = "—" if probability is None else f"{probability:.3f}"
    total = record.get("relevance_sum")
    shown_sum = "—" if total is None else f"{total:.4g}"
    label = _class_label(record)
    status = " <b>skipped</b> (outputs of an earlier run)" if record["status"] == "skipped" else ""
    return (
        f'<figure class="card" data-class="{escape(label)}" data-order="{order}" '
        f'data-probability="{"" if probability is None else probability}">'
        f'<div class="thumbs">{"".join(cells)}</div><figcaption>'
        f'<div class="name">{escape(_name(record))}{status}</div>'
        f'<div><span class="class">{escape(label)}</span> p = {shown_p}</div>'
        f"<div>relevance sum {shown_sum} · {escape(one_line(record.get('config')))}</div>"
        "</figcaption></figure>"
    )


def _failure(record: dict[str, Any]) -> str:
    """The one-line reason, which names the input (added in front when it does not)."""
    error, name = one_line(record["error"]), one_line(record["input"])
    return error if error.startswith(name) else f"{_name(record)}: {error}"


def _failed_section(failed: Sequence[dict[str, Any]]) -> str:
    if not failed:
        return ""
    rows = "".join(f"<li>{escape(_failure(r))}</li>" for r in failed)
    return f'<section id="failed"><h2>{len(failed)} failed</h2><ul>{rows}</ul></section>'


_STYLE = """
body{font-family:sans-serif;margin:1.2em;color:#111}h1{font-size:1.3em;margin:0 0 .3em}
.facts{color:#444;margin:.2em 0 .8em}.controls{margin:.6em 0 1em}.controls label{margin-right:1em}
#shown{color:#555}.grid{display:flex;flex-wrap:wrap;gap:.8em}
.card{margin:0;border:1px solid #e5e7eb;border-radius:6px;padding:.4em;width:500px}
.card[hidden]{display:none}.thumbs{display:flex;gap:4px;align-items:flex-start;min-height:40px}
.thumbs img{display:block}figcaption{font-size:.8em;color:#333;margin-top:.3em}
.name{word-break:break-all;color:#111}.class{font-weight:bold}
#failed li{font-size:.85em;margin:.2em 0;word-break:break-all}#failed h2{font-size:1.1em}
"""

# filtering by class and sorting by probability; reads only data- attributes (never innerHTML)
_SCRIPT = """
(function () {
  var grid = document.getElementById("grid"), pick = document.getElementById("class");
  var sort = document.getElementById("sort"), shown = document.getElementById("shown");
  var cards = Array.prototype.slice.call(grid.querySelectorAll(".card"));
  function probability(card) {
    var p = card.getAttribute("data-probability");
    return p === "" ? -1 : parseFloat(p);
  }
  function update() {
    var wanted = pick.value, how = sort.value, count = 0;
    var order = cards.slice();
    if (how !== "order") {
      order.sort(function (a, b) {
        var d = probability(a) - probability(b);
        if (how === "desc") d = -d;
        return d || (+a.getAttribute("data-order") - +b.getAttribute("data-order"));
      });
    }
    order.forEach(function (card) {
      var visible = !wanted || card.getAttribute("data-class") === wanted;
      card.hidden = !visible;
      if (visible) count++;
      grid.appendChild(card);
    });
    shown.textContent = count + " of " + cards.length + " shown";
    document.body.setAttribute("data-shown", String(count));
  }
  pick.addEventListener("change", update);
  sort.addEventListener("change", update);
  var query = new URLSearchParams(window.location.search);
  if (query.has("class")) pick.value = query.get("class");
  if (query.has("sort")) sort.value = query.get("sort");
  update();
  window.lrpMark();
})();
"""
