"""LRP for transformers at small scale: CP-LRP, AttnLRP and LRP-gamma on a ViT and a ConvNeXt.

Trains two small models built with torchvision's own classes, a VisionTransformer (patch 4,
class token, position embedding, nn.MultiheadAttention, LayerNorm, GELU) and a ConvNeXt (4x4
stem, LayerNorm2d, depthwise 7x7 convolutions, layer scale, stochastic depth), on
scikit-learn's bundled handwritten digits (8x8, upscaled bilinearly to 32x32, the grey value
copied to 3 channels, normalised by the training mean and standard deviation). Then it
explains the first test images for their true class with three LRP configs (CP-LRP, AttnLRP,
LRP-gamma; YAML files in configs/) and three baselines (gradient, gradient x input, random),
and measures every heatmap by region perturbation (4x4 regions, all 64 of them, most and
least relevant first, replaced by a blurred copy or by the constant 0 = the mean pixel). The
table reports AOPC and AUC per model, method, perturbation and order, and the time to explain.

    python experiments/transformers/run.py                      # full run -> results/
    python experiments/transformers/run.py --reuse-checkpoints  # reuse results/*.pt if there
    python experiments/transformers/run.py --train-only         # train and save the models only
    python experiments/transformers/run.py --quick              # smoke run -> results/quick/

A method that the engine cannot run (e.g. a model it does not support yet) is reported as
failed, with its error, and the others go on; the exit status is then 1. See README.md.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lrp_cli.analysis.evaluate import (
    aopc,
    area_under_curve,
    gradient_attribution,
    gradient_x_input_attribution,
    random_attribution,
    region_perturbation_curve,
)

HERE = Path(__file__).resolve().parent
SEED = 0  # default seed of initialisation, training order, augmentation and the random map
SPLIT_SEED = 0  # the train/test split is fixed, whatever --seed is
SIZE = 32  # images are upscaled from 8x8 to SIZE x SIZE
CHANNELS = 3  # torchvision's ViT and ConvNeXt stems take 3 channels; the grey value is copied
REGION = 4  # 4x4 regions: one original digit pixel each, 64 regions in all
STEPS = 64  # perturb every region
PERTURBATIONS = ("blur", "constant")  # blur: sigma = REGION / 2; constant: 0 (the mean pixel)
ORDERS = ("morf", "lerf")
ORDER_NAMES = {"morf": "MoRF", "lerf": "LeRF"}
IMAGES = 200  # test images explained and measured (the first ones of the fixed test split)
QUICK_IMAGES = 20
EXPLAIN_BATCH = 50  # images per engine call
CURVE_BATCH = 8 * (STEPS + 1)  # perturbed copies per forward pass (8 images' curves)
BOOTSTRAP = 2000  # resamples for the paired differences against CP-LRP

# training recipe (the same for both models)
EPOCHS = {"vit": 60, "convnext": 30}
QUICK_EPOCHS = 1
BATCH = 64
LR = 1e-3
WEIGHT_DECAY = 0.05
SHIFT = 2  # augmentation: random translation by up to SHIFT pixels (of 32), background fill

# the models: keyword arguments of the torchvision classes
ARCH = {
    "vit": dict(
        image_size=SIZE,
        patch_size=4,  # 8x8 patches of 4x4 pixels: one patch = one original digit pixel
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    ),
    "convnext": dict(
        # (input_channels, out_channels, num_layers); the 4x4 stride-4 stem maps 32 -> 8,
        # the two downsampling layers 8 -> 4 -> 2
        block_setting=[(24, 48, 2), (48, 96, 2), (96, None, 1)],
        stochastic_depth_prob=0.1,
        layer_scale=1e-6,
        num_classes=10,
    ),
}
MODEL_NAMES = {"vit": "ViT", "convnext": "ConvNeXt"}

# the methods: (label, kind, spec); kind "lrp" takes a config spec for lrp_cli.config
METHODS = [
    ("CP-LRP", "lrp", HERE / "configs" / "cp-lrp.yaml"),
    ("AttnLRP", "lrp", HERE / "configs" / "attnlrp.yaml"),
    ("gamma preset", "lrp", HERE / "configs" / "gamma.yaml"),
    ("gradient", "baseline", gradient_attribution),
    ("gradient x input", "baseline", gradient_x_input_attribution),
    ("random", "baseline", random_attribution),
]
REFERENCE = "CP-LRP"  # paired differences are taken against this method


# ------------------------------------------------------------------------------------ data


def load_data():
    """Digits in 0..1, upscaled to SIZE x SIZE, copied to CHANNELS, normalised by train stats."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0)
    labels = torch.tensor(digits.target, dtype=torch.long)
    idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(
        idx, test_size=0.25, random_state=SPLIT_SEED, stratify=digits.target
    )
    train_idx, test_idx = torch.as_tensor(train_idx), torch.as_tensor(test_idx)
    mean, std = float(images[train_idx].mean()), float(images[train_idx].std())
    images = ((images - mean) / std).expand(-1, CHANNELS, -1, -1).contiguous()
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx], mean, std


def shift_batch(x: torch.Tensor, gen: torch.Generator, background: float) -> torch.Tensor:
    """Translate each image by a random (dy, dx) in [-SHIFT, SHIFT], filling with background."""
    if SHIFT == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (SHIFT, SHIFT, SHIFT, SHIFT), value=background)
    offsets = torch.randint(0, 2 * SHIFT + 1, (n, 2), generator=gen)
    return torch.stack(
        [padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())]
    )


# ---------------------------------------------------------------------------------- models


def build_model(key: str) -> nn.Module:
    """The model from torchvision's own classes (no re-implementation)."""
    from torchvision.models import VisionTransformer
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    arch = dict(ARCH[key])
    if key == "vit":
        return VisionTransformer(**arch)
    arch["block_setting"] = [CNBlockConfig(*b) for b in arch["block_setting"]]
    return ConvNeXt(**arch)


def epochs_of(key: str, quick: bool, override: int | None) -> int:
    if override is not None:
        return override
    return QUICK_EPOCHS if quick else EPOCHS[key]


def train(model, x, y, epochs: int, seed: int, background: float, log) -> list[float]:
    """AdamW with a cosine learning-rate decay per step; returns the train loss per epoch."""
    gen = torch.Generator().manual_seed(seed)
    # weight decay on the weight matrices and kernels only (Linear, Conv2d, the attention's
    # in_proj_weight), not on biases, norms, layer scales, the class token or the positions
    named = list(model.named_parameters())
    decay = [p for n, p in named if n.endswith("weight") and p.dim() > 1]
    other = [p for n, p in named if not (n.endswith("weight") and p.dim() > 1)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": other, "weight_decay": 0.0}],
        lr=LR,
    )
    total_steps = epochs * math.ceil(len(y) / BATCH)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(math.pi * step / total_steps))
    )
    history = []
    model.train()
    for epoch in range(epochs):
        t = time.perf_counter()
        perm = torch.randperm(len(y), generator=gen)
        total = 0.0
        for start in range(0, len(y), BATCH):
            batch = perm[start : start + BATCH]
            opt.zero_grad()
            loss = F.cross_entropy(model(shift_batch(x[batch], gen, background)), y[batch])
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(batch)
        history.append(total / len(y))
        log(
            f"  epoch {epoch + 1:2d}/{epochs}: train loss {history[-1]:.4f} "
            f"({time.perf_counter() - t:.1f}s)"
        )
    model.eval()
    return history


def accuracy_of(model, x, y) -> float:
    with torch.no_grad():
        pred = torch.cat([model(c).argmax(1) for c in x.split(256)])
    return float((pred == y).float().mean())


def state_hash(model) -> str:
    buf = io.BytesIO()
    for name, value in sorted(model.state_dict().items()):
        buf.write(name.encode())
        buf.write(value.detach().cpu().contiguous().numpy().tobytes())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def recipe(key: str, epochs: int, seed: int) -> dict:
    """What a checkpoint must match to be reused."""
    return {
        "model": key,
        "arch": ARCH[key],
        "epochs": epochs,
        "seed": seed,
        "split_seed": SPLIT_SEED,
        "size": SIZE,
        "channels": CHANNELS,
        "batch": BATCH,
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "shift": SHIFT,
    }


def get_model(key, data, epochs, seed, out: Path, reuse: bool, log):
    """Train the model (or load its checkpoint with --reuse-checkpoints); save the checkpoint."""
    x_train, y_train, x_test, y_test, mean, std = data
    path = out / f"{key}.pt"
    want = json.loads(json.dumps(recipe(key, epochs, seed)))  # tuples -> lists, as stored
    torch.manual_seed(seed)  # per model: its initialisation does not depend on the other one
    model = build_model(key)
    params = sum(p.numel() for p in model.parameters())
    if reuse and path.exists():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        meta = json.loads(saved["meta"])
        if meta["recipe"] != want:
            raise SystemExit(
                f"{path}: the checkpoint was trained with a different recipe; delete it or run "
                f"without --reuse-checkpoints.\n  checkpoint: {meta['recipe']}"
                f"\n  wanted:     {want}"
            )
        model.load_state_dict(saved["state_dict"])
        model.eval()
        acc = accuracy_of(model, x_test, y_test)
        if state_hash(model) != meta["state_sha256"] or acc != meta["test_accuracy"]:
            raise SystemExit(f"{path}: checkpoint does not reproduce its own hash/accuracy")
        log(
            f"{MODEL_NAMES[key]}: reused {path.name} ({params:,} parameters, trained "
            f"{meta['recipe']['epochs']} epochs in {meta['train_time_s']:.1f}s, test accuracy "
            f"{acc * 100:.2f}%)"
        )
        meta["reused"] = True
        return model, meta
    if reuse:
        log(f"{MODEL_NAMES[key]}: no checkpoint {path.name}, training")
    log(f"{MODEL_NAMES[key]}: {params:,} parameters; training {epochs} epochs")
    t = time.perf_counter()
    background = (0.0 - mean) / std
    history = train(model, x_train, y_train, epochs, seed, background, log)
    train_time = time.perf_counter() - t
    acc = accuracy_of(model, x_test, y_test)
    errors = int(round((1 - acc) * len(y_test)))
    log(
        f"{MODEL_NAMES[key]}: trained in {train_time:.1f}s, test accuracy {acc * 100:.2f}% "
        f"({errors} errors of {len(y_test)})"
    )
    meta = {
        "recipe": want,
        "parameters": params,
        "train_time_s": train_time,
        "train_loss": history,
        "test_accuracy": acc,
        "test_errors": errors,
        "state_sha256": state_hash(model),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "reused": False,
    }
    torch.save({"state_dict": model.state_dict(), "meta": json.dumps(meta)}, path)
    meta["checkpoint_bytes"] = path.stat().st_size
    log(f"  saved {path} ({meta['checkpoint_bytes'] / 1024:.0f} KiB)")
    return model, meta


def model_diagnostics(key: str, model) -> dict:
    """What the parts the engine must handle look like in the trained model."""
    out = {}
    if key == "convnext":
        scales = [
            float(m.layer_scale.detach().abs().mean())
            for m in model.modules()
            if type(m).__name__ == "CNBlock"
        ]
        out["layer_scale_mean_abs"] = scales
        out["stochastic_depth_p"] = [
            float(m.p) for m in model.modules() if type(m).__name__ == "StochasticDepth"
        ]
    return out


# ------------------------------------------------------------------------------ attribution


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def attribute(label, kind, spec, model64, x64, target, seed):
    """(N, H, W) channel-summed attribution in float64 plus what it cost; raises on failure.

    Failures carry the stage they happened in (config, explainer, explain) as ``stage``.
    """
    info = {}
    stage = "config"
    try:
        if kind == "lrp":
            from lrp_cli.config import load_config
            from lrp_cli.engine import Explainer

            composite = load_config(str(spec)).composite()
            stage = "explainer"
            t = time.perf_counter()
            explainer = Explainer(model64, composite)
            info["setup_s"] = time.perf_counter() - t
            stage = "explain"
            t = time.perf_counter()
            parts, sums, logits = [], [], []
            for xs, ts in zip(x64.split(EXPLAIN_BATCH), target.split(EXPLAIN_BATCH), strict=True):
                expl = explainer(xs, target=ts)
                parts.append(expl.relevance.sum(1))
                sums.append(expl.relevance.flatten(1).sum(1))
                logits.append(expl.logits.gather(1, ts[:, None]).squeeze(1))
            info["explain_s"] = time.perf_counter() - t
            heat = torch.cat(parts)
            ratio = torch.cat(sums) / torch.cat(logits)
            info["conservation"] = {
                "sum_relevance_over_logit_mean": float(ratio.mean()),
                "min": float(ratio.min()),
                "max": float(ratio.max()),
            }
        else:
            stage = "explain"
            gen = torch.Generator().manual_seed(seed + 2)  # only the random map uses it
            info["setup_s"] = 0.0
            t = time.perf_counter()
            parts = [
                spec(model64, xs, ts, gen)
                for xs, ts in zip(
                    x64.split(EXPLAIN_BATCH), target.split(EXPLAIN_BATCH), strict=True
                )
            ]
            info["explain_s"] = time.perf_counter() - t
            heat = torch.cat(parts)
        if not bool(torch.isfinite(heat).all()):
            raise RuntimeError("non-finite relevance")
    except Exception as error:  # every failure is reported per method, not raised
        error.stage = stage
        raise
    info["explain_ms_per_image"] = 1000 * info["explain_s"] / len(x64)
    return heat.detach(), info


def curves_of(model, x, heat, target, perturbation, order, seed) -> torch.Tensor:
    return region_perturbation_curve(
        model,
        x,
        heat,
        target,
        region=REGION,
        steps=STEPS,
        perturbation=perturbation,
        order=order,
        batch_size=CURVE_BATCH,
        generator=torch.Generator().manual_seed(seed + 1),
        value=0.0,
    )


def paired(diff: torch.Tensor, seed: int) -> dict:
    """Mean, standard error and a percentile bootstrap 95% interval of per-image differences."""
    n = diff.numel()
    gen = torch.Generator().manual_seed(seed)
    boot = diff[torch.randint(0, n, (BOOTSTRAP, n), generator=gen)].mean(dim=1)
    return {
        "mean": float(diff.mean()),
        "se": float(diff.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0,
        "ci95": [float(boot.quantile(0.025)), float(boot.quantile(0.975))],
    }


def se(values: torch.Tensor) -> float:
    n = values.numel()
    return float(values.std(correction=1) / math.sqrt(n)) if n > 1 else 0.0


def evaluate_model(key, model, x, target, methods, seed, log) -> dict:
    """Every method's attribution and curves on one model; failures are recorded, not raised."""
    model64 = copy.deepcopy(model).double().eval()
    x64 = x.double()
    out = {"methods": []}
    per_image_auc, heats = {}, {}
    x0 = None
    for label, kind, spec in methods:
        entry = {"method": label, "kind": kind}
        if kind == "lrp":
            entry["config"] = str(Path(spec).relative_to(HERE))
        try:
            heat, info = attribute(label, kind, spec, model64, x64, target, seed)
        except Exception as error:
            entry.update(
                status="failed",
                stage=getattr(error, "stage", "?"),
                error=one_line(error),
                traceback=traceback.format_exc(limit=-8),
            )
            out["methods"].append(entry)
            log(f"  {label:17s} FAILED at {entry['stage']}: {entry['error'][:300]}")
            continue
        entry.update(info)
        heats[label] = heat
        entry["results"] = {}
        t = time.perf_counter()
        try:
            for perturbation in PERTURBATIONS:
                for order in ORDERS:
                    c = curves_of(model, x, heat, target, perturbation, order, seed).double()
                    if x0 is None:
                        x0 = c[:, 0]
                    a, u = aopc(c), area_under_curve(c)
                    entry["results"][f"{perturbation}/{order}"] = {
                        "aopc": float(a.mean()),
                        "aopc_se": se(a),
                        "auc": float(u.mean()),
                        "auc_se": se(u),
                        "curve": c.mean(0).tolist(),
                    }
                    per_image_auc.setdefault(label, {})[f"{perturbation}/{order}"] = u
        except Exception as error:
            entry.update(status="failed", stage="curves", error=one_line(error))
            entry["traceback"] = traceback.format_exc(limit=-8)
            entry.pop("results")
            out["methods"].append(entry)
            log(f"  {label:17s} FAILED at curves: {entry['error'][:300]}")
            continue
        entry["curves_s"] = time.perf_counter() - t
        entry["status"] = "ok"
        if label != REFERENCE and REFERENCE in heats and kind == "lrp":
            ha, hb = heats[REFERENCE].flatten(1), heat.flatten(1)
            corr = F.cosine_similarity(ha - ha.mean(1, keepdim=True), hb - hb.mean(1, keepdim=True))
            entry["vs_reference"] = {
                "heatmap_correlation_mean": float(corr.mean()),
                "max_abs_diff": float((ha - hb).abs().max()),
            }
        out["methods"].append(entry)
        r = entry["results"]
        cons = entry.get("conservation")
        log(
            f"  {label:17s} explain {entry['explain_s']:6.2f}s "
            f"({entry['explain_ms_per_image']:6.1f} ms/img), curves {entry['curves_s']:5.1f}s; "
            + "; ".join(
                f"{p} MoRF/LeRF AUC {r[p + '/morf']['auc']:.2f}/{r[p + '/lerf']['auc']:.2f}"
                for p in PERTURBATIONS
            )
            + (f"; sum R / logit {cons['sum_relevance_over_logit_mean']:.3f}" if cons else "")
        )
        if "vs_reference" in entry:
            v = entry["vs_reference"]
            log(
                f"  {'':17s} vs {REFERENCE}: heatmap correlation "
                f"{v['heatmap_correlation_mean']:.4f}, max abs difference {v['max_abs_diff']:.3g}"
            )
    out["mean_logit_x0"] = float(x0.mean()) if x0 is not None else None
    out["per_image_auc"] = {
        m: {k: [round(v, 5) for v in u.tolist()] for k, u in d.items()}
        for m, d in per_image_auc.items()
    }
    if REFERENCE in per_image_auc:
        ref = per_image_auc[REFERENCE]
        out["paired_vs_reference"] = {
            m: {k: paired(u - ref[k], seed + 3) for k, u in d.items()}
            for m, d in per_image_auc.items()
            if m != REFERENCE
        }
    return out


# ---------------------------------------------------------------------------------- outputs


def write_table(path: Path, res: dict) -> str:
    p = res["protocol"]
    lines = [
        "# LRP for transformers: region perturbation on sklearn digits (32x32)",
        "",
        f"{res['test_images']} test images (the first of the fixed split), target: the true "
        f"class, score: its logit; {REGION}x{REGION} regions, all {STEPS} perturbed; "
        "blur: Gaussian, sigma 2 px; constant: 0 (the mean pixel). seed "
        f"{p['seed']}{', QUICK smoke run' if res['quick'] else ''}.",
        "AOPC = mean over steps of f(x) - f(x_k); AUC = trapezoid area under the curve on a 0..1 "
        "axis; both averaged over images (+- standard error). MoRF: larger AOPC / smaller AUC is "
        "more faithful. LeRF: smaller AOPC / larger AUC is better. "
        "LeRF - MoRF = AUC_LeRF - AUC_MoRF (larger is better).",
        "",
    ]
    for key, m in res["models"].items():
        t = m["training"]
        lines += [
            f"## {MODEL_NAMES[key]} ({t['parameters']:,} parameters, test accuracy "
            f"{t['test_accuracy'] * 100:.2f}%, mean unperturbed target logit "
            + (f"{m['mean_logit_x0']:.2f})" if m["mean_logit_x0"] is not None else "n/a)"),
            "",
            "| method | perturbation | MoRF AOPC | MoRF AUC | LeRF AOPC | LeRF AUC | LeRF - MoRF |",
            "|---|---|---|---|---|---|---|",
        ]
        for e in m["methods"]:
            if e["status"] != "ok":
                error = e["error"][:160].replace("|", "/")
                lines.append(f"| {e['method']} | - | failed ({e['stage']}): {error} | | | | |")
                continue
            for pert in PERTURBATIONS:
                mo, le = e["results"][f"{pert}/morf"], e["results"][f"{pert}/lerf"]
                lines.append(
                    f"| {e['method']} | {pert} | {mo['aopc']:.2f} +- {mo['aopc_se']:.2f} | "
                    f"{mo['auc']:.2f} +- {mo['auc_se']:.2f} | {le['aopc']:.2f} +- "
                    f"{le['aopc_se']:.2f} | {le['auc']:.2f} +- {le['auc_se']:.2f} | "
                    f"{le['auc'] - mo['auc']:.2f} |"
                )
        lines += [
            "",
            f"Time to explain {res['test_images']} images (float64, batches of {EXPLAIN_BATCH}, "
            f"{res['environment']['threads']} threads) and LRP conservation:",
            "",
            "| method | setup (s) | explain (s) | ms / image | sum R / logit (mean [min, max]) |",
            "|---|---|---|---|---|",
        ]
        for e in m["methods"]:
            if e["status"] != "ok":
                lines.append(f"| {e['method']} | failed | - | - | - |")
                continue
            c = e.get("conservation")
            cons = (
                f"{c['sum_relevance_over_logit_mean']:.3f} [{c['min']:.3f}, {c['max']:.3f}]"
                if c
                else "-"
            )
            lines.append(
                f"| {e['method']} | {e['setup_s']:.2f} | {e['explain_s']:.2f} | "
                f"{e['explain_ms_per_image']:.1f} | {cons} |"
            )
        if m.get("paired_vs_reference"):
            lines += [
                "",
                f"Paired per-image AUC differences, method - {REFERENCE} (+- SE, bootstrap 95% "
                "interval); negative is better for MoRF, positive for LeRF:",
                "",
                "| method | "
                + " | ".join(f"{p} {ORDER_NAMES[o]}" for p in PERTURBATIONS for o in ORDERS)
                + " |",
                "|---|" + "---|" * (len(PERTURBATIONS) * len(ORDERS)),
            ]
            for meth, d in m["paired_vs_reference"].items():
                cells = []
                for pert in PERTURBATIONS:
                    for order in ORDERS:
                        s = d[f"{pert}/{order}"]
                        cells.append(
                            f"{s['mean']:+.2f} +- {s['se']:.2f} "
                            f"[{s['ci95'][0]:+.2f}, {s['ci95'][1]:+.2f}]"
                        )
                lines.append(f"| {meth} | " + " | ".join(cells) + " |")
        lines.append("")
    failed = [
        f"{MODEL_NAMES[k]} / {e['method']}"
        for k, m in res["models"].items()
        for e in m["methods"]
        if e["status"] != "ok"
    ]
    if failed:
        lines += [f"**Failed** ({len(failed)}): " + ", ".join(failed) + " (see results.json).", ""]
    text = "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    return text


def plot(path: Path, res: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(res["models"])
    panels = [(p, o) for p in PERTURBATIONS for o in ORDERS]
    fig = Figure(figsize=(3.3 * len(panels), 3.0 * len(keys) + 0.6), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), len(panels), squeeze=False)
    styles = {
        "CP-LRP": ("tab:blue", "-"),
        "AttnLRP": ("tab:red", "--"),
        "gamma preset": ("tab:green", "-."),
        "gradient": ("tab:orange", ":"),
        "gradient x input": ("tab:purple", ":"),
        "random": ("0.5", "-"),
    }
    steps = list(range(STEPS + 1))
    for row, key in zip(axes, keys, strict=True):
        for ax, (pert, order) in zip(row, panels, strict=True):
            for e in res["models"][key]["methods"]:
                if e["status"] != "ok":
                    continue
                color, ls = styles.get(e["method"], (None, "-"))
                r = e["results"][f"{pert}/{order}"]
                ax.plot(steps, r["curve"], label=e["method"], color=color, linestyle=ls)
            ax.set_title(f"{MODEL_NAMES[key]}: {pert}, {ORDER_NAMES[order]}", fontsize=9)
            ax.set_xlabel(f"{REGION}x{REGION} regions perturbed", fontsize=8)
            ax.grid(True, alpha=0.3)
        row[0].set_ylabel("mean target logit")
        if row[0].get_legend_handles_labels()[0]:
            row[0].legend(fontsize=7, loc="best")
    fig.suptitle("Region perturbation on sklearn digits (32x32), ViT and ConvNeXt", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")


# ------------------------------------------------------------------------------------- main


def _names(text: str, allowed: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(
            f"unknown {what} {', '.join(bad) or '(none)'}; allowed: {', '.join(allowed)}"
        )
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_EPOCHS} epoch, {QUICK_IMAGES} images",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"training epochs for both models (default {EPOCHS})",
    )
    parser.add_argument("--images", type=int, default=None, help=f"test images (default {IMAGES})")
    parser.add_argument("--seed", type=int, default=SEED, help="seed (default 0); split is fixed")
    parser.add_argument(
        "--models", default="vit,convnext", help="comma-separated: vit, convnext (default both)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(m[0] for m in METHODS),
        help="comma-separated method labels (default all)",
    )
    parser.add_argument(
        "--reuse-checkpoints",
        action="store_true",
        help="load <out>/<model>.pt when its recipe matches instead of training",
    )
    parser.add_argument(
        "--train-only", action="store_true", help="train and save the models, no evaluation"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default results/, results/quick/)"
    )
    args = parser.parse_args(argv)
    keys = _names(args.models, list(ARCH), "model")
    labels = _names(args.methods, [m[0] for m in METHODS], "method")
    methods = [m for m in METHODS if m[0] in labels]
    seed = args.seed
    default_out = HERE / "results" if seed == SEED else HERE / "results" / f"seed{seed}"
    out = args.out or (default_out / "quick" if args.quick else default_out)
    out.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    try:
        torch.use_deterministic_algorithms(True)
        deterministic = True
    except Exception:  # pragma: no cover - depends on the build
        deterministic = False
    torch.manual_seed(seed)
    np.random.seed(seed)

    lines = []

    def log(msg):
        line = f"[{time.perf_counter() - t0:6.1f}s] {msg}"
        lines.append(line)
        print(line, flush=True)

    data = load_data()
    x_train, y_train, x_test, y_test, mean, std = data
    log(
        f"data: {len(y_train)} train / {len(y_test)} test images, {CHANNELS}x{SIZE}x{SIZE}, "
        f"pixel mean {mean:.4f} std {std:.4f} (of 0..1); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, deterministic algorithms: {deterministic}"
    )
    n = args.images if args.images is not None else (QUICK_IMAGES if args.quick else IMAGES)
    n = min(n, len(y_test))
    x, target = x_test[:n], y_test[:n]

    models = {}
    t_train = time.perf_counter()
    for key in keys:
        epochs = epochs_of(key, args.quick, args.epochs)
        model, meta = get_model(key, data, epochs, seed, out, args.reuse_checkpoints, log)
        meta.update(model_diagnostics(key, model))
        models[key] = (model, meta)
    t_train = time.perf_counter() - t_train
    if args.train_only:
        training = {k: meta for k, (_, meta) in models.items()}
        (out / "training.json").write_text(json.dumps(training, indent=1) + "\n", encoding="utf-8")
        log(f"train-only: done in {time.perf_counter() - t0:.1f}s; checkpoints in {out}")
        (out / "train.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
        return 0

    res_models = {}
    t_eval = time.perf_counter()
    for key, (model, meta) in models.items():
        log(f"{MODEL_NAMES[key]}: explaining and measuring {n} test images")
        r = evaluate_model(key, model, x, target, methods, seed, log)
        res_models[key] = {"training": meta, **r}
    t_eval = time.perf_counter() - t_eval
    elapsed = time.perf_counter() - t0
    res = {
        "experiment": "CP-LRP vs AttnLRP vs LRP-gamma vs baselines on a small ViT and ConvNeXt",
        "quick": bool(args.quick),
        "test_images": n,
        "test_labels_count": np.bincount(target.numpy(), minlength=10).tolist(),
        "target": "true class",
        "score": "logit",
        "protocol": {
            "image_size": SIZE,
            "channels": CHANNELS,
            "normalisation": {"mean": mean, "std": std},
            "region": REGION,
            "steps": STEPS,
            "perturbations": list(PERTURBATIONS),
            "blur_sigma": REGION / 2,
            "constant_value": 0.0,
            "orders": list(ORDERS),
            "seed": seed,
            "split_seed": SPLIT_SEED,
            "random_map_seed": seed + 2,
            "auc": "trapezoid on 0..1",
            "attribution_precision": "float64",
            "curve_precision": "float32",
            "bootstrap_resamples": BOOTSTRAP,
            "deterministic_algorithms": deterministic,
        },
        "methods": [
            {"method": label, "kind": kind, "spec": str(spec) if kind == "lrp" else spec.__name__}
            for label, kind, spec in methods
        ],
        "models": res_models,
        "timing_s": {"total": elapsed, "train_or_load": t_train, "evaluate": t_eval},
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
    }
    for r in res["methods"]:
        r["spec"] = str(Path(r["spec"]).relative_to(HERE)) if r["kind"] == "lrp" else r["spec"]
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    table = write_table(out / "table.md", res)
    plot(out / "curves.png", res)
    print()
    print(table)
    failed = [
        (k, e["method"]) for k, m in res_models.items() for e in m["methods"] if e["status"] != "ok"
    ]
    log(
        f"done in {elapsed:.1f}s (train/load {t_train:.1f}s, evaluate {t_eval:.1f}s); "
        f"{len(failed)} of {len(methods) * len(keys)} model/method pairs failed; results in {out}"
    )
    (out / "run.log").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
