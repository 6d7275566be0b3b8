"""Engine benchmark: our LRP engine against a plain input gradient and zennit (issue 6).

For each model and preset it measures, each case in a fresh Python process:

- ``gradient``: forward + backward of the same model on the same batch (parameters do not
  require grad; the gradient of the top-1 logit with respect to the input);
- ``ours``: ``lrp_cli.engine.Explainer`` with the preset's composite (top-1 target);
- ``zennit``: zennit's composite of the same name with the model's canonizer, through
  ``zennit.attribution.Gradient`` (when zennit is installed and has such a composite).

Time is the median of ``--runs`` timed calls after ``--warmup`` untimed ones (setup such as
tracing or registering hooks happens before and is reported separately). Peak memory on CPU
is the process's peak resident set size during warm-up and timed runs minus its resident set
size just before them (after the model and the input were created): the kernel's high-water
mark ``VmHWM`` is reset through ``/proc/self/clear_refs`` so that model creation does not
count; where that is not possible, ``ru_maxrss`` minus the RSS before the runs is used. On
CUDA it is ``torch.cuda.max_memory_allocated`` minus the allocation before the runs.
Setup that stays alive (our traced plan, folded and modified weights; zennit's hooks) is
created after the baseline, so it counts.

The gradient is measured before and after the presets of each model; ratios are taken
against the mean of the two medians, and the difference between them says how stable the
machine was.

    python benchmarks/bench_engine.py                 # full run (CPU: about 15-20 minutes)
    python benchmarks/bench_engine.py --quick         # under a minute
    python benchmarks/bench_engine.py --models vgg16 --presets epsilon-gamma-box --runs 5
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

MODELS = ("vgg16", "resnet50", "efficientnet_lite0")
PRESETS = ("epsilon-plus-flat", "epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat")
QUICK_PRESETS = ("epsilon-plus-flat", "epsilon-gamma-box")
ZENNIT_COMPOSITES = {
    "epsilon-plus-flat": "EpsilonPlusFlat",
    "epsilon-plus": "EpsilonPlus",
    "epsilon-gamma-box": "EpsilonGammaBox",
    "epsilon-alpha2-beta1-flat": "EpsilonAlpha2Beta1Flat",
    "epsilon-alpha2-beta1": "EpsilonAlpha2Beta1",
}
TARGETS = {  # issue 6: time ratio to the plain gradient per preset; memory ratio
    "epsilon-plus-flat": 1.5,
    "epsilon-plus": 1.5,
    "epsilon-gamma-box": 2.0,
    "epsilon-alpha2-beta1-flat": 2.0,
    "epsilon-alpha2-beta1": 2.0,
}
MEMORY_TARGET = 1.3
BUILTIN = "efficientnet_lite0"
MIB = 1024 * 1024


# ============================================================================ worker side
def _proc_status() -> dict[str, int]:
    """VmRSS / VmHWM of this process in bytes (Linux), empty elsewhere."""
    values = {}
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    values[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return values


def _cpu_seconds() -> float:
    """User + system CPU time of this process (all threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _system_busy() -> float | None:
    """CPU seconds spent busy by the whole machine since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _others_busy(window: float = 1.0) -> float | None:
    """Fraction of the machine's CPU capacity used by other processes over ``window`` s."""
    busy, own = _system_busy(), _cpu_seconds()
    if busy is None:
        return None
    time.sleep(window)
    used = (_system_busy() - busy) - (_cpu_seconds() - own)
    return max(used, 0.0) / (window * (os.cpu_count() or 1))


def wait_for_quiet(limit_s: float, threshold: float = 0.1) -> float | None:
    """Wait (at most ``limit_s``) until other processes use under ``threshold`` of the CPUs."""
    deadline = time.monotonic() + limit_s
    busy = _others_busy(0.5) if limit_s > 0 else None
    while busy is not None and busy >= threshold and time.monotonic() < deadline:
        busy = _others_busy(1.0)
    return busy


def _load_average() -> float | None:
    """The 1-minute load average: other work on the machine shows up here."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def _maxrss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


class _CpuMemory:
    """Peak resident memory above a baseline taken at :meth:`start`."""

    def start(self) -> None:
        gc.collect()
        try:
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # reset VmHWM to the current RSS
            self.method = "VmHWM (reset via /proc/self/clear_refs) - VmRSS before the runs"
        except OSError:
            self.method = "ru_maxrss - VmRSS before the runs (model creation may hide a peak)"
        status = _proc_status()
        self.baseline = status.get("VmRSS", _maxrss_bytes())

    def stop(self) -> dict:
        status = _proc_status()
        if "VmHWM" in status and self.method.startswith("VmHWM"):
            peak = status["VmHWM"]
        else:
            peak = _maxrss_bytes()
        return {
            "peak_mib": (peak - self.baseline) / MIB,
            "peak_total_mib": peak / MIB,
            "baseline_mib": self.baseline / MIB,
            "memory_method": self.method,
        }


class _CudaMemory:
    def __init__(self, torch, device):
        self.torch, self.device = torch, device

    def start(self) -> None:
        gc.collect()
        self.torch.cuda.synchronize(self.device)
        self.torch.cuda.empty_cache()
        self.torch.cuda.reset_peak_memory_stats(self.device)
        self.baseline = self.torch.cuda.memory_allocated(self.device)

    def stop(self) -> dict:
        self.torch.cuda.synchronize(self.device)
        peak = self.torch.cuda.max_memory_allocated(self.device)
        return {
            "peak_mib": (peak - self.baseline) / MIB,
            "peak_total_mib": peak / MIB,
            "baseline_mib": self.baseline / MIB,
            "memory_method": "torch.cuda.max_memory_allocated - memory_allocated before the runs",
        }


def _build_model(name: str):
    """(model in eval mode, (low, high) per-channel input bounds, mean, std): random weights."""
    import torch

    if name == BUILTIN:
        from lrp_cli.models import load_model

        loaded = load_model(BUILTIN)  # shipped weights, offline
        model, pre = loaded.module, loaded.preprocessing
        mean, std = pre.mean, pre.std
    else:
        import torchvision

        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None)
        mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    low = tuple((0.0 - m) / s for m, s in zip(mean, std, strict=True))
    high = tuple((1.0 - m) / s for m, s in zip(mean, std, strict=True))
    return model, (low, high), mean, std


def _zennit_canonizers(model_name: str) -> list:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    if model_name.startswith("vgg"):
        return [VGGCanonizer()]
    if model_name.startswith(("resnet", "resnext", "wide_resnet")):
        return [ResNetCanonizer()]
    return [SequentialMergeBatchNorm()]


def _zennit_composite(preset: str, model_name: str, bounds, torch, device):
    from zennit import composites

    cls = getattr(composites, ZENNIT_COMPOSITES[preset])
    canonizers = _zennit_canonizers(model_name)
    if preset == "epsilon-gamma-box":
        low = torch.tensor(bounds[0], device=device).view(1, -1, 1, 1)
        high = torch.tensor(bounds[1], device=device).view(1, -1, 1, 1)
        return cls(low=low, high=high, canonizers=canonizers)
    return cls(canonizers=canonizers)


def run_case(case: dict) -> dict:
    """Measure one (model, method, preset) case in this process; returns a JSON-able dict."""
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    model, bounds, mean, std = _build_model(case["model"])
    model.to(device)
    generator = torch.Generator().manual_seed(1)
    size = case["image_size"]
    pixels = torch.rand(case["batch_size"], 3, size, size, generator=generator)
    mean_t, std_t = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    x = ((pixels - mean_t) / std_t).to(device)
    del pixels

    cuda = device.type == "cuda"
    memory = _CudaMemory(torch, device) if cuda else _CpuMemory()
    memory.start()
    setup_start = time.perf_counter()
    method, context = case["method"], None
    if method == "gradient":

        def call():
            leaf = x.detach().requires_grad_()
            out = model(leaf)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            (grad,) = torch.autograd.grad(out, leaf, onehot)
            return grad

    elif method == "ours":
        from lrp_cli.config import load_config
        from lrp_cli.engine import Explainer

        explainer = Explainer(model, load_config(case["preset"]).composite(), input_bounds=bounds)

        def call():
            return explainer(x).relevance

    elif method == "zennit":
        from zennit.attribution import Gradient

        composite = _zennit_composite(case["preset"], case["model"], bounds, torch, device)
        context = Gradient(model, composite)
        attributor = context.__enter__()

        def select(out):
            return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

        def call():
            return attributor(x, select)[1]

    else:
        raise ValueError(f"unknown method {method!r}")
    setup_s = time.perf_counter() - setup_start

    others: list[float] = []

    def timed() -> tuple[float, float, object]:
        wait_for_quiet(case.get("quiet_wait", 0.0))
        if cuda:
            torch.cuda.synchronize(device)
        busy, cpu_start, start = _system_busy(), _cpu_seconds(), time.perf_counter()
        result = call()
        if cuda:
            torch.cuda.synchronize(device)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        if busy is not None:  # CPU used by other processes during this call, as a fraction
            other = (_system_busy() - busy - cpu) / (elapsed * (os.cpu_count() or 1))
            others.append(max(other, 0.0))
        return elapsed, cpu, result

    warmup_times, times, cpu_times, result = [], [], [], None
    load_start = _load_average()
    try:
        for _ in range(case["warmup"]):
            result = None
            elapsed, _, result = timed()
            warmup_times.append(elapsed)
        others.clear()
        for _ in range(case["runs"]):
            result = None  # free the previous result before the next call
            elapsed, cpu, result = timed()
            times.append(elapsed)
            cpu_times.append(cpu)
        finite = bool(torch.isfinite(result).all()) if result is not None else None
        nonzero = bool((result != 0).any()) if result is not None else None
        stats = memory.stop()
    finally:
        if context is not None:
            context.__exit__(None, None, None)
    median = statistics.median(times)
    return {
        **case,
        "times_s": times,
        "warmup_s": warmup_times,
        "median_s": median,
        "min_s": min(times),
        "max_s": max(times),
        "cpu_times_s": cpu_times,
        "cpu_median_s": statistics.median(cpu_times),
        "load_average": [load_start, _load_average()],
        "others_busy": others,  # per timed run: CPU share used by other processes
        "images_per_s": case["batch_size"] / median,
        "setup_s": setup_s,
        "result_finite": finite,
        "result_nonzero": nonzero,
        "threads_used": torch.get_num_threads(),
        "lrp_cli_path": _lrp_cli_path(),
        **stats,
    }


def _lrp_cli_path() -> str | None:
    module = sys.modules.get("lrp_cli")
    return str(Path(module.__file__).parent) if module is not None else None


# ============================================================================ driver side
def machine_info(device: str, threads: int | None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        from importlib.metadata import version

        import zennit  # noqa: F401

        info["zennit"] = version("zennit")
    except ImportError:
        info["zennit"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    info["engine_sha1"] = engine_fingerprint()
    try:
        root = Path(__file__).resolve().parent.parent
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "lrp_cli"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        info["git_commit"] = commit + ("+uncommitted changes in lrp_cli" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def engine_fingerprint(package: Path | None = None) -> str:
    """SHA-1 (12 digits) of the engine's sources: which engine version was measured."""
    import hashlib

    package = package or Path(__file__).resolve().parent.parent / "lrp_cli"
    digest = hashlib.sha1()
    for path in sorted((package / "engine").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def snapshot_package(folder: Path) -> Path:
    """Copy ``lrp_cli`` (with its presets) to ``folder``: workers import this frozen copy.

    Others may edit the engine while a long benchmark runs; the copy keeps every case on the
    same code. ``PYTHONPATH`` comes before the editable install's finder.
    """
    import shutil

    root = Path(__file__).resolve().parent.parent
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(root / "lrp_cli", folder / "lrp_cli", ignore=ignore)
    if (root / "configs").is_dir() and not (folder / "lrp_cli" / "configs").exists():
        shutil.copytree(root / "configs", folder / "lrp_cli" / "configs", ignore=ignore)
    return folder


def _subprocess_case(case: dict, timeout: float | None, snapshot: Path | None = None) -> dict:
    """Run one case in a fresh interpreter; returns its result or an ``error`` entry."""
    env = dict(os.environ)
    if snapshot is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snapshot), env.get("PYTHONPATH")]))
    if case.get("threads"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(case["threads"])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**case, "error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {**case, "error": f"exit {done.returncode}: " + " | ".join(tail)}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], file=sys.stdout) -> None:
    """One row per case; ratios are to the model's gradient (mean of its measurements)."""
    header = (
        f"{'model':<19}{'method':<11}{'preset':<26}{'median s':>9}{'x grad':>7}{'cpu s':>8}"
        f"{'x grad':>7}{'img/s':>7}{'peak MiB':>9}{'x grad':>7}{'RSS MiB':>8}{'x grad':>7}"
        f"{'busy':>6}  target"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_model = None
    for r in results:
        if last_model is not None and r["model"] != last_model:
            print(file=file)
        last_model = r["model"]
        label = r["method"] + (" (2)" if r.get("repeat") else "")
        preset = r.get("preset") or "-"
        if "error" in r:
            print(f"{r['model']:<19}{label:<11}{preset:<26}  ERROR: {r['error']}", file=file)
            continue
        verdict = ""
        if r["method"] == "ours" and r.get("time_ratio") is not None:
            ok_time = r["time_ratio"] <= TARGETS.get(r["preset"], float("inf"))
            ok_mem = r["memory_ratio"] is not None and r["memory_ratio"] <= MEMORY_TARGET
            verdict = (
                f"time {'met' if ok_time else 'MISSED'} (<={TARGETS.get(r['preset'], '-')}x), "
                f"mem {'met' if ok_mem else 'MISSED'} (<={MEMORY_TARGET}x)"
            )
        busy = max(r.get("others_busy") or [None], key=lambda v: -1 if v is None else v)
        print(
            f"{r['model']:<19}{label:<11}{preset:<26}{r['median_s']:>9.3f}"
            f"{_fmt(r.get('time_ratio'), '.2f'):>7}{r['cpu_median_s']:>8.2f}"
            f"{_fmt(r.get('cpu_ratio'), '.2f'):>7}{r['images_per_s']:>7.2f}"
            f"{r['peak_mib']:>9.0f}{_fmt(r.get('memory_ratio'), '.2f'):>7}"
            f"{r['peak_total_mib']:>8.0f}{_fmt(r.get('total_memory_ratio'), '.2f'):>7}"
            f"{_fmt(busy, '.0%'):>6}  {verdict}",
            file=file,
        )


def _add_ratios(results: list[dict]) -> None:
    """Ratios to the mean of each model's gradient medians (and its peak memory)."""
    for model in {r["model"] for r in results}:
        grads = [r for r in results if r["model"] == model and r["method"] == "gradient"]
        grads = [r for r in grads if "error" not in r]
        if not grads:
            continue
        time_ref = statistics.mean(r["median_s"] for r in grads)
        mem_ref = statistics.mean(r["peak_mib"] for r in grads)
        total_ref = statistics.mean(r["peak_total_mib"] for r in grads)
        cpu_ref = statistics.mean(r["cpu_median_s"] for r in grads)
        for r in results:
            if r["model"] != model or "error" in r:
                continue
            r["time_ratio"] = r["median_s"] / time_ref
            r["memory_ratio"] = r["peak_mib"] / mem_ref if mem_ref > 0 else None
            r["total_memory_ratio"] = r["peak_total_mib"] / total_ref
            r["cpu_ratio"] = r["cpu_median_s"] / cpu_ref if cpu_ref > 0 else None


def _zennit_available() -> bool:
    try:
        import zennit  # noqa: F401
    except ImportError:
        return False
    return True


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=None, help=f"comma-separated (default: {','.join(MODELS)})")
    p.add_argument(
        "--presets", default=None, help=f"comma-separated (default: {','.join(PRESETS)})"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default 8 (2 with --quick)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--runs", type=int, default=None, help="timed runs per case (default 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed runs first (default 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{BUILTIN}, batch 2, 1 run, presets {' and '.join(QUICK_PRESETS)}, gradient once",
    )
    p.add_argument("--no-zennit", action="store_true", help="skip zennit even if installed")
    p.add_argument(
        "--no-repeat-gradient",
        action="store_true",
        help="measure the gradient once per model, not before and after",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each call wait up to this many seconds until other processes use under\n"
        "10%% of the CPUs (default 60; 0: do not wait)",
    )
    p.add_argument("--timeout", type=float, default=None, help="seconds per case")
    p.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import lrp_cli from the tree in every case instead of a copy taken at the start",
    )
    p.add_argument("--json", type=Path, default=None, help="write all results to this file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    quick = args.quick
    args.models = args.models.split(",") if args.models else [BUILTIN] if quick else list(MODELS)
    if args.presets:
        args.presets = args.presets.split(",")
    else:
        args.presets = list(QUICK_PRESETS if quick else PRESETS)
    args.batch_size = args.batch_size or (2 if quick else 8)
    args.runs = args.runs or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    args.repeat_gradient = not (args.no_repeat_gradient or quick)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(run_case(json.loads(args.worker))), flush=True)
        return 0
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device available", file=sys.stderr)
            return 2
    zennit = _zennit_available() and not args.no_zennit
    if not zennit and not args.no_zennit:
        print(
            "zennit is not installed: measuring the gradient and our engine only", file=sys.stderr
        )
    info = machine_info(args.device, args.threads)
    base = {
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "runs": args.runs,
        "warmup": args.warmup,
        "device": args.device,
        "threads": args.threads,
        "quiet_wait": 0.0 if args.device.startswith("cuda") else args.quiet_wait,
    }
    plan: list[dict] = []
    for model in args.models:
        plan.append({**base, "model": model, "method": "gradient", "preset": None})
        for preset in args.presets:
            plan.append({**base, "model": model, "method": "ours", "preset": preset})
            if zennit and preset in ZENNIT_COMPOSITES:
                plan.append({**base, "model": model, "method": "zennit", "preset": preset})
        if args.repeat_gradient:
            plan.append(
                {**base, "model": model, "method": "gradient", "preset": None, "repeat": True}
            )
    summary = (
        f"# {info['cpu']}, {info['cpu_count']} CPUs, {info['threads']} threads, torch "
        f"{info['torch']}, zennit {info.get('zennit')}, device {args.device}, batch "
        f"{args.batch_size}, {args.image_size}px, median of {args.runs} runs after "
        f"{args.warmup} warm-up"
    )
    print(f"{summary}; {len(plan)} cases", file=sys.stderr, flush=True)
    snapshot = None
    if not args.no_snapshot:
        import tempfile

        snapshot = snapshot_package(Path(tempfile.mkdtemp(prefix="lrp-bench-")))
        info["engine_sha1"] = engine_fingerprint(snapshot / "lrp_cli")
    try:
        results = []
        started = time.perf_counter()
        for index, case in enumerate(plan, 1):
            result = _subprocess_case(case, args.timeout, snapshot)
            results.append(result)
            shown = (
                f"error: {result['error']}"
                if "error" in result
                else f"{result['median_s']:.3f} s, peak +{result['peak_mib']:.0f} MiB"
            )
            print(
                f"[{index}/{len(plan)} {time.perf_counter() - started:6.0f}s] {case['model']} "
                f"{case['method']} {case.get('preset') or ''}: {shown}",
                file=sys.stderr,
                flush=True,
            )
    finally:
        if snapshot is not None:
            import shutil

            shutil.rmtree(snapshot, ignore_errors=True)
    _add_ratios(results)
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["total_s"] = time.perf_counter() - started
    print(f"\n{summary}; engine {info['engine_sha1']}, {info['date']}")
    print_table(results)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "machine": info,
            "targets": {"time": TARGETS, "memory": MEMORY_TARGET},
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
