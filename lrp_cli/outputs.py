"""Everything lrp writes: heatmap PNGs, overlays, raw relevance, JSON-lines records.

Kept free of torch (numpy and Pillow only) so that rendering can be tested and used cheaply.
Files are written atomically: a temporary file in the destination folder, then ``os.replace``,
so an interrupted or failing run never leaves a half-written PNG or ``.npy`` behind.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO, Any

import numpy as np
from PIL import Image

from .messages import one_line

__all__ = [
    "CMAPS",
    "CMAP_NAMES",
    "OutputError",
    "OutputPaths",
    "RecordWriter",
    "atomic_write",
    "color_limit",
    "degenerate_reason",
    "make_folder",
    "output_paths",
    "output_stem",
    "overlay",
    "overlay_on_photo",
    "render_heatmap",
    "save_npy",
    "save_png",
]


class OutputError(Exception):
    """A file could not be written; the message is one line meant for the user."""


# --------------------------------------------------------------------------------------------
# Colour maps: lookup tables built from anchor colours, so no matplotlib is needed at run time.

_LUT_SIZE = 511  # odd, so that index 255 is exactly the middle (zero relevance)


def _lut(*anchors: str | tuple[float, str]) -> np.ndarray:
    """A (511, 3) uint8 table interpolating hex colours placed evenly (or at given positions)."""
    pos, rgb = [], []
    for i, anchor in enumerate(anchors):
        at, colour = anchor if isinstance(anchor, tuple) else (i / (len(anchors) - 1), anchor)
        pos.append(at)
        rgb.append([int(colour[k : k + 2], 16) for k in (0, 2, 4)])
    x = np.linspace(0.0, 1.0, _LUT_SIZE)
    table = np.stack([np.interp(x, pos, [c[ch] for c in rgb]) for ch in range(3)], axis=1)
    return np.rint(table).astype(np.uint8)


#: Diverging colour maps for signed relevance: the first half is negative, the middle is zero.
CMAPS: dict[str, np.ndarray] = {
    # blue - white - red, the LRP tradition (matplotlib's bwr)
    "bwr": _lut("0000ff", "ffffff", "ff0000"),
    # dark blue - blue - white - red - dark red (matplotlib's seismic, Montavon's tutorial)
    "seismic": _lut("00004c", "0000ff", "ffffff", "ff0000", "800000"),
    # zennit's coldnhot: white - cyan - blue - black (zero) - red - yellow - white
    "coldnhot": _lut("ffffff", "00ffff", "0000ff", "000000", "ff0000", "ffff00", "ffffff"),
    # Moreland's cool-warm diverging map (sampled), friendlier to colour-blind readers
    "coolwarm": _lut(
        "3b4cc0", "6282ea", "8db0fe", "b8d0f9", "dddddd", "f5c4ad", "f49a7b", "de604d", "b40426"
    ),
    # ColorBrewer RdBu reversed (red positive): colour-blind safe, near-white zero
    "rdbu": _lut(
        "053061",
        "2166ac",
        "4393c3",
        "92c5de",
        "d1e5f0",
        "f7f7f7",
        "fddbc7",
        "f4a582",
        "d6604d",
        "b2182b",
        "67001f",
    ),
}
CMAP_NAMES: list[str] = list(CMAPS)


def _as_map(relevance: np.ndarray) -> np.ndarray:
    """Accept (H, W), or (C, H, W) summed over channels as the LRP convention does."""
    r = np.asarray(relevance)
    if r.ndim == 3:
        r = r.sum(axis=0, dtype=np.float64)
    if r.ndim != 2:
        raise ValueError(f"relevance must have shape (H, W) or (C, H, W), not {r.shape}")
    return r


def degenerate_reason(relevance: np.ndarray) -> str | None:
    """Why a map cannot be shown meaningfully (``None`` when it is fine)."""
    r = np.asarray(relevance)
    if r.size == 0:
        return "empty relevance map"
    if not np.issubdtype(r.dtype, np.number):
        return f"relevance has non-numeric dtype {r.dtype}"
    finite = np.isfinite(r)
    if not finite.all():
        return f"relevance contains {int((~finite).sum())} NaN or infinite values"
    if not np.any(r):
        return "relevance is zero everywhere"
    return None


def color_limit(
    relevance: np.ndarray, vmax: float | None = None, percentile: float | None = None
) -> float:
    """The symmetric colour-scale limit L (colours span -L..+L); record it next to each map.

    ``vmax`` fixes L (comparable maps across images); otherwise L is the ``percentile`` of
    ``|R|`` (robust against a few extreme pixels) or ``max |R|``. Non-finite values are ignored;
    a map without any non-zero finite value gets L = 1 so that it renders as all-zero.
    """
    if vmax is not None:
        if not (math.isfinite(vmax) and vmax > 0):
            raise ValueError(f"vmax must be a positive number, not {vmax}")
        return float(vmax)
    if percentile is not None and not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], not {percentile}")
    r = np.abs(_as_map(relevance).astype(np.float64, copy=False))
    r = r[np.isfinite(r)]
    if r.size == 0:
        return 1.0
    limit = float(np.percentile(r, percentile) if percentile is not None else r.max())
    if not limit > 0:
        limit = float(r.max())  # a percentile can be 0 for sparse maps; fall back to the max
    return limit if limit > 0 else 1.0


def render_heatmap(
    relevance: np.ndarray,
    cmap: str = "bwr",
    vmax: float | None = None,
    percentile: float | None = None,
) -> Image.Image:
    """Colour a signed relevance map symmetrically around zero, as an RGB image (H x W).

    Values beyond the limit (see :func:`color_limit`) saturate; NaN and infinities are drawn
    as zero (check :func:`degenerate_reason` to flag such maps).
    """
    if cmap not in CMAPS:
        raise ValueError(f"unknown colour map {cmap!r}; choose one of {', '.join(CMAP_NAMES)}")
    r = _as_map(relevance).astype(np.float64)
    limit = color_limit(r, vmax=vmax, percentile=percentile)
    r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
    x = np.clip(r / limit, -1.0, 1.0)
    index = np.rint((x + 1.0) * ((_LUT_SIZE - 1) / 2)).astype(np.intp)
    return Image.fromarray(CMAPS[cmap][index], mode="RGB")


def overlay(heatmap: Image.Image, photo: Image.Image, alpha: float = 0.5) -> Image.Image:
    """Blend the heatmap over the photo; ``alpha`` is the heatmap's opacity (0 = photo only)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    heatmap = heatmap.convert("RGB")
    photo = photo.convert("RGB")
    if photo.size != heatmap.size:
        photo = photo.resize(heatmap.size, Image.Resampling.BILINEAR)
    return Image.blend(photo, heatmap, alpha)


def overlay_on_photo(
    relevance: np.ndarray,
    photo: Image.Image,
    region: tuple[float, float, float, float],
    cmap: str = "bwr",
    vmax: float | None = None,
    alpha: float = 0.5,
    dim: float = 0.6,
) -> Image.Image:
    """The heatmap over the original photo, at the photo's own resolution.

    ``relevance`` (H, W) is the map at the model's input resolution; it covers ``region`` =
    (left, top, right, bottom) of the photo in the photo's pixels (see
    :func:`lrp_cli.images.input_region`) and is resampled onto it bilinearly, then coloured
    with the limit ``vmax`` of the model-resolution map (None: its largest |relevance|). What
    the crop cut away is shown dimmed (``dim``: how far towards dark grey).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    r = np.nan_to_num(_as_map(relevance).astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    height, width = r.shape
    left, top, right, bottom = region
    photo = photo.convert("RGB")
    a, e = width / (right - left), height / (bottom - top)
    # output pixel centre (x + 0.5) -> model-input coordinate ((x + 0.5) - left) * a
    field = Image.fromarray(r, mode="F").transform(
        photo.size,
        Image.Transform.AFFINE,
        (a, 0.0, -left * a, 0.0, e, -top * e),
        resample=Image.Resampling.BILINEAR,
    )
    limit = color_limit(r, vmax=vmax)
    heat = render_heatmap(np.asarray(field), cmap, vmax=limit)
    blended = Image.blend(photo, heat, alpha)
    dimmed = Image.blend(photo, Image.new("RGB", photo.size, (40, 40, 40)), dim)
    inside = np.zeros((photo.height, photo.width), np.uint8)
    x0, x1 = _pixel_span(left, right, photo.width)
    y0, y1 = _pixel_span(top, bottom, photo.height)
    inside[y0:y1, x0:x1] = 255
    return Image.composite(blended, dimmed, Image.fromarray(inside, mode="L"))


def _pixel_span(low: float, high: float, size: int) -> tuple[int, int]:
    """The pixels whose centres lie in [low, high), within 0..size; at least the one pixel
    holding the span's middle when it is narrower than a pixel (a 1-pixel-wide strip)."""
    start, stop = max(0, math.ceil(low - 0.5)), min(size, math.ceil(high - 0.5))
    if stop <= start:
        start = min(size - 1, max(0, math.floor((low + high) / 2)))
        stop = start + 1
    return start, stop


# --------------------------------------------------------------------------------------------
# Atomic writing


def _os_reason(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror.lower()
    return one_line(f"{type(error).__name__}: {error}")


def temporary_path(path: Path) -> Path:
    """Where :func:`atomic_write` writes ``path`` first: ``.NAME.HOST.PID-HEX.tmp`` beside it,
    so that whoever finds it left behind can tell whether its writer may still be running."""
    return path.with_name(f".{path.name}.{_HOST}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def temporary_writer(name: str) -> int | None:
    """The process id of the writer of temporary file ``name`` if it ran on this host (None:
    not a temporary file, or one of another host, whose processes cannot be seen here)."""
    match = _TEMPORARY.match(name)
    return int(match.group(2)) if match and match.group(1) == _HOST else None


# a host name as one word of a file name
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\..+\.([A-Za-z0-9_-]+)\.(\d+)-[0-9a-f]{8}\.tmp$")


def make_folder(
    folder: Path, hint: str = "choose another output folder or fix its permissions"
) -> None:
    """Create an output folder (and its parents) or raise :class:`OutputError` saying why."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"{one_line(folder)}: cannot create the output folder: {_os_reason(error)}; {hint}"
        ) from error


def atomic_write(path: str | os.PathLike[str], write_fn: Callable[[IO[bytes]], object]) -> None:
    """Write a file through ``write_fn(binary_file)`` so that it appears whole or not at all.

    The data goes to a hidden temporary file in the same folder (same file system, so the final
    ``os.replace`` is atomic); on any error the temporary file is removed and
    :class:`OutputError` is raised. The folder is created if needed.
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = temporary_path(path)
    try:
        # O_EXCL: never follow or reuse an existing file; mode 0o666 lets the umask apply.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as handle:
            write_fn(handle)
        os.replace(tmp, path)
    except BaseException as error:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if not isinstance(error, Exception):
            raise  # KeyboardInterrupt and friends pass through unchanged
        if isinstance(error, OutputError):
            raise
        raise OutputError(
            f"{one_line(path)}: cannot write: {_os_reason(error)}; "
            "check free disk space and that the output folder is writable"
        ) from error


def save_png(image: Image.Image, path: str | os.PathLike[str]) -> None:
    """Save an image as PNG atomically (never JPEG: heatmaps need exact colours).

    zlib level 1: on heatmaps 3x faster than the default 6 for files about 15% larger.
    """
    atomic_write(path, lambda handle: image.save(handle, format="PNG", compress_level=1))


def save_npy(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Save an array as ``.npy`` atomically, without pickling."""
    data = np.asarray(array)
    atomic_write(path, lambda handle: np.save(handle, data, allow_pickle=False))


# --------------------------------------------------------------------------------------------
# Output names


@dataclass(frozen=True)
class OutputPaths:
    """Where the results for one input go."""

    heatmap: Path
    relevance: Path
    overlay: Path


def output_stem(relative: PurePath) -> PurePath:
    """The input's output-relative name without its extension: ``sub/cat.jpg`` -> ``sub/cat``."""
    relative = PurePath(relative)
    if relative.is_absolute() or relative.anchor or ".." in relative.parts or not relative.name:
        raise OutputError(
            f"{one_line(relative)}: output name must be a relative path inside the output folder"
        )
    return relative.with_suffix("") if relative.suffix else relative


def output_paths(out_dir: Path, relative: PurePath) -> OutputPaths:
    """``OUT/NAME.png``, ``OUT/NAME.npy`` and ``OUT/NAME.overlay.png``, keeping sub-folders.

    Refuses names that would end up outside ``out_dir``, whether by ``..``, an absolute path or
    a symbolic link inside ``out_dir`` that leads elsewhere.
    """
    out_dir = Path(out_dir)
    stem = out_dir / output_stem(relative)
    root = out_dir.resolve()
    parent = stem.parent.resolve()
    if parent != root and root not in parent.parents:
        raise OutputError(
            f"{one_line(relative)}: output would be written outside {one_line(out_dir)} "
            f"(into {one_line(parent)}); remove the symbolic link or choose another folder"
        )
    name = stem.name
    return OutputPaths(
        heatmap=stem.with_name(f"{name}.png"),
        relevance=stem.with_name(f"{name}.npy"),
        overlay=stem.with_name(f"{name}.overlay.png"),
    )


# --------------------------------------------------------------------------------------------
# JSON-lines records


def _jsonable(value: Any) -> Any:
    """JSON has no NaN/infinity: write ``null``; numpy values and paths become plain values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def silence_stdout() -> None:
    """After stdout's reader went away, point stdout at /dev/null so the exit flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


class RecordWriter:
    """Writes one compact UTF-8 JSON object per line, flushed at once (``"-"`` = stdout).

    A reader that goes away (``lrp ... --jsonl - | head``) is not an error: writing stops
    quietly and :attr:`broken_pipe` becomes true, so the caller may stop early.
    """

    def __init__(self, target: str | os.PathLike[str], *, stdout: IO[Any] | None = None) -> None:
        self.broken_pipe = False
        self._is_stdout = os.fspath(target) == "-"
        if self._is_stdout:
            stream = stdout if stdout is not None else sys.stdout
            self._text: IO[Any] | None = stream
            self._out: IO[Any] = getattr(stream, "buffer", stream)
        else:
            self._text = None
            try:
                self._out = open(target, "wb")  # closed in close()
            except OSError as error:
                raise OutputError(
                    f"{one_line(target)}: cannot open the records file: {_os_reason(error)}; "
                    "choose another path or fix the folder's permissions"
                ) from error
        self.path = target

    @staticmethod
    def encode(record: Mapping[str, Any]) -> bytes:
        """One record as a UTF-8 line; undecodable file names fall back to ``\\u`` escapes."""
        data = _jsonable(record)
        try:
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
            return (text + "\n").encode("utf-8")
        except UnicodeEncodeError:
            text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
            return (text + "\n").encode("ascii")

    def write(self, record: Mapping[str, Any]) -> bool:
        """Write one record; returns False (and writes nothing) once the reader has gone."""
        if self.broken_pipe:
            return False
        line = self.encode(record)
        try:
            if self._text is not None and self._text is not self._out:
                self._text.flush()  # keep order with anything printed through the text layer
            if isinstance(self._out, io.TextIOBase):
                self._out.write(line.decode("utf-8"))
            else:
                self._out.write(line)
            self._out.flush()
        except BrokenPipeError:
            self._pipe_closed()
            return False
        except OSError as error:
            raise OutputError(
                f"{one_line(self.path)}: cannot write a record: {_os_reason(error)}; "
                "check free disk space"
            ) from error
        return True

    def _pipe_closed(self) -> None:
        self.broken_pipe = True
        if self._is_stdout and self._text is sys.stdout:
            silence_stdout()

    def close(self) -> None:
        """Close the records file (stdout is left open)."""
        if not self._is_stdout:
            self._out.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
