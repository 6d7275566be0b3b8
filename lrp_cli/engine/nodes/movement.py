"""Pure data movement and max pooling: relevance moves exactly like the gradient does, so
the op's own vector-Jacobian product is the rule (one handler for every such op)."""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

from .base import (
    NodeHandler,
    UnsupportedModelError,
    call_step,
    exact_type,
    named_function,
    register,
    vector_jacobian,
    vjp,
)

MOVE_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
                nn.ChannelShuffle)  # fmt: skip
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)  # fmt: skip
MOVE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.permute,
    torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, F.pad,
    torch.narrow, torch.movedim, torch.swapaxes, torch.t, operator.getitem,
    F.channel_shuffle, torch.channel_shuffle, torch.clone, torch.roll, torch.unbind,
}  # fmt: skip
MOVE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "chunk", "split", "narrow", "expand", "expand_as", "view_as", "reshape_as", "movedim", "t",
    "unflatten", "clone", "to", "type", "type_as", "float", "double", "__getitem__", "roll",
    "swapaxes", "unbind",
}  # fmt: skip
MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                     F.adaptive_max_pool2d, F.adaptive_max_pool3d}  # fmt: skip


# functions that torchvision wraps for fx (leaf calls in the graph) and that only move data:
# Swin's patch-merging pad (pad, strided slices, concatenation)
WRAPPED_MOVES = (("torchvision.models.swin_transformer", "_patch_merging_pad"),)


@register
class MoveHandler(NodeHandler):
    kind = "move"

    def recognise(self, node, ctx):
        from ..graph import Step

        nonneg = ctx.nonnegative(node)
        if node.op == "call_function" and (
            node.target is operator.getitem
            or any(named_function(node.target, *where) for where in WRAPPED_MOVES)
        ):
            if node.target is operator.getitem and (
                not isinstance(node.args[0], fx.Node) or node.args[0].op == "get_attr"
            ):
                return None
            return Step(node, self.kind, function=node.target, nonnegative=nonneg)
        if _nearest_upsampling(node, ctx):  # every output a copy of one input (HRNet's fuse)
            if node.op == "call_module":
                module, name = ctx.modules[node.target], str(node.target)
                return Step(node, self.kind, module=module, module_name=name, nonnegative=nonneg)
            return Step(node, self.kind, function=node.target, nonnegative=nonneg)
        return call_step(
            node, ctx, self.kind, MOVE_MODULES, MOVE_FUNCTIONS, MOVE_METHODS, nonnegative=nonneg
        )

    def keeps(self, step, explainer):
        return explainer.graph_inputs(step.node)

    def forward(self, step, env, explainer):
        node = step.node
        if step.function is operator.getitem and isinstance(env.get(node.args[0]), (tuple, list)):
            explainer.tuple_items.add(node)
        return explainer.call(step, env.__getitem__)

    def propagate(self, step, env, r, explainer):
        node = step.node
        if node in explainer.tuple_items:  # an item of a tuple: relevance of that item
            return [(node.args[0], {node.args[1]: r})]
        return list(vjp(step, env, r, explainer).items())


def _nearest_upsampling(node: fx.Node, ctx) -> bool:
    """``nn.Upsample``/``F.interpolate`` in nearest mode: pure copying, so its gradient moves
    relevance exactly (LRP-0 gives each input the sum of its copies' relevance)."""
    if node.op == "call_module":
        module = ctx.modules[node.target]
        return exact_type(module, (nn.Upsample,)) and module.mode in _NEAREST
    if node.op == "call_function" and node.target is F.interpolate:
        mode = node.kwargs.get("mode", node.args[3] if len(node.args) > 3 else "nearest")
        return mode in _NEAREST
    return False


_NEAREST = ("nearest", "nearest-exact")


@register
class MaxPoolHandler(NodeHandler):
    """Winner-take-all (the op's own gradient; plain MaxPool2d keeps only the winners'
    indices) or, with ``maxpool: average``, the proportional rule over the same windows."""

    kind = "maxpool"
    composite_field = "maxpool"

    def recognise(self, node, ctx):
        return call_step(
            node,
            ctx,
            self.kind,
            MAXPOOL_MODULES,
            MAXPOOL_FUNCTIONS,
            nonnegative=ctx.nonnegative(node),
        )

    def keeps(self, step, explainer):
        return () if id(step) in explainer.pools else explainer.graph_inputs(step.node)

    def forward(self, step, env, explainer):
        params = explainer.pools.get(id(step))
        if params is None:
            return explainer.call(step, env.__getitem__)
        a = env[step.node.args[0]]  # keep the winners, not the input
        out, indices = F.max_pool2d(a, *params, return_indices=True)
        env[("indices", step.node)] = (indices, a.shape)
        return out

    def propagate(self, step, env, r, explainer):
        node = step.node
        if step.rule == "average":
            return _as_average(step, env, r, explainer)
        if id(step) in explainer.pools:
            indices, shape = env.pop(("indices", node))
            like = r.new_empty(1).expand(shape)  # the op reads only the input's shape
            r_in = torch.ops.aten.max_pool2d_with_indices_backward(
                r, like, *explainer.pools[id(step)], indices
            )
            return [(node.args[0], r_in)]
        return list(vjp(step, env, r, explainer).items())


def maxpool2d_params(step) -> tuple | None:
    """``(kernel, stride, padding, dilation, ceil_mode)`` of a plain ``nn.MaxPool2d`` step."""
    m = step.module
    if step.kind != "maxpool" or type(m) is not nn.MaxPool2d or m.return_indices:
        return None
    if len(step.node.args) != 1 or step.node.kwargs:
        return None
    pair = torch.nn.modules.utils._pair
    stride = m.stride if m.stride is not None else m.kernel_size
    sizes = (m.kernel_size, stride, m.padding, m.dilation)
    return (*(list(pair(v)) for v in sizes), m.ceil_mode)


def _as_average(step, env, r, explainer):
    (source,) = explainer.graph_inputs(step.node)
    pool = _average_pool_like(step)
    a = env[source]
    with torch.enable_grad():
        leaf = a.detach().requires_grad_()
        z = pool(leaf)
        s = explainer.composite.proportional.divide(r, z.detach())
        (g,) = vector_jacobian([z], [leaf], [s])
    return [(source, a * g)]


def _average_pool_like(step):
    """The average pooling with a max pooling's window (Montavon's treatment of max pooling)."""
    if step.module is None:
        raise UnsupportedModelError(
            f"maxpool: average needs a MaxPool module, node '{step.node.name}' is functional"
        )
    m = step.module
    dims = int(type(m).__name__[-2])
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        adaptive = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
        return lambda a: adaptive[dims](a, m.output_size)
    if m.dilation not in (1, (1,) * dims):
        raise UnsupportedModelError(f"maxpool: average cannot mirror dilated '{step.name}'")
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    stride = m.stride if m.stride is not None else m.kernel_size
    return lambda a: avg(a, m.kernel_size, stride, m.padding, m.ceil_mode, True)
