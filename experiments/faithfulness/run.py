"""Faithfulness of the LRP presets and baselines under several perturbation protocols.

For each protocol (perturbation, region, steps) every method is measured most- and
least-relevant-first (SRG = AUC(LeRF) - AUC(MoRF), Blücher et al. 2024) and a random order is
measured once (how much the perturbation alone moves the score: the off-distribution signal).
Two photo sets, none of them in the repository: ``skimage`` (scikit-image's bundled photos, the
set on which the default protocol and config were chosen) and ``heldout`` (matplotlib's and
scikit-learn's sample photos, looked at only to confirm). Nothing is downloaded.

    python experiments/faithfulness/run.py --set skimage --out experiments/faithfulness/skimage.json
    python experiments/faithfulness/run.py --set heldout --out experiments/faithfulness/heldout.json
    python experiments/faithfulness/run.py --table experiments/faithfulness/skimage.json

The model is the built-in EfficientNet-Lite0, on the CPU, float32, seed 0.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

PROTOCOLS = {  # name: perturbation settings
    "uniform": {"perturbation": "uniform"},
    "constant": {"perturbation": "constant"},
    "blur": {"perturbation": "blur"},
    "road": {"perturbation": "road"},
}
CONFIGS = ["epsilon-plus-flat", "epsilon", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat"]
BASELINES = ["random", "gradient", "gradient-x-input", "gradcam"]


def _package_dir(name: str) -> Path:
    return Path(importlib.util.find_spec(name).submodule_search_locations[0])


def photos(which: str) -> list[Path]:
    if which == "skimage":
        data = _package_dir("skimage") / "data"
        names = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                 "ihc.png", "camera.png", "coins.png"]  # fmt: skip
        return [data / n for n in names]
    if which == "heldout":
        mpl = _package_dir("matplotlib") / "mpl-data" / "sample_data"
        sk = _package_dir("sklearn") / "datasets" / "images"
        ski = _package_dir("skimage") / "data"
        return [mpl / "grace_hopper.jpg", sk / "china.jpg", sk / "flower.jpg", ski / "moon.png"]
    raise SystemExit(f"unknown set {which!r}")


def measure(args) -> dict:
    import torch

    from lrp_cli.analysis.evaluate_run import Evaluation, EvaluationSettings
    from lrp_cli.config import load_config
    from lrp_cli.images import collect_inputs
    from lrp_cli.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model("efficientnet_lite0", None)
    items, problems = collect_inputs([str(p) for p in photos(args.set)])
    assert not problems, problems
    configs = [load_config(name) for name in CONFIGS]
    settings = EvaluationSettings(
        device="cpu", region=args.region, steps=args.steps, orders=("morf", "lerf", "random"),
        seed=0, batch_size=args.batch_size,
    )  # fmt: skip
    evaluation = Evaluation(model, configs, BASELINES, settings)
    errors = evaluation.load(items)
    assert not errors, errors
    out = {"set": args.set, "inputs": evaluation.inputs, "region": args.region,
           "steps": args.steps, "model": model.name, "protocols": {}}  # fmt: skip
    for name in args.protocols:
        evaluation.settings.update(PROTOCOLS[name])
        start = time.perf_counter()
        results, errors = evaluation.run()
        assert not errors, errors
        out["protocols"][name] = {
            "settings": {k: v for k, v in evaluation.settings.items() if k != "bounds"},
            "seconds": time.perf_counter() - start,
            "curve_seconds": evaluation.seconds,
            "ms_per_image_and_step": 1e3 * evaluation.seconds / max(evaluation.forwards, 1),
            "results": [r.to_json() for r in results],
        }
        print(name, f"{time.perf_counter() - start:.0f} s", flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))
    return out


def table(path: str) -> str:
    data = json.loads(Path(path).read_text())
    lines = [f"{data['set']}: {len(data['inputs'])} photos, {data['region']} px regions, "
             f"{data['steps']} steps, logit"]  # fmt: skip
    for name, protocol in data["protocols"].items():
        rows = {(r["method"], r["order"]): r for r in protocol["results"]}
        lines += ["", f"{name} ({protocol['ms_per_image_and_step']:.0f} ms per image and step)",
                  "", "| method | SRG | SRG > random map's | AOPC MoRF | AOPC LeRF |",
                  "|---|---|---|---|---|"]  # fmt: skip
        baseline = [p["srg"] for p in rows["random", "morf"]["per_image"]]
        methods = dict.fromkeys(m for m, _ in rows)
        ranked = sorted(methods, key=lambda m: -(rows.get((m, "morf"), {}).get("srg") or 0))
        for m in ranked:
            if (m, "morf") not in rows:
                continue
            morf, lerf = rows[m, "morf"], rows[m, "lerf"]
            wins = sum(p["srg"] > b for p, b in zip(morf["per_image"], baseline, strict=True))
            lines.append(
                f"| {m} | {morf['srg']:.2f} ± {morf['srg_std']:.2f} | "
                f"{'-' if m == 'random' else f'{wins}/{len(baseline)}'} | "
                f"{morf['aopc']:.2f} ± {morf['aopc_std']:.2f} | "
                f"{lerf['aopc']:.2f} ± {lerf['aopc_std']:.2f} |"
            )
        rnd = next(r for (m, o), r in rows.items() if o == "random")
        lines.append(f"| random order | 0 | - | {rnd['aopc']:.2f} ± {rnd['aopc_std']:.2f} | - |")
    return "\n".join(lines)


def summary(path: str) -> str:
    """One table: SRG per method (rows) and protocol (columns), then the random order's AOPC."""
    data = json.loads(Path(path).read_text())
    protocols = data["protocols"]
    names = list(protocols)
    rows = {n: {(r["method"], r["order"]): r for r in p["results"]} for n, p in protocols.items()}
    first = rows[names[0]]
    methods = [m for m, o in first if o == "morf"]
    methods.sort(key=lambda m: -sum(rows[n][m, "morf"]["srg"] for n in names))
    n_photos = len(data["inputs"])
    lines = [
        "| SRG (mean ± std over photos; photos where > random map's) | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for m in methods:
        cells = []
        for n in names:
            r = rows[n][m, "morf"]
            base = [p["srg"] for p in rows[n]["random", "morf"]["per_image"]]
            wins = sum(p["srg"] > b for p, b in zip(r["per_image"], base, strict=True))
            extra = "" if m == "random" else f" ({wins}/{n_photos})"
            cells.append(f"{r['srg']:.2f} ± {r['srg_std']:.2f}{extra}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    cells = []
    for n in names:
        rnd = next(r for (_, o), r in rows[n].items() if o == "random")
        cells.append(f"{rnd['aopc']:.2f} ± {rnd['aopc_std']:.2f}")
    lines.append("| *random order: MoRF AOPC (drop from the perturbation alone)* | "
                 + " | ".join(cells) + " |")  # fmt: skip
    best = [max(rows[n][m, "morf"]["aopc"] for m in methods) for n in names]
    lines.append("| *best MoRF AOPC, for scale* | " + " | ".join(f"{b:.2f}" for b in best) + " |")
    cost = [f"{protocols[n]['ms_per_image_and_step']:.0f}" for n in names]
    lines.append("| *ms per image and step (1 thread, shared CPU)* | " + " | ".join(cost) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=["skimage", "heldout"], default="skimage")
    parser.add_argument("--out", default="experiments/faithfulness/skimage.json")
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    parser.add_argument("--region", type=int, default=32)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", metavar="JSON", help="print the tables of a results file")
    parser.add_argument("--summary", metavar="JSON", help="print one table of a results file")
    args = parser.parse_args()
    if args.summary:
        print(summary(args.summary))
    elif args.table:
        print(table(args.table))
    else:
        measure(args)


if __name__ == "__main__":
    main()
