"""LRP rules for linear layers, each a small configuration of one mechanism.

A rule says which *groups* of *terms* its relevance is made of (terms.py has the mechanism
and the four-step form it evaluates). The formulas match zennit 0.5.1's rules term for term,
so presets agree with its composites; sources ``positive``/``negative`` are the input's sign
parts, ``low``/``high`` the z-box bounds and ``ones`` the input-independent rules (flat,
w-square).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .linear import LinearOp, memory_format
from .terms import (
    DATA_SOURCES,
    IDENTITY,
    NEGATIVE,
    POSITIVE,
    Group,
    ParamMod,
    Term,
    cached,
    divide,
    gamma_weight,
    group_indicators,
    modified_bias,
    modified_weight,
    propagate,
)


def _check_number(name: str, value, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not value >= minimum or value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------- the base rule
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
                if basis is not None and basis[0] != 0 and term.source in DATA_SOURCES:
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
        return propagate(
            self.groups(),
            op,
            a,
            z,
            r,
            stabilizer=self.stabilizer,
            nonnegative=nonnegative,
            bounds=bounds,
            cache={} if cache is None else cache,
        )


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

    def relevance(self, op, a, z, r, *, nonnegative=False, bounds=None, cache=None):
        if self.gamma > 0 and self.stabilizer > 0 and not (self.zero_bias and op.bias is not None):
            cache = {} if cache is None else cache
            if not nonnegative:
                return _gamma_signed(op, a, z, r, self.gamma, self.stabilizer, cache)
            return _gamma_closed_form(op, a, z, r, self.gamma, self.stabilizer, nonnegative, cache)
        return super().relevance(op, a, z, r, nonnegative=nonnegative, bounds=bounds, cache=cache)

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


def _stacked_gamma_weight(op: LinearOp, up: ParamMod, down: ParamMod, cache: dict) -> Tensor:
    """``[W + g W+; W + g W-]`` along the output dim, each half written in place (per batch,
    so no concatenated copies)."""
    weight = op.weight
    channels = weight.shape[0]
    out = torch.empty(
        (2 * channels,) + weight.shape[1:],
        dtype=weight.dtype,
        device=weight.device,
        memory_format=memory_format(weight),
    )
    for half, mod in zip((out[:channels], out[channels:]), (up, down), strict=True):
        gamma_weight(op, mod, cache, out=half)
    return out


def _gamma_closed_form(
    op: LinearOp,
    a: Tensor,
    z: Tensor,
    r: Tensor,
    gamma: float,
    epsilon: float,
    nonnegative: bool,
    cache: dict,
) -> Tensor:
    """The gamma rule's two groups with one denominator tensor: nine cheap arithmetic passes
    over the output (no ``torch.where``) instead of the general mechanism's twenty.

    With ``zp = W+ a+ + W- a- + b+ + epsilon / gamma`` (one call of the layer; ``a- = 0``
    after a ReLU), the stabilised denominator is ``z + gamma zp`` where ``z > 0`` (the
    positive group, its sign known) and ``z + gamma (z - zp)`` where ``z < 0`` (the negative
    group; ``z - zp = W- a+ + W+ a- + b- - epsilon / gamma``, no cancellation). One division,
    then each half of the signal goes back through its group's weights, in one stacked
    transposed map where the layer allows it.
    """
    up, down = ParamMod("gamma+", gamma), ParamMod("gamma-", gamma)

    def side_by_side(*mods):  # modified weights along the input dim (not cached one by one)
        return torch.cat([m(op.weight) for m in mods], 1)

    def shifted_bias():
        if op.bias is None:
            return op.weight.new_full((op.weight.shape[0],), epsilon / gamma)
        return modified_bias(op, POSITIVE, cache) + epsilon / gamma

    bias = cached(cache, ("gamma shifted bias", gamma, epsilon), shifted_bias)
    parts = [a] if nonnegative else [a.clamp(min=0), a.clamp(max=0)]
    if len(parts) == 1:
        zp = op.forward(a, modified_weight(op, POSITIVE, cache), bias)
    elif op.stackable:
        weight = cached(cache, ("gamma sign parts",), lambda: side_by_side(POSITIVE, NEGATIVE))
        zp = op.forward(torch.cat(parts, op.input_dim), weight, bias)
    else:
        zp = op.forward(parts[0], modified_weight(op, POSITIVE, cache), bias)
        zp.add_(op.forward(parts[1], modified_weight(op, NEGATIVE, cache), None))
    # the indicators of the two groups (z > 0, z < 0), then their signals, in place: where
    # the layer stacks, in the two halves of the stacked signal
    if op.stackable:
        signal = op.stacked_like(z, 2)
        upper, lower = signal.chunk(2, op.input_dim)
    else:
        upper, lower = torch.empty_like(z), torch.empty_like(z)
    group_indicators(z, upper, lower)
    den = torch.sub(z, zp)
    torch.lerp(den, zp, upper, out=den)  # zp where z > 0, else z - zp: exact for weights 0/1
    del zp
    torch.div(r, torch.add(z, den, alpha=gamma, out=den), out=den)
    upper.mul_(den)
    lower.mul_(den)
    del den
    # the modified weight of each (signal half, input part): a+ sees gamma+ from the positive
    # group and gamma- from the negative one, a- the other way round
    mods = [(up, down), (down, up)][: len(parts)]
    if op.stackable:  # everything through one transposed map
        del upper, lower
        stacked = cached(
            cache,
            ("gamma stacked weight", gamma, len(parts)),
            lambda: (
                _stacked_gamma_weight(op, up, down, cache)
                if len(parts) == 1
                else torch.cat(
                    [side_by_side(*[m[0] for m in mods]), side_by_side(*[m[1] for m in mods])]
                )
            ),
        )
        like = a if len(parts) == 1 else op.stacked_like(a, len(parts))
        out = op.transpose(signal, stacked, like).chunk(len(parts), op.input_dim)
    else:
        out = []
        for up_or_down, down_or_up in mods:
            part = op.transpose(upper, modified_weight(op, up_or_down, cache), a)
            part.add_(op.transpose(lower, modified_weight(op, down_or_up, cache), a))
            out.append(part)
    result = out[0].mul_(parts[0])
    for part, source in zip(out[1:], parts[1:], strict=True):
        result = result + part.mul_(source)
    return result


def _gamma_signed(
    op: LinearOp, a: Tensor, z: Tensor, r: Tensor, gamma: float, epsilon: float, cache: dict
) -> Tensor:
    """The gamma rule on a signed input (after LayerNorm or GELU) with four layer-sized
    products instead of seven, by ``W+ a+ + W- a- = (W a + |W| |a|) / 2``.

    With ``za = |W| |a| + |b|`` (one call of the layer), the stabilised denominator is
    ``(1 + g/2) z + sign(z) (g/2 za + eps)``: both terms have the sign of ``z``, so nothing
    cancels. The two groups' four transposed maps collapse the same way into two, ``R = (1 +
    g/2) a W^T s + g/2 |a| |W|^T (sign(z) s)`` with ``s = r / den`` (0 where ``z == 0``):
    equal to the two-group form up to rounding (tests compare them in float64).
    """
    weights = cached(cache, ("gamma absolute weight",), lambda: op.weight.abs())
    bias = None if op.bias is None else cached(cache, ("gamma absolute bias",), op.bias.abs)
    magnitude = a.abs()
    za = op.forward(magnitude, weights, bias)
    sign = torch.sign(z)
    den = za.mul_(gamma / 2).add_(epsilon).mul_(sign)
    den.add_(z, alpha=1 + gamma / 2)
    den.add_(1 - sign.abs())  # 1 where z == 0 (den is 0 there), so the division is safe
    s = torch.div(r * sign.abs(), den, out=den)
    del den
    result = op.transpose(s, op.weight, a).mul_(a).mul_(1 + gamma / 2)
    part = op.transpose(s.mul_(sign), weights, a).mul_(magnitude).mul_(gamma / 2)
    return result.add_(part)


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
class ProportionalRule:
    """proportional: split among the inputs of a sum or average in proportion to their share.

    Used for residual additions, ``sum``/``mean``, average pooling, the position-embedding
    add: ``R_i = x_i * dz/dx_i^T (R / stab(z))`` with the op's own vector-Jacobian product.
    (Called "norm" in zennit and in older configs, which still accept that key.)
    """

    stabilizer: float = 1e-6
    name: str = field(init=False, default="proportional")

    def __post_init__(self):
        self.stabilizer = _check_number("stabilizer", self.stabilizer)

    def describe(self) -> str:
        return f"proportional(stabilizer={self.stabilizer})"

    def divide(self, r: Tensor, z: Tensor, scratch: bool = False) -> Tensor:
        """``r / stab(z)``; ``scratch``: ``z`` may be overwritten with the result."""
        return divide(r, z, self.stabilizer, scratch)


@dataclass
class LayerNormRule:
    """The LN-rule: LRP-epsilon on LayerNorm with its standard deviation held constant;
    ``zero_bias`` leaves ``beta`` out of the denominator."""

    stabilizer: float = 1e-6
    zero_bias: bool = False
    name: str = field(init=False, default="layernorm")

    def __post_init__(self):
        self.stabilizer = _check_number("epsilon", self.stabilizer)
        if not isinstance(self.zero_bias, bool):
            raise ValueError(f"zero_bias must be true or false, got {self.zero_bias!r}")

    def describe(self) -> str:
        bias = ", zero_bias=True" if self.zero_bias else ""
        return f"layernorm(epsilon={self.stabilizer}{bias})"


@dataclass
class AttentionRule:
    """How attention is explained: ``cp`` (CP-LRP: attention weights constant, relevance
    through the values) or ``attnlrp`` (softmax Taylor rule, uniform epsilon products)."""

    mode: str = "cp"
    epsilon: float = 1e-6
    name: str = field(init=False, default="attention")

    def __post_init__(self):
        if self.mode not in ("cp", "attnlrp"):
            raise ValueError(f"attention mode must be cp or attnlrp, got {self.mode!r}")
        self.epsilon = _check_number("epsilon", self.epsilon)

    def describe(self) -> str:
        return f"{'cp-lrp' if self.mode == 'cp' else 'attnlrp'}(epsilon={self.epsilon})"


@dataclass
class PassRule:
    """pass: relevance goes through unchanged (element-wise activations, dropout)."""

    name: str = field(init=False, default="pass")

    def describe(self) -> str:
        return "pass"

    def relevance(self, op, a, z, r, **_) -> Tensor:
        return r
