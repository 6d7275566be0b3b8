"""The LRP engine: rules, graph tracing and canonization, the explainer (torch only)."""

from .composite import Assignment, Composite, CompositeError, LayerMatch, LRNRule, RuleEntry
from .explainer import Explainer, Explanation, LayerRule
from .graph import UnsupportedModelError
from .lrn import lrn_relevance
from .rules import (
    AlphaBetaRule,
    EpsilonRule,
    FlatRule,
    GammaRule,
    LinearRule,
    NormRule,
    PassRule,
    WSquareRule,
    ZBoxRule,
    ZeroRule,
    ZPlusRule,
)

__all__ = [
    "AlphaBetaRule", "Assignment", "Composite", "CompositeError", "EpsilonRule", "Explainer",
    "Explanation", "FlatRule", "GammaRule", "LRNRule", "LayerMatch", "LayerRule", "LinearRule",
    "NormRule", "PassRule", "RuleEntry", "UnsupportedModelError", "WSquareRule", "ZBoxRule",
    "ZPlusRule", "ZeroRule", "lrn_relevance",
]  # fmt: skip
