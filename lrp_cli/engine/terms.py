"""Terms, groups and the one mechanism that evaluates them for a linear layer.

A rule (rules.py) is a sum of *groups*; a group is a list of *terms* ``(source, weight
modifier, bias modifier, sign)``. Its denominator is ``z_g = sum_t sign_t * (W_t src_t(a) +
b_t)``, stabilised, and the relevance it sends back is

    R_in = sum_g  coef_g * sum_t sign_t * src_t(a) * W_t^T (mask_g * R / stab(z_g))

the four-step form of lrp-notes section 1 (forward, divide, transposed map, multiply).
:func:`propagate` evaluates it with as few passes over the layer's output as it can; every
shortcut below is exact up to rounding:

- a term that is the layer itself divides by the forward output ``z`` (no second forward);
  modifiers linear in ``(W, W+)`` are expanded on that basis with ``W a`` taken from ``z``;
- a group whose terms need no such product is one call of the layer: inputs stacked along
  the input channels, weights likewise, biases summed; where the denominator's sign is known
  (``W+ a+``, ``W- a+``, flat, w-square) the stabiliser joins that bias;
- a signal keeps its scale (group coefficient times term sign) apart: the scale joins the
  cached weight instead of costing a pass, and the terms that share one signal go through one
  stacked transposed map;
- after the transposed maps, the products with the input are taken in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .linear import LinearOp

DATA_SOURCES = ("input", "positive", "negative")  # batch-sized; the others broadcast


@dataclass(frozen=True)
class ParamMod:
    """A modifier of weights and biases: ``p + gamma * clamp(p)`` or a fixed transform."""

    kind: str = "identity"  # identity | positive | negative | gamma+ | gamma- | square | ones
    gamma: float = 0.0

    def __call__(self, p: Tensor) -> Tensor:
        if self.kind == "identity":
            return p
        if self.kind == "positive":
            return p.clamp(min=0)
        if self.kind == "negative":
            return p.clamp(max=0)
        if self.kind == "gamma+":
            return p + self.gamma * p.clamp(min=0)
        if self.kind == "gamma-":
            return p + self.gamma * p.clamp(max=0)
        if self.kind == "square":
            return p * p
        if self.kind == "ones":
            return torch.ones_like(p)
        raise ValueError(f"unknown parameter modifier {self.kind!r}")

    @property
    def sign(self) -> int:
        """+1 / -1 where the modified parameters are >= 0 / <= 0 whatever the originals, else 0."""
        return {"positive": 1, "square": 1, "ones": 1, "negative": -1}.get(self.kind, 0)

    def basis(self) -> tuple[float, float] | None:
        """``(c, d)`` with ``mod(p) == c * p + d * p.clamp(min=0)``, or None if not linear so."""
        return {
            # no "negative": W- a as (W a) - (W+ a) cancels badly in float32 where W- a is
            # small (alpha-beta on EfficientNet-Lite0: 6e-4 of max|R| off float64, 3e-5 direct)
            "identity": (1.0, 0.0),
            "positive": (0.0, 1.0),
            "gamma+": (1.0, self.gamma),
            "gamma-": (1.0 + self.gamma, -self.gamma),
        }.get(self.kind)


IDENTITY = ParamMod()
POSITIVE = ParamMod("positive")
NEGATIVE = ParamMod("negative")
GAMMA_PARTS = {"gamma+": POSITIVE, "gamma-": NEGATIVE}  # gamma+(p) = p + gamma * positive(p)


@dataclass(frozen=True)
class Term:
    source: str
    weight: ParamMod
    bias: ParamMod | None  # None: this term has no bias
    sign: float = 1.0


@dataclass(frozen=True)
class Group:
    terms: tuple[Term, ...]
    coefficient: float = 1.0
    mask: str | None = None  # None | "positive" | "negative": on the layer's own output z


# ---------------------------------------------------------------- element-wise helpers
def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1 (zennit's convention)."""
    if epsilon == 0:
        return z
    return _shift(z, epsilon).add_(z)


def _shift(z: Tensor, epsilon: float) -> Tensor:
    """``epsilon * sign(z)``, sign(+-0) = +1, by copysign from ``z + 0`` (which turns -0 into
    +0 and leaves every other value as it is): exact, and several times faster on the CPU than
    ``torch.where(z >= 0, ...)``. The 0-dim tensor keeps ``epsilon`` in z's dtype."""
    shift = z + 0.0
    return torch.copysign(z.new_tensor(epsilon), shift, out=shift)


def divide(r: Tensor, z: Tensor, epsilon: float | None, scratch: bool = False) -> Tensor:
    """``r / stab(z)``; with epsilon 0 (LRP-0) a zero denominator sends nothing back, with
    epsilon None ``z`` is stabilised already.

    ``scratch``: ``z`` is a temporary of the caller's, reused for the result (less memory).
    """
    if epsilon is None:
        return torch.div(r, z, out=z) if scratch else r / z
    if epsilon == 0:  # r / z wherever z != 0, then 0 where z == 0: no torch.where passes
        zero = z == 0
        out = torch.div(r, z, out=z) if scratch else r / z
        return out.masked_fill_(zero, 0.0)
    if not scratch:
        return r / stabilize(z, epsilon)
    z.add_(_shift(z, epsilon))
    return torch.div(r, z, out=z)


def group_indicators(z: Tensor, positive: Tensor, negative: Tensor) -> None:
    """Write 1.0 where ``z > 0`` into ``positive`` and where ``z < 0`` into ``negative``
    (0 elsewhere): three arithmetic passes from sign(z), faster than boolean masks, which
    cost a type conversion (or a slow ``torch.where``) each time they are applied."""
    torch.sign(z, out=negative)
    torch.clamp(negative, min=0, out=positive)
    torch.sub(positive, negative, out=negative)  # 1 - 1, 0 - (-1), 0 - 0


def _scaled(coefficient: float, t: Tensor) -> Tensor:
    return t if coefficient == 1 else coefficient * t


def _sum(parts) -> Tensor | None:
    """Sum without the extra pass of ``sum()``'s leading ``0 +``; broadcast (small) parts
    first, so they cost one pass over the large ones together."""
    total = None
    for part in sorted(parts, key=Tensor.numel):
        total = part if total is None else total + part
    return total


def _masked(r: Tensor, z: Tensor, mask: str | None) -> Tensor:
    """``r`` where ``z > 0`` (or ``< 0``), 0 elsewhere."""
    if mask is None:
        return r
    indicator = torch.sign(z)
    if mask == "negative":
        indicator.neg_()
    return indicator.clamp_(min=0).mul_(r)


def cached(cache: dict, key, make) -> Tensor:
    """``cache[key]``, made once (per layer, dtype and device: the explainer's cache)."""
    if key not in cache:
        cache[key] = make()
    return cache[key]


def modified_weight(op: LinearOp, mod: ParamMod, cache: dict, scale: float = 1.0) -> Tensor:
    """``scale * mod(W)``, computed once."""

    def make():
        if mod.kind in GAMMA_PARTS and scale == 1:
            return gamma_weight(op, mod, cache)
        return _scaled(scale, mod(op.weight))

    return cached(cache, ("weight", mod, scale), make)


def gamma_weight(op: LinearOp, mod: ParamMod, cache: dict, out: Tensor | None = None) -> Tensor:
    """``W + gamma W+`` (or ``W-``) in one pass from the shared clamped weight, into ``out``."""
    part = modified_weight(op, GAMMA_PARTS[mod.kind], cache)
    return torch.add(op.weight, part, alpha=mod.gamma, out=out)


def modified_bias(op: LinearOp, mod: ParamMod, cache: dict) -> Tensor:
    return cached(cache, ("bias", mod), lambda: mod(op.bias))


# ---------------------------------------------------------------- the mechanism
def propagate(
    groups: tuple[Group, ...],
    op: LinearOp,
    a: Tensor,
    z: Tensor | None,
    r: Tensor,
    *,
    stabilizer: float,
    nonnegative: bool,
    bounds,
    cache: dict,
) -> Tensor:
    """Relevance of the input ``a`` of ``op`` for the rule made of ``groups``."""
    sources = _Sources(a, nonnegative, bounds)
    products = _Products(op, z, sources, cache)
    live = [(g, [t for t in g.terms if not sources.is_zero(t.source)]) for g in groups]
    signals = _Signals()
    for group, terms in live:
        if not terms:
            continue
        den, epsilon = products.denominator(terms, stabilizer)
        scratch = den is not z and not products.holds(den) and den.shape == r.shape
        s = divide(_masked(r, z, group.mask), den, epsilon, scratch)
        del den
        for term in terms:
            source = sources.canonical(term.source)
            signals.add(source, term.weight, s, group.coefficient * term.sign)
    return signals.input_relevance(op, sources, cache)


class _Sources:
    """The input variants terms draw on, computed lazily once per call."""

    def __init__(self, a: Tensor, nonnegative: bool, bounds):
        self.a = a
        self.nonnegative = nonnegative
        self.bounds = bounds
        self._made: dict[str, Tensor] = {}

    def is_zero(self, source: str) -> bool:
        return source == "negative" and self.nonnegative

    def canonical(self, source: str) -> str:
        return "input" if source == "positive" and self.nonnegative else source

    def sign(self, source: str) -> int:
        """+1 / -1 where the source is >= 0 / <= 0 everywhere, else 0."""
        if source in ("ones", "positive") or (source == "input" and self.nonnegative):
            return 1
        return -1 if source == "negative" else 0

    def get(self, source: str) -> Tensor:
        a = self.a
        if self.canonical(source) == "input":
            return a
        if source not in self._made:
            if source == "positive":
                value = a.clamp(min=0)
            elif source == "negative":
                value = a.clamp(max=0)
            elif source == "ones":
                value = torch.ones((1,) + a.shape[1:], dtype=a.dtype, device=a.device)
            else:
                if self.bounds is None:
                    raise ValueError("the zbox rule needs input bounds (low/high)")
                bound = self.bounds[0 if source == "low" else 1]
                value = _broadcast_bound(bound, a)
            self._made[source] = value
        return self._made[source]


def _broadcast_bound(bound, a: Tensor) -> Tensor:
    """A scalar, per-channel (C,) or per-pixel (C,H,W) bound as a (1, C, ...) tensor."""
    bound = torch.as_tensor(bound, dtype=a.dtype, device=a.device)
    if bound.dim() == 1 and a.dim() > 2 and bound.numel() == a.shape[1]:
        bound = bound.view((1, -1) + (1,) * (a.dim() - 2))
    return bound.expand((1,) + a.shape[1:])


class _Products:
    """Denominators of the groups of one call; products ``W' src`` computed once each."""

    def __init__(self, op: LinearOp, z: Tensor | None, sources: _Sources, cache: dict):
        self.op, self.z, self.sources, self.cache = op, z, sources, cache
        self.memo: dict[tuple[str, ParamMod], Tensor] = {}

    def holds(self, t: Tensor) -> bool:
        return any(t is value for value in self.memo.values())

    def denominator(self, terms: list[Term], epsilon: float) -> tuple[Tensor, float | None]:
        """``sum_t sign_t (W_t src_t + b_t)`` and the stabiliser still to apply to it."""
        if len(terms) == 1 and self._is_layer(terms[0]):
            return self.z, epsilon  # the forward pass's own output: no second forward
        if not any(self._on_basis(t) for t in terms) and self._stackable(terms):
            return self._fused(terms, epsilon)
        return _sum(_scaled(t.sign, self._with_bias(t)) for t in terms), epsilon

    def _is_layer(self, term: Term) -> bool:
        plain_bias = term.bias == IDENTITY or self.op.bias is None
        plain = term.source == "input" and term.weight == IDENTITY and term.sign == 1
        return plain and plain_bias

    def _on_basis(self, term: Term) -> bool:
        """Whether the product is cheaper from ``z``: ``W a`` (plus ``W+ a``) on a data source."""
        basis = term.weight.basis()
        return basis is not None and basis[0] != 0 and term.source in DATA_SOURCES

    def _stackable(self, terms: list[Term]) -> bool:
        if len(terms) == 1:
            return True
        data = all(t.source in DATA_SOURCES for t in terms)
        return data and self.op.stackable and all(t.sign == 1 for t in terms)

    def _sign(self, term: Term) -> int:
        """The sign every value of ``sign * (W' src + b')`` has, or 0 if unknown."""
        sign = self.sources.sign(term.source) * term.weight.sign * int(term.sign)
        if term.bias is not None and self.op.bias is not None:
            if term.bias.sign * int(term.sign) != sign:
                return 0
        return sign

    def _fused(self, terms: list[Term], epsilon: float) -> tuple[Tensor, float | None]:
        """The group's denominator in one call of the layer (sources stacked)."""
        op, cache = self.op, self.cache
        signs = {self._sign(t) for t in terms}
        sign = signs.pop() if len(signs) == 1 else 0
        shift = sign * epsilon  # stab(z) = z + sign * epsilon where z's sign is known
        biased = tuple(t.bias for t in terms if t.bias is not None and op.bias is not None)

        def bias():
            total = _sum(modified_bias(op, mod, cache) for mod in biased)
            if shift == 0 or total is not None:
                return total if shift == 0 else total + shift
            return op.weight.new_full((op.weight.shape[0],), shift)

        mods = tuple(t.weight for t in terms)
        b = cached(cache, ("fused bias", biased, shift), bias)
        if len(terms) == 1:
            weight = modified_weight(op, mods[0], cache)
            source = self.sources.get(terms[0].source)
        else:
            weight = cached(
                cache,
                ("stacked weight", mods),
                lambda: torch.cat([modified_weight(op, m, cache) for m in mods], op.input_dim),
            )
            source = torch.cat([self.sources.get(t.source) for t in terms], op.input_dim)
        den = op.forward(source, weight, b)
        return den, None if shift != 0 else epsilon

    def _with_bias(self, term: Term) -> Tensor:
        if self._is_layer(term):
            return self.z
        out = self._product(term.source, term.weight)
        if term.bias is not None and self.op.bias is not None:
            bias = modified_bias(self.op, term.bias, self.cache)
            out = out + self.op.broadcast_bias(bias, out)
        return out

    def _product(self, source: str, mod: ParamMod) -> Tensor:
        source = self.sources.canonical(source)
        basis = mod.basis()
        if basis is None or source not in DATA_SOURCES:
            return self._direct(source, mod)
        parts = [
            _scaled(coefficient, self._basis(source, mod))
            for coefficient, mod in zip(basis, (IDENTITY, POSITIVE), strict=True)
            if coefficient
        ]
        return _sum(parts)

    def _basis(self, source: str, mod: ParamMod) -> Tensor:
        key = (source, mod)
        if key not in self.memo:
            if mod == IDENTITY and source == "input":
                bias = self.op.bias
                value = self.z if bias is None else self.z - self.op.broadcast_bias(bias, self.z)
            elif source == "negative" and ("positive", mod) in self.memo and mod == IDENTITY:
                value = self._basis("input", mod) - self.memo[("positive", mod)]
            else:
                value = self._direct(source, mod)
            self.memo[key] = value
        return self.memo[key]

    def _direct(self, source: str, mod: ParamMod) -> Tensor:
        key = (source, mod)
        if key not in self.memo:
            # constant sources (ones, bounds) have a batch of one and broadcast
            weight = modified_weight(self.op, mod, self.cache)
            self.memo[key] = self.op.forward(self.sources.get(source), weight, None)
        return self.memo[key]


class _Signals:
    """The signals ``s`` per (source, weight modifier), each with its scale kept apart."""

    def __init__(self):
        self.parts: dict[tuple[str, ParamMod], list[tuple[Tensor, float]]] = {}

    def add(self, source: str, mod: ParamMod, s: Tensor, scale: float) -> None:
        self.parts.setdefault((source, mod), []).append((s, scale))

    def input_relevance(self, op: LinearOp, sources: _Sources, cache: dict) -> Tensor:
        """``sum src * (scale W')^T s``: one transposed map per distinct signal."""
        users: dict[int, tuple[Tensor, list]] = {}
        for (source, mod), parts in self.parts.items():
            if len(parts) == 1:
                ((s, scale),) = parts
            else:
                s, scale = _sum(_scaled(c, t) for t, c in parts), 1.0
            users.setdefault(id(s), (s, []))[1].append((source, mod, scale))
        per_source: dict[str, Tensor] = {}
        for s, sharing in users.values():
            for source, part in _transpose(op, s, sharing, sources.a, cache):
                if source in per_source:
                    per_source[source].add_(part)
                else:
                    per_source[source] = part
        # the transposed maps are fresh tensors (or disjoint views of one): multiply in place
        result = _sum(
            part if source == "ones" else part.mul_(sources.get(source))
            for source, part in per_source.items()
        )
        return torch.zeros_like(sources.a) if result is None else result


def _transpose(op: LinearOp, s: Tensor, sharing: list, a: Tensor, cache: dict):
    """``(source, (scale W')^T s)`` for the terms sharing signal ``s``, stacked when it can."""
    weights = [modified_weight(op, mod, cache, scale) for _, mod, scale in sharing]
    if len(sharing) == 1 or not op.stackable:
        return [(user[0], op.transpose(s, w, a)) for user, w in zip(sharing, weights, strict=True)]
    key = ("stacked transpose", tuple((mod, scale) for _, mod, scale in sharing))
    stacked = cached(cache, key, lambda: torch.cat(weights, op.input_dim))
    out = op.transpose(s, stacked, op.stacked_like(a, len(sharing)))
    parts = out.chunk(len(sharing), op.input_dim)
    return [(user[0], part) for user, part in zip(sharing, parts, strict=True)]
