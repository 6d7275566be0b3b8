"""The LRP engine: rules, graph tracing and canonization, the explainer (torch only).

Names are imported on first use, so that torch-free parts (``engine.schema``, the YAML rule
declarations) can be read without importing torch.
"""

import importlib

_EXPORTS = {
    "Assignment": "composite", "Composite": "composite", "CompositeError": "composite",
    "LayerMatch": "composite", "LRNRule": "composite", "RuleEntry": "composite",
    "Explainer": "explainer", "Explanation": "explainer", "LayerRule": "explainer",
    "UnsupportedModelError": "graph", "lrn_relevance": "lrn",
    "AlphaBetaRule": "rules", "AttentionRule": "rules", "EpsilonRule": "rules",
    "FlatRule": "rules", "GammaRule": "rules", "LayerNormRule": "rules", "LinearRule": "rules",
    "PassRule": "rules", "ProportionalRule": "rules", "WSquareRule": "rules",
    "ZBoxRule": "rules", "ZeroRule": "rules", "ZPlusRule": "rules",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
