"""Sums, differences, means and average pooling: the proportional rule (each input gets
relevance in proportion to its share of the sum, through the op's own Jacobian)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import NodeHandler, call_step, method_name, register, vjp

AVGPOOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)  # fmt: skip
AVGPOOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                     F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}  # fmt: skip
SUM_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, torch.sum, torch.mean,
                 operator.iadd, operator.isub}  # fmt: skip
SUM_METHODS = {"add", "sub", "sum", "mean", "__add__", "__sub__", "__radd__"}
_SUBTRACT = (operator.sub, torch.sub, operator.isub, "sub", "__sub__")
_PLAIN_ADD = (operator.add, torch.add, "add", "__add__")


@register
class ProportionalHandler(NodeHandler):
    kind = "proportional"
    composite_field = "proportional"

    def recognise(self, node, ctx):
        from ..graph import Step
        from .layers import out_of_place

        nonneg = ctx.nonnegative(node)
        step = call_step(node, ctx, self.kind, AVGPOOL_MODULES, nonnegative=nonneg)
        if step is not None:
            return step
        if node.op == "call_function":
            if node.target in AVGPOOL_FUNCTIONS or node.target in SUM_FUNCTIONS:
                target = out_of_place(node.target)
                nonneg = nonneg and target not in _SUBTRACT
                return Step(node, self.kind, function=target, nonnegative=nonneg)
        elif node.op == "call_method" and method_name(node) in SUM_METHODS:
            name = method_name(node)
            return Step(node, self.kind, function=name, nonnegative=nonneg and name != "sub")
        return _scaled_sum(node, ctx)

    def keeps(self, step, explainer):
        return [*explainer.graph_inputs(step.node), step.node]

    def propagate(self, step, env, r, explainer):
        inputs = explainer.graph_inputs(step.node)
        plain = _is_plain_add(step, inputs, env)
        # the sum's value is needed by nothing after this step (unless it is, or is viewed
        # by, the logits the caller gets back): its memory takes the signal, then the last
        # input's share
        z = env[step.node]
        owned = not explainer.is_returned(z)
        s = step.rule.divide(r, z, scratch=owned)
        if plain:
            *others, last = inputs
            shares = [(n, env[n] * s) for n in others]
            return shares + [(last, s.mul_(env[last]) if owned else env[last] * s)]
        return [(n, env[n] * g) for n, g in vjp(step, env, s, explainer).items()]


def _scaled_sum(node, ctx):
    """``addcmul(a, b, c, value=v) = a + v * b * c`` with at most one of ``b``, ``c`` data
    (timm's per-channel Affine, ConvNeXt-V2's GRN): a sum whose term ``v * b * c`` is linear
    in the data, so each term gets its share through the op's Jacobian like any sum."""
    from ..graph import Step

    if node.op == "call_function" and node.target is torch.addcmul:
        target, factors = torch.addcmul, node.args[1:3]
    elif node.op == "call_method" and method_name(node) == "addcmul":
        target, factors = "addcmul", node.args[1:3]
    else:
        return None
    if len(factors) != 2 or sum(isinstance(f, fx.Node) and ctx.depends[f] for f in factors) > 1:
        return None  # a product of two data tensors: the products handlers decide
    return Step(node, "proportional", function=target)


def _is_plain_add(step, inputs, env) -> bool:
    """``a + b`` of same-shaped tensors: its VJP is the identity for each term."""
    if step.function not in _PLAIN_ADD:
        return False
    if len(inputs) != len(step.node.args) or step.node.kwargs:
        return False
    shapes = {env[n].shape for n in inputs}
    return len(shapes) == 1 and env[step.node].shape in shapes
