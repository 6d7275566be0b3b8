"""Tests for lrp_cli.analysis.evaluate (region perturbation, AOPC)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from lrp_cli.analysis.evaluate import (
    BASELINES,
    MethodResult,
    aopc,
    area_under_curve,
    gradcam_attribution,
    gradient_attribution,
    gradient_x_input_attribution,
    noisy_linear_imputation,
    plot_curves,
    random_attribution,
    region_perturbation_curve,
    results_to_json,
    summarize,
    symmetric_relevance_gain,
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


@pytest.mark.parametrize("perturbation", ["constant", "uniform", "blur", "road"])
def test_true_ordering_beats_random_beats_reverse(perturbation):
    # 16 images: a single random order varies a lot from image to image
    side = 16 if perturbation == "road" else 24  # ROAD solves a linear system per step
    model, x, target = make_linear(n=16, h=side, w=side)
    truth = true_attribution(model, x)
    kw = dict(region=4, steps=side, perturbation=perturbation, batch_size=64)

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
    # and the symmetric relevance gain: the truth's is positive, its negation's the opposite
    srg = {}
    for sign in (1, -1):
        morf, lerf_curves = (
            region_perturbation_curve(
                model, x, sign * truth, target, order=o, generator=gen(), **kw
            )
            for o in ("morf", "lerf")
        )
        srg[sign] = float(symmetric_relevance_gain(morf, lerf_curves).mean())
    assert srg[1] > 0 > srg[-1]
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
        (dict(perturbation="noise"), r"must be one of 'uniform', 'blur', 'constant', 'road'"),
        (dict(order="best"), r"order must be one of 'morf', 'lerf', 'random'"),
        (dict(score="softmax"), r"score must be one of 'logit', 'probability', 'log-odds'"),
        (dict(perturbation="road", noise=-1.0), r"noise must be a number >= 0"),
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
    assert set(BASELINES) == {"random", "gradient", "gradient-x-input", "gradcam"}
    torch.testing.assert_close(
        gradient_attribution(model, x, [0, 0]), w.abs().sum(0).expand(2, 6, 6)
    )
    torch.testing.assert_close(gradient_x_input_attribution(model, x, 0), (w * x).sum(1))
    torch.testing.assert_close(
        BASELINES["gradient-x-input"](model, x, [1, 1], None), -(w * x).sum(1)
    )
    assert model.weight.grad is None  # no parameter gradients left behind
    for name, fn in BASELINES.items():
        if name != "gradcam":  # a linear model has no spatial layer (tested below)
            assert fn(model, x, torch.tensor([0, 1]), gen()).shape == (2, 6, 6)


def test_summarize_and_json_shape():
    curves = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.5, 0.0]])
    res = summarize("lrp", "morf", curves, ["a.png", "sub/b.png"], score="probability")
    assert isinstance(res, MethodResult)
    assert res.aopc == pytest.approx((2 / 3 + 0.5) / 2)
    assert res.aopc_std == pytest.approx(abs(2 / 3 - 0.5) / 2)
    assert res.curve == pytest.approx([1.0, 0.25, 0.0])
    assert res.srg is None and res.srg_std is None
    assert res.curve_std == pytest.approx([0.0, 0.25, 0.0])
    rnd = summarize("random", "random", curves[:1], ["a.png"])
    assert rnd.aopc_std == 0.0

    doc = json.loads(
        json.dumps(results_to_json([res, summarize("lrp", "lerf", curves, ["a", "b"])]))
    )
    assert set(doc) == {"steps", "results"} and doc["steps"] == 2
    first = doc["results"][0]
    old = {"method", "order", "aopc", "auc", "curve", "per_image"}
    assert set(first) == old | {"aopc_std", "auc_std", "srg", "srg_std"}
    assert first["method"] == "lrp" and first["order"] == "morf"
    assert isinstance(first["aopc"], float) and isinstance(first["auc"], float)
    assert len(first["curve"]) == 3 and all(isinstance(v, float) for v in first["curve"])
    assert first["per_image"] == [
        {"input": "a.png", "aopc": pytest.approx(2 / 3), "auc": pytest.approx(0.25)},
        {"input": "sub/b.png", "aopc": pytest.approx(0.5), "auc": pytest.approx(0.5)},
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


# --- the symmetric relevance gain and the log-odds score ---------------------------------------


def test_symmetric_relevance_gain_arithmetic():
    morf = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]])  # AUC 0.25, 1.0
    lerf = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]])  # AUC 1.0, 1.5
    srg = symmetric_relevance_gain(morf, lerf)
    torch.testing.assert_close(srg, torch.tensor([0.75, 0.5]))
    torch.testing.assert_close(srg, area_under_curve(lerf) - area_under_curve(morf))
    res = summarize("lrp", "morf", morf, ["a", "b"], srg=srg)
    assert res.srg == pytest.approx(0.625) and res.srg_std == pytest.approx(0.125)
    assert [p["srg"] for p in res.per_image] == pytest.approx([0.75, 0.5])
    assert res.to_json()["srg"] == pytest.approx(0.625)
    with pytest.raises(ValueError, match="same shape"):
        symmetric_relevance_gain(morf, lerf[:, :2])
    with pytest.raises(ValueError, match="one value per curve"):
        summarize("lrp", "morf", morf, ["a", "b"], srg=srg[:1])


def test_log_odds_score():
    model, x, target = make_linear(n=2, h=12, w=12)
    x = x * 0.05
    truth = true_attribution(model, x)
    curves = region_perturbation_curve(model, x, truth, target, region=4, steps=3, score="log-odds")
    p = torch.softmax(model(x).detach().double(), 1)[:, 0]
    torch.testing.assert_close(curves[:, 0].double(), torch.log(p / (1 - p)), rtol=1e-5, atol=1e-5)


# --- ROAD's noisy linear imputation ------------------------------------------------------------


def test_road_imputation_by_hand_on_a_3x3_image():
    # pixels (1, 1) and (1, 2) removed; weights 1/6 direct, 1/12 diagonal neighbours
    v = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3) ** 1.5
    removed = torch.zeros(1, 3, 3, dtype=torch.bool)
    removed[0, 1, 1] = removed[0, 1, 2] = True
    a = v[0, 0]
    d, e = 1 / 6, 1 / 12
    # centre: all 8 neighbours in the image (weights sum to 1); one of them, (1, 2), unknown
    #   u1 = e(a00 + a02 + a20 + a22) + d(a01 + a10 + a21) + d u2
    k1 = e * (a[0, 0] + a[0, 2] + a[2, 0] + a[2, 2]) + d * (a[0, 1] + a[1, 0] + a[2, 1])
    # right edge: neighbours (0,1)e (0,2)d (1,1)d (2,1)e (2,2)d, weights sum 2/3
    #   (2/3) u2 = e(a01 + a21) + d(a02 + a22) + d u1
    k2 = e * (a[0, 1] + a[2, 1]) + d * (a[0, 2] + a[2, 2])
    # [[1, -d], [-d, 2/3]] (u1, u2) = (k1, k2): Cramer's rule
    det = 1 * (2 / 3) - d * d
    u1 = (k1 * (2 / 3) + d * k2) / det
    u2 = (k2 + d * k1) / det
    out = noisy_linear_imputation(v, removed, noise=0.0, tol=1e-14)
    expected = v.clone()
    expected[0, 0, 1, 1], expected[0, 0, 1, 2] = u1, u2
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    # a single removed corner: the weighted mean of its three neighbours
    corner = torch.zeros(1, 3, 3, dtype=torch.bool)
    corner[0, 0, 0] = True
    out = noisy_linear_imputation(v, corner, noise=0.0)
    mean = (d * a[0, 1] + d * a[1, 0] + e * a[1, 1]) / (2 * d + e)
    assert float(out[0, 0, 0, 0]) == pytest.approx(float(mean), abs=1e-9)
    # the noise: only on removed pixels, drawn from the generator
    noisy = noisy_linear_imputation(v, corner, noise=0.5, generator=gen(3))
    assert torch.equal(noisy[~corner[:, None].expand_as(v)], v[~corner[:, None].expand_as(v)])
    field = torch.randn(1, 1, 3, 3, generator=gen(3), dtype=torch.float32).double()
    assert float(noisy[0, 0, 0, 0]) == pytest.approx(float(mean + 0.5 * field[0, 0, 0, 0]))
    # everything removed: nothing to impute from
    assert torch.equal(
        noisy_linear_imputation(v, torch.ones(1, 3, 3, dtype=torch.bool), noise=0.0),
        torch.zeros_like(v),
    )


def test_road_imputation_equals_quantus():
    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_impute

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64)
    removed = torch.rand(2, 9, 11, generator=g) < 0.45
    ours = noisy_linear_imputation(x, removed, noise=0.0, tol=1e-13)
    for i in range(2):
        indices = torch.nonzero(removed[i].flatten()).flatten().numpy()
        theirs = quantus_impute(x[i].numpy().copy(), indices, noise=0.0)
        torch.testing.assert_close(ours[i], torch.from_numpy(theirs), rtol=0, atol=1e-10)
    # float32
    ours32 = noisy_linear_imputation(x.float(), removed, noise=0.0, tol=1e-5)
    torch.testing.assert_close(ours32.double(), ours, rtol=0, atol=1e-5)


def test_road_curves_equal_a_direct_loop_over_quantus_imputations():
    pytest.importorskip("quantus")
    from quantus.functions.perturb_func import noisy_linear_imputation as quantus_impute

    model = SmallConv().eval()
    x = torch.randn(2, 3, 12, 12, generator=gen(5))
    attr = torch.randn(2, 12, 12, generator=gen(6))
    target, region, steps, noise = [1, 3], 3, 10, 0.05
    for order in ("morf", "lerf"):
        curves = region_perturbation_curve(
            model, x, attr, target, region=region, steps=steps, perturbation="road",
            order=order, noise=noise, tol=1e-7, generator=gen(7), batch_size=4,
        )  # fmt: skip
        field = torch.randn(2, 3, 12, 12, generator=gen(7))  # drawn first, once per image
        sums = attr.view(2, 4, 3, 4, 3).sum(dim=(2, 4)).flatten(1)
        ranks = torch.argsort(sums, dim=1, descending=order == "morf", stable=True)
        expected = torch.empty(2, steps + 1)
        with torch.no_grad():
            for i in range(2):
                for k in range(steps + 1):
                    mask = torch.zeros(16, dtype=torch.bool)
                    mask[ranks[i, :k]] = True
                    pixels = mask.view(4, 1, 4, 1).expand(4, 3, 4, 3).reshape(12, 12)
                    indices = torch.nonzero(pixels.flatten()).flatten().numpy()
                    imputed = torch.from_numpy(
                        quantus_impute(x[i].double().numpy(), indices, noise=0.0)
                    ).float()
                    imputed = imputed + pixels * (noise * field[i])
                    expected[i, k] = model(imputed[None])[0, target[i]]
        torch.testing.assert_close(curves, expected, rtol=1e-5, atol=1e-5)


# --- Quantus's RegionPerturbation as the oracle -----------------------------------------------


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_constant_curves_equal_quantus_region_perturbation(order):
    quantus = pytest.importorskip("quantus")
    model = SmallConv().eval()
    x = torch.randn(3, 3, 16, 16, generator=gen(8))
    attr = torch.randn(3, 16, 16, generator=gen(9))  # continuous: no ties in the order
    target = torch.tensor([0, 2, 4])
    curves = region_perturbation_curve(
        model, x, attr, target, region=4, steps=16, perturbation="constant", order=order
    )
    metric = quantus.RegionPerturbation(
        patch_size=4,
        order=order,
        regions_evaluation=16,
        perturb_baseline=0.0,
        normalise=False,
        abs=False,
        disable_warnings=True,
        display_progressbar=False,
    )
    drops = metric(
        model=model,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=attr[:, None].numpy(),
        device="cpu",
        softmax=False,
    )
    # Quantus records f(x) - f(x^(k)) for k = 1..steps
    theirs = torch.from_numpy(np.asarray(drops, dtype=np.float32))
    torch.testing.assert_close(curves[:, :1] - curves[:, 1:], theirs, rtol=0, atol=1e-5)


# --- Grad-CAM ----------------------------------------------------------------------------------


def test_gradcam_equals_a_direct_computation():
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 5),
    ).eval()
    x = torch.randn(2, 3, 8, 8, generator=gen(4))
    target = torch.tensor([1, 4])
    cam = gradcam_attribution(model, x, target)  # default layer: "3", the last spatial one
    with torch.no_grad():
        a = model[:4](x)  # (2, 6, 4, 4)
    # the logit is w_c . mean(A): d f_c / d A_k(ij) = w_ck / 16, so alpha_k = w_ck / 16
    alpha = model[6].weight.detach()[target] / 16
    direct = torch.relu((alpha[:, :, None, None] * a).sum(1, keepdim=True))
    direct = torch.nn.functional.interpolate(direct, size=(8, 8), mode="bilinear")[:, 0]
    torch.testing.assert_close(cam, direct)
    # a chosen layer: the first convolution's ReLU, at full resolution
    first = gradcam_attribution(model, x, target, layer="1")
    assert first.shape == (2, 8, 8) and not torch.allclose(first, cam)
    with pytest.raises(ValueError, match="not a module of the model"):
        gradcam_attribution(model, x, target, layer="99")
    linear, xl, _ = make_linear(n=2, h=6, w=6)
    with pytest.raises(ValueError, match="spatial"):
        gradcam_attribution(linear, xl, 0)


# --- the runner behind lrp evaluate -------------------------------------------------------------


def test_evaluation_gives_both_orders_the_srg_and_times_the_curves(tmp_path):
    from dataclasses import replace

    from PIL import Image

    from lrp_cli.analysis.evaluate_run import Evaluation, EvaluationSettings
    from lrp_cli.config import load_config
    from lrp_cli.images import InputItem
    from lrp_cli.models import LoadedModel, Preprocessing

    module = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(16, 3),
    )  # fmt: skip
    torch.manual_seed(0)
    model = LoadedModel("tiny", module.eval(), Preprocessing(input_size=16, resize=16))
    items = []
    for k in range(2):
        path = tmp_path / f"{k}.png"
        pixels = np.random.default_rng(k).integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
        items.append(InputItem(path, path.relative_to(tmp_path)))
    settings = EvaluationSettings(
        device="cpu", region=4, steps=5, orders=("morf", "lerf", "random"), start="log-odds",
        cam_layer="1",
    )  # fmt: skip
    evaluation = Evaluation(model, [load_config("zero")], ["gradcam"], settings)
    assert evaluation.load(items) == []
    results, errors = evaluation.run()
    assert errors == []
    by = {(r.method, r.order): r for r in results}
    assert set(by) == {(m, o) for m in ("zero", "gradcam") for o in ("morf", "lerf", "random")}
    for method in ("zero", "gradcam"):
        morf, lerf = by[method, "morf"], by[method, "lerf"]
        assert morf.srg == lerf.srg == pytest.approx(lerf.auc - morf.auc)
        assert by[method, "random"].srg is None
    assert evaluation.forwards == 2 * 6 * 5  # the random order is measured once
    assert "2 inputs x 6 steps x 5 curves" in evaluation.timing()
    assert "ms per image and step" in evaluation.timing()
    bad_layer = replace(settings, cam_layer="9")
    bad = Evaluation(model, [], ["gradcam"], bad_layer)
    bad.load(items)
    results, errors = bad.run()
    assert results == [] and "not a module of the model" in errors[0]
