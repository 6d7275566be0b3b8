"""The model's input, constants, and the linear layers that carry the per-layer rules."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from ..linear import make_linear_op
from .base import NodeHandler, exact_type, refuse, register

LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@register
class InputHandler(NodeHandler):
    kind = "input"

    def recognise(self, node, ctx):
        from ..graph import Step

        return Step(node, self.kind) if node.op == "placeholder" else None

    def forward(self, step, env, explainer):
        raise AssertionError("the explainer places the input")  # pragma: no cover


@register
class ConstantHandler(NodeHandler):
    """Values that do not depend on the input's data (parameters, shapes, position biases):
    computed in the forward, never explained."""

    kind = "constant"

    def recognise(self, node, ctx):
        from ..graph import Step

        if node.op == "get_attr":
            return Step(node, self.kind)
        if ctx.depends[node]:
            return None
        if node.op == "call_module":
            return Step(node, self.kind, module=ctx.modules[node.target], module_name=node.target)
        return Step(node, self.kind, function=out_of_place(node.target))

    def keeps(self, step, explainer):
        return (step.node,)

    def forward(self, step, env, explainer):
        if step.node.op == "get_attr":
            return explainer.constants[step.node]
        return explainer.call(step, env.__getitem__)

    def receivers(self, step, explainer):
        return []


@register
class LinearHandler(NodeHandler):
    """Conv/Linear (a directly following BatchNorm folded in) or a lone BatchNorm: the rule
    the config gives that layer."""

    kind = "linear"
    rule_slot = "linear"

    def recognise(self, node, ctx):
        from ..graph import Step

        if node.op == "call_function":
            found = functional_layer(node, ctx)
            if found is None:
                return None
            module, name, rebuild = found
            step = Step(node, self.kind, module=module, module_name=name)
            if rebuild is not None:
                step.extra["rebuild"] = rebuild
            return step
        if node.op != "call_module":
            return None
        module = ctx.modules[node.target]
        if exact_type(module, LINEAR_MODULES):
            if getattr(module, "padding_mode", "zeros") != "zeros":
                refuse(node, f"padding_mode={module.padding_mode!r} is not supported", module)
            return Step(node, self.kind, module=module, module_name=str(node.target))
        if exact_type(module, BATCHNORM_MODULES):
            return Step(node, self.kind, module=module, module_name=str(node.target))
        return None

    def prepare(self, step, dtype, device):
        rebuild = step.extra.get("rebuild")  # computed weights, from the tensors as they are now
        module = step.module if rebuild is None else rebuild()
        return make_linear_op(module, step.batchnorm, dtype, device)

    def keeps(self, step, explainer):
        kept = list(explainer.graph_inputs(step.node))
        if explainer.divides_by_output(step):
            kept.append(step.node)
        return kept

    def propagate(self, step, env, r, explainer):
        (source,) = explainer.graph_inputs(step.node)
        relevance = functools.partial(
            step.rule.relevance,
            explainer.ops[id(step)],
            nonnegative=explainer.step_of(source).nonnegative,
            bounds=explainer.bounds(step.rule),
            # modified weights live for this layer's step (all slices), once per batch:
            # kept across batches they would hold several copies of the model's weights
            cache={},
        )
        z = env.pop(step.node, None)  # None where the rule does not divide by it
        return [(source, in_slices(relevance, env[source], z, r, explainer.chunk_limit(r)))]


@register
class FoldedHandler(NodeHandler):
    """A BatchNorm folded into the layer before it: its value is that layer's output."""

    kind = "folded"

    def forward(self, step, env, explainer):
        return env[step.function]

    def receivers(self, step, explainer):
        return [step.function]

    def propagate(self, step, env, r, explainer):
        return [(step.function, r)]


# F.linear, F.conv*d and F.batch_norm called in a module's own forward (timm's Linear and
# BatchNormAct2d) are the plain layer they compute, rebuilt around the model's own tensors
# (never copies): so they get per-layer rules, and a BatchNorm folds into the layer before it.
# A weight or bias computed from the model's tensors alone (NFNet's weight standardisation,
# BEiT's concatenated q/v biases) is a constant of the layer too: computed when the explainer
# prepares its weights, from the tensors as they are then, like a stored one.
def functional_layer(node: fx.Node, ctx) -> tuple[nn.Module, str, Callable | None] | None:
    """The layer module a functional node computes, a name for it, and (where a tensor is
    computed) a function that builds the module anew; or None for another node."""
    build = _FUNCTIONAL_LAYERS.get(node.target)
    if build is None:
        return None
    arguments = _TENSOR_ARGUMENTS[node.target]
    values = {name: _argument(node, index, name) for name, index in arguments.items()}
    for name, value in values.items():
        if value is not None and not isinstance(value, fx.Node):
            refuse(node, f"its {name} is not a tensor")
        if value is not None and ctx.depends[value]:
            refuse(node, f"its {name} depends on the input (not a layer of fixed weights)")
    root = ctx.modules[""]
    computed = {k: v for k, v in values.items() if v is not None and v.op != "get_attr"}
    stored = {
        k: None if v is None else _stored(root, v.target)
        for k, v in values.items()
        if k not in computed
    }

    def rebuild() -> nn.Module:
        return build(node, {**stored, **_compute(computed, root)})

    module = rebuild()
    first = values[next(iter(arguments))]  # the weight (the running mean of a batch_norm)
    if first is not None and first.op == "get_attr":
        name = first.target.rpartition(".")[0]
    else:  # the module whose forward computed it
        stack = node.meta.get("nn_module_stack")
        name = list(stack.values())[-1][0] if stack else ""
    return module, name or node.name, rebuild if computed else None


def _compute(nodes: dict[str, fx.Node], root: nn.Module) -> dict[str, Tensor]:
    """The values of nodes computed from stored tensors alone (no gradient history)."""
    values: dict[fx.Node, object] = {}

    def value_of(node: fx.Node):
        if node not in values:
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), value_of)
            if node.op == "get_attr":
                values[node] = _stored(root, node.target)
            elif node.op == "call_function":
                values[node] = out_of_place(node.target)(*args, **kwargs)
            elif node.op == "call_method":
                values[node] = getattr(args[0], node.target)(*args[1:], **kwargs)
            else:
                refuse(node, "a layer's weight computed by a module is not supported")
        return values[node]

    with torch.no_grad():
        return {name: value_of(node).detach() for name, node in nodes.items()}


def _argument(node: fx.Node, index: int, name: str, default=None):
    return node.args[index] if len(node.args) > index else node.kwargs.get(name, default)


def _functional_linear(node, tensors):
    weight, bias = tensors["weight"], tensors["bias"]
    if weight is None:
        refuse(node, "linear without a weight")
    module = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    module._parameters.update(weight=weight, bias=bias)
    return module


def _functional_conv(dims: int):
    conv_class = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]

    def build(node, tensors):
        weight, bias = tensors["weight"], tensors["bias"]
        if weight is None:
            refuse(node, "convolution without a weight")
        settings = {
            key: _argument(node, index, key, default)
            for index, (key, default) in enumerate(
                (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1)), start=3
            )
        }
        groups = int(settings["groups"])
        module = conv_class(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
                            bias=bias is not None, device="meta", **settings)  # fmt: skip
        module._parameters.update(weight=weight, bias=bias)
        return module

    return build


def _functional_batchnorm(node, tensors):
    mean, var = tensors["running_mean"], tensors["running_var"]
    weight, bias = tensors["weight"], tensors["bias"]
    if _argument(node, 5, "training", False) is not False or mean is None or var is None:
        refuse(node, "batch_norm in training mode or without running statistics; call .eval()")
    eps = float(_argument(node, 7, "eps", 1e-5))
    module = nn.BatchNorm2d(mean.numel(), eps=eps, device="meta").eval()
    module._parameters.update(weight=weight, bias=bias)
    module._buffers.update(running_mean=mean, running_var=var)
    return module


_LAYER_TENSORS = {"weight": 1, "bias": 2}
_TENSOR_ARGUMENTS = {  # the tensor arguments of each and their positions, the weight first
    F.linear: _LAYER_TENSORS,
    F.conv1d: _LAYER_TENSORS,
    F.conv2d: _LAYER_TENSORS,
    F.conv3d: _LAYER_TENSORS,
    F.batch_norm: {"running_mean": 1, "running_var": 2, "weight": 3, "bias": 4},
}
_FUNCTIONAL_LAYERS = {
    F.linear: _functional_linear,
    F.conv1d: _functional_conv(1),
    F.conv2d: _functional_conv(2),
    F.conv3d: _functional_conv(3),
    F.batch_norm: _functional_batchnorm,
}


def _stored(root: nn.Module, target: str) -> Tensor:
    """The parameter or buffer a ``get_attr`` node reads (the model's own tensor, not a copy)."""
    owner, _, name = target.rpartition(".")
    return getattr(root.get_submodule(owner), name)


def fold_batchnorms(steps: dict) -> None:
    """Fold each BatchNorm whose only input is a Conv/Linear used by nothing else (shape
    queries aside: timm checks ``x.ndim`` before its BatchNorm)."""
    for node, step in steps.items():
        if step.kind != "linear" or not exact_type(step.module, BATCHNORM_MODULES):
            continue
        source = node.args[0]  # the data (F.batch_norm's other inputs are stored tensors)
        producer = steps.get(source)
        if (
            producer is not None
            and producer.kind == "linear"
            and producer.batchnorm is None
            and not exact_type(producer.module, BATCHNORM_MODULES)
            and [u for u in source.users if steps[u].kind != "constant"] == [node]  # shapes ok
            and producer.module.weight.shape[0] == step.module.num_features
        ):
            producer.batchnorm, producer.batchnorm_name = step.module, step.module_name
            step.kind = "folded"
            step.function = source  # its value is the producer's (folded) output


def in_slices(relevance, a: Tensor, z: Tensor | None, r: Tensor, limit: int | None) -> Tensor:
    """``relevance(a, z, r)`` over slices of the batch of at most ``limit`` bytes of input or
    output each, written into one result (rules are per sample, so the numbers are the same)."""
    batch = a.shape[0]
    per_sample = max(a[:1].numel() * a.element_size(), r[:1].numel() * r.element_size())
    size = batch if limit is None else max(1, limit // max(per_sample, 1))
    if size >= batch:
        return relevance(a, z, r)
    out = torch.empty_like(a)
    for start in range(0, batch, size):
        part = slice(start, start + size)
        out[part] = relevance(a[part], None if z is None else z[part], r[part])
    return out


_INPLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
            operator.imul: operator.mul, operator.itruediv: operator.truediv}  # fmt: skip


def out_of_place(target):
    """The out-of-place function for an in-place operator (``x += y`` traces to iadd)."""
    return _INPLACE.get(target, target)
