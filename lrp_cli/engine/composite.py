"""Which rule each layer gets: matching by module name, layer type and position.

Entries that name layers (by ``name`` glob or ``position``) win over entries that only give
a type; within each tier the first matching entry wins; unmatched layers get the default.
"""

from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field

from .lrn import LRN_MODES
from .rules import (
    AttentionRule,
    EpsilonRule,
    LayerNormRule,
    LinearRule,
    PassRule,
    ProportionalRule,
    _check_number,
)
from .schema import POSITION

TYPE_ALIASES = {"Conv": "_ConvNd", "Convolution": "_ConvNd", "Dense": "Linear",
                "BatchNorm": "_BatchNorm"}  # fmt: skip


class CompositeError(ValueError):
    """A rule config that is inconsistent with itself or with the model."""


@dataclass(frozen=True)
class LayerInfo:
    """What matching sees of a layer."""

    name: str
    type_names: tuple[str, ...]  # the class and its bases, most specific first
    position: int | None  # index among the model's Conv/Linear layers
    kind: str  # the handler's rule slot: linear | lrn | layernorm


@dataclass(frozen=True)
class LayerMatch:
    """A pattern over layers; every given field must match."""

    name: str | None = None  # fnmatch glob over the qualified module name
    types: tuple[str, ...] = ()
    position: str | int | None = None  # first | last | index | "start:stop"

    def __post_init__(self):
        if self.name is None and not self.types and self.position is None:
            raise CompositeError("a match needs at least one of name, type, position")
        if self.position is not None and not POSITION.match(str(self.position)):
            raise CompositeError(
                f"position must be first, last, an index or a range 'start:stop', "
                f"got {self.position!r}"
            )

    @property
    def names_layers(self) -> bool:
        return self.name is not None or self.position is not None

    def matches(self, layer: LayerInfo, count: int) -> bool:
        if self.name is not None and not fnmatch.fnmatchcase(layer.name, self.name):
            return False
        if self.types and not any(TYPE_ALIASES.get(t, t) in layer.type_names for t in self.types):
            return False
        if self.position is not None:
            if layer.position is None or layer.position not in _positions(self.position, count):
                return False
        return True

    def describe(self) -> str:
        parts = []
        if self.name is not None:
            parts.append(f"name={self.name}")
        if self.types:
            parts.append("type=" + "|".join(self.types))
        if self.position is not None:
            parts.append(f"position={self.position}")
        return ", ".join(parts)


def _positions(position, count: int) -> range:
    text = str(position)
    if text == "first":
        return range(0, min(1, count))
    if text == "last":
        return range(max(count - 1, 0), count)
    if ":" in text:
        start, stop = (int(p) if p else None for p in text.split(":"))
        return range(count)[slice(start, stop)]
    index = int(text)
    index = index + count if index < 0 else index
    return range(index, index + 1) if 0 <= index < count else range(0)


@dataclass
class LRNRule:
    """Local renormalisation: ``identity`` or the Taylor rule of Binder et al. 2016."""

    mode: str = "identity"
    epsilon: float = 0.0
    beta: float | None = None  # the sign-split variant's beta; None: the epsilon variant
    name: str = field(init=False, default="lrn")

    def __post_init__(self):
        if self.mode not in LRN_MODES:
            raise ValueError(f"lrn mode must be one of {', '.join(LRN_MODES)}, got {self.mode!r}")
        self.epsilon = _check_number("epsilon", self.epsilon)
        if self.beta is not None:
            self.beta = _check_number("beta", self.beta)

    def describe(self) -> str:
        if self.mode == "identity":
            return "lrn(identity)"
        variant = f"beta={self.beta}" if self.beta is not None else f"epsilon={self.epsilon}"
        return f"lrn(taylor, {variant})"


@dataclass
class RuleEntry:
    match: LayerMatch
    rule: object  # a LinearRule or an LRNRule
    origin: str = ""  # where it was defined, e.g. "config.yaml:12", for messages


@dataclass
class Assignment:
    """The outcome of matching: the rule of every layer and the entries that matched nothing."""

    layers: list[tuple[LayerInfo, object, str]]  # (layer, rule, "entry origin" or "default")
    unmatched: list[RuleEntry]


@dataclass
class Composite:
    """A complete rule configuration: per-layer entries plus the rules of everything else."""

    entries: list[RuleEntry] = field(default_factory=list)
    default: LinearRule = field(default_factory=lambda: EpsilonRule(1e-6))
    lrn: LRNRule = field(default_factory=LRNRule)
    batchnorm: object = field(default_factory=PassRule)  # BatchNorms with nothing to fold into
    proportional: ProportionalRule = field(default_factory=ProportionalRule)
    layernorm: LayerNormRule = field(default_factory=LayerNormRule)
    attention: AttentionRule = field(default_factory=AttentionRule)
    maxpool: str = "winner-take-all"  # or "average"
    products: str = "refuse"  # or "uniform": other products of two data tensors
    strict: bool = False
    description: str = ""
    name: str = "custom"
    origins: dict = field(default_factory=dict)  # setting -> "file:line" where it was given

    def __post_init__(self):
        if self.maxpool not in ("winner-take-all", "average"):
            raise CompositeError(
                f"maxpool must be winner-take-all or average, got {self.maxpool!r}"
            )
        if self.products not in ("refuse", "uniform"):
            raise CompositeError(f"products must be refuse or uniform, got {self.products!r}")

    def origin(self, setting: str) -> str:
        """Where a setting came from: the config's "file:line", or "default"."""
        return self.origins.get(setting, "default")

    def assign(self, layers: list[LayerInfo]) -> Assignment:
        """Give each layer its rule; warn (or raise when strict) about idle entries."""
        count = sum(1 for layer in layers if layer.position is not None)
        tiers = [e for e in self.entries if e.match.names_layers] + [
            e for e in self.entries if not e.match.names_layers
        ]
        used: set[int] = set()
        result = []
        for layer in layers:
            chosen = None
            for entry in tiers:
                if _rule_kind(entry.rule) in (layer.kind, "any") and entry.match.matches(
                    layer, count
                ):
                    chosen = entry
                    break
            if chosen is None:
                if layer.kind in ("lrn", "layernorm"):
                    setting = layer.kind
                elif "_BatchNorm" in layer.type_names:
                    setting = "batchnorm"
                else:
                    setting = "default"
                result.append((layer, getattr(self, setting), self.origin(setting)))
            else:
                if isinstance(chosen.rule, PassRule) and layer.position is not None:
                    raise CompositeError(
                        f"{chosen.origin or chosen.match.describe()}: rule pass cannot be used "
                        f"on {layer.type_names[0]} '{layer.name}' (input and output differ)"
                    )
                used.add(id(chosen))
                result.append((layer, chosen.rule, chosen.origin or chosen.match.describe()))
        unmatched = [e for e in self.entries if id(e) not in used]
        if unmatched:
            lines = "; ".join(
                f"{e.origin + ': ' if e.origin else ''}{e.match.describe()}" for e in unmatched
            )
            message = f"rule pattern matches no layer of the model: {lines}"
            if self.strict:
                raise CompositeError(message)
            warnings.warn(message, stacklevel=3)
        return Assignment(result, unmatched)


def _rule_kind(rule) -> str:
    if isinstance(rule, PassRule):
        return "any"
    if isinstance(rule, LayerNormRule):
        return "layernorm"
    return "lrn" if isinstance(rule, LRNRule) else "linear"
