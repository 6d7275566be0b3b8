"""The YAML names of the rules and settings, their parameters and types: declared once here,
read by config validation (torch-free) and by the factories that build the engine objects.

A parameter's type is a tuple of accepted Python types (numbers accept ints); ``choices``
restrict a string; ``rename`` maps a YAML parameter to the engine class's argument. ``slot``
says which nodes a rule can be given to (the handler's rule slot; ``any`` for pass).
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field

POSITION = re.compile(r"^(first|last|-?\d+|(-?\d+)?:(-?\d+)?)$")  # of a layer match
NUMBER, BOOL, TEXT, NUMBERS = (float,), (bool,), (str,), (float, list)


@dataclass(frozen=True)
class Spec:
    name: str
    factory: str  # the lrp_cli.engine name that builds it
    params: dict[str, tuple]
    slot: str = "linear"
    rename: dict[str, str] = field(default_factory=dict)
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    check: Callable[[dict], str | None] | None = None  # torch-free: a message, or None
    signed: tuple[str, ...] = ()  # numbers that may be negative

    def build(self, params: dict):
        """The engine object for validated ``params`` (imports torch)."""
        engine = importlib.import_module("lrp_cli.engine")
        arguments = {self.rename.get(k, k): v for k, v in params.items()}
        return getattr(engine, self.factory)(**arguments)


def _alpha_minus_beta(params: dict) -> str | None:
    alpha, beta = params.get("alpha", 2.0), params.get("beta", 1.0)
    if abs(alpha - beta - 1) > 1e-12:
        return f"alpha - beta must be 1, got alpha={alpha}, beta={beta}"
    return None


def _both_bounds(params: dict) -> str | None:
    if ("low" in params) != ("high" in params):
        return "give both low and high, or neither (the model's bounds)"
    return None


_STAB = {"stabilizer": NUMBER, "zero_bias": BOOL}

RULES: dict[str, Spec] = {
    spec.name: spec
    for spec in (
        Spec("zero", "ZeroRule", {"zero_bias": BOOL}),
        Spec("epsilon", "EpsilonRule", {"epsilon": NUMBER, "zero_bias": BOOL},
             rename={"epsilon": "stabilizer"}),
        Spec("gamma", "GammaRule", {"gamma": NUMBER, **_STAB}),
        Spec("alpha_beta", "AlphaBetaRule", {"alpha": NUMBER, "beta": NUMBER, **_STAB},
             check=_alpha_minus_beta),
        Spec("zplus", "ZPlusRule", dict(_STAB)),
        Spec("zbox", "ZBoxRule", {"low": NUMBERS, "high": NUMBERS, **_STAB},
             check=_both_bounds, signed=("low", "high")),
        Spec("wsquare", "WSquareRule", dict(_STAB)),
        Spec("flat", "FlatRule", {"stabilizer": NUMBER}),
        Spec("pass", "PassRule", {}, slot="any"),
        Spec("lrn", "LRNRule", {"mode": TEXT, "epsilon": NUMBER, "beta": NUMBER}, slot="lrn",
             choices={"mode": ("identity", "taylor")}),
        Spec("layernorm", "LayerNormRule", {"epsilon": NUMBER, "zero_bias": BOOL},
             slot="layernorm", rename={"epsilon": "stabilizer"}),
    )
}  # fmt: skip

# top-level mappings that configure one kind of node for the whole model
SETTINGS: dict[str, Spec] = {
    "proportional": Spec("proportional", "ProportionalRule", {"stabilizer": NUMBER}),
    "lrn": RULES["lrn"],
    "layernorm": RULES["layernorm"],
    "attention": Spec("attention", "AttentionRule", {"mode": TEXT, "epsilon": NUMBER},
                      choices={"mode": ("cp", "attnlrp")}),
}  # fmt: skip
SETTING_ALIASES = {"norm": "proportional"}  # older configs' name for the proportional rule

# top-level keys that name one of a few strategies
CHOICES: dict[str, tuple[str, ...]] = {
    "maxpool": ("winner-take-all", "average"),
    "products": ("refuse", "uniform"),
}
TOP_LEVEL = {"description", "rules", "default", "batchnorm", "strict"}
TOP_LEVEL |= set(SETTINGS) | set(SETTING_ALIASES) | set(CHOICES)
