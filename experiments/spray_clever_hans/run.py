"""SpRAy finds a planted Clever-Hans shortcut: the README's picture and figures, end to end.

Trains the small CNN of ``clever_hans.py`` (digits; 30 % of class 3 carry a corner tag that
alone predicts class 3 in training), writes the images of classes 3 and 7 as ``.npy`` inputs,
runs the real command on them::

    lrp spray OUT/inputs -m clever_hans:SmallCNN -w OUT/model.pt --input-size 32 \\
        --mean 0,0,0 --std 1,1,1 -o OUT/spray

and checks its ``spray.json`` against the ground truth (which inputs carry the tag). Writes
``results.json`` here and the picture ``docs/spray-clever-hans.png``: per cluster of class 3
its mean heatmap and the inputs nearest its centre. Seeded; about a minute on two CPU cores::

    python experiments/spray_clever_hans/run.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import clever_hans as ch  # noqa: E402

from lrp_cli.outputs import overlay, render_heatmap, save_png  # noqa: E402

TILE = 112


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/spray-clever-hans"))
    parser.add_argument("--picture", type=Path, default=ROOT / "docs" / "spray-clever-hans.png")
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    data = ch.make_data(args.seed)
    model = ch.train(data, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out / "model.pt")
    truth = write_inputs(data, args.out / "inputs")
    occlusion = occlusion_drop(model, data)

    command = [sys.executable, "-m", "lrp_cli", "spray", str(args.out / "inputs")]
    command += ["-m", "clever_hans:SmallCNN", "-w", str(args.out / "model.pt")]
    command += ["--input-size", "32", "--mean", "0,0,0", "--std", "1,1,1", "--device", "cpu"]
    command += ["-o", str(args.out / "spray"), "--seed", str(args.seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    print(done.stdout + done.stderr)
    if done.returncode != 0:
        return done.returncode

    report = json.loads((args.out / "spray" / "spray.json").read_text())
    figures = {
        "command": " ".join(["lrp", *command[3:]]),
        "tag_occlusion": occlusion,
        "classes": [summarise(c, report, truth) for c in report["classes"]],
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.results.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(figures, indent=1))
    entry = next(c for c in report["classes"] if c["class"] == ch.TAGGED_CLASS)
    summary = next(c for c in figures["classes"] if c["class"] == ch.TAGGED_CLASS)
    save_png(picture(entry, summary, report, args.out / "spray"), args.picture)
    print(f"picture -> {args.picture}")
    return 0


def write_inputs(data: ch.Data, folder: Path) -> dict[str, bool]:
    """Classes 3 and 7 as (3, 32, 32) ``.npy`` inputs; returns which ones carry the tag."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = {}
    for i in np.flatnonzero(np.isin(data.y.numpy(), [ch.TAGGED_CLASS, ch.UNTAGGED_CLASS])):
        path = folder / f"digit{i:04d}.npy"
        np.save(path, data.x[i].numpy())
        truth[path.name] = bool(data.tagged[i])
    return truth


def occlusion_drop(model, data: ch.Data) -> dict:
    """Class-3 logit of the tagged images, with the tag and with it covered (background)."""
    tagged = torch.from_numpy(data.tagged)
    with torch.no_grad():
        score = model(data.x[tagged])[:, ch.TAGGED_CLASS]
        covered_logits = model(ch.cover_tag(data.x[tagged]))
    covered = covered_logits[:, ch.TAGGED_CLASS]
    return {
        "tagged_images": int(tagged.sum()),
        "logit_mean": round(float(score.mean()), 3),
        "logit_mean_tag_covered": round(float(covered.mean()), 3),
        "relative_drop": round(float(1 - covered.mean() / score.mean()), 3),
        "still_class_3_when_covered": round(
            float((covered_logits.argmax(1) == ch.TAGGED_CLASS).float().mean()), 3
        ),
    }


def summarise(entry: dict, report: dict, truth: dict[str, bool]) -> dict:
    """One class: k, and per cluster its size and how many of its inputs carry the tag."""
    members: dict[int, list[bool]] = {}
    for item in report["inputs"]:
        if item["class"] == entry["class"]:
            members.setdefault(item["cluster"], []).append(truth[Path(item["input"]).name])
    clusters = [
        {"cluster": c, "size": len(tags), "tagged": int(sum(tags))}
        for c, tags in sorted(members.items())
    ]
    tagged = sum(c["tagged"] for c in clusters)
    held = sum(c["tagged"] for c in clusters if c["tagged"] > c["size"] / 2)
    return {
        "class": entry["class"],
        "maps": entry["maps"],
        "k": entry["clusters"],
        "chosen_by": entry["chosen_by"],
        "eigenvalues": [round(v, 4) for v in entry["eigenvalues"]],
        "separation": entry["separation"],
        "atypical_cluster": entry["atypical_cluster"],
        "clusters": clusters,
        "tagged": tagged,
        "share_of_tagged_in_mostly_tagged_clusters": round(held / tagged, 3) if tagged else None,
    }


def picture(entry: dict, summary: dict, report: dict, out: Path) -> Image.Image:
    """One row per cluster of the tagged class: its mean heatmap, then inputs nearest its
    centre as overlays of their heatmaps."""
    font = ImageFont.load_default()
    by_name = {item["input"]: item for item in report["inputs"]}
    rows = []
    for cluster in entry["cluster"]:
        names = cluster["nearest_to_centre"][:5]
        tiles = [Image.open(out / cluster["mean_heatmap"]).resize((TILE, TILE), Image.NEAREST)]
        for name in names:
            relevance = np.load(by_name[name]["relevance"])
            heatmap = render_heatmap(relevance)
            grey = np.load(name)[0]
            photo = Image.fromarray(np.uint8(np.clip(grey, 0, 1) * 255)).convert("RGB")
            tiles.append(overlay(heatmap, photo, 0.6).resize((TILE, TILE), Image.NEAREST))
        tags = summary["clusters"][cluster["cluster"]]["tagged"]
        flag = "  (most atypical)" if cluster["cluster"] == entry["atypical_cluster"] else ""
        label = (
            f"class {entry['class']}, cluster {cluster['cluster']}: {cluster['size']} maps, "
            f"{tags} tagged{flag}.  Left: mean heatmap; then the inputs nearest the centre"
        )
        rows.append((label, tiles))
    line, pad = 16, 6
    width = pad + 6 * (TILE + pad)
    canvas = Image.new("RGB", (width, len(rows) * (line + TILE + 2 * pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, tiles) in enumerate(rows):
        top = r * (line + TILE + 2 * pad)
        draw.text((pad, top + 3), label, fill="black", font=font)
        for c, tile in enumerate(tiles):
            canvas.paste(tile, (pad + c * (TILE + pad), top + line + pad))
    return canvas


if __name__ == "__main__":
    sys.exit(main())
