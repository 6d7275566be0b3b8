"""Where does the engine's time go? torch.profiler on our engine next to a plain gradient.

The engine's phases are labelled from outside (methods wrapped in ``record_function`` by
this script, the engine itself is untouched): ``ours.forward`` (the kept forward pass),
``ours.backward`` (the relevance pass) and inside it ``rule.relevance`` (linear layers),
``linear.forward`` (forwards with modified weights or sources, e.g. ``W+ a``),
``linear.transpose`` (the transposed maps), ``vjp`` (max pooling, reshapes), ``norm``
(sums, average pooling). The gradient is ``gradient.forward`` / ``gradient.backward``.

    python benchmarks/profile_engine.py --model vgg16 --preset epsilon-plus-flat
    python benchmarks/profile_engine.py --model vgg16 --preset epsilon-gamma-box --rows 25
    python benchmarks/profile_engine.py --cprofile   # Python-level view instead

Times of one call after a warm-up; on a busy machine compare shares, not seconds.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import _build_model  # noqa: E402

LABELS = (
    "gradient.forward",
    "gradient.backward",
    "ours.forward",
    "ours.backward",
    "rule.relevance",
    "linear.forward",
    "linear.transpose",
    "divide",
    "mask",
    "vjp",
    "norm",
)


def _label(owner, name: str, label: str) -> None:
    """Wrap ``owner.name`` in ``record_function(label)`` when it exists."""
    import torch

    original = getattr(owner, name, None)
    if original is None or getattr(original, "_profiled", False):
        return

    @functools.wraps(original)
    def wrapped(*args, **kwargs):
        with torch.profiler.record_function(label):
            return original(*args, **kwargs)

    wrapped._profiled = True
    setattr(owner, name, wrapped)


def instrument() -> None:
    from lrp_cli.engine import explainer, linear, rules, terms

    _label(explainer.Explainer, "_forward", "ours.forward")
    _label(explainer.Explainer, "_backward", "ours.backward")
    _label(explainer.Explainer, "_vjp", "vjp")
    _label(explainer.Explainer, "_norm", "norm")
    for cls in (rules.LinearRule, *_subclasses(rules.LinearRule)):
        if "relevance" in vars(cls):  # rules with their own closed form too
            _label(cls, "relevance", "rule.relevance")
    for cls in (linear.ConvOp, linear.DenseOp, linear.AffineOp):
        _label(cls, "forward", "linear.forward")
        _label(cls, "transpose", "linear.transpose")
    _label(terms, "divide", "divide")
    _label(terms, "_masked", "mask")


def _subclasses(cls) -> list:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="vgg16")
    p.add_argument("--preset", default="epsilon-plus-flat")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=20, help="rows of the aten op tables")
    p.add_argument("--cprofile", action="store_true", help="cProfile the engine call instead")
    p.add_argument("--trace", type=Path, default=None, help="write a Chrome trace of our call")
    args = p.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from lrp_cli.config import load_config
    from lrp_cli.engine import Explainer

    if args.threads:
        torch.set_num_threads(args.threads)
    model, bounds, mean, std = _build_model(args.model)
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(args.batch_size, 3, 224, 224, generator=generator)
    x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

    def gradient():
        leaf = x.detach().requires_grad_()
        with record_function("gradient.forward"):
            out = model(leaf)
        onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
        with record_function("gradient.backward"):
            return torch.autograd.grad(out, leaf, onehot)[0]

    instrument()
    explainer = Explainer(model, load_config(args.preset).composite(), input_bounds=bounds)

    def ours():
        return explainer(x).relevance

    for f in (gradient, ours):  # warm-up
        f()
    if args.cprofile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        ours()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(args.rows)
        return 0

    walls = {}
    for name, f in (("gradient", gradient), ("ours", ours)):
        with profile(
            activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True
        ) as prof:
            start = time.perf_counter()  # inside: the profiler's own start-up (~1 s) is not f's
            f()
            walls[name] = time.perf_counter() - start
        if name == "ours" and args.trace:
            prof.export_chrome_trace(str(args.trace))
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e6
        print(
            f"\n=== {name}: {args.model}, {args.preset if name == 'ours' else '-'}, batch "
            f"{args.batch_size}: wall {walls[name]:.3f} s (profiled), self CPU {total:.3f} s"
        )
        print(f"{'phase':<20}{'calls':>7}{'total s':>10}{'share':>8}")
        for event in sorted(events, key=lambda e: -e.cpu_time_total):
            if event.key in LABELS:
                seconds = event.cpu_time_total / 1e6
                print(f"{event.key:<20}{event.count:>7}{seconds:>10.3f}{seconds / total:>8.1%}")
        ops = [e for e in events if e.key not in LABELS]
        flops = sum(e.flops for e in ops)
        print(f"{'aten op':<34}{'calls':>7}{'self s':>9}{'share':>8}{'GFLOP':>9}")
        for event in sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.rows]:
            share = event.self_cpu_time_total / 1e6 / total
            print(
                f"{event.key:<34}{event.count:>7}{event.self_cpu_time_total / 1e6:>9.3f}"
                f"{share:>8.1%}{event.flops / 1e9:>9.1f}"
            )
        print(f"{'(all ops, counted FLOPs)':<34}{'':>7}{'':>9}{'':>8}{flops / 1e9:>9.1f}")
    print(f"\nratio ours / gradient (profiled wall): {walls['ours'] / walls['gradient']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
