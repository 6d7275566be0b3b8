"""LRP rules for linear layers, each a small configuration of one mechanism.

Every rule here is a sum of *groups*. A group is a list of *terms* ``(source, weight modifier,
bias modifier, sign)``; its denominator is ``z_g = sum_t sign_t * (W_t src_t(a) + b_t)``,
stabilised, and the relevance it sends back is

    R_in = sum_g  coef_g * sum_t sign_t * src_t(a) * W_t^T (mask_g * R / stab(z_g))

which is the four-step form of lrp-notes section 1 (forward, divide, one transposed map,
multiply). The formulas match zennit 0.5.1's rules term for term, so presets agree with its
composites; sources ``positive``/``negative`` are the input's sign parts, ``low``/``high``
the z-box bounds and ``ones`` the input-independent rules (flat, w-square).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .linear import LinearOp

SOURCES = ("input", "positive", "negative", "ones", "low", "high")


# ---------------------------------------------------------------- parameter modifiers
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


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1 (zennit's convention)."""
    if epsilon == 0:
        return z
    # 0-dim tensors in z's dtype: a Python float would round through float32 here
    shift = torch.where(z >= 0, z.new_tensor(epsilon), z.new_tensor(-epsilon))
    return z + shift


def _divide(r: Tensor, z: Tensor, epsilon: float, scratch: bool = False) -> Tensor:
    """``r / stab(z)``; with epsilon 0 (LRP-0) a zero denominator sends nothing back.

    ``scratch``: ``z`` is a temporary of the caller's, reused for the result (less memory).
    """
    if epsilon == 0:
        zero = z == 0
        return torch.where(zero, 0.0, r / torch.where(zero, 1.0, z))
    if not scratch:
        return r / stabilize(z, epsilon)
    z.add_(torch.where(z >= 0, z.new_tensor(epsilon), z.new_tensor(-epsilon)))
    return torch.div(r, z, out=z)


def _scaled(coefficient: float, t: Tensor) -> Tensor:
    return t if coefficient == 1 else coefficient * t


def _sum(parts) -> Tensor:
    """Sum without the extra pass of ``sum()``'s leading ``0 +``."""
    total = None
    for part in parts:
        total = part if total is None else total + part
    return total


def _check_number(name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not value >= minimum or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- the mechanism
class LinearRule:
    """Base of all linear-layer rules; subclasses (dataclasses) only describe their groups."""

    name = "linear"
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def groups(self) -> tuple[Group, ...]:
        raise NotImplementedError

    def params(self) -> dict:
        """Parameters for display and records."""
        return {"stabilizer": self.stabilizer, "zero_bias": self.zero_bias}

    def describe(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.params().items() if v is not False)
        return f"{self.name}({shown})"

    def __post_init__(self):
        if not isinstance(self.zero_bias, bool):
            raise ValueError(f"zero_bias must be true or false, got {self.zero_bias!r}")
        self.stabilizer = _check_number("stabilizer", self.stabilizer)

    def needs_output(self, nonnegative: bool) -> bool:
        """Whether the relevance pass needs the layer's output ``z`` (masks, ``W a = z - b``);
        if not, the forward pass can free it at once."""
        for group in self.groups():
            terms = [t for t in group.terms if not (nonnegative and t.source == "negative")]
            if terms and group.mask is not None:
                return True
            for term in terms:
                basis = term.weight.basis()
                if basis is not None and basis[0] != 0 and term.source in SOURCES[:3]:
                    return True
        return False

    def _bias(self, mod: ParamMod | None) -> ParamMod | None:
        return None if self.zero_bias else mod

    def relevance(
        self,
        op: LinearOp,
        a: Tensor,
        z: Tensor,
        r: Tensor,
        *,
        nonnegative: bool = False,
        bounds: tuple[Tensor, Tensor] | None = None,
        cache: dict | None = None,
    ) -> Tensor:
        """Relevance of the input ``a`` given the output relevance ``r`` and output ``z``.

        ``nonnegative`` says ``a >= 0`` is known (it comes from a ReLU): negative-input
        terms are then exactly zero and skipped. ``cache`` holds modified weights across calls.
        """
        cache = {} if cache is None else cache
        sources = _Sources(a, nonnegative, bounds)
        products = _Products(op, z, sources, cache)
        signals: dict[tuple[str, ParamMod], Tensor] = {}
        groups = [(g, [t for t in g.terms if not sources.is_zero(t.source)]) for g in self.groups()]
        groups = [(g, terms) for g, terms in groups if terms]
        for group, terms in groups:
            if len(terms) == 1 and _is_plain(terms[0], op):
                den = z  # the forward pass's own output: no second forward
            elif len(groups) == 1 and len(terms) == 1 and terms[0].sign == 1:
                den = products.fused(terms[0])  # z-plus, flat, w-square: bias added by the op
            else:
                den = _sum(_scaled(t.sign, products.with_bias(t)) for t in terms)
            scratch = den is not z and not products.holds(den) and den.shape == r.shape
            s = _divide(_masked(r, z, group.mask), den, self.stabilizer, scratch)
            del den
            for term in terms:
                part = _scaled(group.coefficient * term.sign, s)
                key = (sources.canonical(term.source), term.weight)
                signals[key] = part if key not in signals else signals[key] + part
        # one multiplication by each input part, after its transposed maps are summed
        per_source: dict[str, Tensor] = {}
        for (source, mod), signal in signals.items():
            part = op.transpose(signal, _weight(op, mod, cache), a.shape)
            per_source[source] = part if source not in per_source else per_source[source] + part
        result = _sum(sources.get(source) * part for source, part in per_source.items())
        return torch.zeros_like(a) if result is None else result


def _masked(r: Tensor, z: Tensor, mask: str | None) -> Tensor:
    if mask == "positive":
        return r * (z > 0)
    if mask == "negative":
        return r * (z < 0)
    return r


class _Products:
    """``W' src`` for the terms of one call, each computed once.

    Modifiers that are linear in ``(W, W+)`` (identity, W+, gamma) are expanded on that
    basis, and ``W a`` is the forward pass's own ``z - b``: after a ReLU, gamma needs one
    extra forward (``W+ a``) instead of two.
    """

    def __init__(self, op: LinearOp, z: Tensor, sources: _Sources, cache: dict):
        self.op, self.z, self.sources, self.cache = op, z, sources, cache
        self.memo: dict[tuple[str, ParamMod], Tensor] = {}

    def fused(self, term: Term) -> Tensor:
        """``W' src + b'`` in one call of the layer, for a term nothing else shares."""
        bias = None
        if term.bias is not None and self.op.bias is not None:
            bias = _bias(self.op, term.bias, self.cache)
        weight = _weight(self.op, term.weight, self.cache)
        return self.op.forward(self.sources.get(term.source), weight, bias)

    def holds(self, t: Tensor) -> bool:
        return any(t is value for value in self.memo.values())

    def with_bias(self, term: Term) -> Tensor:
        out = self.product(term.source, term.weight)
        if term.bias is not None and self.op.bias is not None:
            out = out + self.op.broadcast_bias(_bias(self.op, term.bias, self.cache), out)
        return out

    def product(self, source: str, mod: ParamMod) -> Tensor:
        source = self.sources.canonical(source)
        basis = mod.basis()
        if basis is None or source not in ("input", "positive", "negative"):
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
            weight = _weight(self.op, mod, self.cache)
            self.memo[key] = self.op.forward(self.sources.get(source), weight, None)
        return self.memo[key]


def _is_plain(term: Term, op: LinearOp) -> bool:
    plain_bias = term.bias == IDENTITY or op.bias is None
    return term.source == "input" and term.weight == IDENTITY and plain_bias and term.sign == 1


def _weight(op: LinearOp, mod: ParamMod, cache: dict) -> Tensor:
    key = ("weight", mod)
    if key not in cache:
        cache[key] = mod(op.weight)
    return cache[key]


def _bias(op: LinearOp, mod: ParamMod, cache: dict) -> Tensor:
    key = ("bias", mod)
    if key not in cache:
        cache[key] = mod(op.bias)
    return cache[key]


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

    def get(self, source: str) -> Tensor:
        a = self.a
        if source == "input" or (source == "positive" and self.nonnegative):
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


# ---------------------------------------------------------------- the rules
@dataclass
class EpsilonRule(LinearRule):
    """LRP-epsilon: ``R_j = sum_k a_j w_jk / (z_k + eps sign(z_k)) R_k``; eps 0 is LRP-0."""

    name: str = field(init=False, default="epsilon")
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        self.stabilizer = _check_number("epsilon", self.stabilizer)
        super().__post_init__()

    def params(self):
        return {"epsilon": self.stabilizer, "zero_bias": self.zero_bias}

    def groups(self):
        return (Group((Term("input", IDENTITY, self._bias(IDENTITY)),)),)


def ZeroRule(zero_bias: bool = False) -> EpsilonRule:  # noqa: N802 - reads as a rule name
    """LRP-0: the epsilon rule with no stabiliser (0/0 sends no relevance)."""
    rule = EpsilonRule(0.0, zero_bias)
    rule.name = "zero"
    return rule


@dataclass
class GammaRule(LinearRule):
    """LRP-gamma, generalised to signed inputs as zennit does (weights and bias modified).

    Positive outputs use ``a+ (w + g w+) + a- (w + g w-)``, negative outputs the mirror.
    """

    name: str = field(init=False, default="gamma")
    gamma: float = 0.25
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        self.gamma = _check_number("gamma", self.gamma)
        super().__post_init__()

    def params(self):
        return {"gamma": self.gamma, **super().params()}

    def groups(self):
        up, down = ParamMod("gamma+", self.gamma), ParamMod("gamma-", self.gamma)
        return (
            Group(
                (Term("positive", up, self._bias(up)), Term("negative", down, None)),
                mask="positive",
            ),
            Group(
                (Term("positive", down, self._bias(down)), Term("negative", up, None)),
                mask="negative",
            ),
        )


@dataclass
class AlphaBetaRule(LinearRule):
    """alpha-beta: ``alpha`` times positive contributions minus ``beta`` times negative ones."""

    name: str = field(init=False, default="alpha_beta")
    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        self.alpha = _check_number("alpha", self.alpha)
        self.beta = _check_number("beta", self.beta)
        super().__post_init__()
        if abs(self.alpha - self.beta - 1) > 1e-12:
            raise ValueError(f"alpha - beta must be 1, got alpha={self.alpha}, beta={self.beta}")

    def params(self):
        return {"alpha": self.alpha, "beta": self.beta, **super().params()}

    def groups(self):
        positive = Group(
            (
                Term("positive", POSITIVE, self._bias(POSITIVE)),
                Term("negative", NEGATIVE, None),
            ),
            coefficient=self.alpha,
        )
        if self.beta == 0:
            return (positive,)
        negative = Group(
            (
                Term("positive", NEGATIVE, self._bias(NEGATIVE)),
                Term("negative", POSITIVE, None),
            ),
            coefficient=-self.beta,
        )
        return (positive, negative)


@dataclass
class ZPlusRule(AlphaBetaRule):
    """z-plus: only positive contributions; the alpha-beta rule with alpha 1, beta 0."""

    name: str = field(init=False, default="zplus")
    stabilizer: float = 1e-6
    zero_bias: bool = False
    alpha: float = field(init=False, default=1.0)
    beta: float = field(init=False, default=0.0)

    def params(self):
        return LinearRule.params(self)


@dataclass
class ZBoxRule(LinearRule):
    """z-beta / box rule for the pixel layer: ``x w - l w+ - h w-`` over a bounded input.

    ``low``/``high`` are scalars, per-channel or per-pixel; ``None`` takes the bounds the
    explainer was given (the model's input normalisation).
    """

    name: str = field(init=False, default="zbox")
    low: object = None
    high: object = None
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def __post_init__(self):
        super().__post_init__()
        if (self.low is None) != (self.high is None):
            raise ValueError("zbox needs both low and high, or neither")

    def params(self):
        shown = {"low": _short(self.low), "high": _short(self.high)}
        return {k: v for k, v in shown.items() if v is not None} | super().params()

    def groups(self):
        bias = self._bias(IDENTITY)
        return (
            Group(
                (
                    Term("input", IDENTITY, bias),
                    Term("low", POSITIVE, self._bias(POSITIVE), sign=-1.0),
                    Term("high", NEGATIVE, self._bias(NEGATIVE), sign=-1.0),
                )
            ),
        )


def _short(value):
    if value is None or isinstance(value, (int, float)):
        return value
    values = torch.as_tensor(value).flatten().tolist()
    return [round(v, 4) for v in values] if len(values) <= 4 else f"tensor({len(values)})"


@dataclass
class WSquareRule(LinearRule):
    """w-square: ``w_jk^2 / sum_j w_jk^2``, independent of the input."""

    name: str = field(init=False, default="wsquare")
    stabilizer: float = 1e-6
    zero_bias: bool = False

    def groups(self):
        square = ParamMod("square")
        return (Group((Term("ones", square, self._bias(square)),)),)


@dataclass
class FlatRule(LinearRule):
    """flat: relevance spread uniformly over each output's receptive field."""

    name: str = field(init=False, default="flat")
    stabilizer: float = 1e-6

    def groups(self):
        return (Group((Term("ones", ParamMod("ones"), None),)),)


@dataclass
class NormRule:
    """norm: split among the inputs of a sum or average in proportion to their share.

    Used for residual additions, ``sum``/``mean`` and average pooling: ``R_i = x_i * dz/dx_i^T
    (R / stab(z))`` with the op's own vector-Jacobian product.
    """

    stabilizer: float = 1e-6
    name: str = field(init=False, default="norm")

    def __post_init__(self):
        self.stabilizer = _check_number("stabilizer", self.stabilizer)

    def describe(self) -> str:
        return f"norm(stabilizer={self.stabilizer})"

    def divide(self, r: Tensor, z: Tensor) -> Tensor:
        return _divide(r, z, self.stabilizer)


@dataclass
class PassRule:
    """pass: relevance goes through unchanged (element-wise activations, dropout)."""

    name: str = field(init=False, default="pass")

    def describe(self) -> str:
        return "pass"

    def relevance(self, op, a, z, r, **_) -> Tensor:
        return r
