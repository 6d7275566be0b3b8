"""What ``lrp spray`` writes: ``spray.json``, a mean heatmap per cluster, ``spray.html``.

The report is one self-contained file that works offline (see :mod:`lrp_cli.htmlpage`): plots
are inline SVG drawn here (no matplotlib), pictures are base64 PNGs, nothing is fetched. The
shared status script marks the page for a headless browser; this page's own script highlights
a cluster's points when the pointer is over its card.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..htmlpage import img, page
from ..outputs import atomic_write, overlay, render_heatmap, save_png
from .spray import SprayResult

__all__ = ["ClassAnalysis", "eigenvalue_svg", "render_html", "scatter_svg", "write_outputs"]

# Tableau's ten categorical colours, then repeated: cluster j is drawn in PALETTE[j % 10].
PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip
THUMB = 96  # side of an example thumbnail in the report, pixels
MEAN_SIDE = 160  # side of a cluster's mean heatmap in the report


@dataclass
class ClassAnalysis:
    """One class's SpRAy result and how to show its inputs.

    ``relevance(i)`` and ``photo(i)`` give map i at full resolution and the input it explains
    (None when the input cannot be shown); they are called for the examples only.
    """

    key: str  # folder-safe name: the class index, or "all" when classes are unknown
    label: str  # for people: "3", "281 tabby"
    target: int | None
    class_name: str | None
    names: list[str]  # one per map: the input it explains
    relevance_paths: list[str]
    result: SprayResult
    view: tuple[np.ndarray, np.ndarray]  # (indices, (n, 2) coordinates) of the 2-D picture
    relevance: Callable[[int], np.ndarray]
    photo: Callable[[int], Image.Image | None]


def write_outputs(
    out: Path, analyses: Sequence[ClassAnalysis], settings: dict, examples: int = 6, cmap="bwr"
) -> list[Path]:
    """Write every cluster's mean heatmap, ``spray.json`` and ``spray.html``; their paths."""
    written = []
    mean_paths: dict[tuple[str, int], str] = {}
    for analysis in analyses:
        for j, mean in enumerate(analysis.result.means):
            relative = f"clusters/{analysis.key}/cluster-{j}.png"
            save_png(render_heatmap(mean, cmap), out / relative)
            mean_paths[analysis.key, j] = relative
            written.append(out / relative)
    data = spray_json(analyses, settings, mean_paths, examples)
    text = json.dumps(data, indent=1).encode("utf-8")
    atomic_write(out / "spray.json", lambda handle: handle.write(text))
    page = render_html(analyses, settings, examples, cmap).encode("utf-8")
    atomic_write(out / "spray.html", lambda handle: handle.write(page))
    return [*written, out / "spray.json", out / "spray.html"]


def spray_json(
    analyses: Sequence[ClassAnalysis], settings: dict, mean_paths: dict, examples: int
) -> dict:
    """Per class its eigengap figures and clusters, per input its cluster and coordinates."""
    classes, inputs = [], []
    for a in analyses:
        r = a.result
        classes.append(
            {
                "class": a.target,
                "class_name": a.class_name,
                "maps": len(a.names),
                "clusters": r.k,
                "chosen_by": r.chosen_by,
                "eigenvalues": [float(v) for v in r.eigenvalues],
                "eigengap": r.eigengap,
                "eigengap_k": r.eigengap_k,
                "separation": r.separation,
                "atypical_cluster": r.atypical,
                "cluster": [
                    {
                        "cluster": c.index,
                        "size": c.size,
                        "share": c.share,
                        "isolation": c.isolation,
                        "atypicality": c.atypicality,
                        "mean_heatmap": mean_paths[a.key, c.index],
                        "nearest_to_centre": [a.names[i] for i in c.members[:examples]],
                    }
                    for c in r.clusters
                ],
            }
        )
        for i, name in enumerate(a.names):
            inputs.append(
                {
                    "input": name,
                    "relevance": a.relevance_paths[i],
                    "class": a.target,
                    "class_name": a.class_name,
                    "cluster": int(r.labels[i]),
                    "embedding": [round(float(v), 6) for v in r.embedding[i]],
                    "distance": float(r.distances[i]),
                }
            )
    return {"settings": settings, "classes": classes, "inputs": inputs}


# --------------------------------------------------------------------------------------------
# plots as inline SVG


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (
        f'<svg width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{html.escape(label)}">'
        + "".join(body)
        + "</svg>"
    )


def eigenvalue_svg(eigenvalues: Sequence[float], k: int, width=380, height=230) -> str:
    """The smallest eigenvalues against their rank, the gap after the k-th shaded and named."""
    values = np.asarray(eigenvalues, dtype=np.float64)
    left, right, top, bottom = 46, 12, 22, 34
    top_value = max(float(values.max()), 1e-9) * 1.08
    x = lambda i: left + (i - 0.5) * (width - left - right) / len(values)  # noqa: E731
    y = lambda v: top + (1 - v / top_value) * (height - top - bottom)  # noqa: E731
    body = [f'<rect width="{width}" height="{height}" fill="#fff"/>']
    if 1 <= k < len(values):
        y0, y1 = y(values[k]), y(values[k - 1])
        body.append(
            f'<rect x="{left}" y="{y0:.1f}" width="{width - left - right}" '
            f'height="{max(y1 - y0, 1):.1f}" fill="#fde68a" opacity="0.7"/>'
        )
        middle = (x(k) + x(k + 1)) / 2
        body.append(
            f'<line x1="{middle:.1f}" x2="{middle:.1f}" y1="{top}" y2="{height - bottom}" '
            'stroke="#b45309" stroke-dasharray="4 3"/>'
        )
        label_y = (y0 + y1) / 2 + 4 if y1 - y0 > 30 else y0 - 4  # inside a tall band
        body.append(
            f'<text x="{middle + 4:.1f}" y="{label_y:.1f}" font-size="12" fill="#b45309">'
            f"eigengap: k = {k}</text>"
        )
    body.append(
        f'<line x1="{left}" x2="{left}" y1="{top}" y2="{height - bottom}" stroke="#333"/>'
        f'<line x1="{left}" x2="{width - right}" y1="{height - bottom}" '
        f'y2="{height - bottom}" stroke="#333"/>'
    )
    for tick in np.linspace(0, top_value / 1.08, 3):
        body.append(
            f'<text x="{left - 4}" y="{y(tick) + 4:.1f}" font-size="10" text-anchor="end">'
            f"{tick:.2g}</text>"
        )
    points = " ".join(f"{x(i + 1):.1f},{y(v):.1f}" for i, v in enumerate(values))
    body.append(f'<polyline points="{points}" fill="none" stroke="#555"/>')
    for i, v in enumerate(values):
        body.append(
            f'<circle cx="{x(i + 1):.1f}" cy="{y(v):.1f}" r="3.5" fill="#1f2937">'
            f"<title>lambda_{i + 1} = {v:.4g}</title></circle>"
            f'<text x="{x(i + 1):.1f}" y="{height - bottom + 14}" font-size="10" '
            f'text-anchor="middle">{i + 1}</text>'
        )
    body.append(
        f'<text x="{(left + width) / 2:.0f}" y="{height - 4}" font-size="11" '
        'text-anchor="middle">rank of the eigenvalue (normalised Laplacian)</text>'
        f'<text x="{left}" y="14" font-size="11">eigenvalue</text>'
    )
    return _svg(width, height, body, "smallest eigenvalues with the eigengap marked")


def scatter_svg(coords: np.ndarray, labels: np.ndarray, width=380, height=300) -> str:
    """The 2-D picture of the embedding, one dot per map in its cluster's colour."""
    coords = np.asarray(coords, dtype=np.float64)
    pad = 10
    low, high = coords.min(axis=0), coords.max(axis=0)
    span = np.where(high - low > 0, high - low, 1.0)
    scaled = (coords - low) / span
    body = [f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>']
    for (u, v), label in zip(scaled, labels, strict=True):
        px, py = pad + u * (width - 2 * pad), pad + (1 - v) * (height - 2 * pad)
        body.append(
            f'<circle class="c{int(label)}" cx="{px:.1f}" cy="{py:.1f}" r="2.6" '
            f'fill="{PALETTE[int(label) % len(PALETTE)]}" fill-opacity="0.75"/>'
        )
    return _svg(width, height, body, "2-D embedding of the maps, coloured by cluster")


# --------------------------------------------------------------------------------------------
# the page


def _img(image: Image.Image, side: int, alt: str, smooth: bool = False) -> str:
    return img(image, (side, side), alt, smooth)


def _example(analysis: ClassAnalysis, i: int, cmap: str) -> str:
    """One input nearest its cluster's centre: the input, its heatmap and the overlay."""
    heatmap = render_heatmap(analysis.relevance(i), cmap)
    photo = analysis.photo(i)
    cells = []
    if photo is not None:
        cells.append(_img(photo, THUMB, "input", smooth=True))
        cells.append(_img(heatmap, THUMB, "heatmap"))
        cells.append(_img(overlay(heatmap, photo.resize(heatmap.size), 0.5), THUMB, "overlay"))
    else:
        cells.append(_img(heatmap, THUMB, "heatmap"))
    name = Path(analysis.names[i]).name
    distance = analysis.result.distances[i]
    caption = f"{html.escape(name)} <span>d = {distance:.3f}</span>"
    return f'<figure class="example">{"".join(cells)}<figcaption>{caption}</figcaption></figure>'


def _class_section(analysis: ClassAnalysis, examples: int, cmap: str) -> str:
    r = analysis.result
    how = "eigengap" if r.chosen_by == "eigengap" else f"fixed (the eigengap says {r.eigengap_k})"
    separation = "" if r.separation is None else f", separation {r.separation:.2f}"
    indices, coords = analysis.view
    shown = "" if len(indices) == len(r.labels) else f" ({len(indices)} of {len(r.labels)} shown)"
    parts = [
        f'<section class="class" id="class-{html.escape(analysis.key)}">',
        f"<h2>class {html.escape(analysis.label)}</h2>",
        f'<p class="facts">{len(r.labels)} maps, {r.k} cluster{"s" * (r.k != 1)} ({how}), '
        f"eigengap {r.eigengap:.3g}{separation}</p>",
        '<div class="plots">',
        f"<figure>{eigenvalue_svg(r.eigenvalues, r.k)}<figcaption>smallest eigenvalues"
        "</figcaption></figure>",
        f"<figure>{scatter_svg(coords, r.labels[indices])}<figcaption>"
        f"{r.settings.get('view', 't-SNE')} of the spectral embedding{shown}</figcaption></figure>",
        "</div>",
    ]
    for c in r.clusters:
        flag = ' <strong class="flag">most atypical</strong>' if c.index == r.atypical else ""
        colour = PALETTE[c.index % len(PALETTE)]
        mean = render_heatmap(r.means[c.index], cmap)
        shown_examples = "".join(_example(analysis, i, cmap) for i in c.members[:examples])
        parts.append(
            f'<div class="cluster" data-cluster="{c.index}">'
            f'<h3><span class="swatch" style="background:{colour}"></span>cluster {c.index}: '
            f"{c.size} maps ({c.share:.0%}), isolation {c.isolation:.2f}, atypicality "
            f"{c.atypicality:.2f}{flag}</h3>"
            f'<div class="row"><figure class="mean">{_img(mean, MEAN_SIDE, "mean heatmap")}'
            f"<figcaption>mean heatmap</figcaption></figure>"
            f'<div class="examples">{shown_examples}</div></div></div>'
        )
    parts.append("</section>")
    return "".join(parts)


_STYLE = """
body{font-family:sans-serif;margin:1.5em;color:#111;max-width:1400px}
h1{font-size:1.4em}h2{font-size:1.2em;margin-top:1.6em;border-top:1px solid #ddd;padding-top:.6em}
h3{font-size:1em;margin:.8em 0 .3em}.facts,.settings{color:#444}
.plots{display:flex;gap:1.5em;flex-wrap:wrap}figure{margin:0}figcaption{font-size:.8em;color:#555}
.cluster{border:1px solid #e5e7eb;border-radius:6px;padding:.4em .8em;margin:.6em 0}
.cluster:hover{background:#f8fafc}.row{display:flex;gap:1em;align-items:flex-start}
.examples{display:flex;flex-wrap:wrap;gap:.6em}.example img{margin-right:2px}
.example figcaption span{color:#888}.swatch{display:inline-block;width:.8em;height:.8em;
margin-right:.4em;border-radius:2px}.flag{color:#b91c1c}img{image-rendering:pixelated}
svg circle.dim{opacity:.12}
"""

# highlights a cluster's points when the pointer is over its card
_SCRIPT = """
(function () {
  document.querySelectorAll(".cluster").forEach(function (card) {
    var section = card.closest("section"), cls = "c" + card.getAttribute("data-cluster");
    card.addEventListener("mouseenter", function () {
      section.querySelectorAll("svg circle[class]").forEach(function (dot) {
        dot.classList.toggle("dim", !dot.classList.contains(cls));
      });
    });
    card.addEventListener("mouseleave", function () {
      section.querySelectorAll("svg circle.dim").forEach(function (dot) {
        dot.classList.remove("dim");
      });
    });
  });
  window.lrpMark();
})();
"""


def render_html(
    analyses: Sequence[ClassAnalysis], settings: dict, examples: int = 6, cmap: str = "bwr"
) -> str:
    """The whole report as one HTML page: per class the eigenvalues with the gap marked, the
    2-D embedding coloured by cluster, and per cluster its mean heatmap and the inputs
    nearest its centre (input, heatmap, overlay)."""
    shown = ", ".join(f"{key} {value}" for key, value in settings.items() if value is not None)
    sections = "".join(_class_section(a, examples, cmap) for a in analyses)
    toc = " · ".join(
        f'<a href="#class-{html.escape(a.key)}">{html.escape(a.label)}</a>' for a in analyses
    )
    body = (
        "<h1>Spectral relevance analysis (SpRAy)</h1>"
        f'<p class="settings">{html.escape(shown)}</p>'
        f"<nav>{toc}</nav>{sections}"
    )
    return page("SpRAy report", _STYLE, body, _SCRIPT)
