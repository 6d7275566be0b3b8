"""Local response normalisation (Binder et al. 2016): identity, or the Taylor rule."""

from __future__ import annotations

import inspect

import torch.nn.functional as F
from torch import nn

from ..lrn import lrn_relevance
from .base import NodeHandler, call_step, register


@register
class LRNHandler(NodeHandler):
    kind = "lrn"
    rule_slot = "lrn"

    def recognise(self, node, ctx):
        modules, functions = (nn.LocalResponseNorm,), {F.local_response_norm}
        return call_step(
            node, ctx, self.kind, modules, functions, nonnegative=ctx.nonnegative(node)
        )

    def keeps(self, step, explainer):
        return explainer.graph_inputs(step.node)

    def propagate(self, step, env, r, explainer):
        from ..composite import LRNRule

        (source,) = explainer.graph_inputs(step.node)
        rule = step.rule
        if not isinstance(rule, LRNRule):  # pass
            return [(source, r)]
        r_in = lrn_relevance(
            env[source], r, *_lrn_params(step), mode=rule.mode, epsilon=rule.epsilon,
            sign_beta=rule.beta,
        )  # fmt: skip
        return [(source, r_in)]


def _lrn_params(step) -> tuple:
    if step.module is not None:
        m = step.module
        return m.size, m.alpha, m.beta, m.k
    bound = inspect.signature(F.local_response_norm).bind(*step.node.args, **step.node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    return a["size"], a["alpha"], a["beta"], a["k"]
