"""Relevance through attention blocks that the graph sees as one call.

``nn.MultiheadAttention`` is a leaf module and Swin's ``shifted_window_attention`` an
fx-wrapped function, so their insides are not graph nodes. Their relevance is computed in
gradient form (LXT's "efficient" form of LRP): with ``R = value * gradient`` at every
intermediate tensor, a rule is a modified backward of its op, and the block's input
relevance is ``x * grad`` after one backward pass from ``R_out / out``:

- ``cp`` (CP-LRP, Ali et al. 2022): the softmax output is a constant, so the block is a
  linear map of its values and LRP-0 through it is its gradient with the attention weights
  detached; the stabiliser acts once, on the block's output;
- ``attnlrp`` (Achtibat et al. 2024): softmax by the Taylor rule ``R_x = x (R - s sum R)``,
  products of two data tensors by the uniform epsilon rule, linear maps by epsilon, and
  ``F.normalize`` (Swin v2's cosine attention) with its norm a constant, as the LN-rule does.

Swin's function runs under :class:`BlockRuleMode`, which swaps these ops for their rules as
they are called; multi-head attention is written out here (:func:`multi_head_attention`)
because torch runs it through one fused kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from .nodes.base import UnsupportedModelError, reduce_to
from .terms import divide

ATTENTION_MODES = ("cp", "attnlrp")


class _EpsilonLinear(torch.autograd.Function):
    """``F.linear`` whose backward is LRP-epsilon in gradient form (weights constant)."""

    @staticmethod
    def forward(ctx, x, weight, bias, epsilon):
        z = F.linear(x, weight, bias)
        ctx.save_for_backward(weight, z)
        ctx.epsilon = epsilon
        return z

    @staticmethod
    def backward(ctx, g):
        weight, z = ctx.saved_tensors
        return divide(g * z, z, ctx.epsilon) @ weight, None, None, None


class _UniformProduct(torch.autograd.Function):
    """``a @ b`` whose backward is the uniform epsilon rule: each factor gets
    ``f * d_f(R / stab(2 O))`` (half the relevance, in gradient form)."""

    @staticmethod
    def forward(ctx, a, b, epsilon):
        out = torch.matmul(a, b)
        ctx.save_for_backward(a, b, out)
        ctx.epsilon = epsilon
        return out

    @staticmethod
    def backward(ctx, g):
        a, b, out = ctx.saved_tensors
        t = divide(g * out, 2 * out, ctx.epsilon)
        ga = reduce_to(t @ b.transpose(-1, -2), a.shape)
        gb = reduce_to(a.transpose(-1, -2) @ t, b.shape)
        return ga, gb, None


class _TaylorSoftmax(torch.autograd.Function):
    """softmax whose backward is AttnLRP's Taylor rule in gradient form."""

    @staticmethod
    def forward(ctx, x, dim):
        s = torch.softmax(x, dim)
        ctx.save_for_backward(s)
        ctx.dim = dim
        return s

    @staticmethod
    def backward(ctx, g):
        (s,) = ctx.saved_tensors
        r = s * g
        return r - s * r.sum(ctx.dim, keepdim=True), None


class BlockRules:
    """The ops of an attention block under ``mode`` (cp | attnlrp) with stabiliser ``epsilon``."""

    def __init__(self, mode: str, epsilon: float):
        if mode not in ATTENTION_MODES:
            raise ValueError(f"attention mode must be cp or attnlrp, got {mode!r}")
        self.mode, self.epsilon = mode, epsilon

    @property
    def taylor(self) -> bool:
        return self.mode == "attnlrp"

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if self.taylor and x.requires_grad:
            return _EpsilonLinear.apply(x, weight, bias, self.epsilon)
        return F.linear(x, weight, bias)

    def matmul(self, a: Tensor, b: Tensor) -> Tensor:
        if self.taylor and a.requires_grad and b.requires_grad and a.dim() > 1 and b.dim() > 1:
            return _UniformProduct.apply(a, b, self.epsilon)
        return torch.matmul(a, b)

    def softmax(self, x: Tensor, dim: int) -> Tensor:
        if self.taylor:
            return _TaylorSoftmax.apply(x, dim)
        return torch.softmax(x, dim).detach()

    def normalize(self, x: Tensor, p: float = 2.0, dim: int = 1, eps: float = 1e-12, out=None):
        if not self.taylor:
            return F.normalize(x, p, dim, eps, out)
        return x / x.norm(p, dim, keepdim=True).clamp_min(eps).detach()

    def attention(
        self, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False
    ):
        """``scaled_dot_product_attention`` written out, so its softmax gets the rule."""
        if dropout_p:
            raise UnsupportedModelError("attention dropout (dropout_p > 0): call model.eval()")
        if enable_gqa:
            raise UnsupportedModelError("grouped-query attention (enable_gqa) is not supported")
        if is_causal:
            size = (q.shape[-2], k.shape[-2])
            attn_mask = torch.ones(size, dtype=torch.bool, device=q.device).tril()
        scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
        logits = self.matmul(q * scale, k.transpose(-2, -1))
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))
            else:
                logits = logits + attn_mask
        return self.matmul(self.softmax(logits, -1), v)


_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}
_MATMUL = {torch.matmul, Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm}


class BlockRuleMode(TorchFunctionMode):
    """Runs code with its softmax, matrix products, linear maps and ``F.normalize`` replaced
    by the rules of :class:`BlockRules`, as they are called."""

    def __init__(self, rules: BlockRules):
        super().__init__()
        self.rules = rules

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rules = self.rules
        if func in _SOFTMAX:
            x = args[0]
            dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
            if kwargs.get("dtype") is not None:
                x = x.to(kwargs["dtype"])
            if dim is None:
                raise UnsupportedModelError("softmax without dim inside attention")
            return rules.softmax(x, dim)
        if func in _MATMUL:
            return rules.matmul(*args, **kwargs)
        if func is F.linear:
            return rules.linear(*args, **kwargs)
        if func is F.normalize:
            return rules.normalize(*args, **kwargs)
        if func is F.scaled_dot_product_attention:
            return rules.attention(*args, **kwargs)
        if func is F.dropout and (args[2] if len(args) > 2 else kwargs.get("training", True)):
            raise UnsupportedModelError("attention dropout in training mode")
        return func(*args, **kwargs)


def multi_head_attention(
    module: nn.MultiheadAttention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    rules: BlockRules,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
) -> Tensor:
    """The output of ``module(query, key, value)`` (eval mode), computed with ``rules``."""
    if module.bias_k is not None or module.add_zero_attn:
        raise UnsupportedModelError("MultiheadAttention with add_bias_kv/add_zero_attn")
    if module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    length, batch, embed = query.shape
    heads = module.num_heads
    head_dim = embed // heads
    if module._qkv_same_embed_dim:
        w_q, w_k, w_v = module.in_proj_weight.chunk(3)
    else:
        w_q, w_k, w_v = module.q_proj_weight, module.k_proj_weight, module.v_proj_weight
    b_q = b_k = b_v = None
    if module.in_proj_bias is not None:
        b_q, b_k, b_v = module.in_proj_bias.chunk(3)

    def split(t):  # (L, N, E) -> (N, heads, L, head_dim)
        return t.reshape(t.shape[0], batch, heads, head_dim).permute(1, 2, 0, 3)

    q = split(rules.linear(query, w_q, b_q))
    k = split(rules.linear(key, w_k, b_k))
    v = split(rules.linear(value, w_v, b_v))
    mask = _merged_mask(attn_mask, key_padding_mask, batch, heads, q.dtype)
    out = rules.attention(q, k, v, attn_mask=mask, is_causal=is_causal and mask is None)
    out = out.permute(2, 0, 1, 3).reshape(length, batch, embed)
    out = rules.linear(out, module.out_proj.weight, module.out_proj.bias)
    return out.transpose(0, 1) if module.batch_first else out


def _merged_mask(attn_mask, key_padding_mask, batch, heads, dtype):
    """One additive float mask broadcastable to (N, heads, L, S), or None."""

    def additive(mask):
        if mask.dtype == torch.bool:  # True: not allowed to attend
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf")
            )
        return mask.to(dtype)

    merged = None
    if attn_mask is not None:
        mask = additive(attn_mask)
        if mask.dim() == 3:  # (N * heads, L, S)
            mask = mask.reshape(batch, heads, *mask.shape[1:])
        merged = mask
    if key_padding_mask is not None:
        mask = additive(key_padding_mask).reshape(batch, 1, 1, -1)
        merged = mask if merged is None else merged + mask
    return merged
