"""Folder throughput of ``lrp explain`` against the engine's own time (issue 6).

1. Writes ``--images`` JPEG variants of the sample photos (crops, flips, sizes) into a
   temporary folder.
2. Runs the whole command in a subprocess and takes its wall time::

       python -m lrp_cli explain DIR -m MODEL -c CONFIG -o OUT --batch-size N --quiet --overwrite

   (start-up, model loading, decoding, resizing, explaining, writing: everything).
3. Times the engine alone on the same images, already preprocessed into tensors: one
   ``Explainer`` call per batch of ``--batch-size`` (the last one partial, like the command's),
   after one untimed warm-up batch; preprocessing is excluded.

The issue's target is ``command wall time <= 1.15 x engine time``. The engine is measured
in a fresh process too, with the same thread count, before and after each of ``--repeat``
command runs (engine, command, engine, command, ..., engine); each command is divided by the
mean of the two engine runs beside it and the median of these ratios is reported, because on
a shared machine the speed of both drifts by 10-20% within minutes.

    python benchmarks/bench_cli.py                       # 200 images, built-in model
    python benchmarks/bench_cli.py --images 50 --json cli.json -- --save-npy
    git worktree add /tmp/old COMMIT && python benchmarks/bench_cli.py --against /tmp/old
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_images"
TARGET = 1.15


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` different JPEGs made from the sample photos (crop, flip, resize, quality)."""
    from PIL import Image, ImageOps

    sources = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    if not sources:
        raise SystemExit(f"no sample images in {SAMPLES}")
    photos = [Image.open(p).convert("RGB") for p in sources]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image = photos[index % len(photos)]
        width, height = image.size
        scale = rng.uniform(0.7, 1.0)
        w, h = max(int(width * scale), 64), max(int(height * scale), 64)
        left, top = rng.randint(0, width - w), rng.randint(0, height - h)
        variant = image.crop((left, top, left + w, top + h))
        if rng.random() < 0.5:
            variant = ImageOps.mirror(variant)
        longer = rng.randint(300, 640)
        factor = longer / max(variant.size)
        size = (max(int(variant.width * factor), 32), max(int(variant.height * factor), 32))
        variant = variant.resize(size, Image.Resampling.BILINEAR)
        path = folder / f"img{index:05d}.jpg"
        variant.save(path, quality=rng.randint(80, 95))
        paths.append(path)
    return paths


def cli_available() -> str | None:
    """None when ``python -m lrp_cli explain`` can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("lrp_cli.cli") is None:
        return "lrp_cli/cli.py does not exist yet"
    if importlib.util.find_spec("lrp_cli.__main__") is None:
        return "lrp_cli/__main__.py does not exist yet (python -m lrp_cli)"
    done = subprocess.run(
        [sys.executable, "-m", "lrp_cli", "explain", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        return f"'python -m lrp_cli explain --help' failed: {' '.join(tail)}"
    return None


# ------------------------------------------------------------------ engine worker
def engine_time(args_json: str) -> dict:
    """Engine time over the images, preprocessed first (not timed); runs in a fresh process."""
    import torch

    from lrp_cli.config import load_config
    from lrp_cli.engine import Explainer
    from lrp_cli.models import load_model

    case = json.loads(args_json)
    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    loaded = load_model(case["model"])
    model, pre = loaded.module, loaded.preprocessing
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    paths = [Path(p) for p in case["paths"]]
    start = time.perf_counter()
    tensors = [_preprocess(path, pre) for path in paths]
    preprocess_s = time.perf_counter() - start
    device = torch.device(case["device"])
    model.to(device)
    explainer = Explainer(model, load_config(case["config"]).composite(), input_bounds=pre.bounds())
    size = case["batch_size"]
    batches = [torch.stack(tensors[i : i + size]) for i in range(0, len(tensors), size)]
    explainer(batches[0].to(device))  # warm-up, untimed
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for batch in batches:
        batch = batch.to(device)
        sync()
        start = time.perf_counter()
        explainer(batch)
        sync()
        times.append(time.perf_counter() - start)
    return {
        "engine_s": sum(times),
        "batch_times_s": times,
        "preprocess_s": preprocess_s,
        "threads_used": torch.get_num_threads(),
    }


def _preprocess(path: Path, pre):
    """The package's own preprocessing when available, else the same steps with PIL."""
    try:
        from lrp_cli.images import crop_image, load_image, to_tensor

        return to_tensor(crop_image(load_image(path), pre), pre)
    except ImportError:
        import numpy as np
        import torch
        from PIL import Image

        image = Image.open(path).convert("RGB")
        factor = pre.resize / min(image.size)
        image = image.resize(
            (round(image.width * factor), round(image.height * factor)), Image.Resampling.BILINEAR
        )
        left = (image.width - pre.input_size) // 2
        top = (image.height - pre.input_size) // 2
        image = image.crop((left, top, left + pre.input_size, top + pre.input_size))
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)
        mean = torch.tensor(pre.mean).view(3, 1, 1)
        std = torch.tensor(pre.std).view(3, 1, 1)
        return (array - mean) / std


def _against(command: list[str], env: dict, args) -> int:
    """Wall time of the same command from this checkout and from ``args.against``, in groups
    old, new, new, old (drift within a group cancels); the median of each and of the paired
    differences (new - old, adjacent runs)."""
    trees = {"old": args.against.resolve(), "new": ROOT}
    times: dict[str, list[float]] = {"old": [], "new": []}
    for name in ["old", "new", "new", "old"] * args.repeat:
        tree = trees[name]
        start = time.perf_counter()
        done = subprocess.run(
            command, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True
        )
        times[name].append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"{name} ({tree}) exited {done.returncode}: {done.stderr[-300:]}")
        print(f"{name}: {times[name][-1]:.2f} s", file=sys.stderr)
    differences = [n - o for o, n in zip(times["old"], times["new"], strict=True)]
    old_s, new_s = statistics.median(times["old"]), statistics.median(times["new"])
    print(
        f"\n{args.images} images, {args.model}, {args.config}, batch {args.batch_size}\n"
        f"  old ({trees['old']})  {old_s:8.2f} s  {args.images / old_s:6.2f} img/s  "
        f"(median of {len(times['old'])}: {_list(times['old'])})\n"
        f"  new ({trees['new']})  {new_s:8.2f} s  {args.images / new_s:6.2f} img/s  "
        f"(median of {len(times['new'])}: {_list(times['new'])})\n"
        f"  new - old, paired: median {statistics.median(differences):+.2f} s"
    )
    if args.json:
        result = {"images": args.images, "command": command, "trees": {k: str(v) for k, v in
                  trees.items()}, "runs_s": times, "paired_differences_s": differences}  # fmt: skip
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _run_engine(case: dict, env: dict) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    raise SystemExit(f"engine worker failed (exit {done.returncode}): " + " | ".join(tail))


def _count_outputs(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
        epilog="Arguments after -- are passed on to 'lrp explain'.",
    )
    p.add_argument("--images", type=int, default=200, help="number of images (default 200)")
    p.add_argument("--model", default="efficientnet_lite0", help="default: the built-in model")
    p.add_argument("--config", default="epsilon-plus-flat", help="preset or YAML file")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides")
    p.add_argument("--keep", type=Path, default=None, help="write images/outputs here, keep")
    p.add_argument("--json", type=Path, default=None, help="write the results to this file")
    p.add_argument("--engine-only", action="store_true", help="time the engine, not the command")
    p.add_argument(
        "--repeat", type=int, default=3, help="command runs, each between two engine runs"
    )
    p.add_argument(
        "--against",
        type=Path,
        metavar="CHECKOUT",
        help="instead of the engine, time the command of another checkout (git worktree add\n"
        "CHECKOUT COMMIT), alternating old, new, new, old; --repeat such groups",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    args = p.parse_args(argv)
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if args.worker:
        print("RESULT " + json.dumps(engine_time(args.worker)), flush=True)
        return 0
    why = None if args.engine_only else cli_available()
    if why is not None:
        print(
            f"cannot benchmark the command: {why} (--engine-only times the engine)", file=sys.stderr
        )
        return 2

    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    work = args.keep or Path(tempfile.mkdtemp(prefix="lrp-bench-cli-"))
    try:
        images, out = work / "images", work / "out"
        if images.exists():
            shutil.rmtree(images)
        started = time.perf_counter()
        paths = make_images(images, args.images)
        print(
            f"wrote {len(paths)} images in {time.perf_counter() - started:.1f} s", file=sys.stderr
        )
        case = {
            "model": args.model,
            "config": args.config,
            "batch_size": args.batch_size,
            "device": args.device,
            "threads": args.threads,
            "paths": [str(p) for p in paths],
        }
        command = [
            sys.executable,
            "-m",
            "lrp_cli",
            "explain",
            str(images),
            "-m",
            args.model,
            "-c",
            args.config,
            "-o",
            str(out),
            "--batch-size",
            str(args.batch_size),
            "--quiet",
            "--overwrite",
        ]
        if args.device != "cpu":
            command += ["--device", args.device]
        command += extra
        if args.against is not None:
            return _against(command, env, args)
        engines = [_run_engine(case, env)]
        print(f"engine: {engines[0]['engine_s']:.2f} s", file=sys.stderr)
        if args.engine_only:
            before = engines[0]
            print(
                f"{args.images} images: engine {before['engine_s']:.2f} s, "
                f"{args.images / before['engine_s']:.2f} img/s; preprocessing "
                f"{before['preprocess_s']:.2f} s (not included)"
            )
            return 0
        commands, codes = [], []
        for _ in range(args.repeat):  # engine, command, engine, ...: each command between two
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, env=env)
            commands.append(time.perf_counter() - start)
            codes.append(done.returncode)
            print(f"command: {commands[-1]:.2f} s (exit {done.returncode})", file=sys.stderr)
            engines.append(_run_engine(case, env))
            print(f"engine: {engines[-1]['engine_s']:.2f} s", file=sys.stderr)
        start = time.perf_counter()
        version = subprocess.run(
            [sys.executable, "-m", "lrp_cli", "--version"], capture_output=True, env=env
        )
        startup_s = time.perf_counter() - start if version.returncode == 0 else None
        outputs = _count_outputs(out) if out.exists() else 0
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)

    engine_times = [e["engine_s"] for e in engines]
    beside = [(a + b) / 2 for a, b in zip(engine_times, engine_times[1:], strict=False)]
    ratios = [c / e for c, e in zip(commands, beside, strict=True)]
    ratio = statistics.median(ratios)
    cli_s, engine_s = statistics.median(commands), statistics.median(engine_times)
    result = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "threads": engines[0]["threads_used"],
        },
        "images": args.images,
        "model": args.model,
        "config": args.config,
        "batch_size": args.batch_size,
        "command": command,
        "exit_code": max(codes, key=abs),
        "command_s": cli_s,
        "engine_s": engine_s,
        "command_runs_s": commands,
        "engine_runs_s": engine_times,
        "ratios": ratios,
        "preprocess_s": engines[0]["preprocess_s"],
        "startup_s": startup_s,
        "ratio": ratio,
        "target": TARGET,
        "output_files": outputs,
        "stderr_tail": done.stderr.strip().splitlines()[-10:],
    }
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_engine import engine_fingerprint

        result["engine_sha1"] = engine_fingerprint()
        import torch

        result["machine"]["torch"] = torch.__version__
    except ImportError:
        pass
    print(
        f"\n{args.images} images, {args.model}, {args.config}, batch {args.batch_size}, "
        f"{result['machine']['threads']} threads\n"
        f"  lrp explain (whole command)   {cli_s:8.2f} s   {args.images / cli_s:6.2f} img/s"
        f"   (median of {len(commands)}: {_list(commands)})\n"
        f"  engine only                   {engine_s:8.2f} s   {args.images / engine_s:6.2f} img/s"
        f"   (median of {len(engine_times)}: {_list(engine_times)})\n"
        f"  preprocessing, one process    {result['preprocess_s']:8.2f} s (not in engine time)\n"
        f"  'lrp --version' start-up      {_fmt(startup_s)} s\n"
        f"  ratio command / engine        {ratio:8.2f}   (each command over the engine runs "
        f"beside it: {_list(ratios)})\n"
        f"                                          target <= {TARGET}: "
        f"{'met' if result['ratio'] <= TARGET else 'MISSED'}\n"
        f"  exit code {result['exit_code']}, {outputs} output files"
    )
    if result["exit_code"] != 0:
        print("\n".join(result["stderr_tail"]), file=sys.stderr)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if result["exit_code"] == 0 else 1


def _list(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
