"""Images per second of ``lrp explain`` with the local executor and with Ray (issue 17).

The sample photos, copied round-robin into a temporary folder (``--images``, default 48), are
explained by the built-in model (``efficientnet_lite0``, config ``epsilon-gamma-box``) through
the Python API (``ExplainRun(...).run``), once per executor, in this order:

* ``local``: the default executor (decoding processes, the engine in this process, all
  torch threads);
* ``ray-1``, ``ray-2``: a local Ray cluster with 1 and 2 workers (1 CPU each, so 1 torch thread
  each), and ``ray-1x2``: 1 worker holding 2 CPUs (2 torch threads).

For each Ray run, "excluding start-up" is the run alone on a Ray already started (it still
includes starting the actors and shipping the model to them); "including start-up" adds
``ray.init`` and ``ray.shutdown``, which is what ``lrp explain --executor ray`` pays on a
laptop. The overhead per image is (Ray's time - local time) / images.

    python benchmarks/bench_ray.py                 # 48 images
    python benchmarks/bench_ray.py --images 96 --batch-size 8 --json ray.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_images"


def _folder(target: Path, count: int) -> Path:
    photos = sorted(p for p in SAMPLES.iterdir() if p.suffix.lower() in (".jpg", ".png"))
    target.mkdir(parents=True)
    for i in range(count):
        photo = photos[i % len(photos)]
        shutil.copy(photo, target / f"{i:03d}-{photo.name}")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()

    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")  # as the executor does
    import ray
    import torch

    from lrp_cli.config import load_config
    from lrp_cli.models import load_model
    from lrp_cli.pipeline import ExplainOptions, ExplainRun, select_inputs
    from lrp_cli.pipeline.raydata import RayExecutor

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    try:
        items = select_inputs([str(_folder(work / "in", args.images))]).items
        model = load_model()
        config = load_config("epsilon-gamma-box")
        results: dict[str, dict[str, float]] = {}

        def explain(name: str, executor=None) -> float:
            out = work / name
            options = ExplainOptions(out=out, batch_size=args.batch_size, device="cpu")
            run = ExplainRun(model, config, options)
            arrivals: list[float] = []
            start = time.perf_counter()
            summary = run.run(
                items, lambda _: arrivals.append(time.perf_counter()), executor=executor
            )
            seconds = time.perf_counter() - start
            assert summary.explained == len(items), summary
            first[name] = arrivals[0] - start  # the first batch: actors started, model shipped
            return seconds

        first: dict[str, float] = {}

        local = explain("local")
        results["local"] = {
            "seconds": local,
            "images_per_s": len(items) / local,
            "first_record_s": first["local"],
        }
        print(
            f"local: {local:.1f} s, {len(items) / local:.2f} images/s, first record after "
            f"{first['local']:.1f} s",
            flush=True,
        )
        for name, workers, cpus in (("ray-1", 1, 1), ("ray-2", 2, 1), ("ray-1x2", 1, 2)):
            start = time.perf_counter()
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
            started = time.perf_counter() - start
            alone = explain(name, RayExecutor(workers=workers, cpus_per_worker=cpus))
            start = time.perf_counter()
            ray.shutdown()
            stopped = time.perf_counter() - start
            whole = started + alone + stopped
            results[name] = {
                "seconds": alone,
                "images_per_s": len(items) / alone,
                "overhead_per_image_s": (alone - local) / len(items),
                "seconds_with_startup": whole,
                "images_per_s_with_startup": len(items) / whole,
                "overhead_per_image_with_startup_s": (whole - local) / len(items),
                "ray_init_s": started,
                "ray_shutdown_s": stopped,
                "first_record_s": first[name],
            }
            print(
                f"{name}: {alone:.1f} s, {len(items) / alone:.2f} images/s, "
                f"{(alone - local) / len(items) * 1000:+.0f} ms/image, first record after "
                f"{first[name]:.1f} s; with start-up "
                f"(init {started:.1f} s, shutdown {stopped:.1f} s): {whole:.1f} s, "
                f"{len(items) / whole:.2f} images/s, "
                f"{(whole - local) / len(items) * 1000:+.0f} ms/image",
                flush=True,
            )
        report = {
            "images": len(items),
            "batch_size": args.batch_size,
            "model": model.name,
            "config": config.name,
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": os.getloadavg(),
            "python": platform.python_version(),
            "ray": ray.__version__,
            "torch": torch.__version__,
            "results": results,
        }
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
