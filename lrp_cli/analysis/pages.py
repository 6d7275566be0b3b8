"""``--report`` pages of ``lrp compare`` and ``lrp evaluate``: one self-contained HTML file each.

The same kind of page as ``lrp explain --report`` and SpRAy's report (:mod:`lrp_cli.htmlpage`:
pictures inline as data URIs, nothing fetched, a status mark for headless browsers). compare's
page shows each input's picture (linked to its file) and the columns or inputs that failed;
evaluate's shows the results table and, when the curves were plotted, the plot.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from ..htmlpage import data_uri, escape, page
from ..outputs import atomic_write

__all__ = ["write_compare_page", "write_evaluate_page"]

MAX_WIDTH = 1200  # pictures wider than this are shown scaled down (the link has the full one)

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
figure { margin: 0 0 1.5em; } figcaption { color: #555; margin-top: 0.3em; }
img { max-width: 100%; height: auto; border: 1px solid #ddd; }
table { border-collapse: collapse; } th, td { padding: 0.25em 0.8em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
tr:nth-child(even) td { background: #f4f4f4; } .problems li { color: #a00; }
"""


def write_compare_page(
    path: str | os.PathLike[str],
    pictures: Sequence[Path],
    problems: Sequence[str] = (),
    title: str = "lrp compare",
) -> Path:
    """A page of the pictures ``lrp compare`` wrote (one per input, then the grid, if any)."""
    path = Path(path)
    figures = [_figure(picture, path.parent) for picture in pictures]
    body = f"<h1>{escape(title)}</h1>{_problems(problems)}{''.join(figures)}"
    return _write(path, page(title, _STYLE, body))


def write_evaluate_page(
    path: str | os.PathLike[str],
    results: Sequence,
    description: str,
    plot: Path | None = None,
    title: str = "lrp evaluate",
) -> Path:
    """A page of ``lrp evaluate``'s results (``MethodResult`` rows) and its plot, if any."""
    path = Path(path)
    header = "".join(f"<th>{h}</th>" for h in ("method", "order", "SRG", "AOPC", "AUC", "images"))
    rows = []
    for r in results:
        srg = "" if r.srg is None else f"{r.srg:.4g} &plusmn; {r.srg_std or 0:.2g}"
        cells = (
            escape(r.method),
            escape(r.order),
            srg,
            f"{r.aopc:.4g} &plusmn; {r.aopc_std:.2g}",
            f"{r.auc:.4g} &plusmn; {r.auc_std:.2g}",
            str(len(r.per_image)),
        )
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = f"<table><tr>{header}</tr>{''.join(rows)}</table>"
    note = (
        "<p>mean &plusmn; std over images. SRG = AUC(LeRF) &minus; AUC(MoRF): larger is better, "
        "a random map gives about 0. MoRF: larger AOPC is better; LeRF: smaller.</p>"
    )
    figure = _figure(plot, path.parent) if plot is not None else ""
    body = f"<h1>{escape(title)}</h1><p>{escape(description)}</p>{table}{note}{figure}"
    return _write(path, page(title, _STYLE, body))


def _figure(picture: Path, folder: Path) -> str:
    with Image.open(picture) as image:
        image.load()
        shown = image.convert("RGB")
    if shown.width > MAX_WIDTH:
        height = round(shown.height * MAX_WIDTH / shown.width)
        shown = shown.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    href = escape(_relative(picture, folder))
    return (
        f'<figure><a href="{href}"><img src="{data_uri(shown)}" width="{shown.width}" '
        f'height="{shown.height}" alt="{escape(picture.name)}"></a>'
        f"<figcaption>{escape(picture.name)}</figcaption></figure>"
    )


def _problems(problems: Sequence[str]) -> str:
    if not problems:
        return ""
    items = "".join(f"<li>{escape(p)}</li>" for p in problems)
    return f'<h2>Not drawn</h2><ul class="problems">{items}</ul>'


def _relative(target: Path, folder: Path) -> str:
    """A link from the page's folder to ``target`` (a path relative to it where possible)."""
    try:
        return Path(os.path.relpath(target.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive (Windows)
        return target.resolve().as_uri()


def _write(path: Path, text: str) -> Path:
    data = text.encode("utf-8")
    atomic_write(path, lambda handle: handle.write(data))
    return path
