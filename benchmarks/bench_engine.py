"""Engine benchmark: our LRP engine against a plain input gradient, zennit and LXT (issues 6, 15).

Methods, per model and preset:

- ``gradient``: forward + backward of the same model on the same batch (parameters do not
  require grad; the gradient of the top-1 logit with respect to the input);
- ``ours``: ``lrp_cli.engine.Explainer`` with the preset's composite (top-1 target);
- ``zennit``: zennit's composite of the same name with the model's canonizer, through
  ``zennit.attribution.Gradient`` (when zennit is installed and has such a composite; the
  transformer presets have none: zennit 0.5.1 has no LayerNorm or attention rules, and those
  rows say "n/a");
- ``lxt`` (ViTs only, when LXT is installed): LXT 2.1's CP-LRP, the oracle of
  ``tests/lxt_reference.py``: forward and backward of the top-1 logit, gradient x input, with
  ``torch.nn.{GELU,LayerNorm,MultiheadAttention}`` patched by LXT. That patch is process-wide
  (on the classes), so it is applied around each lxt call only, outside the timed span, and
  removed before the next method runs; it is comparable to ours with ``zero`` (LRP-0, CP-LRP),
  which the tests check equals LXT.

Models and presets: the CNNs (VGG-16, ResNet-50, EfficientNet-Lite0, EfficientNet-B0) get the
CNN presets (``PRESETS``), the transformers (``vit_*``, ``swin_*``, ``maxvit_*``,
``convnext_*``) ``zero``, ``epsilon``, ``vit-gamma`` and ``attnlrp``; ``--presets`` sets one
list for every model. Targets: issue 6's for the CNN presets (time 1.5x / 2.0x, memory 1.3x),
issue 15's for the models it added (time 1.3x for LRP-0 / epsilon with CP-LRP on ViT and
ConvNeXt, 2.0x for gamma, none for AttnLRP; memory 1.5x, EfficientNet-B0's CNN presets keep
issue 6's time targets).

Random weights: where torchvision's initialisation makes every logit (nearly) zero, the
model is made usable first (:func:`_usable_random_weights`, recorded in the JSON as
``model_init``): ViT's classification head is zero-initialised (all logits 0, so every
relevance is 0) and gets N(0, 0.02) weights; EfficientNet-B0's activations shrink about 50x per
stage with BatchNorm at its initial identity statistics (logits ~1e-14, below every epsilon),
so BatchNorm statistics are estimated from random batches first.

Time: one fresh process per model calls every method in turn, round after round (the order
rotates), so the ratios are measured side by side; the median over ``--runs`` rounds after
``--warmup`` rounds. Setup (tracing, registering hooks) is outside the timed calls. On a
machine shared with other work each call first waits (``--quiet-wait``) until other processes
leave the CPUs nearly idle, and a call during which they used more than ``--max-busy`` of the
CPUs is redone (``--retries``): with few cores, OpenMP slows down many-fold under contention.

Peak memory: one fresh process per (model, method, preset): the peak resident set size during
the warm-up and ``--memory-runs`` calls minus the resident set size just before the method's
setup (model and input already created). The kernel's high-water mark ``VmHWM`` is reset through
``/proc/self/clear_refs`` first; where that is not possible, ``ru_maxrss`` is used. On CUDA,
``torch.cuda.max_memory_allocated`` minus the allocation before setup.

    python benchmarks/bench_engine.py --threads 2      # full run (2 CPUs: 30-60 minutes)
    python benchmarks/bench_engine.py --threads 2 --models vit_b_16,convnext_tiny,efficientnet_b0
    python benchmarks/bench_engine.py --quick          # about a minute
    python benchmarks/bench_engine.py --models vgg16 --presets epsilon-gamma-box --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
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

MODELS = (
    "vgg16",
    "resnet50",
    "efficientnet_lite0",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
)
PRESETS = ("epsilon-plus-flat", "epsilon-plus", "epsilon-gamma-box", "epsilon-alpha2-beta1-flat")
TRANSFORMER_PRESETS = ("zero", "epsilon", "vit-gamma", "attnlrp")
TRANSFORMERS = ("vit_", "swin_", "maxvit_", "convnext_")  # name prefixes: LayerNorm models
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
# issue 15 (transformers, gates): time for LRP-0 / epsilon with CP-LRP <= 1.3x, gamma <= 2.0x
# on ViT and ConvNeXt (AttnLRP: none given); memory <= 1.5x on the models it added
TRANSFORMER_TARGETS = {"zero": 1.3, "epsilon": 1.3, "vit-gamma": 2.0}
ISSUE15_MODELS = ("vit_b_16", "convnext_tiny", "efficientnet_b0")
ISSUE15_MEMORY_TARGET = 1.5
ZENNIT_NONE = "n/a: zennit has no composite for this preset (no LayerNorm rule{})"
ZENNIT_NO_ATTENTION = (
    ", no attention rule; its CNN composites give MultiheadAttention, an Activation to zennit, "
    "the Pass rule, whose hook fails on its tuple output"
)
BUILTIN = "efficientnet_lite0"
MIB = 1024 * 1024


# ============================================================================ worker side
TENSOR_MEMORY_THRESHOLD = 65536  # bytes: glibc mmaps (and unmaps on free) every larger block


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


def _sys_seconds() -> float:
    """System CPU time of this process: mostly page faults of freshly allocated tensors."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


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
    if name != BUILTIN:
        model.benchmark_init = _usable_random_weights(model, mean, std)
    low = tuple((0.0 - m) / s for m, s in zip(mean, std, strict=True))
    high = tuple((1.0 - m) / s for m, s in zip(mean, std, strict=True))
    return model, (low, high), mean, std


def _random_pixels(batch: int, size: int, mean, std, seed: int):
    """A seeded batch of normalised pixels, uniform in [0, 1] before normalisation."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=generator)
    return (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _usable_random_weights(model, mean, std, size: int = 224) -> list[str]:
    """Make torchvision's random initialisation give non-vanishing logits; what was done.

    - a zero-initialised classification head (ViT's) gets N(0, 0.02) weights (seeded): with
      it every logit and every relevance is exactly 0;
    - if the model has BatchNorm and its logits on a random image are all below 1e-6
      (EfficientNet-B0: 1e-14, its activations shrink about 50x per stage with BatchNorm's
      initial identity statistics), the BatchNorm statistics are estimated from 4 seeded
      random batches of 8 (cumulative averages, only the BatchNorms in training mode).
    Models with usable logits (VGG-16, ResNet-50, ConvNeXt) are left as they are.
    """
    import torch
    from torch import nn

    notes = []
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears and not linears[-1].weight.any():
        generator = torch.Generator().manual_seed(2)
        head = linears[-1].weight
        head.copy_(torch.randn(head.shape, generator=generator) * 0.02)
        notes.append("zero-initialised classification head: N(0, 0.02) weights (seeded)")
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return notes
    with torch.no_grad():  # one image: a small transient before any measurement's baseline
        peak = float(model(_random_pixels(1, size, mean, std, seed=3)).abs().max())
    if peak < 1e-6:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches
            norm.train()
        with torch.no_grad():
            for seed in range(4):
                model(_random_pixels(8, size, mean, std, seed=10 + seed))
        model.eval()
        for norm in norms:
            norm.momentum = 0.1
        with torch.no_grad():
            after = float(model(_random_pixels(1, size, mean, std, seed=3)).abs().max())
        notes.append(
            f"logits vanished (max |logit| {peak:.1e}): BatchNorm statistics estimated from 4 "
            f"seeded random batches of 8 (max |logit| then {after:.2g})"
        )
    return notes


def default_presets(model_name: str) -> tuple[str, ...]:
    """The presets measured for a model when ``--presets`` is not given."""
    return TRANSFORMER_PRESETS if model_name.startswith(TRANSFORMERS) else PRESETS


def targets_for(model_name: str, preset: str | None) -> tuple[float | None, float]:
    """(time target or None, memory target) of ours with ``preset`` on ``model_name``."""
    memory = ISSUE15_MEMORY_TARGET if model_name in ISSUE15_MODELS else MEMORY_TARGET
    if preset in TRANSFORMER_TARGETS:
        return TRANSFORMER_TARGETS[preset], memory
    return TARGETS.get(preset), memory


def _load_lxt_reference():
    """``tests/lxt_reference.py`` (LXT's CP-LRP for torchvision's ViT), imported by path."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "tests" / "lxt_reference.py"
    spec = importlib.util.spec_from_file_location("lxt_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lxt_available(model_name: str) -> bool:
    if not model_name.startswith("vit_"):
        return False
    try:
        import lxt  # noqa: F401
    except ImportError:
        return False
    return (Path(__file__).resolve().parent.parent / "tests" / "lxt_reference.py").is_file()


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


def _setup(case: dict):
    """Model, input batch and device for a worker (threads set first)."""
    import torch

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    if device.type == "cuda":
        # every method in IEEE float32, as our engine always computes: PyTorch's default lets
        # cuDNN convolutions use TF32, which would time the baselines at lower precision
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    model, bounds, mean, std = _build_model(case["model"])
    model.to(device)
    x = _random_pixels(case["batch_size"], case["image_size"], mean, std, seed=1).to(device)
    return model, bounds, x, device


def make_call(method: str, preset: str | None, model, model_name: str, x, bounds, device):
    """``(call, close)``: ``call()`` computes one attribution of ``x``; ``close()`` cleans up.

    A call may carry ``call.scope``, a context manager factory that the timing loop enters
    around the call, outside the timed span (LXT's process-wide patch)."""
    import torch

    if method == "gradient":

        def call():
            leaf = x.detach().requires_grad_()
            out = model(leaf)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            (grad,) = torch.autograd.grad(out, leaf, onehot)
            return grad

        return call, lambda: None
    if method == "gradient-cl":  # the same gradient with model and input channels-last
        import copy

        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        call, close = make_call("gradient", None, model, model_name, x, bounds, device)
        return call, close
    if method == "ours":
        from lrp_cli.config import load_config
        from lrp_cli.engine import Explainer

        explainer = Explainer(model, load_config(preset).composite(), input_bounds=bounds)
        return (lambda: explainer(x).relevance), lambda: None
    if method == "zennit":
        from zennit.attribution import Gradient

        composite = _zennit_composite(preset, model_name, bounds, torch, device)
        context = Gradient(model, composite)
        attributor = context.__enter__()

        def select(out):
            return out * torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)

        return (lambda: attributor(x, select)[1]), lambda: context.__exit__(None, None, None)
    if method == "lxt":  # LXT's CP-LRP: gradient x input of the patched model
        reference = _load_lxt_reference()
        if not isinstance(model, reference.torchvision.models.VisionTransformer):
            raise TypeError(f"LXT's recipe is for torchvision's ViT, not {model_name}")
        with reference.lxt_cp_lrp_patched():  # fails here, untimed, if LXT cannot patch
            pass

        def call():
            leaf = x.detach().requires_grad_()
            out = model(leaf)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            (grad,) = torch.autograd.grad(out, leaf, onehot)
            return x * grad

        call.scope = reference.lxt_cp_lrp_patched
        return call, lambda: None
    raise ValueError(f"unknown method {method!r}")


def _scope(call):
    """The context a call runs in (LXT's patch for lxt calls, nothing for the others)."""
    return getattr(call, "scope", contextlib.nullcontext)()


class _Clock:
    """Times calls: wall and CPU seconds, and the CPU share other processes used meanwhile."""

    def __init__(self, torch, device):
        self.torch, self.device = torch, device
        self.cuda = device.type == "cuda"

    def __call__(self, call) -> tuple[dict, object]:
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        busy, sys_start = _system_busy(), _sys_seconds()
        cpu_start, start = _cpu_seconds(), time.perf_counter()
        result = call()
        if self.cuda:
            self.torch.cuda.synchronize(self.device)
        elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
        system = _sys_seconds() - sys_start
        other = None
        if busy is not None:
            other = (_system_busy() - busy - cpu) / (elapsed * (os.cpu_count() or 1))
            other = max(other, 0.0)
        return {"wall": elapsed, "cpu": cpu, "sys": system, "busy": other}, result


def time_worker(case: dict) -> dict:
    """Time every (method, preset) of one model in this process, round-robin.

    Each round calls every method once (the order rotates from round to round), so slow
    changes in machine load hit all methods alike and the ratios stay side by side.
    """
    import torch

    model, bounds, x, device = _setup(case)
    calls, closers, errors = {}, [], {}
    for method, preset in case["methods"]:
        target = model
        if method == "zennit":  # zennit's canonizers change the model: one copy per composite
            import copy

            target = copy.deepcopy(model)
        try:
            call, close = make_call(method, preset, target, case["model"], x, bounds, device)
        except Exception as error:  # one failing method must not lose the others' figures
            errors[(method, preset)] = f"setup: {type(error).__name__}: {error}"
            continue
        calls[(method, preset)] = call
        closers.append(close)
    clock = _Clock(torch, device)
    records = {key: {"warmup": [], "runs": []} for key in calls}
    rounds = case["warmup"] + case["runs"]
    retries, max_busy = case.get("retries", 0), case.get("max_busy", 1.0)
    try:
        for index in range(rounds):
            phase = "warmup" if index < case["warmup"] else "runs"
            keys = [key for key in calls if key not in errors]
            shift = index % max(len(keys), 1)
            for key in keys[shift:] + keys[:shift]:
                for attempt in range(retries + 1):
                    wait_for_quiet(case.get("quiet_wait", 0.0))
                    try:
                        with _scope(calls[key]):
                            measured, result = clock(calls[key])
                    except Exception as error:
                        errors[key] = f"{type(error).__name__}: {error}"
                        break
                    del result
                    measured["round"] = index
                    busy = measured["busy"]
                    if phase == "warmup" or busy is None or busy <= max_busy or attempt == retries:
                        records[key][phase].append(measured)
                        break
                    records[key].setdefault("discarded", []).append(measured)
    finally:
        for close in closers:
            close()
    keys = [tuple(k) for k in case["methods"]]
    return {
        "threads_used": torch.get_num_threads(),
        "lrp_cli_path": _lrp_cli_path(),
        "model_init": getattr(model, "benchmark_init", None),
        "records": [
            {"method": m, "preset": p, "error": errors[(m, p)]}
            if (m, p) in errors
            else {"method": m, "preset": p, **records[(m, p)]}
            for (m, p) in keys
        ],
    }


def memory_worker(case: dict) -> dict:
    """Peak memory of one (method, preset) in a fresh process (and its times as a by-product)."""
    import torch

    model, bounds, x, device = _setup(case)
    memory = _CudaMemory(torch, device) if device.type == "cuda" else _CpuMemory()
    memory.start()
    setup_start = time.perf_counter()
    call, close = make_call(case["method"], case["preset"], model, case["model"], x, bounds, device)
    setup_s = time.perf_counter() - setup_start
    clock = _Clock(torch, device)
    times, result = [], None
    try:
        for _ in range(case["warmup"] + case["memory_runs"]):
            result = None  # free the previous result before the next call
            with _scope(call):
                measured, result = clock(call)
            times.append(measured)
        finite = None if result is None else bool(torch.isfinite(result).all())
        nonzero = None if result is None else bool((result != 0).any())
        stats = memory.stop()
    finally:
        close()
    return {
        "setup_s": setup_s,
        "memory_call_times_s": [t["wall"] for t in times],
        "result_finite": finite,
        "result_nonzero": nonzero,
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
    try:
        from importlib.metadata import PackageNotFoundError, version

        info["lxt"] = version("lxt")
    except PackageNotFoundError:
        info["lxt"] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
        info["fp32_precision"] = "ieee (TF32 off for every method)"
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
    """SHA-1 (12 digits) of the engine's sources: which engine version was measured.

    Every ``.py`` under ``lrp_cli/engine/``, the handlers in ``engine/nodes/`` included (until
    2026-12-01 only the top level was hashed: results before that are not comparable by hash).
    """
    import hashlib

    package = package or Path(__file__).resolve().parent.parent / "lrp_cli"
    engine = package / "engine"
    digest = hashlib.sha1()
    for path in sorted(engine.rglob("*.py")):
        digest.update(path.relative_to(engine).as_posix().encode() + b"\0" + path.read_bytes())
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
    """Run one worker in a fresh interpreter; returns its result or ``{"error": ...}``."""
    env = dict(os.environ)
    if snapshot is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snapshot), env.get("PYTHONPATH")]))
    if case.get("threads"):
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(case["threads"])
    if case.get("mmap_threshold"):
        env["MALLOC_MMAP_THRESHOLD_"] = str(case["mmap_threshold"])
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
    return {"error": f"exit {done.returncode}: " + " | ".join(tail)}


def summarise_times(case: dict, timing: dict) -> list[dict]:
    """One result per (method, preset) from a time worker's records."""
    results = []
    for record in timing.get("records", []):
        entry = {k: v for k, v in case.items() if k != "methods"}
        entry.update(method=record["method"], preset=record["preset"])
        if "error" in record:
            results.append({**entry, "error": record["error"]})
            continue
        runs = record["runs"]
        walls = [r["wall"] for r in runs]
        median = statistics.median(walls)
        busy = [r["busy"] for r in runs if r["busy"] is not None]
        entry.update(
            times_s=walls,
            rounds=[r["round"] for r in runs],
            warmup_s=[r["wall"] for r in record["warmup"]],
            median_s=median,
            min_s=min(walls),
            max_s=max(walls),
            cpu_times_s=[r["cpu"] for r in runs],
            cpu_median_s=statistics.median(r["cpu"] for r in runs),
            sys_median_s=statistics.median(r["sys"] for r in runs),
            others_busy=busy,
            discarded_s=[r["wall"] for r in record.get("discarded", [])],
            images_per_s=case["batch_size"] / median,
            threads_used=timing.get("threads_used"),
            lrp_cli_path=timing.get("lrp_cli_path"),
            model_init=timing.get("model_init"),
        )
        results.append(entry)
    return results


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], file=sys.stdout) -> None:
    """One row per case; ratios are to the same model's gradient."""
    header = (
        f"{'model':<19}{'method':<12}{'preset':<26}{'median s':>9}{'x grad':>7}{'paired':>7}"
        f"{'cpu s':>8}{'x grad':>7}{'img/s':>7}{'peak MiB':>9}{'x grad':>7}{'RSS MiB':>8}"
        f"{'x grad':>7}{'busy':>6}  target"
    )
    print(header, file=file)
    print("-" * len(header), file=file)
    last_model = None
    for r in results:
        if last_model is not None and r["model"] != last_model:
            print(file=file)
        last_model = r["model"]
        preset = r.get("preset") or "-"
        if "error" in r:
            print(f"{r['model']:<19}{r['method']:<12}{preset:<26}  ERROR: {r['error']}", file=file)
            continue
        if "n/a" in r:
            why = r["n/a"].split(" (")[0]  # the reason in full is in the JSON
            print(f"{r['model']:<19}{r['method']:<12}{preset:<26}  {why}", file=file)
            continue
        verdict = ""
        if r["method"] == "ours" and r.get("time_ratio") is not None:
            limit, memory_limit = targets_for(r["model"], r["preset"])
            verdict = "time " + ("-" if limit is None else _verdict(r["time_ratio"], limit))
            verdict += f" (<={limit}x), mem " if limit is not None else ", mem "
            verdict += (
                "-" if r.get("memory_ratio") is None else _verdict(r["memory_ratio"], memory_limit)
            )
            verdict += f" (<={memory_limit}x)"
        busy = max((v for v in r.get("others_busy", []) if v is not None), default=None)
        print(
            f"{r['model']:<19}{r['method']:<12}{preset:<26}{r['median_s']:>9.3f}"
            f"{_fmt(r.get('time_ratio'), '.2f'):>7}{_fmt(r.get('time_ratio_paired'), '.2f'):>7}"
            f"{r['cpu_median_s']:>8.2f}{_fmt(r.get('cpu_ratio'), '.2f'):>7}"
            f"{r['images_per_s']:>7.2f}{_fmt(r.get('peak_mib'), '.0f'):>9}"
            f"{_fmt(r.get('memory_ratio'), '.2f'):>7}{_fmt(r.get('peak_total_mib'), '.0f'):>8}"
            f"{_fmt(r.get('total_memory_ratio'), '.2f'):>7}{_fmt(busy, '.0%'):>6}  {verdict}",
            file=file,
        )


def _verdict(ratio: float, limit: float) -> str:
    return "met" if ratio <= limit else "MISSED"


def _add_ratios(results: list[dict]) -> None:
    """Ratios to the model's gradient: of medians, paired per round, of CPU time and memory."""
    for model in {r["model"] for r in results}:
        grad = next((r for r in results if r["model"] == model and r["method"] == "gradient"), None)
        if grad is None or "median_s" not in grad:
            continue
        by_round = dict(zip(grad["rounds"], grad["times_s"], strict=True))
        for r in results:
            if r["model"] != model or "median_s" not in r:
                continue
            r["time_ratio"] = r["median_s"] / grad["median_s"]
            paired = [t / by_round[i] for i, t in zip(r["rounds"], r["times_s"], strict=True)]
            r["time_ratio_paired"] = statistics.median(paired)
            r["cpu_ratio"] = r["cpu_median_s"] / grad["cpu_median_s"]
            if "peak_mib" in r and "peak_mib" in grad:
                ref = grad["peak_mib"]
                r["memory_ratio"] = r["peak_mib"] / ref if ref > 0 else None
                r["total_memory_ratio"] = r["peak_total_mib"] / grad["peak_total_mib"]


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
        "--presets",
        default=None,
        help=f"comma-separated, for every model (default: {','.join(PRESETS)}; for\n"
        f"{', '.join(p + '*' for p in TRANSFORMERS)}: {','.join(TRANSFORMER_PRESETS)})",
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
        help=f"{BUILTIN}, batch 2, 1 run, presets {' and '.join(QUICK_PRESETS)}",
    )
    p.add_argument("--no-zennit", action="store_true", help="skip zennit even if installed")
    p.add_argument("--no-lxt", action="store_true", help="skip LXT on ViTs even if installed")
    p.add_argument(
        "--memory-runs",
        type=int,
        default=None,
        help="calls after the warm-up in each memory process (default 1; 0 with --quick)",
    )
    p.add_argument("--no-memory", action="store_true", help="time only, no memory processes")
    p.add_argument(
        "--tensor-memory",
        action="store_true",
        help="memory processes run with glibc's MALLOC_MMAP_THRESHOLD_=65536: every freed\n"
        "tensor goes back to the system at once, so the peak is that of live tensors, without\n"
        "heap fragmentation (calls run slower there; their times are not used)",
    )
    p.add_argument(
        "--gradient-cl",
        action="store_true",
        help="also time the gradient with model and input in channels-last (the engine's "
        "layout on the CPU), a second reference",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        help="before each call wait up to this many seconds until other processes use under\n"
        "10%% of the CPUs (default 30; 0 with --quick)",
    )
    p.add_argument(
        "--max-busy",
        type=float,
        default=0.15,
        help="redo a timed call if other processes used more than this share of the CPUs\n"
        "meanwhile (default 0.15)",
    )
    p.add_argument("--retries", type=int, default=None, help="redos per call (default 3)")
    p.add_argument("--timeout", type=float, default=None, help="seconds per worker process")
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
    else:  # None: each model's default_presets
        args.presets = list(QUICK_PRESETS) if quick else None
    args.batch_size = args.batch_size or (2 if quick else 8)
    args.runs = args.runs or (1 if quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    if args.memory_runs is None:
        args.memory_runs = 0 if quick else 1
    if args.retries is None:
        args.retries = 0 if quick else 3
    if args.quiet_wait is None:
        args.quiet_wait = 0.0 if quick else 30.0
    return args


def _progress(started: float, text: str) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {text}", file=sys.stderr, flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        case = json.loads(args.worker)
        worker = time_worker if case["kind"] == "time" else memory_worker
        print("RESULT " + json.dumps(worker(case)), flush=True)
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
        "retries": 0 if args.device.startswith("cuda") else args.retries,
        "max_busy": args.max_busy,
    }
    summary = (
        f"# {info['cpu']}, {info['cpu_count']} CPUs, {info['threads']} threads, torch "
        f"{info['torch']}, zennit {info.get('zennit')}, lxt {info.get('lxt')}, device "
        f"{args.device}, batch {args.batch_size}, {args.image_size}px, median of {args.runs} "
        f"rounds after {args.warmup} warm-up"
        + (", tensor-level memory" if args.tensor_memory else "")
    )
    print(summary, file=sys.stderr, flush=True)
    snapshot = None
    if not args.no_snapshot:
        import tempfile

        snapshot = snapshot_package(Path(tempfile.mkdtemp(prefix="lrp-bench-")))
        info["engine_sha1"] = engine_fingerprint(snapshot / "lrp_cli")
    results: list[dict] = []
    started = time.perf_counter()
    try:
        for model in args.models:
            methods = [("gradient", None)]
            if args.gradient_cl:
                methods.append(("gradient-cl", None))
            not_applicable = []
            for preset in args.presets or default_presets(model):
                methods.append(("ours", preset))
                if zennit and preset in ZENNIT_COMPOSITES:
                    methods.append(("zennit", preset))
                elif zennit:
                    why = ZENNIT_NONE.format(
                        ZENNIT_NO_ATTENTION if model.startswith("vit_") else ""
                    )
                    not_applicable.append(
                        {"model": model, "method": "zennit", "preset": preset, "n/a": why}
                    )
            if not args.no_lxt and _lxt_available(model):
                methods.append(("lxt", None))
            case = {**base, "kind": "time", "model": model, "methods": methods}
            _progress(started, f"{model}: timing {len(methods)} methods round-robin")
            timing = _subprocess_case(case, args.timeout, snapshot)
            if "error" in timing:
                timing["records"] = [
                    {"method": m, "preset": p, "error": timing["error"]} for m, p in methods
                ]
            entries = summarise_times(case, timing)
            for entry in entries:
                name = f"{model} {entry['method']} {entry['preset'] or ''}"
                if "error" in entry:
                    _progress(started, f"{name}: error: {entry['error']}")
                    continue
                _progress(started, f"{name}: median {entry['median_s']:.3f} s")
                if args.no_memory:
                    continue
                memory = _subprocess_case(
                    {**base, "kind": "memory", "model": model, "method": entry["method"],
                     "preset": entry["preset"], "memory_runs": args.memory_runs,
                     "mmap_threshold": TENSOR_MEMORY_THRESHOLD if args.tensor_memory else None},
                    args.timeout,
                    snapshot,
                )  # fmt: skip
                if "error" in memory:
                    entry["memory_error"] = memory["error"]
                    _progress(started, f"{name}: memory error: {memory['error']}")
                else:
                    if args.tensor_memory:
                        memory["memory_method"] += (
                            f", MALLOC_MMAP_THRESHOLD_={TENSOR_MEMORY_THRESHOLD}"
                        )
                    entry.update(memory)
                    _progress(started, f"{name}: peak +{memory['peak_mib']:.0f} MiB")
            results.extend(entries)
            results.extend({**base, **entry} for entry in not_applicable)
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
            "targets": {
                "time": TARGETS,
                "memory": MEMORY_TARGET,
                "issue15_models": list(ISSUE15_MODELS),
                "issue15_time": TRANSFORMER_TARGETS,
                "issue15_memory": ISSUE15_MEMORY_TARGET,
            },
            "results": results,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 1 if any("error" in r or "memory_error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
