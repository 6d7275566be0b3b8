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

    from lrp_cli.analysis.evaluate_run import Evaluation
    from lrp_cli.config import load_config
    from lrp_cli.images import collect_inputs
    from lrp_cli.models import load_model

    torch.set_num_threads(args.threads)
    model = load_model("efficientnet_lite0", None)
    items, problems = collect_inputs([str(p) for p in photos(args.set)])
    assert not problems, problems
    configs = [load_config(name) for name in CONFIGS]
    evaluation = Evaluation(
        model, configs, BASELINES, device="cpu", region=args.region, steps=args.steps,
        orders=("morf", "lerf", "random"), seed=0, batch_size=args.batch_size,
    )  # fmt: skip
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
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    else:
        measure(args)


if __name__ == "__main__":
    main()
