"""Binder et al. 2016, Table 3, at small scale: LRN layers by identity or by the Taylor rule.

Trains a small CaffeNet-like CNN (conv-ReLU-LRN-maxpool twice, a third conv, two dense layers)
on scikit-learn's bundled handwritten digits (8x8, upscaled to 32x32, one channel, 0..255 minus
the training mean pixel, as Caffe feeds CaffeNet), then for each of the paper's columns
(epsilon = 0.01, 1, 100; beta = 0, 1) explains the test images with the LRN layers treated by
identity and by the Taylor rule and measures each heatmap by region perturbation (most
relevant first, 4x4 regions replaced by uniform noise over the input range, all 64 regions).
The table reports the area under the perturbation curve (AUC, smaller = more faithful) per
column for both LRN treatments, their paired difference (negative = Taylor better, as in the
paper's Table 3) with a standard error and a bootstrap interval, and the AUC of a random order.

    python experiments/lrn_taylor/run.py            # full run: about 2-3 minutes on 2 CPU cores
    python experiments/lrn_taylor/run.py --quick    # smoke run: under a minute

Results go to ``experiments/lrn_taylor/results/`` (``results/quick/`` for --quick):
``table.md``, ``results.json`` and ``curves.png``. See README.md next to this file.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrp_cli.analysis.evaluate import area_under_curve, region_perturbation_curve, summarize
from lrp_cli.engine import AlphaBetaRule, Composite, EpsilonRule, Explainer, LRNRule

HERE = Path(__file__).resolve().parent
SEED = 0  # default seed of initialisation, training order and noise; the split is fixed
SIZE = 32  # images are upscaled from 8x8 to SIZE x SIZE
REGION = 4  # 4x4 regions: one original 8x8 digit pixel each, 64 regions in all
STEPS = 64  # perturb every region (the curve ends at an image of pure noise)
EARLY_STEPS = 10  # secondary summary: the first 10 regions (~16% of the image, as L=100 9x9
# regions, the customary protocol, cover at most ~16% of a 227x227 image); fixed in advance
# CaffeNet's LRN parameters (Caffe's alpha is divided by local_size, as PyTorch's is)
LRN = dict(size=5, alpha=1e-4, beta=0.75, k=1.0)
PAPER = {  # Binder et al. 2016, Table 3: AUC_Taylor - AUC_identity (lrp-notes section 4)
    "ImageNet": {
        "eps=0.01": -26.84,
        "eps=1": -35.84,
        "eps=100": 8.47,
        "beta=0": 1.98,
        "beta=1": 0.29,
    },
    "MIT Places": {
        "eps=0.01": -24.59,
        "eps=1": -33.13,
        "eps=100": 5.34,
        "beta=0": -1.06,
        "beta=1": -0.39,
    },
}


class SmallCaffeNet(nn.Module):
    """CaffeNet's layout, shrunk: conv-ReLU-pool-LRN twice, conv-ReLU-pool, fc-ReLU-dropout, fc."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5, padding=2)
        self.norm1 = nn.LocalResponseNorm(**LRN)
        self.conv2 = nn.Conv2d(16, 32, 5, padding=2)
        self.norm2 = nn.LocalResponseNorm(**LRN)
        self.conv3 = nn.Conv2d(32, 48, 3, padding=1)
        self.fc6 = nn.Linear(48 * 3 * 3, 128)
        self.drop6 = nn.Dropout(0.5)
        self.fc7 = nn.Linear(128, classes)

    def forward(self, x):
        x = self.norm1(F.max_pool2d(F.relu(self.conv1(x)), 3, 2))  # 32 -> 15
        x = self.norm2(F.max_pool2d(F.relu(self.conv2(x)), 3, 2))  # 15 -> 7
        x = F.max_pool2d(F.relu(self.conv3(x)), 3, 2)  # 7 -> 3
        x = self.drop6(F.relu(self.fc6(torch.flatten(x, 1))))
        return self.fc7(x)


def load_data():
    """Digits upscaled to SIZE x SIZE, scaled to 0..255, minus the training mean pixel."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] * (255.0 / 16.0)
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 255.0)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=0.25, random_state=0, stratify=digits.target
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean = float(images[train_idx].mean())
    images = images - mean
    bounds = (0.0 - mean, 255.0 - mean)
    return (images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], mean, bounds)


def train(model, x, y, epochs: int, seed: int, log) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), 64):
            batch = perm[start : start + 64]
            opt.zero_grad()
            loss = F.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(batch)
        log(f"  epoch {epoch + 1:2d}/{epochs}: train loss {total / len(y):.4f}")
    model.eval()


def columns():
    """The paper's columns: (label, rule elsewhere, LRN Taylor rule)."""
    out = []
    for eps in (0.01, 1.0, 100.0):
        out.append((f"eps={eps:g}", EpsilonRule(eps), LRNRule("taylor", epsilon=eps)))
    for beta in (0.0, 1.0):
        rule = AlphaBetaRule(alpha=1.0 + beta, beta=beta)
        out.append((f"beta={beta:g}", rule, LRNRule("taylor", beta=beta)))
    return out


def lrn_strength(model, x) -> dict:
    """How much each LRN layer changes its input: the mean factor y/x = s^-beta where x > 0."""
    out = {}
    with torch.no_grad():
        a1 = F.max_pool2d(F.relu(model.conv1(x)), 3, 2)
        y1 = model.norm1(a1)
        a2 = F.max_pool2d(F.relu(model.conv2(y1)), 3, 2)
        y2 = model.norm2(a2)
        for name, a, y in (("norm1", a1, y1), ("norm2", a2, y2)):
            pos = a > 0
            factor = (y[pos] / a[pos]).double()
            out[name] = {
                "mean_factor": float(factor.mean()),
                "p5_factor": float(factor.quantile(0.05)),
                "min_factor": float(factor.min()),
                "mean_positive_activation": float(a[pos].mean()),
            }
    return out


def paired_stats(diff: torch.Tensor, resamples: int, seed: int) -> dict:
    """Mean, standard error and a percentile bootstrap 95% interval of per-image values."""
    n = diff.numel()
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    boot = diff[idx].mean(dim=1)
    return {
        "mean": float(diff.mean()),
        "se": float(diff.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0,
        "ci95": [float(boot.quantile(0.025)), float(boot.quantile(0.975))],
    }


def curve_of(model, x, heat, target, bounds, seed, order="morf"):
    return region_perturbation_curve(
        model,
        x,
        heat,
        target,
        region=REGION,
        steps=STEPS,
        perturbation="uniform",
        order=order,
        batch_size=520,
        generator=torch.Generator().manual_seed(seed + 1),
        bounds=bounds,
    )


def early_auc(curves: torch.Tensor) -> torch.Tensor:
    return area_under_curve(curves[:, : EARLY_STEPS + 1])


def fmt(v: float) -> str:
    return f"{v:+.2f}" if abs(v) < 1e4 else f"{v:+.3g}"


def write_table(path: Path, res: dict) -> str:
    n = res["test_images"]
    lines = [
        "# LRN: identity vs Taylor, region perturbation (MoRF)",
        "",
        f"SmallCaffeNet on sklearn digits ({SIZE}x{SIZE}), test accuracy "
        f"{res['test_accuracy'] * 100:.2f}% on {n} test images (seed {res['protocol']['seed']}); "
        "target: the true class; "
        f"score: the target logit (mean unperturbed logit {res['mean_logit_x0']:.2f}).",
        f"AUC: trapezoid area under the mean-logit MoRF curve on a 0..1 axis over all "
        f"{STEPS} steps of {REGION}x{REGION} regions (smaller = more faithful). "
        "Diff = AUC_Taylor - AUC_identity, paired over images (negative = Taylor better); "
        "+- standard error; [bootstrap 95% interval].",
        "",
        "| column | AUC identity | AUC Taylor | Diff (Taylor - identity) | 95% CI | "
        "Diff, first 10 steps | AUC random | paper ImageNet | paper Places |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rnd = res["random"]["auc"]
    for col in res["columns"]:
        label = col["column"]
        d, e = col["diff"], col["diff_early"]
        lines.append(
            f"| {label} | {col['auc_identity']:.2f} | {col['auc_taylor']:.2f} | "
            f"{fmt(d['mean'])} +- {d['se']:.2f} | [{fmt(d['ci95'][0])}, {fmt(d['ci95'][1])}] | "
            f"{fmt(e['mean'])} +- {e['se']:.2f} | {rnd:.2f} | {fmt(PAPER['ImageNet'][label])} | "
            f"{fmt(PAPER['MIT Places'][label])} |"
        )
    lines += [
        "",
        "The paper's numbers are AUCs on CaffeNet/ImageNet and Places in the paper's own units;",
        "only their signs and relative sizes are comparable with ours.",
        "",
    ]
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return text


def plot(path: Path, res: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cols = res["columns"]
    fig = Figure(figsize=(3.2 * len(cols), 3.4), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(cols), sharey=True)
    steps = list(range(STEPS + 1))
    for ax, col in zip(axes, cols, strict=True):
        ax.plot(steps, col["curve_identity"], label="LRN identity", color="tab:blue")
        ax.plot(steps, col["curve_taylor"], label="LRN Taylor", color="tab:red", linestyle="--")
        ax.plot(steps, res["random"]["curve"], label="random order", color="0.5", linewidth=1)
        ax.set_title(f"{col['column']}  (diff {col['diff']['mean']:+.2f})", fontsize=9)
        ax.set_xlabel(f"{REGION}x{REGION} regions perturbed")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mean target logit")
    axes[0].legend(fontsize=7, loc="upper right")
    fig.suptitle(
        "MoRF region perturbation, uniform noise (SmallCaffeNet, sklearn digits)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, format="png")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs, 40 images")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default 20)")
    parser.add_argument(
        "--images", type=int, default=None, help="test images to explain (default: all 450)"
    )
    parser.add_argument("--bootstrap", type=int, default=5000, help="bootstrap resamples")
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help="seed of initialisation, training and noise (default 0)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default results/, results/quick/ with --quick)",
    )
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 20)
    seed = args.seed
    default_out = HERE / "results" if seed == SEED else HERE / "results" / f"seed{seed}"
    out = args.out or (default_out / "quick" if args.quick else default_out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    np.random.seed(seed)

    lines = []

    def log(msg):
        line = f"[{time.perf_counter() - t0:6.1f}s] {msg}"
        lines.append(line)
        print(line, flush=True)

    x_train, y_train, x_test, y_test, mean, bounds = load_data()
    log(
        f"data: {len(y_train)} train / {len(y_test)} test images, 1x{SIZE}x{SIZE}, "
        f"mean pixel {mean:.2f}, input range [{bounds[0]:.2f}, {bounds[1]:.2f}]"
    )
    model = SmallCaffeNet()
    log(f"training {epochs} epochs (Adam 1e-3, batch 64)")
    train(model, x_train, y_train, epochs, seed, log)
    t_train = time.perf_counter() - t0
    with torch.no_grad():
        pred = model(x_test).argmax(1)
    accuracy = float((pred == y_test).float().mean())
    log(
        f"test accuracy {accuracy * 100:.2f}% ({int((pred != y_test).sum())} errors "
        f"of {len(y_test)})"
    )

    n = len(y_test) if args.images is None else min(args.images, len(y_test))
    if args.quick and args.images is None:
        n = 40
    x, target = x_test[:n], y_test[:n]
    strength = lrn_strength(model, x)
    for name, s in strength.items():
        log(
            f"{name}: y/x = s^-beta mean {s['mean_factor']:.3f}, 5% quantile "
            f"{s['p5_factor']:.3f}, min {s['min_factor']:.3f}"
        )

    model64 = SmallCaffeNet().double().eval()
    model64.load_state_dict(model.state_dict())
    t_explain = t_curves = 0.0
    t = time.perf_counter()
    random_curves = curve_of(model, x, None, target, bounds, seed, order="random")
    t_curves += time.perf_counter() - t
    x0 = random_curves[:, 0]
    results = {"columns": []}
    per_image = {}
    for label, rule, taylor in columns():
        curves, heats = {}, {}
        for mode, lrn in (("identity", LRNRule("identity")), ("taylor", taylor)):
            t = time.perf_counter()
            explainer = Explainer(model64, Composite(default=rule, lrn=lrn))
            heats[mode] = explainer(x.double(), target=target).relevance.sum(1)
            t_explain += time.perf_counter() - t
            if not torch.isfinite(heats[mode]).all():
                raise RuntimeError(f"{label} {mode}: non-finite relevance")
            t = time.perf_counter()
            curves[mode] = curve_of(model, x, heats[mode], target, bounds, seed)
            t_curves += time.perf_counter() - t
        auc = {m: area_under_curve(c.double()) for m, c in curves.items()}
        early = {m: early_auc(c.double()) for m, c in curves.items()}
        diff = auc["taylor"] - auc["identity"]
        hi, ht = heats["identity"].flatten(1), heats["taylor"].flatten(1)
        corr = F.cosine_similarity(hi - hi.mean(1, keepdim=True), ht - ht.mean(1, keepdim=True))
        summ = {
            m: summarize(f"{label} {m}", "morf", c, [f"test[{i}]" for i in range(n)])
            for m, c in curves.items()
        }
        col = {
            "column": label,
            "rule": rule.describe(),
            "lrn_taylor": taylor.describe(),
            "auc_identity": float(auc["identity"].mean()),
            "auc_taylor": float(auc["taylor"].mean()),
            "diff": paired_stats(diff, args.bootstrap, seed + 2),
            "diff_early": paired_stats(
                early["taylor"] - early["identity"], args.bootstrap, seed + 3
            ),
            "taylor_better_images": int((diff < 0).sum()),
            "identical_images": int((diff == 0).sum()),
            "aopc_identity": summ["identity"].aopc,
            "aopc_taylor": summ["taylor"].aopc,
            "heatmap_correlation_mean": float(corr.mean()),
            "heatmaps_equal_max_abs_diff": float((ht - hi).abs().max()),
            "curve_identity": summ["identity"].curve,
            "curve_taylor": summ["taylor"].curve,
        }
        results["columns"].append(col)
        per_image[label] = {m: [round(v, 5) for v in auc[m].tolist()] for m in auc}
        d = col["diff"]
        log(
            f"{label:9s} AUC identity {col['auc_identity']:8.2f}  Taylor {col['auc_taylor']:8.2f}"
            f"  diff {d['mean']:+8.3f} +- {d['se']:.3f}  (Taylor better on "
            f"{col['taylor_better_images']}/{n}; "
            f"heatmap corr {col['heatmap_correlation_mean']:.3f})"
        )
    rnd = summarize("random", "random", random_curves, [f"test[{i}]" for i in range(n)])
    results["random"] = {
        "auc": rnd.auc,
        "auc_se": float(area_under_curve(random_curves.double()).std() / math.sqrt(n)),
        "aopc": rnd.aopc,
        "curve": rnd.curve,
    }
    log(f"random    AUC {rnd.auc:.2f}")
    elapsed = time.perf_counter() - t0
    res = {
        "experiment": "Binder et al. 2016 Table 3 (LRN identity vs Taylor), small scale",
        "quick": bool(args.quick),
        "test_images": n,
        "test_accuracy": accuracy,
        "target": "true class",
        "score": "logit",
        "mean_logit_x0": float(x0.mean()),
        "protocol": {
            "image_size": SIZE,
            "channels": 1,
            "region": REGION,
            "steps": STEPS,
            "early_steps": EARLY_STEPS,
            "perturbation": "uniform",
            "order": "morf",
            "bounds": list(bounds),
            "seed": seed,
            "noise_seed": seed + 1,
            "auc": "trapezoid on 0..1",
            "bootstrap_resamples": args.bootstrap,
        },
        "model": {
            "name": "SmallCaffeNet",
            "lrn": LRN,
            "epochs": epochs,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "lrn_strength": strength,
        "columns": results["columns"],
        "random": results["random"],
        "paper_table3": PAPER,
        "per_image_auc": per_image,
        "timing_s": {"total": elapsed, "train": t_train, "explain": t_explain, "curves": t_curves},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    table = write_table(out / "table.md", res)
    plot(out / "curves.png", res)
    print()
    print(table)
    log(
        f"done in {elapsed:.1f}s (train {t_train:.1f}s, explain {t_explain:.1f}s, "
        f"curves {t_curves:.1f}s); results in {out}"
    )
    (out / "run.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
