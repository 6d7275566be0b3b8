"""Prototype (benchmark-only): how fast could the linear rules be? Not used by lrp_cli.

Replaces ``LinearRule.relevance`` at run time (monkeypatch, the engine files are untouched)
with fused paths for the common cases and measures them next to the current engine and a
plain gradient, round-robin in one process; the relevance of both is compared.

Fast paths (everything else falls back to the engine's own code):

- epsilon with bias kept: ``den = z`` (forward output), one transpose;
- flat: the denominator ``W1 . 1`` depends only on the shape: computed once and cached;
- z-plus on a signed input (the pixel layer, blocks without a final ReLU): one map of the
  stacked ``[a+, a-]`` with ``[W+, W-]`` (groups == 1), forward and transposed;
- z-plus, gamma, alpha-beta on a non-negative input (after a ReLU), bias kept:
  one extra forward ``P = W+ a + b+`` with the bias fused into the convolution (``P >= 0``,
  so z-plus's stabiliser ``+eps`` goes into that bias as well); gamma's two
  denominators are ``z + g P`` and ``z + g (z - P)``, alpha-beta's negative one is ``z - P``;
  the transposes are regrouped on the (W, W+) basis so that gamma and alpha-beta need two
  transposed maps, done as one call on concatenated weights (groups == 1);
- stabilise-and-divide in three passes with one temporary (bit-identical to the engine's);
- the transposed convolution through ``aten.convolution_backward`` with the real input instead
  of ``torch.nn.grad.conv2d_input`` (which materialises a full copy of an expanded dummy).

    python benchmarks/proto_fast_rules.py --models vgg16 --threads 2
    python benchmarks/proto_fast_rules.py --check   # float64 agreement on small inputs only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_engine import _build_model, _Clock, engine_fingerprint, wait_for_quiet  # noqa: E402

FAST = {"on": False}
HITS: dict[str, int] = {}  # fused-path calls per rule name (the rest fell back)


def _stab_div(r, den, eps):
    """``r / (den + eps * sign(den))`` with sign(0) = +1; one temporary, ``den`` untouched."""
    e = torch.where(den >= 0, den.new_tensor(eps), den.new_tensor(-eps))
    e.add_(den)
    return torch.div(r, e, out=e) if e.shape == r.shape else r / e


def _transpose(op, s, weight, a):
    from lrp_cli.engine.linear import ConvOp

    if isinstance(op, ConvOp):
        return torch.ops.aten.convolution_backward(
            s, a, weight, None, op.stride, op.padding, op.dilation, False,
            [0] * op.dims, op.groups, (True, False, False),
        )[0]  # fmt: skip
    return op.transpose(s, weight, a.shape)


def _two_transposes(op, s1, w1, s2, w2, a, cache, key):
    """``w1^T s1 + w2^T s2``: one call on concatenated weights where the layout allows."""
    from lrp_cli.engine.linear import ConvOp, DenseOp

    if (isinstance(op, ConvOp) and op.groups == 1) or isinstance(op, DenseOp):
        if key not in cache:
            cache[key] = torch.cat([w1, w2], 0)
        return _transpose(op, torch.cat([s1, s2], 1), cache[key], a)
    return _transpose(op, s1, w1, a).add_(_transpose(op, s2, w2, a))


def fast_relevance(rule, op, a, z, r, nonnegative, cache):
    """The relevance of ``a`` by a fused path, or None where there is none."""
    from lrp_cli.engine import rules as R
    from lrp_cli.engine.linear import ConvOp, DenseOp

    if not isinstance(op, (ConvOp, DenseOp)):
        return None
    eps = rule.stabilizer
    if eps == 0:
        return None
    has_bias = op.bias is not None
    if isinstance(rule, R.FlatRule):
        key = ("flat", tuple(a.shape[1:]))
        w1 = R._weight(op, R.ParamMod("ones"), cache)
        if key not in cache:
            ones = torch.ones((1,) + a.shape[1:], dtype=a.dtype, device=a.device)
            den = op.forward(ones, w1, None)
            cache[key] = den + torch.where(den >= 0, den.new_tensor(eps), den.new_tensor(-eps))
        return _transpose(op, r / cache[key], w1, a)
    if rule.zero_bias and has_bias:
        return None
    if type(rule) is R.EpsilonRule:
        return _transpose(op, _stab_div(r, z, eps), op.weight, a).mul_(a)
    w_pos = R._weight(op, R.POSITIVE, cache)
    b_pos = R._bias(op, R.POSITIVE, cache) if has_bias else None
    if isinstance(rule, R.ZPlusRule):
        # W+ a+ + W- a- + b+ >= 0: the stabiliser is +eps everywhere and goes into the
        # convolution's bias (no sign, no extra pass)
        key = ("bias+eps", eps)
        if key not in cache:
            cache[key] = b_pos + eps if has_bias else op.weight.new_full((op.weight.shape[0],), eps)
        if nonnegative:
            den = op.forward(a, w_pos, cache[key])
            s = torch.div(r, den, out=den)
            return _transpose(op, s, w_pos, a).mul_(a)
        if isinstance(op, ConvOp) and op.groups != 1:
            return None
        # signed input: one map of [a+, a-] (channels stacked) with [W+, W-]
        if "W+|W-" not in cache:
            cache["W+|W-"] = torch.cat([w_pos, R._weight(op, R.NEGATIVE, cache)], 1)
        a_pos = a.clamp(min=0)
        stacked = torch.cat([a_pos, a - a_pos], 1)
        den = op.forward(stacked, cache["W+|W-"], cache[key])
        s = torch.div(r, den, out=den)
        g = _transpose(op, s, cache["W+|W-"], stacked).mul_(stacked)
        half = a.shape[1]
        return g[:, :half].add_(g[:, half:])
    if not nonnegative:
        return None
    if isinstance(rule, R.GammaRule):
        g = rule.gamma
        p = op.forward(a, w_pos, b_pos)  # W+ a + b+
        positive, negative = z > 0, z < 0
        d = torch.sub(z, p)  # W- a + b-
        torch.where(positive, p, d, out=d)
        del p
        den = torch.add(z, d, alpha=g, out=d)  # z + g P  or  z + g (z - P)
        s = _stab_div(r.masked_fill(z == 0, 0), den, eps)
        del den, d
        t1 = torch.where(negative, s * (1 + g), s)  # for W
        t2 = s.mul_(g)
        torch.where(negative, t2.neg(), t2, out=t2)  # for W+
        return _two_transposes(op, t1, op.weight, t2, w_pos, a, cache, "cat W W+").mul_(a)
    if isinstance(rule, R.AlphaBetaRule):
        alpha, beta = rule.alpha, rule.beta
        p = op.forward(a, w_pos, b_pos)
        s_neg = _stab_div(r, torch.sub(z, p), eps)  # z - P = W- a + b- <= 0, sign(0) = +1
        s_pos = torch.div(r, p.add_(eps), out=p)  # P >= 0: stabiliser +eps
        del p
        u1 = s_pos.mul_(alpha).add_(s_neg, alpha=beta)  # for W+
        u2 = s_neg.mul_(-beta)  # for W
        return _two_transposes(op, u1, w_pos, u2, op.weight, a, cache, "cat W+ W").mul_(a)
    return None


def install() -> None:
    from lrp_cli.engine import rules as R

    original = R.LinearRule.relevance
    if getattr(original, "_prototype", False):
        return

    def relevance(self, op, a, z, r, *, nonnegative=False, bounds=None, cache=None):
        if FAST["on"] and cache is not None:
            out = fast_relevance(self, op, a, z, r, nonnegative, cache)
            key = self.name if out is not None else f"{self.name} (engine)"
            HITS[key] = HITS.get(key, 0) + 1
            if out is not None:
                return out
        return original(self, op, a, z, r, nonnegative=nonnegative, bounds=bounds, cache=cache)

    relevance._prototype = True
    R.LinearRule.relevance = relevance


def _explain(explainer, x, fast: bool):
    FAST["on"] = fast
    try:
        return explainer(x).relevance
    finally:
        FAST["on"] = False


def check(presets) -> int:
    """float64, small inputs: the fused paths equal the engine to rounding."""
    import torchvision

    from lrp_cli.config import load_config
    from lrp_cli.engine import Explainer

    install()
    worst = 0.0
    for name in ("vgg11", "resnet18"):
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, num_classes=10).double().eval()
        for m in model.modules():  # random BatchNorm statistics and biases
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.data.uniform_(-1, 1)
        x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
        for preset in presets:
            low, high = (-2.2, -2.1, -1.9), (2.3, 2.5, 2.7)
            explainer = Explainer(model, load_config(preset).composite(), input_bounds=(low, high))
            ref, new = _explain(explainer, x, False), _explain(explainer, x, True)
            rel = float((ref - new).abs().max() / ref.abs().max())
            worst = max(worst, rel)
            print(f"{name:<10}{preset:<28} max |diff| / max |R| = {rel:.2e}  {HITS}")
            HITS.clear()
    print(f"worst {worst:.2e}")
    return 0 if worst < 1e-10 else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="vgg16")
    p.add_argument(
        "--presets", default="epsilon-plus-flat,epsilon-plus,epsilon-gamma-box,"
        "epsilon-alpha2-beta1-flat",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--check", action="store_true", help="float64 agreement only")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="as in bench_engine.py")
    p.add_argument("--max-busy", type=float, default=0.15, help="as in bench_engine.py")
    p.add_argument("--retries", type=int, default=3, help="as in bench_engine.py")
    args = p.parse_args(argv)
    presets = args.presets.split(",")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.check:
        return check(presets)

    from lrp_cli.config import load_config
    from lrp_cli.engine import Explainer

    install()
    for name in args.models.split(","):
        model, bounds, mean, std = _build_model(name)
        gen = torch.Generator().manual_seed(1)
        pixels = torch.rand(args.batch_size, 3, 224, 224, generator=gen)
        x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

        def gradient(x=x, model=model):
            leaf = x.detach().requires_grad_()
            out = model(leaf)
            onehot = torch.nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            return torch.autograd.grad(out, leaf, onehot)[0]

        calls = {("gradient", "-"): gradient}
        agreement = {}
        for preset in presets:
            explainer = Explainer(model, load_config(preset).composite(), input_bounds=bounds)
            ref, new = _explain(explainer, x, False), _explain(explainer, x, True)
            agreement[preset] = float((ref - new).abs().max() / ref.abs().max())
            calls[("engine", preset)] = lambda e=explainer, x=x: _explain(e, x, False)
            calls[("prototype", preset)] = lambda e=explainer, x=x: _explain(e, x, True)
        times = {key: [] for key in calls}
        keys = list(calls)
        clock = _Clock(torch, torch.device("cpu"))
        for index in range(args.runs + 1):
            shift = index % len(keys)
            for key in keys[shift:] + keys[:shift]:
                for attempt in range(args.retries + 1):  # redo calls disturbed by other work
                    wait_for_quiet(args.quiet_wait)
                    measured, _ = clock(calls[key])
                    busy = measured["busy"] or 0.0
                    if busy <= args.max_busy or attempt == args.retries:
                        break
                if index:  # round 0 is the warm-up
                    times[key].append(measured["wall"])
        grad = statistics.median(times[("gradient", "-")])
        print(f"\n{name}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
              f"engine {engine_fingerprint()}, "
              f"median of {args.runs} (round-robin after a warm-up round)")  # fmt: skip
        print(f"{'method':<11}{'preset':<28}{'median s':>9}{'x grad':>8}  max|diff|/max|R|")
        for (method, preset), values in times.items():
            median = statistics.median(values)
            diff = f"{agreement[preset]:.1e}" if method == "prototype" else ""
            print(f"{method:<11}{preset:<28}{median:>9.3f}{median / grad:>8.2f}  {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
