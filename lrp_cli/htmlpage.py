"""What the self-contained HTML reports share (``spray.html``, ``lrp explain --report``).

A report is one file that works offline: pictures are base64 data URIs, styles and scripts are
inline, nothing is fetched. :data:`STATUS_SCRIPT` marks the page for a headless browser:
``<body data-status="ok" data-images="N/N">`` once every image has decoded and nothing raised,
``error: ...`` otherwise. Pillow only; no torch.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

__all__ = ["STATUS_SCRIPT", "data_uri", "escape", "img", "page"]


def escape(text: object) -> str:
    """Text for HTML element content or a quoted attribute value (quotes escaped too)."""
    return html.escape(str(text), quote=True)


def data_uri(image: Image.Image, format: str = "PNG", quality: int = 85) -> str:
    """The image as a ``data:`` URI: PNG (exact colours) or JPEG (small, for photos)."""
    buffer = io.BytesIO()
    if format == "JPEG":
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    else:
        image.save(buffer, format="PNG", optimize=True)
    kind = "jpeg" if format == "JPEG" else "png"
    return f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def img(
    image: Image.Image,
    size: tuple[int, int],
    alt: str,
    smooth: bool = False,
    format: str = "PNG",
) -> str:
    """An ``<img>`` of ``image`` resized to ``size`` (bilinear when ``smooth``, else nearest)."""
    filter_ = Image.Resampling.BILINEAR if smooth else Image.Resampling.NEAREST
    image = image.convert("RGB").resize(size, filter_)
    width, height = size
    return (
        f'<img src="{data_uri(image, format)}" width="{width}" height="{height}" '
        f'alt="{escape(alt)}">'
    )


# Sets data-status / data-images on <body>; window.lrpMark() re-checks (after a page's own
# script changed something). Errors and console.error calls are collected.
STATUS_SCRIPT = """
(function () {
  var errors = [];
  function mark() {
    var images = document.images, decoded = 0;
    for (var i = 0; i < images.length; i++) {
      if (images[i].complete && images[i].naturalWidth > 0) decoded++;
    }
    document.body.setAttribute("data-images", decoded + "/" + images.length);
    var status = decoded === images.length ? "ok" : "images-missing";
    if (errors.length) status = "error: " + errors.join("; ");
    document.body.setAttribute("data-status", status);
  }
  window.addEventListener("error", function (event) {
    errors.push(event.message || ("cannot load " + (event.target && event.target.tagName)));
    mark();
  }, true);
  var consoleError = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    consoleError.apply(console, arguments);
  };
  window.lrpMark = mark;
  window.addEventListener("load", mark);
})();
"""


def page(title: str, style: str, body: str, script: str = "") -> str:
    """A whole page: ``body`` (HTML) between the status script and the page's own ``script``
    (which runs after the body is parsed and should call ``window.lrpMark()`` at its end)."""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{style}</style></head>"
        f'<body data-status="loading"><script>{STATUS_SCRIPT}</script>{body}'
        f"<script>{script or 'window.lrpMark();'}</script></body></html>"
    )
