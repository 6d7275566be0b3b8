"""Element-wise nodes that pass relevance on unchanged: activations, dropout, identity,
stochastic depth in eval mode, and products with a constant (layer scale, ``x / sqrt(d)``)."""

from __future__ import annotations

import inspect
import operator

import torch
import torch.nn.functional as F
from torch import nn

from .base import (
    NodeHandler,
    exact_type,
    method_name,
    named_function,
    reduce_to,
    refuse,
    register,
)

ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardswish,
    nn.Hardtanh, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.Mish, nn.CELU, nn.SELU,
)  # fmt: skip
IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                    nn.Identity)  # fmt: skip
NONNEGATIVE_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
SIGMOID_LIKE_MODULES = (nn.Sigmoid, nn.Hardsigmoid)

ACTIVATION_FUNCTIONS = {
    F.relu, torch.relu, F.relu6, F.leaky_relu, F.elu, F.silu, F.gelu, torch.tanh, F.tanh,
    F.hardswish, F.hardtanh, torch.sigmoid, F.sigmoid, F.hardsigmoid, F.softplus, F.mish,
    F.celu, F.selu,
}  # fmt: skip
NONNEGATIVE_FUNCTIONS = {F.relu, torch.relu, F.relu6, torch.sigmoid, F.sigmoid, F.hardsigmoid,
                         F.softplus}  # fmt: skip
SIGMOID_LIKE_FUNCTIONS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
IDENTITY_FUNCTIONS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
ACTIVATION_METHODS = {"relu", "sigmoid", "tanh"}
NONNEGATIVE_METHODS = {"relu", "sigmoid"}
SCALE_FUNCTIONS = {operator.mul, torch.mul, operator.truediv, torch.div, operator.neg, torch.neg}
SCALE_METHODS = {"mul", "div", "neg", "__mul__", "__truediv__", "__rmul__"}


@register
class PassHandler(NodeHandler):
    kind = "pass"

    def recognise(self, node, ctx):
        from ..graph import Step

        if node.op == "call_module":
            module = ctx.modules[node.target]
            make = dict(module=module, module_name=str(node.target))
            if exact_type(module, ACTIVATION_MODULES):
                nonneg = isinstance(module, NONNEGATIVE_MODULES)
                return Step(node, self.kind, nonnegative=nonneg, **make)
            if exact_type(module, IDENTITY_MODULES):
                return Step(node, self.kind, nonnegative=ctx.nonnegative(node), **make)
            return None
        if node.op == "call_function":
            target = node.target
            if target in ACTIVATION_FUNCTIONS:
                nonneg = target in NONNEGATIVE_FUNCTIONS
                return Step(node, self.kind, nonnegative=nonneg, function=target)
            if target in IDENTITY_FUNCTIONS:
                bound = inspect.signature(target).bind(*node.args, **node.kwargs)
                bound.apply_defaults()
                if bound.arguments.get("training") is not False:
                    refuse(node, "dropout in training mode drops units at random")
                return Step(node, self.kind, nonnegative=ctx.nonnegative(node), function=target)
            if named_function(target, "torchvision.ops.stochastic_depth", "stochastic_depth"):
                training = node.kwargs.get("training", node.args[3] if len(node.args) > 3 else True)
                if training is not False:
                    refuse(node, "stochastic depth in training mode drops samples at random")
                return Step(node, self.kind, nonnegative=ctx.nonnegative(node), function=target)
            return None
        if node.op == "call_method" and method_name(node) in ACTIVATION_METHODS:
            name = method_name(node)
            return Step(node, self.kind, nonnegative=name in NONNEGATIVE_METHODS, function=name)
        return None

    def propagate(self, step, env, r, explainer):
        return [(explainer.graph_inputs(step.node)[0], r)]


@register
class ScaleHandler(NodeHandler):
    """A product with (or a quotient by) a value that does not depend on the input: a
    linear map of one data tensor, so relevance passes (summed where it was broadcast)."""

    kind = "scale"

    def recognise(self, node, ctx):
        from ..graph import Step

        if node.op == "call_function":
            target = node.target
            scaling = target in SCALE_FUNCTIONS or target in (operator.imul, operator.itruediv)
            name = None
        elif node.op == "call_method":
            name = method_name(node)
            scaling, target = name in SCALE_METHODS, name
        else:
            return None
        if not scaling:
            return None
        data = ctx.data_args(node)
        if len(data) != 1:
            return None  # a product of two data tensors: the products handlers decide
        divides = target in (operator.truediv, operator.itruediv, torch.div, "div", "__truediv__")
        if divides and node.args[0] is not data[0]:
            refuse(node, "division by a data-dependent tensor is not supported")
        from .layers import out_of_place

        return Step(node, self.kind, function=out_of_place(target) if name is None else name)

    def keeps(self, step, explainer):
        return ()

    def propagate(self, step, env, r, explainer):
        (source,) = explainer.graph_inputs(step.node)
        return [(source, reduce_to(r, explainer.shape_of(source)))]
