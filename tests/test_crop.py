"""``--crop/--no-crop``, the record's ``region`` and overlays on the original photo.

The model is a 1x1 convolution summing the colour channels, global average pooling and a
linear layer: with LRP-0 and zero mean / unit std, an input pixel's relevance is its own
(positive) contribution to the logit, so black pixels get exactly none and all relevance sits
on the one bright square of the photo.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lrp_cli.images import crop_image, input_region
from lrp_cli.models import Preprocessing

from .test_cli import error_lines, records, run

SIZE, RESIZE = 32, 37  # --input-size 32 gives resize round(32 * 256 / 224)

MODELS = (
    "import torch\n"
    "def bright():\n"
    "    conv = torch.nn.Conv2d(3, 1, 1, bias=False)\n"
    "    torch.nn.init.ones_(conv.weight)\n"
    "    head = torch.nn.Linear(1, 2, bias=False)\n"
    "    with torch.no_grad():\n"
    "        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))\n"
    "    pool = torch.nn.AdaptiveAvgPool2d(1)\n"
    "    return torch.nn.Sequential(conv, pool, torch.nn.Flatten(), head)\n"
    "def fixed():\n"
    "    torch.manual_seed(0)\n"
    "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 2))\n"
)


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "cropnets.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def options(name: str = "bright") -> list[str]:
    plain = ["--mean", "0,0,0", "--std", "1,1,1", "-c", "zero", "-t", "0", "--device", "cpu"]
    return ["-m", f"cropnets:{name}", "--input-size", str(SIZE), *plain]


def photo(path: Path, size: tuple[int, int], *squares: tuple[int, int, int, int]) -> Path:
    """A black photo with white squares (left, top, right, bottom), saved as PNG."""
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    for left, top, right, bottom in squares:
        pixels[top:bottom, left:right] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def red_box(picture: Image.Image) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Where an overlay is clearly red (positive relevance), and that area's bounding box."""
    a = np.asarray(picture.convert("RGB")).astype(int)
    red = (a[..., 0] - a[..., 2]) > 60
    ys, xs = np.nonzero(red)
    return red, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


# portrait, landscape and square photos, each square inside the centre crop
CASES = {
    "portrait": ((60, 100), (20, 40, 36, 56)),
    "landscape": ((100, 60), (42, 18, 58, 34)),
    "square": ((80, 80), (10, 50, 30, 70)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_relevance_lands_on_the_square_in_the_full_size_overlay(tmp_path, models, case):
    size, square = CASES[case]
    path = photo(tmp_path / f"{case}.png", size, square)
    out = tmp_path / "out"
    result = run(["explain", path, *options(), "-o", out, "--overlay", "--jsonl", "-"])
    assert result.exit_code == 0, result.stderr
    (record,) = records(result.stdout)
    assert np.load(record["outputs"]["relevance"]).shape == (SIZE, SIZE)  # model resolution
    with Image.open(record["outputs"]["overlay"]) as picture:
        assert picture.size == size  # the original photo's
        red, box = red_box(picture)
    assert np.allclose(box, square, atol=2), (box, square)
    left, top, right, bottom = square
    assert red[top + 1 : bottom - 1, left + 1 : right - 1].all()
    # the region is where the crop came from: the photo cut there and resized is the model input
    region = record["region"]
    width, height = size
    short = min(size)
    expected_side = SIZE * short / RESIZE
    assert region[2] - region[0] == pytest.approx(expected_side, rel=0.03)
    assert region[3] - region[1] == pytest.approx(expected_side, rel=0.03)
    pixel = short / RESIZE  # the crop starts at a whole resized pixel, rounded like torchvision
    assert (region[0] + region[2]) / 2 == pytest.approx(width / 2, abs=pixel)
    assert (region[1] + region[3]) / 2 == pytest.approx(height / 2, abs=pixel)
    with Image.open(path) as image:
        cut = image.convert("RGB").resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=region)
        crop = crop_image(image, Preprocessing(input_size=SIZE, resize=RESIZE))
    difference = np.abs(np.asarray(cut, float) - np.asarray(crop, float)).mean()
    assert difference < 12  # grey levels: the same picture up to the two resampling paths


def test_margins_the_crop_cut_away_are_dimmed(tmp_path, models):
    """A square outside the centre crop gets no heatmap, and is drawn darker than the photo;
    the one inside is red."""
    path = photo(tmp_path / "top.png", (60, 100), (20, 4, 36, 16), (20, 40, 36, 56))
    out = tmp_path / "out"
    result = run(["explain", path, *options(), "-o", out, "--overlay", "--jsonl", "-"])
    assert result.exit_code == 0, result.stderr
    (record,) = records(result.stdout)
    with Image.open(record["outputs"]["overlay"]) as picture:
        pixels = np.asarray(picture.convert("RGB")).astype(int)
    assert record["region"][1] > 16  # the square lies above the region
    square = pixels[5:15, 21:35]
    assert (square[..., 0] == square[..., 2]).all()  # no colour: grey, not red or blue
    assert 60 < square.mean() < 200  # white dimmed
    inside = pixels[41:55, 21:35]
    assert (inside[..., 0] - inside[..., 2] > 60).all()


def test_no_crop_explains_the_whole_image(tmp_path, models):
    """The square above the centre crop: --no-crop maps the whole photo, so it is found."""
    square = (20, 4, 36, 16)
    path = photo(tmp_path / "top.png", (60, 100), square)
    out = tmp_path / "out"
    args = ["explain", path, *options(), "-o", out, "--overlay", "--no-crop", "--jsonl", "-"]
    result = run(args)
    assert result.exit_code == 0, result.stderr
    (record,) = records(result.stdout)
    assert record["region"] == [0, 0, 60, 100]
    relevance = np.load(record["outputs"]["relevance"])
    assert relevance.shape == (int(RESIZE * 100 / 60), RESIZE)  # shorter side at the resize
    # LRP-0 on this model: relevance only on the square, summing to the logit
    assert relevance.sum() == pytest.approx(record["logit"], rel=1e-4)
    ys, xs = np.nonzero(relevance > 1e-6 * relevance.max())
    scale = RESIZE / 60
    assert xs.min() >= int(square[0] * scale) - 1 and xs.max() <= square[2] * scale + 1
    assert ys.min() >= int(square[1] * scale) - 1 and ys.max() <= square[3] * scale + 1
    with Image.open(record["outputs"]["overlay"]) as picture:
        assert picture.size == (60, 100)
        _, box = red_box(picture)
    assert np.allclose(box, square, atol=2), box


def test_no_crop_batches_only_same_size_inputs(tmp_path, models):
    """Mixed sizes in one run: every input explained, each as it is when explained alone."""
    inputs = [
        photo(tmp_path / "in/a.png", (60, 100), (20, 40, 36, 56)),
        photo(tmp_path / "in/b.png", (100, 60), (42, 18, 58, 34)),
        photo(tmp_path / "in/c.png", (60, 100), (10, 10, 30, 30)),
        photo(tmp_path / "in/d.png", (60, 100), (30, 60, 50, 90)),
    ]
    out = tmp_path / "out"
    args = [*options(), "--no-crop", "--batch-size", "4", "--jsonl", "-"]
    result = run(["explain", *inputs, *args, "-o", out])
    assert result.exit_code == 0, result.stderr
    found = records(result.stdout)
    assert [r["status"] for r in found] == ["explained"] * 4
    for record in found:
        alone = run(
            ["explain", record["input"], *args, "-o", tmp_path / Path(record["input"]).stem]
        )
        (single,) = records(alone.stdout)
        np.testing.assert_allclose(
            np.load(record["outputs"]["relevance"]),
            np.load(single["outputs"]["relevance"]),
            rtol=1e-5,
            atol=1e-7,
        )


def test_no_crop_with_a_fixed_size_model_is_a_clear_error(tmp_path, models):
    path = photo(tmp_path / "x.png", (60, 100), (20, 40, 36, 56))
    result = run(["explain", path, *options("fixed"), "-o", tmp_path / "out", "--no-crop"])
    assert result.exit_code == 2
    (line,) = error_lines(result.stderr)
    assert "--no-crop" in line and "cropnets:fixed" in line and "--crop" in line
    assert "32 x 32" in line
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    # with the crop it is explained
    again = run(["explain", path, *options("fixed"), "-o", tmp_path / "out"])
    assert again.exit_code == 0, again.stderr


def test_input_region_of_a_photo_smaller_than_the_crop_reaches_outside_it():
    """Zero padding: a 10 x 20 photo at resize 12, crop 16: the box is wider than the photo."""
    left, top, right, bottom = input_region(10, 20, Preprocessing(input_size=16, resize=12))
    # resized to 12 x 24 (x 1.2), padded by 2 on each side, rows 4..20 of the resized image
    assert (left, right) == pytest.approx((-2 / 1.2, 14 / 1.2))
    assert (top, bottom) == pytest.approx((4 * 20 / 24, 20 * 20 / 24))
