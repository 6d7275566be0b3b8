"""Decoding, cropping and input collection (lrp_cli.images)."""

from __future__ import annotations

import io
import os
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path, PurePath
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from lrp_cli import images
from lrp_cli.images import (
    ImageError,
    InputItem,
    collect_inputs,
    crop_image,
    denormalize,
    load_image,
    load_npy_input,
    to_tensor,
    try_decode_input,
)

SAMPLES = Path(__file__).resolve().parent.parent / "sample_images"
PRE = SimpleNamespace(
    input_size=224, resize=256, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)
)


def _photo(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG that claims a huge size (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    _photo((200, 150)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    _photo((200, 150)).save(buffer, "PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- bad files

BAD_FILES = {
    "empty.jpg": (lambda: b"", "empty (0 bytes)"),
    "truncated.jpg": (lambda: _jpeg_bytes()[: len(_jpeg_bytes()) // 2], "truncated or corrupt"),
    "truncated.png": (lambda: _png_bytes()[: len(_png_bytes()) // 2], "truncated or corrupt"),
    "header-only.jpg": (lambda: _jpeg_bytes()[:30], "header is truncated or corrupt"),
    "notes.png": (lambda: b"just some text\n", "text file"),
    "random.jpg": (lambda: b"\x00\xff" + random.Random(0).randbytes(4000), "not a recognised"),
    "page.jpg": (lambda: b"<!DOCTYPE html><html>403</html>", "HTML page"),
    "vector.png": (lambda: b'<?xml version="1.0"?><svg></svg>', "SVG"),
    "phone.jpg": (lambda: b"\0\0\0\x18ftypheic" + bytes(64), "HEIC"),
    "doc.png": (lambda: b"%PDF-1.7\n" + bytes(64), "PDF"),
    "drawing.jpg": (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 9 9\n", "PostScript"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_image_error_with_useful_message(tmp_path, name):
    make, expected = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    with pytest.raises(ImageError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(str(path) + ":")
    assert expected in message
    assert "\n" not in message


def test_missing_folder_link_and_special_files(tmp_path):
    cases = {tmp_path / "missing.jpg": "no such file"}
    (tmp_path / "folder.jpg").mkdir()
    cases[tmp_path / "folder.jpg"] = "is a folder"
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    cases[link] = "broken symbolic link"
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases[fifo] = "not a regular file"
    for path, expected in cases.items():
        with pytest.raises(ImageError, match=expected):
            load_image(path)


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.png"
    _photo().save(path)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", refuse, raising=False)
    with pytest.raises(ImageError, match="permission denied.*chmod"):
        load_image(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_for_real(tmp_path):
    path = tmp_path / "secret.png"
    _photo().save(path)
    path.chmod(0)
    with pytest.raises(ImageError, match="permission denied"):
        load_image(path)


def test_control_characters_in_names_stay_on_one_line(tmp_path):
    path = tmp_path / "bad\nname.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and "bad\\nname.jpg" in str(info.value)


# ---------------------------------------------------------------------------- bombs


def test_bomb_refused_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(1))
    with pytest.raises(ImageError) as info:
        load_image(path)
    assert "--max-pixels" in str(info.value) and "10,000,000,000" in str(info.value)
    assert not decoded


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "photo.png"
    _photo((100, 100)).save(path)
    with pytest.raises(ImageError, match="--max-pixels 10000"):
        load_image(path, max_pixels=9_999)
    assert load_image(path, max_pixels=10_000).size == (100, 100)
    assert load_image(path, max_pixels=None).size == (100, 100)
    assert load_image(path, max_pixels=0).size == (100, 100)  # 0 also means no limit


def test_raising_the_limit_beyond_pillows_own(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(20_000, 10_000))  # 200 M pixels: Pillow refuses that
    pil_limit = Image.MAX_IMAGE_PIXELS
    with pytest.raises(ImageError) as info:
        load_image(path, max_pixels=None)
    assert "truncated or corrupt" in str(info.value)  # got past the header: data is fake
    assert Image.MAX_IMAGE_PIXELS == pil_limit


# ---------------------------------------------------------------------------- good files


@pytest.mark.parametrize("orientation, red_at", [(6, "top"), (8, "bottom"), (3, "right")])
def test_exif_orientation_is_applied(tmp_path, orientation, red_at):
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = (255, 0, 0)  # left half red, right half blue as stored
    stored[:, 40:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif.tobytes())
    image = load_image(path)
    a = np.asarray(image).astype(int)
    assert image.size == ((80, 40) if orientation == 3 else (40, 80))
    half = {
        "top": a[: a.shape[0] // 2],
        "bottom": a[a.shape[0] // 2 :],
        "right": a[:, a.shape[1] // 2 :],
    }[red_at]
    assert half[..., 0].mean() > 200 and half[..., 2].mean() < 50


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(load_image(path))
    assert rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 2]).all()


def test_float_tiff(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32)).save(path)
    assert np.asarray(load_image(path))[0, :, 1].tolist() == [0, 128, 255]


def test_palette_and_transparent_palette(tmp_path):
    photo = _photo()
    path = tmp_path / "palette.png"
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=256).save(path)
    assert load_image(path).mode == "RGB"

    p = Image.new("P", (4, 1))
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((1, 0), 1)
    p.info["transparency"] = 0
    path = tmp_path / "transparent.png"
    p.save(path, transparency=0)
    assert (
        np.asarray(load_image(path))[0].tolist()
        == [[255, 255, 255], [255, 0, 0]] + [[255, 255, 255]] * 2
    )


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)
    r, g, b = np.asarray(load_image(path)).reshape(-1, 3).mean(axis=0)
    assert r > 230 and g < 30 and b < 30


def test_alpha_is_composited_over_white(tmp_path):
    la = Image.new("LA", (2, 1))
    la.putdata([(0, 0), (0, 255)])
    la.save(tmp_path / "la.png")
    assert np.asarray(load_image(tmp_path / "la.png"))[0].tolist() == [[255] * 3, [0] * 3]

    for mode, black in (("L", 0), ("RGB", (0, 0, 0))):  # tRNS chunk: a transparent colour
        Image.new(mode, (1, 1), black).save(tmp_path / "key.png", transparency=black)
        assert np.asarray(load_image(tmp_path / "key.png"))[0, 0].tolist() == [255] * 3

    rgba = Image.new("RGBA", (1, 1), (0, 0, 255, 128))
    rgba.save(tmp_path / "rgba.png")
    assert np.asarray(load_image(tmp_path / "rgba.png"))[0, 0].tolist() == [127, 127, 255]


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(path).n_frames == 3
    assert np.asarray(load_image(path))[4, 4].tolist() == [255, 0, 0]


@pytest.mark.parametrize("mode", ["L", "1", "RGB"])
@pytest.mark.parametrize("fmt", ["png", "bmp", "webp", "tiff"])
def test_common_modes_and_formats(tmp_path, mode, fmt):
    path = tmp_path / f"image.{fmt}"
    _photo().convert(mode).save(path)
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (64, 48)


@pytest.mark.parametrize("size", [(1, 1), (1, 3000), (3000, 1), (5, 700)])
def test_tiny_and_thin_images_crop_to_input_size(tmp_path, size):
    path = tmp_path / "thin.png"
    _photo(size).save(path)
    crop = crop_image(load_image(path), PRE)
    assert crop.size == (224, 224) and crop.mode == "RGB"
    assert to_tensor(crop, PRE).shape == (3, 224, 224)


def test_extension_does_not_matter(tmp_path):
    path = tmp_path / "actually-a-png.jpg"
    _photo().save(path, "PNG")
    assert load_image(path).size == (64, 48)


# ---------------------------------------------------------------------------- preprocessing


def test_matches_torchvision_preprocessing_on_photos():
    from torchvision import transforms
    from torchvision.models import ResNet50_Weights

    pipeline = transforms.Compose(
        [
            transforms.Resize(PRE.resize),
            transforms.CenterCrop(PRE.input_size),
            transforms.ToTensor(),
            transforms.Normalize(PRE.mean, PRE.std),
        ]
    )
    preset = ResNet50_Weights.IMAGENET1K_V1.transforms()  # no download: transforms only
    for name in ("chelsea-cat.jpg", "coffee-cup.jpg", "rocket-falcon9-launch.jpg"):
        photo = load_image(SAMPLES / name)
        ours = to_tensor(crop_image(photo, PRE), PRE)
        assert ours.dtype == torch.float32 and ours.shape == (3, 224, 224)
        assert torch.equal(ours, pipeline(photo))  # numpy arithmetic, torchvision's bits
        assert torch.equal(ours, preset(photo))


@pytest.mark.parametrize(
    "stats", [(PRE.mean, PRE.std), ((0.5,), (0.25,)), ((127 / 255,), (128 / 255,))]
)
def test_every_level_is_normalised_like_torchvision(stats):
    """Every 8-bit level of every channel, bit for bit (the sign of zero included)."""
    from torchvision import transforms

    pre = SimpleNamespace(input_size=16, resize=16, mean=stats[0], std=stats[1])
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    crop = Image.fromarray(np.stack([levels, levels[::-1], levels.T], axis=-1))
    expected = transforms.Normalize(*stats)(transforms.ToTensor()(crop))
    ours = images.to_array(crop, pre)
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert np.array_equal(ours.view(np.uint32), expected.numpy().view(np.uint32))


def test_bicubic_models_match_their_torchvision_preset():
    from torchvision.models import EfficientNet_B0_Weights

    preset = EfficientNet_B0_Weights.IMAGENET1K_V1.transforms()
    assert preset.interpolation.value == "bicubic"
    pre = SimpleNamespace(
        input_size=preset.crop_size[0],
        resize=preset.resize_size[0],
        mean=tuple(preset.mean),
        std=tuple(preset.std),
        interpolation=preset.interpolation.value,
    )
    photo = load_image(SAMPLES / "astronaut-eileen-collins.jpg")
    ours = to_tensor(crop_image(photo, pre), pre)
    assert torch.allclose(ours, preset(photo), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        crop_image(photo, SimpleNamespace(**{**vars(pre), "interpolation": "cubic"}))


def test_thin_image_shortcut_matches_torchvision_to_rounding():
    from torchvision import transforms

    pipeline = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()]
    )
    for size in ((40, 5000), (7000, 60), (3, 300)):
        photo = _photo(size)
        ours = torch.from_numpy(np.asarray(crop_image(photo, PRE)).copy()).permute(2, 0, 1)
        assert (ours.int() - pipeline(photo).int()).abs().max() <= 1


def test_resize_smaller_than_crop_pads_like_torchvision():
    from torchvision import transforms

    pre = SimpleNamespace(input_size=224, resize=200, mean=PRE.mean, std=PRE.std)
    photo = _photo((300, 200))
    expected = transforms.Compose([transforms.Resize(200), transforms.CenterCrop(224)])(photo)
    assert np.array_equal(np.asarray(crop_image(photo, pre)), np.asarray(expected))


def test_denormalize_inverts_to_tensor():
    crop = crop_image(_photo((300, 260)), PRE)
    back = denormalize(to_tensor(crop, PRE), PRE)
    diff = np.abs(np.asarray(back).astype(int) - np.asarray(crop).astype(int))
    assert back.mode == "RGB" and diff.max() <= 1


# ---------------------------------------------------------------------------- npy inputs


def test_npy_inputs_accepted(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((3, 8, 8), np.float16))
    np.save(tmp_path / "many.npy", np.ones((2, 3, 8, 8), ">f8"))
    one = load_npy_input(tmp_path / "one.npy")
    many = load_npy_input(tmp_path / "many.npy", expected=(3, 8, 8))
    assert one.dtype == many.dtype == torch.float32
    assert one.shape == (3, 8, 8) and many.shape == (2, 3, 8, 8) and many.sum() == 384


NPY_CASES = {
    "ints.npy": (lambda p: np.save(p, np.zeros((3, 4, 4), np.uint8)), "dtype uint8"),
    "bools.npy": (lambda p: np.save(p, np.zeros((3, 4, 4), bool)), "dtype bool"),
    "complex.npy": (lambda p: np.save(p, np.zeros((3, 4, 4), complex)), "dtype complex"),
    "flat.npy": (lambda p: np.save(p, np.zeros((4, 4), np.float32)), "2 dimensions"),
    "five.npy": (lambda p: np.save(p, np.zeros((1, 1, 3, 4, 4), np.float32)), "5 dimensions"),
    "empty.npy": (lambda p: np.save(p, np.zeros((0, 3, 4, 4), np.float32)), "no values"),
    "nan.npy": (lambda p: np.save(p, np.full((3, 4, 4), np.nan, np.float32)), "48 NaN"),
    "inf.npy": (lambda p: np.save(p, np.array([[[np.inf]]], np.float32)), "1 NaN or infinite"),
    "objects.npy": (
        lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True),
        "pickled",
    ),
    "archive.npy": (lambda p: np.savez(open(p, "wb"), a=np.zeros(3)), ".npz archives"),
    "text.npy": (lambda p: p.write_text("1 2 3\n"), "not a NumPy .npy file"),
    "zero.npy": (lambda p: p.write_bytes(b""), "empty (0 bytes)"),
    "cut.npy": (
        lambda p: (np.save(p, np.zeros((3, 64, 64), np.float32)), _truncate(p, 500)),
        "damaged",
    ),
}


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


@pytest.mark.parametrize("name", sorted(NPY_CASES))
def test_npy_errors(tmp_path, name):
    make, expected = NPY_CASES[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(ImageError) as info:
        load_npy_input(path)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value)
    assert "\n" not in str(info.value)


def test_npy_shape_must_fit_the_model(tmp_path):
    np.save(tmp_path / "small.npy", np.zeros((3, 100, 100), np.float32))
    with pytest.raises(ImageError, match=r"\(3, 100, 100\) does not match .*\(3, 224, 224\)"):
        load_npy_input(tmp_path / "small.npy", expected=(3, 224, 224))


# ---------------------------------------------------------------------------- collecting


def _tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def _rel(items: list[InputItem]) -> list[str]:
    return [item.relative.as_posix() for item in items]


def test_collect_folder_recursive_sorted_and_filtered(tmp_path):
    _tree(
        tmp_path / "data",
        ["b.jpg", "a.PNG", "sub/z.jpeg", "sub/deeper/c.webp", "x.npy", "notes.txt"]
        + [".hidden.jpg", "._a.jpg", ".git/obj.png", "sub/.cache/d.jpg"],
    )
    items, problems = collect_inputs([str(tmp_path / "data")])
    assert problems == []
    assert _rel(items) == ["a.PNG", "b.jpg", "x.npy", "sub/z.jpeg", "sub/deeper/c.webp"]
    assert items[3].path == tmp_path / "data" / "sub" / "z.jpeg"


def test_same_name_in_two_folders_never_collides(tmp_path):
    _tree(tmp_path, ["one/a.jpg", "two/a.jpg", "one/b.jpg", "one/b.png", "one/b.overlay.jpg"])
    items, _ = collect_inputs([str(tmp_path)])
    # b.png would write b.png and b.npy like b.jpg; b.overlay.png is b.jpg's overlay
    expected = ["one/a.jpg", "one/b.jpg", "one/b.overlay-2.jpg", "one/b-2.png", "two/a.jpg"]
    assert _rel(items) == expected
    items, _ = collect_inputs([str(tmp_path / "one/a.jpg"), str(tmp_path / "two/a.jpg")])
    assert _rel(items) == ["a.jpg", "a-2.jpg"]


def test_collect_globs(tmp_path, monkeypatch):
    _tree(tmp_path, ["data/a.jpg", "data/sub/b.jpg", "data/sub/c.png", "data/readme.md"])
    monkeypatch.chdir(tmp_path)
    items, problems = collect_inputs(["data/**/*.jpg"])
    assert _rel(items) == ["a.jpg", "sub/b.jpg"] and problems == []
    items, _ = collect_inputs(["data/*"])  # a folder match is walked; readme.md is skipped
    assert _rel(items) == ["a.jpg", "sub/b.jpg", "sub/c.png"]
    items, _ = collect_inputs(["data/s?b/*.png"])
    assert _rel(items) == ["sub/c.png"]
    items, problems = collect_inputs(["nothing/*.jpg"])
    assert items == [] and "matched no input files" in problems[0]


def test_problems_and_duplicates(tmp_path):
    _tree(tmp_path, ["data/a.jpg", "empty/readme.txt"])
    (tmp_path / "alias.jpg").symlink_to(tmp_path / "data/a.jpg")
    specs = [str(tmp_path / "data"), str(tmp_path / "data/a.jpg"), str(tmp_path / "alias.jpg")]
    items, problems = collect_inputs(
        specs + [str(tmp_path / "missing.jpg"), str(tmp_path / "empty")]
    )
    assert _rel(items) == ["a.jpg"]
    assert len(problems) == 2
    assert "missing.jpg: no such file or folder" in problems[0]
    assert "empty: no input files" in problems[1]


def test_file_given_directly_is_kept_whatever_its_extension(tmp_path):
    _tree(tmp_path, ["photo.heic"])
    items, problems = collect_inputs([str(tmp_path / "photo.heic")])
    assert _rel(items) == ["photo.heic"] and problems == []


def test_collect_stdin_lines_and_escapes(tmp_path, monkeypatch):
    _tree(tmp_path, ["data/sub/a.jpg", "data/b.png", "up.jpg"])
    monkeypatch.chdir(tmp_path / "data")
    lines = f"sub/a.jpg\r\n./b.png\n\n../up.jpg\n{tmp_path / 'data/b.png'}\nnope.jpg\n"
    items, problems = collect_inputs(["-"], stdin=io.StringIO(lines))
    assert _rel(items) == ["sub/a.jpg", "b.png", "up.jpg"]  # absolute duplicate of b.png dropped
    assert problems == ["nope.jpg: no such file or folder"]
    for item in items:
        assert not item.relative.is_absolute() and ".." not in item.relative.parts


def test_collect_stdin_null_separated(tmp_path):
    _tree(tmp_path, ["odd\nname.jpg", "plain.jpg"])
    data = f"{tmp_path / 'odd'}\nname.jpg\0{tmp_path / 'plain.jpg'}\0"
    items, problems = collect_inputs(["-"], stdin=io.StringIO(data), null_separated=True)
    assert _rel(items) == ["odd\nname.jpg", "plain.jpg"] and problems == []
    items, problems = collect_inputs(["-"], stdin=io.StringIO(""))
    assert items == [] and problems == ["-: no paths were read from standard input"]


def test_escaping_names_fall_back_to_the_file_name(tmp_path, monkeypatch):
    _tree(tmp_path, ["a/b/deep.jpg"])
    monkeypatch.chdir(tmp_path / "a" / "b")
    items, _ = collect_inputs(["-"], stdin=io.StringIO("../b/./deep.jpg\n"))
    assert _rel(items) == ["deep.jpg"]
    items, _ = collect_inputs(["../../a/*/deep.jpg"])
    assert _rel(items) == ["b/deep.jpg"]
    items, _ = collect_inputs(["*/../*.jpg"])  # `..` after a wildcard: file name only
    assert _rel(items) in (["deep.jpg"], [])


def test_output_folder_is_excluded(tmp_path):
    _tree(tmp_path, ["a.jpg", "lrp-out/a.png", "lrp-out/sub/b.overlay.png"])
    items, problems = collect_inputs([str(tmp_path)], exclude=[tmp_path / "lrp-out"])
    assert _rel(items) == ["a.jpg"] and problems == []


# ---------------------------------------------------------------------------- one input


def test_decoding_never_raises_for_a_bad_file(monkeypatch):
    item = InputItem(SAMPLES / "chelsea-cat.jpg", PurePath("c.jpg"))
    array, error = try_decode_input(item, PRE)
    assert error is None and array.shape == (1, 3, 224, 224)
    assert torch.equal(
        torch.from_numpy(array[0]), to_tensor(crop_image(load_image(item.path), PRE), PRE)
    )
    monkeypatch.setattr(images, "crop_image", lambda *a: 1 / 0)
    array, error = try_decode_input(item, PRE)
    assert array is None and "unexpected error: division by zero" in error


def test_importing_does_not_import_torch():
    modules = "lrp_cli.images, lrp_cli.outputs, lrp_cli.pipeline, lrp_cli.pipeline.decoding"
    code = f"import sys, {modules}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
