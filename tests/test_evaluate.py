"""Tests for lrp_cli.analysis.evaluate (region perturbation, AOPC)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lrp_cli.analysis.evaluate import (
    BASELINES,
    MethodResult,
    aopc,
    area_under_curve,
    gradient_attribution,
    gradient_x_input_attribution,
    plot_curves,
    random_attribution,
    region_perturbation_curve,
    results_to_json,
    summarize,
)


class Linear2(nn.Module):
    """f(x) = [sum(w * x) + b, -sum(w * x)]: w * x is each pixel's exact contribution."""

    def __init__(self, weight: torch.Tensor, bias: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone())
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x * self.weight).flatten(1).sum(1)
        return torch.stack([s + self.bias, -s], dim=1)


class SmallConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ChannelRange(nn.Module):
    """Logits = per-channel min then max of the input: exposes what the model was fed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.amin(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def make_linear(n=3, c=3, h=20, w=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, h, w, generator=g)
    x = torch.randn(n, c, h, w, generator=g)
    return Linear2(weight).eval(), x, torch.zeros(n, dtype=torch.long)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def true_attribution(model, x):
    return (model.weight.detach() * x).sum(1)


# --- curves on a model with known relevance -------------------------------------------------


def test_constant_curve_matches_exact_contributions_with_partial_edge_regions():
    model, x, target = make_linear(n=2, h=10, w=7)
    contrib = true_attribution(model, x)  # (N, H, W)
    region = 3  # 4 x 3 grid; last row and column of regions are partial
    sums = torch.stack(
        [
            torch.stack(
                [
                    contrib[i, r : r + region, c : c + region].sum()
                    for r in range(0, 10, region)
                    for c in range(0, 7, region)
                ]
            )
            for i in range(2)
        ]
    )
    assert sums.shape == (2, 12)
    removed = torch.sort(sums, dim=1, descending=True).values.cumsum(1)
    f0 = model(x)[:, 0]
    expected = torch.cat([f0[:, None], f0[:, None] - removed], dim=1)

    curves = region_perturbation_curve(
        model, x, contrib, target, region=region, steps=12, perturbation="constant"
    )
    assert curves.shape == (2, 13)
    torch.testing.assert_close(curves, expected, atol=1e-4, rtol=1e-5)
    # all regions replaced by 0: only the bias is left
    torch.testing.assert_close(curves[:, -1], torch.full((2,), 0.5), atol=1e-4, rtol=0)
    # (N, C, H, W) attribution is summed over channels first
    per_channel = model.weight.detach() * x
    curves4 = region_perturbation_curve(
        model, x, per_channel, target, region=region, steps=12, perturbation="constant"
    )
    torch.testing.assert_close(curves4, curves)


@pytest.mark.parametrize("perturbation", ["constant", "uniform"])
def test_true_ordering_beats_random_beats_reverse(perturbation):
    # 16 images: a single random order varies a lot from image to image
    model, x, target = make_linear(n=16, h=24, w=24)
    truth = true_attribution(model, x)
    kw = dict(region=4, steps=24, perturbation=perturbation)

    def score(attr, order, seed=0):
        curves = region_perturbation_curve(
            model, x, attr, target, order=order, generator=gen(seed), **kw
        )
        return float(aopc(curves).mean())

    best = score(truth, "morf")
    worst = score(-truth, "morf")
    rand = [score(truth, "random", seed) for seed in range(3)]
    lerf = score(truth, "lerf")
    assert best > max(rand) > min(rand) > worst
    assert lerf < best
    if perturbation == "constant":
        # exact: LeRF of the truth is MoRF of its negation, and the truth is optimal
        assert lerf == pytest.approx(worst)
        assert best >= max(rand) and worst <= min(rand)


def test_random_baseline_attribution_sits_between():
    model, x, target = make_linear(n=4, h=24, w=24)
    truth = true_attribution(model, x)
    kw = dict(region=4, steps=24, perturbation="constant")
    attr = BASELINES["random"](model, x, target, gen(1))
    mid = aopc(region_perturbation_curve(model, x, attr, target, **kw)).mean()
    best = aopc(region_perturbation_curve(model, x, truth, target, **kw)).mean()
    worst = aopc(region_perturbation_curve(model, x, -truth, target, **kw)).mean()
    assert best > mid > worst


def test_probability_score():
    model, x, target = make_linear(n=2, h=12, w=12)
    x = x * 0.05  # keep the logits moderate
    truth = true_attribution(model, x)
    curves = region_perturbation_curve(
        model, x, truth, target, region=4, steps=5, score="probability", generator=gen()
    )
    assert ((curves >= 0) & (curves <= 1)).all()
    torch.testing.assert_close(curves[:, 0], torch.softmax(model(x), 1)[:, 0].detach())


def test_blur_of_constant_image_changes_nothing():
    model = SmallConv().eval()
    x = torch.full((2, 3, 16, 16), 0.7)
    attr = torch.rand(2, 16, 16, generator=gen())
    curves = region_perturbation_curve(
        model, x, attr, [1, 3], region=4, steps=16, perturbation="blur", sigma=2.0
    )
    torch.testing.assert_close(curves, curves[:, :1].expand_as(curves))
    # and on a textured image it does change the score
    xt = torch.randn(2, 3, 16, 16, generator=gen())
    curves = region_perturbation_curve(
        model, xt, attr, [1, 3], region=4, steps=16, perturbation="blur"
    )
    assert not torch.allclose(curves[:, -1], curves[:, 0])


def test_uniform_noise_stays_within_bounds():
    x = torch.randn(2, 3, 8, 8, generator=gen()) * torch.tensor([1.0, 5.0, 0.1]).view(1, 3, 1, 1)
    attr = torch.rand(2, 8, 8, generator=gen())
    model = ChannelRange()
    lo, hi = x.amin(dim=(2, 3)), x.amax(dim=(2, 3))
    for target in range(3):  # channel minima of the fully perturbed image
        curves = region_perturbation_curve(model, x, attr, target, region=2, steps=16)
        assert (curves[:, -1] >= lo[:, target]).all()
    for target in range(3, 6):  # channel maxima
        curves = region_perturbation_curve(model, x, attr, target, region=2, steps=16)
        assert (curves[:, -1] <= hi[:, target - 3]).all()
    bounds = ((-0.5, 0.0, 2.0), (0.5, 0.25, 3.0))
    mins = region_perturbation_curve(model, x, attr, [0, 1], region=1, steps=64, bounds=bounds)
    maxs = region_perturbation_curve(model, x, attr, [4, 5], region=1, steps=64, bounds=bounds)
    assert mins[0, -1] >= -0.5 and mins[1, -1] >= 0.0
    assert maxs[0, -1] <= 0.25 and maxs[1, -1] <= 3.0


# --- determinism, batching, devices -----------------------------------------------------------


def test_same_seed_same_curves_other_seed_differs():
    model = SmallConv().eval()
    x = torch.randn(3, 3, 18, 18, generator=gen(5))
    attr = torch.randn(3, 18, 18, generator=gen(6))
    for order in ("morf", "random"):
        kw = dict(region=3, steps=20, order=order)
        a = region_perturbation_curve(model, x, attr, [0, 1, 2], generator=gen(1), **kw)
        b = region_perturbation_curve(model, x, attr, [0, 1, 2], generator=gen(1), **kw)
        c = region_perturbation_curve(model, x, attr, [0, 1, 2], generator=gen(2), **kw)
        assert torch.equal(a, b)
        assert not torch.allclose(a, c)
    r1 = random_attribution(model, x, 0, gen(3))
    assert r1.shape == (3, 18, 18)
    assert torch.equal(r1, random_attribution(model, x, 0, gen(3)))
    assert not torch.equal(r1, random_attribution(model, x, 0, gen(4)))


@pytest.mark.parametrize("perturbation", ["uniform", "blur", "constant"])
def test_batch_size_does_not_change_curves(perturbation):
    model = SmallConv().eval()
    x = torch.randn(3, 3, 18, 18, generator=gen(5))
    attr = torch.randn(3, 18, 18, generator=gen(6))
    kw = dict(region=3, steps=20, perturbation=perturbation)
    a = region_perturbation_curve(model, x, attr, [0, 1, 2], batch_size=1, generator=gen(1), **kw)
    b = region_perturbation_curve(model, x, attr, [0, 1, 2], batch_size=64, generator=gen(1), **kw)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_model_sees_batches_of_at_most_batch_size():
    seen = []
    model = SmallConv().eval()

    def spy(inp):
        seen.append(inp.shape[0])
        return model(inp)

    x = torch.randn(2, 3, 9, 9, generator=gen())
    curves = region_perturbation_curve(
        spy, x, None, 0, region=3, steps=9, order="random", batch_size=7
    )
    assert curves.shape == (2, 10)
    assert seen == [7, 7, 6]
    assert not curves.is_inference()  # usable in ordinary code afterwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    model = SmallConv().eval()
    x = torch.randn(2, 3, 18, 18, generator=gen(5))
    attr = torch.randn(2, 18, 18, generator=gen(6))
    kw = dict(region=3, steps=20, order="random")
    cpu = region_perturbation_curve(model, x, attr, [0, 1], generator=gen(1), **kw)
    gpu = region_perturbation_curve(
        model.cuda(), x.cuda(), attr.cuda(), torch.tensor([0, 1]).cuda(), generator=gen(1), **kw
    )
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


# --- argument validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(region=0), r"region must be an integer >= 1"),
        (dict(region=2.5), r"region must be an integer >= 1"),
        (dict(steps=0), r"steps must be an integer >= 1"),
        (dict(region=4, steps=10), r"steps must be at most the number of regions, 9"),
        (dict(batch_size=0), r"batch_size must be an integer >= 1"),
        (dict(perturbation="noise"), r"perturbation must be one of 'uniform', 'blur', 'constant'"),
        (dict(order="best"), r"order must be one of 'morf', 'lerf', 'random'"),
        (dict(score="softmax"), r"score must be one of 'logit', 'probability'"),
        (dict(perturbation="blur", sigma=0), r"sigma must be a number > 0"),
        (dict(bounds=((0, 0), (1, 1))), r"bounds\[0\] \(low\) must be a number or 3 per-channel"),
        (dict(bounds=(0,)), r"bounds must be a \(low, high\) pair"),
        (dict(perturbation="constant", value=[1, 2]), r"value must be a number or 3"),
    ],
)
def test_bad_arguments(kwargs, pattern):
    model, x, target = make_linear(n=2, h=12, w=12)
    attr = true_attribution(model, x)
    kw = dict(region=4, steps=5) | kwargs
    with pytest.raises(ValueError, match=pattern):
        region_perturbation_curve(model, x, attr, target, **kw)


def test_bad_shapes_and_targets():
    model, x, target = make_linear(n=2, h=12, w=12)
    attr = true_attribution(model, x)
    kw = dict(region=4, steps=5)
    with pytest.raises(ValueError, match=r"x must be a \(N, C, H, W\) tensor"):
        region_perturbation_curve(model, x[0], attr, target, **kw)
    with pytest.raises(
        ValueError, match=r"attribution must have shape \(N, H, W\) = \(2, 12, 12\)"
    ):
        region_perturbation_curve(model, x, attr[:, :6], target, **kw)
    with pytest.raises(ValueError, match=r"attribution is required for order 'morf'"):
        region_perturbation_curve(model, x, None, target, **kw)
    with pytest.raises(ValueError, match=r"NaN"):
        region_perturbation_curve(model, x, attr * float("nan"), target, **kw)
    with pytest.raises(ValueError, match=r"target must be an int or have shape \(N,\)"):
        region_perturbation_curve(model, x, attr, [0, 0, 0], **kw)
    with pytest.raises(ValueError, match=r"target must be < the number of classes, 2"):
        region_perturbation_curve(model, x, attr, [0, 2], **kw)


# --- summaries, JSON, plot -------------------------------------------------------------------


def test_aopc_and_auc_on_known_curves():
    curves = torch.tensor([[1.0, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 0.5, 0.0]])
    torch.testing.assert_close(aopc(curves), torch.tensor([2 / 3, 0.0, 0.5]))
    torch.testing.assert_close(area_under_curve(curves), torch.tensor([0.25, 2.0, 0.5]))
    with pytest.raises(ValueError, match="curves must have shape"):
        aopc(torch.ones(3, 1))


def test_baselines_on_linear_model():
    model, x, _ = make_linear(n=2, h=6, w=6)
    w = model.weight.detach()
    assert set(BASELINES) == {"random", "gradient", "gradient-x-input"}
    torch.testing.assert_close(
        gradient_attribution(model, x, [0, 0]), w.abs().sum(0).expand(2, 6, 6)
    )
    torch.testing.assert_close(gradient_x_input_attribution(model, x, 0), (w * x).sum(1))
    torch.testing.assert_close(
        BASELINES["gradient-x-input"](model, x, [1, 1], None), -(w * x).sum(1)
    )
    assert model.weight.grad is None  # no parameter gradients left behind
    for fn in BASELINES.values():
        assert fn(model, x, torch.tensor([0, 1]), gen()).shape == (2, 6, 6)


def test_summarize_and_json_shape():
    curves = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    res = summarize("lrp", "morf", curves, ["a.png", "sub/b.png"], score="probability")
    assert isinstance(res, MethodResult)
    assert res.aopc == pytest.approx((2 / 3 + 0.5) / 2)
    assert res.aopc_std == pytest.approx(abs(2 / 3 - 0.5) / 2)
    assert res.curve == pytest.approx([1.0, 0.25, 0.0])
    assert res.curve_std == pytest.approx([0.0, 0.25, 0.0])
    rnd = summarize("random", "random", curves[:1], ["a.png"])
    assert rnd.aopc_std == 0.0

    doc = json.loads(
        json.dumps(results_to_json([res, summarize("lrp", "lerf", curves, ["a", "b"])]))
    )
    assert set(doc) == {"steps", "results"} and doc["steps"] == 2
    first = doc["results"][0]
    assert set(first) == {"method", "order", "aopc", "auc", "curve", "per_image"}
    assert first["method"] == "lrp" and first["order"] == "morf"
    assert isinstance(first["aopc"], float) and isinstance(first["auc"], float)
    assert len(first["curve"]) == 3 and all(isinstance(v, float) for v in first["curve"])
    assert first["per_image"] == [
        {"input": "a.png", "aopc": pytest.approx(2 / 3)},
        {"input": "sub/b.png", "aopc": pytest.approx(0.5)},
    ]
    assert all(math.isfinite(v) for v in first["curve"])

    with pytest.raises(ValueError, match="one input per curve"):
        summarize("lrp", "morf", curves, ["a.png"])
    with pytest.raises(ValueError, match="order must be one of"):
        summarize("lrp", "best", curves, ["a", "b"])
    with pytest.raises(ValueError, match="same number of steps"):
        results_to_json([res, summarize("x", "morf", torch.ones(1, 5), ["a"])])


def test_plot_curves_writes_png_atomically(tmp_path):
    pytest.importorskip("matplotlib")
    curves = torch.tensor([[1.0, 0.4, 0.1], [0.8, 0.5, 0.0]])
    results = [
        summarize("lrp", "morf", curves, ["a", "b"]),
        summarize("random", "random", curves.flip(1), ["a", "b"]),
    ]
    out = tmp_path / "curves.png"
    assert plot_curves(results, out, title="test") == out
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    plot_curves(results, out)  # replaces an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
