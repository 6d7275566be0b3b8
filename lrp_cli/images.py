"""Finding inputs, decoding images and turning them into model inputs.

Photos from the wild are messy (EXIF rotation, CMYK, 16-bit, transparency, truncated files,
decompression bombs); every failure here becomes an :class:`ImageError` with a one-line message
naming the file, the problem and what to do, so the CLI can report it and go on with the rest.

Importing this module is cheap: Pillow and numpy only. torch is imported inside the functions
that return tensors (``to_tensor``, ``load_npy_input``, ``denormalize``), so ``lrp --help`` stays
fast and decoding worker processes never load it.
"""

from __future__ import annotations

import glob
import os
import stat
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Protocol, TextIO

import numpy as np
from PIL import Image

from .messages import error_reason, one_line, show_traceback
from .outputs import output_stem

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "INPUT_EXTENSIONS",
    "ImageError",
    "InputItem",
    "InputProblem",
    "Uncropped",
    "collect_inputs",
    "crop_image",
    "decode_input",
    "denormalize",
    "image_size",
    "input_region",
    "load_image",
    "load_npy_input",
    "read_npy_input",
    "to_array",
    "to_tensor",
    "try_decode_input",
]

#: Largest image (width x height) decoded by default; ``--max-pixels`` raises it. It guards
#: against decompression bombs: a few-KB PNG can claim 100 000 x 100 000 pixels (30 GB).
DEFAULT_MAX_PIXELS = 64_000_000

#: Extensions picked up when walking a folder or expanding a glob (case-insensitive).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
INPUT_EXTENSIONS = IMAGE_EXTENSIONS | {".npy"}

# Raster formats Pillow may decode. Others it knows (EPS runs Ghostscript, PSD, PDF, fonts...)
# are refused: explaining a classifier never needs them, and they widen the attack surface.
_PIL_FORMATS = (
    "JPEG",
    "MPO",
    "PNG",
    "GIF",
    "BMP",
    "DIB",
    "TIFF",
    "WEBP",
    "PPM",
    "TGA",
    "JPEG2000",
    "AVIF",
    "QOI",
)


_AVAILABLE_FORMATS: tuple[str, ...] = ()


def _pil_formats() -> tuple[str, ...]:
    """The allowed formats this Pillow build has (loading its plugins once)."""
    global _AVAILABLE_FORMATS
    if not _AVAILABLE_FORMATS:
        Image.init()
        _AVAILABLE_FORMATS = tuple(f for f in _PIL_FORMATS if f in Image.OPEN)
    return _AVAILABLE_FORMATS


class ImageError(Exception):
    """An input cannot be used; ``str(error)`` is one line: file, problem, what to do."""

    def __init__(self, path: str | os.PathLike[str], problem: str, advice: str = "") -> None:
        self.path = path
        self.problem = problem
        message = f"{one_line(path)}: {problem}"
        super().__init__(f"{message}; {advice}" if advice else message)


class _Preprocessing(Protocol):
    """What we need from ``lrp_cli.models.Preprocessing`` (duck typing, no import)."""

    input_size: int
    resize: int
    mean: Sequence[float]
    std: Sequence[float]


# --------------------------------------------------------------------------------------------
# Decoding


def _check_file(path: Path) -> int:
    """Fail early with a clear reason for missing, special, empty or broken-link paths."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageError(
                path,
                f"broken symbolic link (points to {one_line(os.readlink(path))})",
                "fix or remove the link",
            ) from None
        raise ImageError(path, "no such file", "check the path") from None
    except PermissionError:
        raise ImageError(path, "permission denied", "check the folder's permissions") from None
    except OSError as error:
        raise ImageError(path, f"cannot access the file: {error.strerror}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageError(path, "is a folder, not an image", "pass the folder as an input instead")
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(path, "not a regular file", "pass an image file")
    if info.st_size == 0:
        raise ImageError(path, "the file is empty (0 bytes)", "copy or download it again")
    return info.st_size


def _describe_unknown(head: bytes) -> str:
    """Name the kind of a file Pillow did not recognise, for a more helpful message."""
    if head[4:8] == b"ftyp" and head[8:12] in {b"heic", b"heix", b"mif1", b"msf1", b"hevc"}:
        return "HEIC/HEIF image, which is not supported"
    if head.startswith(b"%PDF"):
        return "PDF document, not an image"
    if head.startswith(b"%!PS"):
        return "PostScript file, which is not supported"
    if head.startswith(b"8BPS"):
        return "Photoshop document, which is not supported"
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith((b"<svg", b"<?xml")):
        return "SVG/XML file (vector images must be rasterised first)"
    if stripped.startswith((b"<!DOCTYPE", b"<html", b"<HTML")):
        return "HTML page, not an image (a failed download?)"
    if b"\0" not in head:
        try:
            head.decode("utf-8")
            return "text file, not an image"
        except UnicodeDecodeError:
            pass
    return "not a recognised image format"


_PIL_LOCK = threading.Lock()


@contextmanager
def _pil_limit_lifted(lift: bool = True) -> Iterator[None]:
    """Switch Pillow's own decompression-bomb check off: ours, with the real size, replaces it.

    Pillow refuses (without telling the size) above about 179 M pixels and warns above 89 M;
    a global setting, hence the lock.
    """
    if not lift or Image.MAX_IMAGE_PIXELS is None:
        yield
        return
    with _PIL_LOCK:
        pil_limit = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = pil_limit


def _bomb_error(path: Path, width: int, height: int, max_pixels: int) -> ImageError:
    return ImageError(
        path,
        f"image is {width} x {height} = {width * height:,} pixels, more than the limit of "
        f"{max_pixels:,} (decompression-bomb guard)",
        f"if you trust the file, raise the limit with --max-pixels {width * height}",
    )


_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag (1 = upright); a damaged EXIF block is ignored, not fatal."""
    try:
        value = image.getexif().get(0x0112, 1)
        return int(value) if value in _ORIENTATION else 1
    except Exception:
        return 1


def _to_uint8(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale high-bit-depth grey (16-bit PNG/TIFF, 32-bit int, float) to 0..255."""
    a = array.astype(np.float64)
    if mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if a.size and a.min() >= 0.0 and a.max() <= 1.0:
            a = a * 255.0  # floats in 0..1
    elif mode.startswith("I;16") or (a.size and a.max() > 255):
        a = np.clip(a, 0, 65535) / 257.0  # 16-bit range (an "I" image holding 16-bit data)
    return np.rint(np.clip(a, 0, 255)).astype(np.uint8)


_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB with transparency composited over white (what viewers show, not black)."""
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = Image.fromarray(_to_uint8(np.asarray(image), image.mode))
    has_alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


def load_image(
    path: str | os.PathLike[str], max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode an image file as an upright 8-bit RGB image (first frame of animations).

    The pixel count is checked from the header, before any pixel is decoded; ``max_pixels``
    None or 0 disables the check. Raises :class:`ImageError`, never a raw Pillow or OS error.
    """
    path = Path(path)
    max_pixels = max_pixels or None
    _check_file(path)
    try:
        handle = open(path, "rb")  # closed by the with block below
    except PermissionError:
        raise ImageError(
            path, "permission denied", "make the file readable (chmod +r) or skip it"
        ) from None
    except OSError as error:
        raise ImageError(path, f"cannot open the file: {error.strerror or error}") from None
    with handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's warnings on odd metadata are noise here
        try:
            with _pil_limit_lifted():  # only reads the header
                image = Image.open(handle, formats=_pil_formats())
        except Image.DecompressionBombError:
            raise ImageError(
                path,
                "image has more pixels than Pillow's decompression-bomb limit",
                "if you trust the file, raise the limit with --max-pixels",
            ) from None
        except Image.UnidentifiedImageError:
            handle.seek(0)
            head = handle.read(512)
            raise ImageError(
                path, _describe_unknown(head), "convert it to JPEG or PNG, or skip it"
            ) from None
        except Exception as error:
            raise ImageError(
                path,
                f"image header is truncated or corrupt ({error_reason(error)})",
                "copy or download it again, or skip it",
            ) from None
        width, height = image.size
        if max_pixels is not None and width * height > max_pixels:
            raise _bomb_error(path, width, height, max_pixels)
        if width < 1 or height < 1:
            raise ImageError(path, f"image has no pixels ({width} x {height})")
        pil_limit = Image.MAX_IMAGE_PIXELS
        lift = pil_limit is not None and (max_pixels is None or max_pixels > pil_limit)
        try:
            with _pil_limit_lifted(lift):  # frames are checked again while decoding
                image.seek(0)
                image.load()
        except Exception as error:
            raise ImageError(
                path,
                f"{image.format or 'image'} data is truncated or corrupt ({error_reason(error)})",
                "copy or download it again, or skip it",
            ) from None
        orientation = _orientation(image)
        try:
            rgb = _to_rgb(image)
        except Exception as error:
            raise ImageError(
                path,
                f"cannot convert {image.format or 'image'} colour mode {image.mode} to RGB "
                f"({error_reason(error)})",
                "convert it to an 8-bit RGB JPEG or PNG",
            ) from None
    if orientation != 1:
        rgb = rgb.transpose(_ORIENTATION[orientation])
    return rgb


# --------------------------------------------------------------------------------------------
# Resizing and cropping


def _resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Shorter side to ``size``, aspect kept, truncating like ``torchvision.transforms.Resize``."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def _crop_span(new: int, crop: int) -> tuple[int, int, int]:
    """(start in the resized image, length kept, offset in the crop) along one axis.

    Mirrors ``torchvision.transforms.functional.center_crop``: ``int(round(...))`` for the
    start, and zero padding (the image centred, ``//`` for the offset) when it is too small.
    """
    if new >= crop:
        return int(round((new - crop) / 2.0)), crop, 0
    return 0, new, (crop - new) // 2


# torchvision's InterpolationMode values and the Pillow filters it uses for them.
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
    "lanczos": Image.Resampling.LANCZOS,
}

# Beyond this many resized pixels (16x a square resize), resize only the region we keep.
_FULL_RESIZE_FACTOR = 16


@dataclass(frozen=True)
class Uncropped:
    """A model's preprocessing without the centre crop (``lrp explain --no-crop``): the whole
    image, its shorter side resized to ``resize``, with the same filter, mean and std."""

    input_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop: bool = False

    @classmethod
    def of(cls, preprocessing: _Preprocessing) -> Uncropped:
        mode = str(getattr(preprocessing, "interpolation", "bilinear") or "bilinear")
        mean, std = tuple(preprocessing.mean), tuple(preprocessing.std)
        return cls(int(preprocessing.input_size), int(preprocessing.resize), mean, std, mode)


def _cropped(preprocessing: _Preprocessing) -> bool:
    return bool(getattr(preprocessing, "crop", True))


def input_region(
    width: int, height: int, preprocessing: _Preprocessing
) -> tuple[float, float, float, float]:
    """The box ``(left, top, right, bottom)`` of a ``width`` x ``height`` (upright) image, in
    its own pixels, that the model input made by :func:`crop_image` covers.

    Exact: the resize maps resized pixel edges ``x`` to ``x * width / new_width``, and the crop
    starts where :func:`crop_image` starts it; a box reaching outside the image (negative, or
    beyond its size) is the zero padding of an image smaller than the crop.
    """
    if not _cropped(preprocessing):
        return 0.0, 0.0, float(width), float(height)
    crop = int(preprocessing.input_size)
    new_w, new_h = _resized_size(width, height, int(preprocessing.resize))
    left, _, pad_x = _crop_span(new_w, crop)
    top, _, pad_y = _crop_span(new_h, crop)
    x0, y0 = left - pad_x, top - pad_y
    sx, sy = width / new_w, height / new_h
    return x0 * sx, y0 * sy, (x0 + crop) * sx, (y0 + crop) * sy


def image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(width, height) of an image file as :func:`load_image` returns it (EXIF rotation
    applied), from its header (PNG: decoded, its EXIF block may follow the pixels)."""
    with warnings.catch_warnings(), _pil_limit_lifted(), Image.open(path) as image:
        warnings.simplefilter("ignore")
        if image.format == "PNG":
            image.load()
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def crop_image(image: Image.Image, preprocessing: _Preprocessing) -> Image.Image:
    """Resize the shorter side to ``resize`` (antialiased), centre-crop a square (not for
    :class:`Uncropped` preprocessing: the whole resized image).

    This is exactly torchvision's classification preset (``Resize(resize)`` then
    ``CenterCrop(input_size)`` on a PIL image), with the filter named by the optional
    ``preprocessing.interpolation`` (torchvision's names; bilinear by default).

    For extremely thin images (a 1 x 10 000 strip would otherwise become gigapixels) only the
    part that survives the crop is resampled, with the same filter scale: equal to within
    rounding (one grey level).
    """
    image = image if image.mode == "RGB" else image.convert("RGB")
    crop, size = int(preprocessing.input_size), int(preprocessing.resize)
    width, height = image.size
    new_w, new_h = _resized_size(width, height, size)
    left, keep_w, pad_x = _crop_span(new_w, crop)
    top, keep_h, pad_y = _crop_span(new_h, crop)
    mode = str(getattr(preprocessing, "interpolation", "bilinear") or "bilinear").lower()
    if mode not in _RESAMPLE:
        raise ValueError(f"unknown interpolation {mode!r}; use one of {', '.join(_RESAMPLE)}")
    resample = _RESAMPLE[mode]
    if not _cropped(preprocessing):
        return (
            image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), resample)
        )
    if new_w * new_h <= _FULL_RESIZE_FACTOR * size * size:
        resized = (
            image if (new_w, new_h) == (width, height) else image.resize((new_w, new_h), resample)
        )
        region = resized.crop((left, top, left + keep_w, top + keep_h))
    else:
        sx, sy = width / new_w, height / new_h
        box = (
            left * sx,
            top * sy,
            min((left + keep_w) * sx, width),
            min((top + keep_h) * sy, height),
        )
        region = image.resize((keep_w, keep_h), resample, box=box)
    if (keep_w, keep_h) == (crop, crop):
        return region
    canvas = Image.new("RGB", (crop, crop), (0, 0, 0))
    canvas.paste(region, (pad_x, pad_y))
    return canvas


# --------------------------------------------------------------------------------------------
# Model inputs (torch imported only where a tensor is returned)


def _stats(preprocessing: _Preprocessing) -> tuple[np.ndarray, np.ndarray]:
    mean = np.asarray(tuple(preprocessing.mean), dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(tuple(preprocessing.std), dtype=np.float32).reshape(-1, 1, 1)
    return mean, std


def to_array(crop: Image.Image, preprocessing: _Preprocessing) -> np.ndarray:
    """(3, H, W) float32, scaled to 0..1 and normalised with the model's mean and std.

    Same arithmetic as torchvision's ``ToTensor`` + ``Normalize`` (float32 division by 255,
    then by std), so results are identical; numpy only, so worker processes need no torch.
    The arithmetic is done once per channel and level (a 256-entry table) and the pixels
    look their values up: 0.45 instead of 1.2 ms for a 224-pixel crop.
    """
    rgb = crop.convert("RGB")
    mean, std = _stats(preprocessing)
    levels = np.arange(256, dtype=np.float32) / np.float32(255)
    table = np.broadcast_to((levels - mean[:, :, 0]) / std[:, :, 0], (3, 256))
    out = np.empty((3, rgb.height, rgb.width), dtype=np.float32)
    for channel, band in enumerate(rgb.split()):
        # 8-bit levels index the table in range, so "clip" skips numpy's checked copy
        np.take(table[channel], np.asarray(band), out=out[channel], mode="clip")
    return out


def to_tensor(crop: Image.Image, preprocessing: _Preprocessing) -> torch.Tensor:
    """:func:`to_array` as a tensor."""
    import torch

    return torch.from_numpy(to_array(crop, preprocessing))


def denormalize(tensor: torch.Tensor, preprocessing: _Preprocessing) -> Image.Image:
    """The RGB picture a normalised (C, H, W) input shows, for overlays (1 or 3 channels)."""
    import torch

    t = tensor.detach().float().cpu()
    mean, std = (torch.from_numpy(v) for v in _stats(preprocessing))
    if t.shape[0] == mean.shape[0]:
        t = t * std + mean
    t = t.clamp(0, 1)
    if t.shape[0] != 3:
        t = t.mean(dim=0, keepdim=True).expand(3, -1, -1)
    array = torch.round(t * 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(np.ascontiguousarray(array), mode="RGB")


def load_npy_input(
    path: str | os.PathLike[str], expected: tuple[int, int, int] | None = None
) -> torch.Tensor:
    """:func:`read_npy_input` as a tensor."""
    import torch

    return torch.from_numpy(read_npy_input(path, expected))


def read_npy_input(
    path: str | os.PathLike[str], expected: tuple[int, int, int] | None = None
) -> np.ndarray:
    """An already preprocessed input saved with ``numpy.save``: (C, H, W) or (N, C, H, W).

    Returns a float32 array of the same shape. Float dtypes only (16/32/64 bit; integers would
    be unnormalised pixels), finite values only, no pickled objects. ``expected`` = (C, H, W)
    checks that the samples fit the model.
    """
    path = Path(path)
    _check_file(path)
    advice = "save a float array of shape (C, H, W) or (N, C, H, W) with numpy.save"
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
            if magic.startswith(b"PK\x03\x04"):
                raise ImageError(path, ".npz archives are not supported", advice)
            if magic != b"\x93NUMPY":
                raise ImageError(path, "not a NumPy .npy file", advice)
            handle.seek(0)
            array = np.load(handle, allow_pickle=False)
    except ImageError:
        raise
    except PermissionError:
        raise ImageError(path, "permission denied", "make the file readable (chmod +r)") from None
    except ValueError as error:
        if "pickle" in str(error) or "object" in str(error):
            raise ImageError(
                path, "holds pickled Python objects, which are refused for safety", advice
            ) from None
        raise ImageError(path, f"damaged .npy file ({error_reason(error)})", advice) from None
    except Exception as error:
        raise ImageError(path, f"damaged .npy file ({error_reason(error)})", advice) from None

    if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
        raise ImageError(
            path,
            f"dtype {array.dtype} is not supported (float16, float32 or float64 expected)",
            "save the normalised float input, not raw pixels",
        )
    if array.ndim not in (3, 4):
        raise ImageError(path, f"shape {array.shape} has {array.ndim} dimensions", advice)
    if array.size == 0:
        raise ImageError(path, f"shape {array.shape} holds no values", advice)
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ImageError(path, f"contains {bad} NaN or infinite values", "fix the preprocessing")
    sample = tuple(array.shape[-3:])
    if expected is not None and sample != tuple(expected):
        raise ImageError(
            path,
            f"sample shape {sample} does not match the model's input {tuple(expected)}",
            "preprocess with the model's input size and channel count",
        )
    return np.ascontiguousarray(array, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Collecting inputs


@dataclass(frozen=True)
class InputItem:
    """One input file and its output-relative name (sub-folders kept, never escaping)."""

    path: Path
    relative: PurePath


class InputProblem(str):
    """An input refused while inputs are collected: the one-line message (``str``), the
    input as given (``input``) and the reason alone (``reason``)."""

    input: str
    reason: str

    def __new__(cls, spec: str, reason: str) -> InputProblem:
        problem = super().__new__(cls, f"{one_line(spec)}: {reason}")
        problem.input, problem.reason = spec, reason
        return problem


def _safe_relative(relative: PurePath, path: Path) -> PurePath:
    """Drop ``.`` parts; fall back to the file name for anything absolute or with ``..``."""
    parts = [p for p in PurePath(relative).parts if p not in ("", ".")]
    if not parts or PurePath(relative).is_absolute() or ".." in parts:
        return PurePath(path.name)
    return PurePath(*parts)


def _has_magic(text: str) -> bool:
    return any(c in text for c in "*?[")


def _wanted(path: Path) -> bool:
    return path.suffix.lower() in INPUT_EXTENSIONS


def _walk(folder: Path, excluded: set[str]) -> list[Path]:
    """Input files under ``folder``, sorted, skipping hidden entries (``.git``, ``._x.jpg``)."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and os.path.realpath(os.path.join(root, d)) not in excluded
        )
        found.extend(
            Path(root, f) for f in sorted(files) if not f.startswith(".") and _wanted(Path(f))
        )
    return found


def _glob_base(pattern: str) -> Path:
    """The folder part of a pattern before its first wildcard (``a/b/**/*.jpg`` -> ``a/b``)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _read_stdin(stdin: TextIO, null_separated: bool) -> list[str]:
    data = stdin.read()
    if null_separated:
        entries = data.split("\0")
    else:
        entries = [line[:-1] if line.endswith("\r") else line for line in data.split("\n")]
    return [entry for entry in entries if entry.strip()]


def collect_inputs(
    specs: list[str],
    stdin: TextIO | None = None,
    null_separated: bool = False,
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> tuple[list[InputItem], list[InputProblem]]:
    """Expand files, folders (recursive), glob patterns and ``-`` (paths read from stdin).

    Returns the inputs in a deterministic order (specs in the order given, each sorted within)
    without duplicates, plus the problems (one-line :class:`InputProblem` strings) of specs
    that yielded nothing.

    Output-relative names: a file given directly (or a path from stdin that is absolute or uses
    ``..``) keeps its file name; files found in a folder keep their path inside it; glob matches
    keep their path below the pattern's fixed prefix; relative stdin paths are kept as given.
    Names whose outputs would clash (``a/x.jpg`` and ``b/x.jpg`` given directly, or ``x.jpg``
    next to ``x.png``) get ``-2``, ``-3``... appended to the later one's stem.
    ``exclude`` names folders to skip (pass the output folder so earlier results are not
    picked up as inputs).
    """
    items: list[InputItem] = []
    problems: list[InputProblem] = []
    seen: set[str] = set()
    excluded = {os.path.realpath(p) for p in exclude}
    candidates: list[tuple[Path, PurePath]] = []

    def add_folder(folder: Path, base: Path, spec: str) -> None:
        files = _walk(folder, excluded)
        if not files:
            exts = " ".join(sorted(e.lstrip(".") for e in INPUT_EXTENSIONS))
            problems.append(InputProblem(spec, f"no input files ({exts}) found in this folder"))
        for file in files:
            candidates.append((file, PurePath(os.path.relpath(file, base))))

    def add_path(spec: str, relative: PurePath | None) -> None:
        path = Path(spec)
        if path.is_dir():
            if os.path.realpath(path) in excluded:
                problems.append(InputProblem(spec, "skipped, it is the output folder"))
            else:
                add_folder(path, path, spec)
        elif os.path.lexists(path):
            candidates.append((path, relative or PurePath(path.name)))
        else:
            problems.append(InputProblem(spec, "no such file or folder"))

    for spec in specs:
        if spec == "-":
            entries = _read_stdin(stdin if stdin is not None else sys.stdin, null_separated)
            if not entries:
                problems.append(InputProblem("-", "no paths were read from standard input"))
            for entry in entries:
                add_path(entry, _safe_relative(PurePath(entry), Path(entry)))
        elif _has_magic(spec) and not os.path.lexists(spec):
            base = _glob_base(spec)
            matches = sorted(glob.glob(spec, recursive=True))
            before = len(candidates)
            for match in matches:
                path = Path(match)
                if path.is_dir():
                    if os.path.realpath(path) not in excluded:
                        for file in _walk(path, excluded):
                            candidates.append((file, PurePath(os.path.relpath(file, base))))
                elif _wanted(path):
                    candidates.append((path, PurePath(os.path.relpath(path, base))))
            if len(candidates) == before:
                problems.append(InputProblem(spec, "the pattern matched no input files"))
        else:
            add_path(spec, None)

    used: set[str] = set()
    for path, relative in candidates:
        key = os.path.realpath(path)
        if key in seen:
            continue
        seen.add(key)
        relative = _unique(_safe_relative(relative, path), used)
        items.append(InputItem(path=path, relative=relative))
    return items, problems


def _unique(relative: PurePath, used: set[str]) -> PurePath:
    """Rename ``x.jpg`` to ``x-2.jpg``, ``x-3.jpg``... while its output files would clash.

    Compared case-insensitively (macOS and Windows file systems), and on the full set of output
    names, so that an input called ``x.overlay.jpg`` cannot overwrite the overlay of ``x.jpg``.
    """
    stem = output_stem(relative)
    candidate, n = relative, 1
    while True:
        name = str(output_stem(candidate)).casefold()
        names = {f"{name}.png", f"{name}.npy", f"{name}.overlay.png"}
        if not names & used:
            used.update(names)
            return candidate
        n += 1
        candidate = relative.with_name(f"{stem.name}-{n}{relative.suffix}")


# --------------------------------------------------------------------------------------------
# One input, decoded


def decode_input(
    item: InputItem, preprocessing: _Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """The (n, C, H, W) float32 model input of one file: n = 1 for images and (C, H, W)
    ``.npy`` files, N for an (N, C, H, W) ``.npy``. Raises :class:`ImageError`."""
    path = item.path
    if path.suffix.lower() == ".npy":
        size = int(preprocessing.input_size)
        expected = (len(tuple(preprocessing.mean)), size, size)
        array = read_npy_input(path, expected=expected)
        return array[None] if array.ndim == 3 else array
    image = load_image(path, max_pixels)
    if not _cropped(preprocessing):
        size = int(preprocessing.resize)
        new_w, new_h = _resized_size(*image.size, size)
        if new_w * new_h > _FULL_RESIZE_FACTOR * size * size:
            raise ImageError(
                path,
                f"{image.width} x {image.height} is too elongated to explain uncropped (it would "
                f"be {new_w} x {new_h} pixels)",
                "explain it with --crop",
            )
    return to_array(crop_image(image, preprocessing), preprocessing)[None]


def try_decode_input(
    item: InputItem, preprocessing: _Preprocessing, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray | None, str | None]:
    """:func:`decode_input`, never raising for a bad file: ``(array, None)`` or
    ``(None, one-line message)``, so that one file never stops a batch."""
    try:
        return decode_input(item, preprocessing, max_pixels), None
    except ImageError as error:
        return None, str(error)
    except Exception as error:  # a bug or out of memory must not end the whole run
        show_traceback(error)
        return None, f"{one_line(item.path)}: unexpected error: {error_reason(error)}"
