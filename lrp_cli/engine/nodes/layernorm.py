"""LayerNorm by the LN-rule (Ali et al. 2022, LXT's ``layer_norm``): the standard deviation
is a constant, so ``y = (x - mean(x)) * gamma / sigma + beta`` is linear in ``x`` and gets
LRP-epsilon, ``beta`` absorbing like a bias. ``nn.LayerNorm``, ``F.layer_norm`` and the
permuted LayerNorm2d of ConvNeXt (which traces to ``F.layer_norm``) alike; GroupNorm
(``nn.GroupNorm``, ``F.group_norm``: timm's PoolFormer) is the same rule within each group."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..terms import divide
from .base import NodeHandler, enclosing_module, exact_type, refuse, register


@register
class LayerNormHandler(NodeHandler):
    kind = "layernorm"
    rule_slot = "layernorm"

    def recognise(self, node, ctx):
        from ..graph import Step

        norms = (nn.LayerNorm, nn.GroupNorm)
        if node.op == "call_module" and exact_type(ctx.modules[node.target], norms):
            module = ctx.modules[node.target]
            return Step(node, self.kind, module=module, module_name=str(node.target))
        if node.op == "call_function" and node.target in (F.layer_norm, F.group_norm):
            if len(ctx.data_args(node)) != 1:
                refuse(node, "a normalisation whose weight or bias depends on the input")
            owner = enclosing_module(node)
            return Step(
                node, self.kind, function=node.target, module_name=owner[0] if owner else None
            )
        return None

    def prepare(self, step, dtype, device):
        if step.module is None:
            return None
        m = step.module

        def cast(t):
            return None if t is None else t.detach().to(device=device, dtype=dtype)

        if isinstance(m, nn.GroupNorm):
            return m.num_groups, cast(m.weight), cast(m.bias), m.eps
        return tuple(m.normalized_shape), cast(m.weight), cast(m.bias), m.eps

    def keeps(self, step, explainer):
        return explainer.graph_inputs(step.node)  # the output is recomputed: one cheap pass

    def forward(self, step, env, explainer):
        if step.module is None:
            return explainer.call(step, env.__getitem__)
        norm = F.group_norm if isinstance(step.module, nn.GroupNorm) else F.layer_norm
        return norm(env[step.node.args[0]], *explainer.ops[id(step)])

    def propagate(self, step, env, r, explainer):
        (source,) = explainer.graph_inputs(step.node)
        if step.rule.name == "pass":
            return [(source, r)]
        params = explainer.ops[id(step)] if step.module is not None else _arguments(step, env)
        grouped = isinstance(step.module, nn.GroupNorm) or step.function is F.group_norm
        relevance = groupnorm_relevance if grouped else layernorm_relevance
        return [(source, relevance(env[source], r, *params, step.rule))]


def layernorm_relevance(x: Tensor, r: Tensor, shape, weight, bias, eps: float, rule) -> Tensor:
    """``R_x = x * ((I - 1/N) (gamma / sigma) (R / stab(y)))`` over the normalised dims, with
    ``y - beta`` as the denominator under ``zero_bias``."""
    dims = tuple(range(-len(shape), 0))
    y = F.layer_norm(x, shape, weight, bias, eps)
    if rule.zero_bias and bias is not None:
        y = y - bias
    s = divide(r, y, rule.stabilizer, scratch=True)
    variance = x.var(dims, unbiased=False, keepdim=True)
    u = s.mul_(torch.rsqrt(variance.add_(eps)))
    if weight is not None:
        u.mul_(weight)
    return u.sub_(u.mean(dims, keepdim=True)).mul_(x)


def groupnorm_relevance(x: Tensor, r: Tensor, groups: int, weight, bias, eps: float, rule):
    """The LN-rule within each of ``groups`` channel groups (per-channel gamma and beta)."""
    y = F.group_norm(x, groups, weight, bias, eps)
    channel = (1, -1) + (1,) * (x.dim() - 2)
    if rule.zero_bias and bias is not None:
        y = y - bias.view(channel)
    u = divide(r, y, rule.stabilizer)
    if weight is not None:
        u = u * weight.view(channel)
    u = u.reshape(x.shape[0], groups, -1)  # reshape: x may be channels-last
    variance = x.reshape(x.shape[0], groups, -1).var(-1, unbiased=False, keepdim=True)
    u = u * torch.rsqrt(variance + eps)
    return (u - u.mean(-1, keepdim=True)).reshape(x.shape) * x


def _arguments(step, env):
    """``(normalized_shape or num_groups, weight, bias, eps)`` of an ``F.layer_norm`` or
    ``F.group_norm`` node."""
    bound = inspect.signature(step.function).bind(*step.node.args, **step.node.kwargs)
    bound.apply_defaults()
    a = dict(bound.arguments)
    for key in ("weight", "bias"):
        if a[key] is not None and not isinstance(a[key], Tensor):
            a[key] = env[a[key]]
    if step.function is F.group_norm:
        return int(a["num_groups"]), a["weight"], a["bias"], a["eps"]
    return tuple(a["normalized_shape"]), a["weight"], a["bias"], a["eps"]
