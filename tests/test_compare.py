"""``lrp compare``'s API: layout, labels, failing columns, colour scaling, batching.

A random resnet18 (10 classes, 64 x 64 inputs) keeps these fast; pictures are checked by their
pixels, against the module's own label strip and n/a tiles.
"""

from pathlib import Path, PurePath

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from lrp_cli.analysis import compare as cmp
from lrp_cli.config import load_config
from lrp_cli.engine import Explainer
from lrp_cli.images import InputItem
from lrp_cli.models import LoadedModel, Preprocessing
from lrp_cli.pipeline import SetupError

SIZE = 64
RED, BLUE = (255, 0, 0), (0, 0, 255)  # bwr at +-limit: a pixel at the map's limit


def tiny(module: nn.Module | None = None) -> LoadedModel:
    module = module if module is not None else torchvision.models.resnet18(num_classes=10)
    return LoadedModel("tiny", module.eval(), Preprocessing(input_size=SIZE, resize=SIZE))


def image(path: Path, seed: int = 0) -> InputItem:
    pixels = np.random.default_rng(seed).integers(0, 256, (SIZE + 8, SIZE, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return InputItem(path, PurePath(path.name))


def run(tmp_path: Path, specs, items=None, model=None, out="out", **options):
    if items is None:
        items = [image(tmp_path / "a.png", 0), image(tmp_path / "b.png", 1)]
    grid = options.pop("grid", None)
    settings = cmp.CompareSettings(**{"device": "cpu", "workers": 0, **options})
    return cmp.compare(model or tiny(), items, specs, tmp_path / out, settings, grid=grid)


def cell_of(picture: Image.Image, result: cmp.CompareResult, row: int, column: int):
    """The tile (without its border) at ``row``, ``column`` as an (H, W, 3) array."""
    left = column * result.cell + cmp.PAD
    top = result.header + row * result.cell + cmp.PAD
    tile = result.cell - 2 * cmp.PAD
    return np.asarray(picture.crop((left, top, left + tile, top + tile)))


def saturated(tile: np.ndarray) -> bool:
    pixels = {tuple(p) for p in tile.reshape(-1, 3)}
    return RED in pixels or BLUE in pixels


def test_picture_sizes_follow_inputs_and_columns_and_engine_calls_are_batched(
    tmp_path, monkeypatch
):
    calls = []
    original = Explainer.__call__

    def counting(self, x, target=None):
        calls.append(len(x))
        return original(self, x, target)

    monkeypatch.setattr(Explainer, "__call__", counting)
    stack = tmp_path / "s.npy"
    np.save(stack, np.random.default_rng(2).normal(size=(2, 3, SIZE, SIZE)).astype(np.float32))
    items = [
        image(tmp_path / "a.png"),
        image(tmp_path / "b.png", 1),
        InputItem(stack, PurePath("s.npy")),
    ]
    specs = ["epsilon", "zero", "gradient"]
    grid = tmp_path / "grid.png"
    result = run(tmp_path, specs, items, grid=grid, batch_size=3)

    rows, columns = 4, 1 + len(specs)  # the .npy stack gives two rows
    assert result.grid_size == (rows, columns)
    assert result.problems == result.errors == []
    assert calls == [3, 1, 3, 1]  # per LRP config: all inputs, in chunks of batch_size
    names = ["a", "b", "s.0", "s.1"]
    assert result.written == [tmp_path / "out" / f"{n}.compare.png" for n in names] + [grid]
    with Image.open(grid) as picture:
        assert picture.size == (columns * result.cell, result.header + rows * result.cell)
        for row, name in enumerate(names):  # each per-input picture is its row of the grid
            with Image.open(tmp_path / "out" / f"{name}.compare.png") as own:
                assert own.size == (columns * result.cell, result.header + result.cell)
                for column in range(columns):
                    expected = cell_of(picture, result, row, column)
                    assert np.array_equal(cell_of(own, result, 0, column), expected)
    assert result.cell == cmp.MIN_TILE + 2 * cmp.PAD  # small inputs are enlarged


def test_labels_are_drawn_in_the_order_given(tmp_path):
    for specs in (["zero", "gradient", "epsilon"], ["epsilon", "zero", "gradient"]):
        result = run(tmp_path, specs, tile=96)
        assert result.labels == ["input", *specs]
        with Image.open(result.written[0]) as picture:
            strips = []
            for k, label in enumerate(result.labels):
                box = (k * result.cell, 0, (k + 1) * result.cell, result.header)
                strip = np.asarray(picture.crop(box))
                assert np.array_equal(strip, np.asarray(cmp.header([label], result.cell)))
                assert (strip < 128).any()  # dark text on white
                strips.append(strip.tobytes())
            assert len(set(strips)) == len(strips)


@pytest.mark.parametrize(
    "yaml, reason",
    [
        ("strict: true\nrules:\n  - match: {name: nosuch}\n    rule: epsilon\n", "matches no"),
        ("rules:\n  - match: {type: Conv}\n    rule: pass\n", "rule pass cannot be used"),
    ],
)
def test_a_config_that_fails_for_the_model_is_reported_for_its_column_only(tmp_path, yaml, reason):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml)
    result = run(
        tmp_path, ["epsilon", str(bad), "no-such-preset", "gradient"], grid=tmp_path / "g.png"
    )
    assert result.labels == ["input", "epsilon", "bad", "no-such-preset", "gradient"]
    assert len(result.problems) == 2
    assert result.problems[0].startswith("bad: ") and reason in result.problems[0]
    assert result.problems[1].startswith("no-such-preset: cannot be used with tiny: unknown preset")
    assert result.grid_size == (2, 5) and len(result.written) == 3
    with Image.open(result.written[0]) as picture:
        for column in (2, 3):  # n/a tiles: grey with text
            tile = cell_of(picture, result, 0, column)
            grey = (tile == cmp._NA).all(axis=2).mean()
            assert 0.8 < grey < 1 and (tile < 100).any()
        for column in (1, 4):  # the other columns are heatmaps
            assert saturated(cell_of(picture, result, 0, column))


class _Cumulative(nn.Module):
    """A model the engine refuses: a cumulative sum has no LRP rule."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 10)

    def forward(self, x):
        h = torch.cumsum(self.conv(x), dim=1)
        return self.fc(h.mean((2, 3)))


def test_lrp_columns_of_an_untraceable_model_fail_but_the_baselines_are_drawn(tmp_path):
    gated = tiny(_Cumulative())
    result = run(tmp_path, ["epsilon", "gradient-x-input"], model=gated)
    assert len(result.problems) == 1 and "cumsum" in result.problems[0]
    assert len(result.written) == 2
    with pytest.raises(SetupError, match="no column can be drawn"):
        run(tmp_path, ["epsilon", "zero"], model=gated)


def test_empty_maps_are_n_a_cells_and_bad_inputs_are_errors(tmp_path):
    dead = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 10))
    nn.init.zeros_(dead[1].weight)  # no input reaches the output: every map is zero
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    items = [image(tmp_path / "a.png"), InputItem(broken, PurePath("broken.png"))]
    result = run(tmp_path, ["epsilon", "gradient"], items, model=tiny(dead))
    assert result.problems == [] and result.grid_size == (1, 3)
    assert len(result.errors) == 3 and "broken.png" in result.errors[0]
    assert all("zero everywhere" in e for e in result.errors[1:])


def test_shared_scale_uses_the_rows_largest_limit():
    relevance = np.random.default_rng(0).normal(size=(SIZE, SIZE))
    row = [relevance, 10 * relevance, "n/a reason"]
    own = [np.asarray(t) for t in cmp._heatmaps(row, "bwr", False, SIZE)]
    shared = [np.asarray(t) for t in cmp._heatmaps(row, "bwr", True, SIZE)]
    assert np.array_equal(own[0], own[1]) and saturated(own[0])  # each to its own max |R|
    assert np.array_equal(shared[1], own[1]) and not saturated(shared[0])
    assert np.abs(shared[0].astype(int) - 255).sum() < np.abs(own[0].astype(int) - 255).sum()
    assert np.array_equal(shared[2], own[2])  # n/a tiles are untouched


def test_shared_scale_end_to_end(tmp_path):
    specs = ["epsilon", "gradient"]  # relevance and gradients differ widely in magnitude
    own = run(tmp_path, specs, out="own")
    shared = run(tmp_path, specs, out="shared", shared_scale=True)
    with Image.open(own.written[0]) as a, Image.open(shared.written[0]) as b:
        assert all(saturated(cell_of(a, own, 0, k)) for k in (1, 2))
        assert [saturated(cell_of(b, shared, 0, k)) for k in (1, 2)].count(True) == 1


def test_gradcam_column_and_the_log_odds_start_reach_the_columns():
    from lrp_cli.analysis.evaluate import gradcam_attribution

    model = tiny()
    columns, _ = cmp.resolve_columns(
        model, ["gradcam", "epsilon"], start="log-odds", cam_layer="layer3"
    )
    assert [c.label for c in columns] == ["gradcam", "epsilon"]
    assert all(c.problem is None for c in columns)
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 7])
    expected = gradcam_attribution(model.module, x, targets, layer="layer3")
    torch.testing.assert_close(columns[0].attribute(x, targets), expected)
    assert not torch.allclose(expected, gradcam_attribution(model.module, x, targets))
    composite = load_config("epsilon").composite()
    bounds = model.preprocessing.bounds()
    odds = Explainer(model.module, composite, start="log-odds", input_bounds=bounds)
    torch.testing.assert_close(
        columns[1].attribute(x, targets), odds(x, targets).relevance.sum(dim=1)
    )
