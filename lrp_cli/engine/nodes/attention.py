"""Attention blocks that are one call in the graph: ``nn.MultiheadAttention`` (ViT),
torchvision's ``shifted_window_attention`` (Swin v1 and v2) and a bare
``F.scaled_dot_product_attention`` (timm's ViTs, between their own q/k/v projections). The
rules are in ``engine/attention.py``; attention written out in the graph (MaxViT's einsums)
goes through the products handlers instead."""

from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..attention import BlockRuleMode, BlockRules, multi_head_attention
from ..terms import divide
from .base import NodeHandler, exact_type, named_function, register, vector_jacobian

WINDOW_ATTENTION = (("torchvision.models.swin_transformer", "shifted_window_attention"),)
_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


@register
class AttentionHandler(NodeHandler):
    kind = "attention"
    composite_field = "attention"

    def recognise(self, node, ctx):
        from ..graph import Step

        if node.op == "call_module" and exact_type(
            ctx.modules[node.target], (nn.MultiheadAttention,)
        ):
            module = ctx.modules[node.target]
            return Step(node, self.kind, module=module, module_name=str(node.target))
        if node.op == "call_function" and (
            node.target is F.scaled_dot_product_attention  # timm's and others' fused attention
            or any(named_function(node.target, *where) for where in WINDOW_ATTENTION)
        ):
            return Step(node, self.kind, function=node.target)
        return None

    def prepare(self, step, dtype, device):
        if step.module is None:
            return None
        module = copy.deepcopy(step.module).to(device=device, dtype=dtype).eval()
        return module.requires_grad_(False)

    def keeps(self, step, explainer):
        return [*explainer.graph_inputs(step.node), step.node]

    def forward(self, step, env, explainer):
        if step.module is None:
            return explainer.call(step, env.__getitem__)
        args, kwargs = explainer.arguments(step, env.__getitem__)
        return explainer.ops[id(step)](*args, **kwargs)

    def describe(self, step, explainer):
        return step.rule.describe()

    def propagate(self, step, env, r, explainer):
        setting = explainer.composite.attention
        rules = BlockRules(setting.mode, setting.epsilon)
        out = env[step.node]
        if isinstance(r, dict):  # MultiheadAttention returns (output, weights)
            if set(r) != {0}:
                raise AssertionError("relevance reached the attention weights")  # pragma: no cover
            r, out = r[0], out[0]
        # gradient form: R_out = out * g; under CP the block's stabiliser acts here, under
        # AttnLRP inside (its output projection is an epsilon-rule linear map)
        g = divide(r, out, setting.epsilon if setting.mode == "cp" else 0.0)
        inputs = explainer.graph_inputs(step.node)
        with torch.enable_grad():
            leaves = {n: env[n].detach().requires_grad_() for n in inputs}
            lookup = lambda n: leaves.get(n, env[n])  # noqa: E731
            if step.module is not None:
                args, kwargs = explainer.arguments(step, lookup)
                bound = _MHA_SIGNATURE.bind(explainer.ops[id(step)], *args, **kwargs)
                bound.apply_defaults()
                a = bound.arguments
                recomputed = multi_head_attention(
                    a["self"], a["query"], a["key"], a["value"], rules,
                    a["key_padding_mask"], a["attn_mask"], a["is_causal"],
                )  # fmt: skip
            else:
                with BlockRuleMode(rules):
                    recomputed = explainer.call(step, lookup)
            grads = vector_jacobian([recomputed], [leaves[n] for n in inputs], [g])
        return [
            (n, env[n] * grad) for n, grad in zip(inputs, grads, strict=True) if grad is not None
        ]
