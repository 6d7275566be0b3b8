"""Trace a model into a plan of relevance steps: one handler kind per graph node.

The model is traced with ``torch.fx.symbolic_trace`` (built-in layers stay leaf calls; user
code and functional ops become nodes). Each node is classified by what relevance does there:

- ``linear``: Conv/Linear (a directly following BatchNorm folded in) or a lone BatchNorm: the
  layer's rule;
- ``pass``: element-wise activations, dropout, identity: relevance unchanged;
- ``move``: pure data movement and winner-take-all max pooling: the op's own vector-Jacobian
  product moves relevance exactly like a gradient;
- ``norm``: sums, differences, means, average pooling, scaling by a constant: proportional split;
- ``lrn``: local response normalisation;
- ``constant``: values that do not depend on the input (shapes, parameters).

Anything else is refused with :class:`UnsupportedModelError` naming the node, its op and the
module it came from: nothing is ever explained silently wrong. The user's model is never
changed: the plan only reads its modules.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx, nn


class UnsupportedModelError(ValueError):
    """The model contains something the engine cannot explain correctly."""


LINEAR_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
BATCHNORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Softplus, nn.Mish, nn.CELU, nn.SELU,
)  # fmt: skip
IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.Identity)  # fmt: skip
MOVE_MODULES = (nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
                nn.ChannelShuffle)  # fmt: skip
MAXPOOL_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
                   nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)  # fmt: skip
AVGPOOL_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                   nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)  # fmt: skip
NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Softplus)

_ACTIVATION_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, torch.tanh, F.tanh,
    F.hardswish, F.hardtanh, torch.sigmoid, F.sigmoid, F.softplus, F.mish, F.celu, F.selu,
}  # fmt: skip
_NONNEGATIVE_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.softplus}
_IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_MOVE_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.cat, torch.concat, torch.stack, torch.permute,
    torch.transpose, torch.squeeze, torch.unsqueeze, torch.chunk, torch.split, F.pad,
    torch.narrow, torch.movedim, torch.swapaxes, torch.t, operator.getitem,
    F.channel_shuffle, torch.channel_shuffle, torch.clone,
}  # fmt: skip
_MOVE_METHODS = {
    "view", "reshape", "flatten", "permute", "transpose", "contiguous", "squeeze", "unsqueeze",
    "chunk", "split", "narrow", "expand", "expand_as", "view_as", "reshape_as", "movedim", "t",
    "unflatten", "clone", "to", "type", "float", "double", "__getitem__",
}  # fmt: skip
_ACTIVATION_METHODS = {"relu", "sigmoid", "tanh"}
_MAXPOOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                      F.adaptive_max_pool2d, F.adaptive_max_pool3d}  # fmt: skip
_AVGPOOL_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                      F.adaptive_avg_pool2d, F.adaptive_avg_pool3d}  # fmt: skip
_SUM_FUNCTIONS = {operator.add, torch.add, operator.sub, torch.sub, torch.sum, torch.mean}
_SUM_METHODS = {"add", "sub", "sum", "mean", "__add__", "__sub__", "__radd__"}
_SCALE_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.neg}
_SCALE_METHODS = {"mul", "div", "neg", "__mul__", "__truediv__", "__rmul__"}
_INPLACE = {operator.iadd: operator.add, operator.isub: operator.sub,
            operator.imul: operator.mul, operator.itruediv: operator.truediv}  # fmt: skip


@dataclass
class Step:
    """One graph node with what the relevance pass does there."""

    node: fx.Node
    kind: str  # linear | pass | move | norm | maxpool | lrn | constant | input | output
    module: nn.Module | None = None  # the leaf module called, if any
    module_name: str | None = None
    batchnorm: nn.Module | None = None  # folded into a linear step
    batchnorm_name: str | None = None
    nonnegative: bool = False  # the node's output is known to be >= 0
    rule: object = None  # set by the composite for linear/norm/lrn steps
    function: object = None  # the callable that computes the node (in-place ops replaced)
    position: int | None = None  # index among the model's linear layers

    @property
    def name(self) -> str:
        return self.module_name or self.node.name


@dataclass
class Plan:
    graph_module: fx.GraphModule
    steps: list[Step]
    output: fx.Node


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model`` in eval mode, restoring every module's training flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        return fx.symbolic_trace(model)
    except Exception as error:  # fx raises many types; the message is what matters
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx: {message}"
        ) from error
    finally:
        for module, flag in flags:
            module.training = flag


def _describe(node: fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module":
        return f"node '{node.name}' (module '{node.target}' of type {type(module).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    return f"node '{node.name}' ({node.op} {target})"


def _refuse(node: fx.Node, why: str, module: nn.Module | None = None):
    raise UnsupportedModelError(f"cannot explain {_describe(node, module)}: {why}")


def _exact_type(module: nn.Module, types: tuple) -> bool:
    """True for instances of ``types`` that do not override ``forward`` (a subclass might)."""
    return any(isinstance(module, t) and type(module).forward is t.forward for t in types)


def build_plan(model: nn.Module) -> Plan:
    """Trace ``model`` and classify every node; raises UnsupportedModelError where needed."""
    if _exact_type(model, LINEAR_MODULES):  # a bare layer would trace into F.linear/conv
        model = nn.Sequential(model)
    gm = trace(model)
    modules = dict(gm.named_modules())
    steps: dict[fx.Node, Step] = {}
    depends: dict[fx.Node, bool] = {}
    output = None
    for node in gm.graph.nodes:
        inputs = node.all_input_nodes
        depends[node] = node.op == "placeholder" or (
            any(depends[n] for n in inputs) and not _is_shape_query(node)
        )
        if node.op == "output":
            output = node
            continue
        if not depends[node]:
            steps[node] = _constant_step(node, modules)
            continue
        steps[node] = _classify(node, modules, steps, depends)
    if output is None:
        raise UnsupportedModelError("the traced model has no output")
    _fold_batchnorms(steps)
    ordered = list(steps.values())
    linear = [s for s in ordered if s.kind == "linear" and _exact_type(s.module, LINEAR_MODULES)]
    for index, step in enumerate(linear):
        step.position = index
    return Plan(gm, ordered, output)


def _constant_step(node: fx.Node, modules: dict) -> Step:
    """A node whose value does not depend on the input's data: computed, never explained."""
    if node.op == "call_module":
        return Step(node, "constant", module=modules[node.target], module_name=str(node.target))
    if node.op in ("call_function", "call_method"):
        return Step(node, "constant", function=_INPLACE.get(node.target, node.target))
    return Step(node, "constant")


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.shape``, ``x.dim()``: values that depend on shapes, not on data."""
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel")
    return (
        node.op == "call_function"
        and node.target is getattr
        and node.args[1] in ("shape", "ndim", "dtype", "device")
    )


def _classify(node, modules, steps, depends) -> Step:
    graph_inputs = [n for n in node.all_input_nodes if depends[n]]
    nonneg_inputs = all(steps[n].nonnegative for n in graph_inputs) if graph_inputs else False
    if node.op == "placeholder":
        return Step(node, "input")
    if node.op == "get_attr":
        return Step(node, "constant")
    if node.op == "call_module":
        return _classify_module(node, modules[node.target], nonneg_inputs)
    if node.op == "call_function":
        return _classify_function(node, graph_inputs, nonneg_inputs)
    if node.op == "call_method":
        return _classify_method(node, graph_inputs, nonneg_inputs)
    _refuse(node, f"unknown node op {node.op!r}")


def _classify_module(node, module, nonneg_inputs) -> Step:
    name = str(node.target)
    make = dict(node=node, module=module, module_name=name)
    if _exact_type(module, LINEAR_MODULES):
        if getattr(module, "padding_mode", "zeros") != "zeros":
            _refuse(node, f"padding_mode={module.padding_mode!r} is not supported", module)
        return Step(kind="linear", **make)
    if _exact_type(module, BATCHNORM_MODULES):
        return Step(kind="linear", **make)
    if _exact_type(module, ACTIVATION_MODULES):
        return Step(kind="pass", nonnegative=isinstance(module, NONNEGATIVE_MODULES), **make)
    if _exact_type(module, IDENTITY_MODULES):
        return Step(kind="pass", nonnegative=nonneg_inputs, **make)
    if _exact_type(module, MOVE_MODULES):
        return Step(kind="move", nonnegative=nonneg_inputs, **make)
    if _exact_type(module, MAXPOOL_MODULES):
        return Step(kind="maxpool", nonnegative=nonneg_inputs, **make)
    if _exact_type(module, AVGPOOL_MODULES):
        return Step(kind="norm", nonnegative=nonneg_inputs, **make)
    if _exact_type(module, (nn.LocalResponseNorm,)):
        return Step(kind="lrn", nonnegative=nonneg_inputs, **make)
    why = {
        nn.LayerNorm: "LayerNorm divides by a data-dependent statistic",
        nn.MultiheadAttention: "attention multiplies data-dependent tensors",
        nn.Softmax: "start relevance from the logits: remove the final softmax",
        nn.LogSoftmax: "start relevance from the logits: remove the final log-softmax",
    }
    reason = next(
        (r for t, r in why.items() if isinstance(module, t)), "no LRP rule for this layer type"
    )
    _refuse(node, reason, module)


def _classify_function(node, graph_inputs, nonneg_inputs) -> Step:
    target = _INPLACE.get(node.target, node.target)
    make = dict(node=node, function=target)
    if (
        target is operator.getitem
        and isinstance(node.args[0], fx.Node)
        and node.args[0].op != "get_attr"
    ):
        return Step(kind="move", nonnegative=nonneg_inputs, **make)
    if target in _ACTIVATION_FUNCTIONS:
        return Step(kind="pass", nonnegative=target in _NONNEGATIVE_FUNCTIONS, **make)
    if target in _IDENTITY_FUNCTIONS:
        return Step(kind="pass", nonnegative=nonneg_inputs, **make)
    if target in _MOVE_FUNCTIONS:
        return Step(kind="move", nonnegative=nonneg_inputs, **make)
    if target in _MAXPOOL_FUNCTIONS:
        return Step(kind="maxpool", nonnegative=nonneg_inputs, **make)
    if target in _AVGPOOL_FUNCTIONS or target in _SUM_FUNCTIONS:
        nonneg = nonneg_inputs and target not in (operator.sub, torch.sub)
        return Step(kind="norm", nonnegative=nonneg, **make)
    if target in _SCALE_FUNCTIONS:
        _require_single_graph_input(node, graph_inputs)
        return Step(kind="norm", **make)
    if target is F.local_response_norm:
        return Step(kind="lrn", nonnegative=nonneg_inputs, **make)
    if target in (torch.matmul, torch.bmm, operator.matmul, torch.einsum):
        _refuse(node, "a product of data-dependent tensors (attention) is not supported")
    _refuse(node, "no LRP rule for this function")


def _classify_method(node, graph_inputs, nonneg_inputs) -> Step:
    name = node.target
    if name.endswith("_") and not name.startswith("__"):
        name = name[:-1]  # in-place method: the engine runs the out-of-place one
    make = dict(node=node, function=name)
    if name in _MOVE_METHODS:
        return Step(kind="move", nonnegative=nonneg_inputs, **make)
    if name in _ACTIVATION_METHODS:
        return Step(kind="pass", nonnegative=name in ("relu", "sigmoid"), **make)
    if name in _SUM_METHODS:
        return Step(kind="norm", nonnegative=nonneg_inputs and name != "sub", **make)
    if name in _SCALE_METHODS:
        _require_single_graph_input(node, graph_inputs)
        return Step(kind="norm", **make)
    _refuse(node, "no LRP rule for this method")


def _require_single_graph_input(node, graph_inputs):
    if len(graph_inputs) > 1:
        _refuse(
            node,
            "a product of two data-dependent tensors (a multiplicative gate, e.g. "
            "squeeze-excitation) is not supported",
        )


def _fold_batchnorms(steps: dict[fx.Node, Step]) -> None:
    """Fold each BatchNorm whose only input is a Conv/Linear used by nothing else."""
    for node, step in steps.items():
        if step.kind != "linear" or not _exact_type(step.module, BATCHNORM_MODULES):
            continue
        (source,) = node.all_input_nodes
        producer = steps.get(source)
        if (
            producer is not None
            and producer.kind == "linear"
            and producer.batchnorm is None
            and not _exact_type(producer.module, BATCHNORM_MODULES)
            and len(source.users) == 1
            and producer.module.weight.shape[0] == step.module.num_features
        ):
            producer.batchnorm, producer.batchnorm_name = step.module, step.module_name
            step.kind = "folded"
            step.function = source  # its value is the producer's (folded) output
