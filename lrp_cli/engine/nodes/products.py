"""Products of two data-dependent tensors: gates, attention's value product, softmax.

- A **gate** ``s * g``, where ``g`` is computed from ``s`` alone through a pooled branch
  ending in a sigmoid-like activation (squeeze-excitation, Hardsigmoid gates), gets
  signal-take-all: ``g`` is a constant per sample and channel, ``R_s = R_y``, and the gate
  branch gets nothing (exact and conservative; autograd would hand ``R`` to both operands).
- The **value product** ``A @ V`` of attention, ``A`` a softmax: with CP-LRP (the default)
  ``A`` is a constant and ``R_V = V * A^T (R / stab(O))``; with AttnLRP the uniform rule below.
- Any **other** product gets the uniform epsilon rule ``R_a = a * da(R / stab(2 O))`` (half
  each for an element-wise product) where the config asks for it (``products: uniform``, or
  matrix products under AttnLRP); otherwise the model is refused, naming the node.
- **softmax** passes nothing under CP-LRP (its output is a constant) and the Taylor rule
  ``R_x = x * (R - s * sum R)`` under AttnLRP.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn

from ..terms import divide
from .base import NodeHandler, exact_type, reduce_to, refuse, register, vjp
from .elementwise import SIGMOID_LIKE_FUNCTIONS, SIGMOID_LIKE_MODULES, method_name

_MUL = {operator.mul, torch.mul, operator.imul, "mul", "__mul__", "__rmul__"}
_MATMUL = {torch.matmul, operator.matmul, torch.bmm, torch.einsum, "matmul", "bmm", "__matmul__"}
_SOFTMAX = {F.softmax, torch.softmax, "softmax"}
_THROUGH = ("move", "pass")  # kinds that keep what a value is (reshapes, dropout)


def _target(node):
    if node.op == "call_function":
        return node.target
    if node.op == "call_method":
        return method_name(node)
    return None


def _sigmoid_like(step) -> bool:
    if step.kind != "pass":
        return False
    if step.module is not None:
        return isinstance(step.module, SIGMOID_LIKE_MODULES)
    return step.function in SIGMOID_LIKE_FUNCTIONS or step.function == "sigmoid"


def _origin(node, ctx, kinds):
    """The node ``node`` passes on unchanged through steps of ``kinds`` with one data input
    (``g[:, :, None, None]``, ``g.view(n, c, 1, 1)``, dropout on attention weights)."""
    while ctx.steps[node].kind in kinds and len(ctx.data_inputs(node)) == 1:
        node = ctx.data_inputs(node)[0]
    return node


def _gated_by(gate, signal, ctx) -> bool:
    """Whether ``gate`` is computed from ``signal`` alone, through a pooling or mean."""
    seen, todo, pooled = set(), [gate], False
    while todo:
        node = todo.pop()
        if node in seen or node is signal:
            continue
        seen.add(node)
        step = ctx.steps[node]
        if step.kind == "input":
            return False  # a path around the signal
        if step.kind == "proportional" and (
            step.module is not None or step.function in ("mean", torch.mean)
            or "pool" in getattr(step.function, "__name__", "")
        ):  # fmt: skip
            pooled = True
        todo.extend(ctx.data_inputs(node))
    return pooled and signal in {i for n in seen for i in n.all_input_nodes}


@register
class GateHandler(NodeHandler):
    kind = "gate"

    def recognise(self, node, ctx):
        from ..graph import Step

        if _target(node) not in _MUL:
            return None
        data = ctx.data_args(node)
        if len(data) != 2 or data[0] is data[1]:
            return None
        for gate, signal in (data, data[::-1]):
            if _sigmoid_like(ctx.steps[_origin(gate, ctx, ("move",))]) and _gated_by(
                gate, signal, ctx
            ):
                nonneg = ctx.steps[signal].nonnegative
                step = Step(node, self.kind, function=_target(node), nonnegative=nonneg)
                step.extra = {"signal": signal}
                return step
        return None

    def receivers(self, step, explainer):
        return [step.extra["signal"]]

    def describe(self, step, explainer):
        return "signal-take-all (the gate is a constant)"

    def propagate(self, step, env, r, explainer):
        signal = step.extra["signal"]
        return [(signal, reduce_to(r, explainer.shape_of(signal)))]


@register
class SoftmaxHandler(NodeHandler):
    kind = "softmax"

    def recognise(self, node, ctx):
        from ..graph import Step

        if _target(node) in _SOFTMAX and len(ctx.data_inputs(node)) == 1:
            return Step(node, self.kind, function=_target(node))
        if node.op == "call_module" and exact_type(ctx.modules[node.target], (nn.Softmax,)):
            module = ctx.modules[node.target]  # timm's Swin: attention's own nn.Softmax
            return Step(node, self.kind, module=module, module_name=str(node.target))
        return None

    def _taylor(self, explainer) -> bool:
        return explainer.composite.attention.mode == "attnlrp"

    def receivers(self, step, explainer):
        return explainer.graph_inputs(step.node) if self._taylor(explainer) else []

    def keeps(self, step, explainer):
        return [*explainer.graph_inputs(step.node), step.node] if self._taylor(explainer) else ()

    def check(self, step, explainer):
        for user in _users_through(step.node, explainer):
            if user.op == "output" or explainer.step_of(user).kind != "product":
                refuse(
                    step.node,
                    "a softmax outside attention (start relevance from the logits: remove a "
                    "final softmax)",
                )

    def describe(self, step, explainer):
        if self._taylor(explainer):
            return "taylor (attnlrp)"
        return "constant (cp-lrp)"

    def propagate(self, step, env, r, explainer):
        (source,) = explainer.graph_inputs(step.node)
        x, s = env[source], env[step.node]
        if step.module is not None:
            dim = step.module.dim
            if dim is None:
                refuse(step.node, "nn.Softmax without dim", step.module)
        else:
            node = step.node
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        r_in = r - s * r.sum(dim, keepdim=True)
        r_in = torch.where(torch.isfinite(x), x * r_in, 0.0)  # masked logits (-inf) get none
        return [(source, r_in)]


def _users_through(node, explainer):
    """The users of ``node``, looking through reshapes and dropout."""
    found, todo = [], list(node.users)
    while todo:
        user = todo.pop()
        if user.op != "output" and explainer.step_of(user).kind in _THROUGH:
            todo.extend(user.users)
        else:
            found.append(user)
    return found


@register
class ProductHandler(NodeHandler):
    kind = "product"

    def recognise(self, node, ctx):
        from ..graph import Step

        target = _target(node)
        if target not in _MUL and target not in _MATMUL:
            return None
        data = ctx.data_args(node)
        if len(data) < 2:
            return None
        if len(set(data)) > 2 or (target is torch.einsum and len(data) != 2):
            refuse(node, "a product of more than two data-dependent tensors is not supported")
        step = Step(node, self.kind, function=target)
        weights = [n for n in data if ctx.steps[_origin(n, ctx, _THROUGH)].kind == "softmax"]
        step.extra = {
            "matmul": target in _MATMUL,
            "weights": weights[0] if len(weights) == 1 and data[0] is not data[1] else None,
        }
        return step

    def _mode(self, step, explainer) -> str:
        """cp (weights constant) | uniform | refuse."""
        attention = explainer.composite.attention.mode
        if step.extra["weights"] is not None and attention == "cp":
            return "cp"
        if step.extra["matmul"] and attention == "attnlrp":
            return "uniform"
        if step.extra["weights"] is not None:
            return "uniform"
        return "uniform" if explainer.composite.products == "uniform" else "refuse"

    def _epsilon(self, step, explainer) -> float:
        if step.extra["matmul"] or step.extra["weights"] is not None:
            return explainer.composite.attention.epsilon
        return explainer.composite.proportional.stabilizer

    def receivers(self, step, explainer):
        inputs = explainer.graph_inputs(step.node)
        if self._mode(step, explainer) == "cp":
            return [n for n in inputs if n is not step.extra["weights"]]
        return inputs

    def keeps(self, step, explainer):
        return [*explainer.graph_inputs(step.node), step.node]

    def check(self, step, explainer):
        if self._mode(step, explainer) == "refuse":
            refuse(
                step.node,
                "a product of two data-dependent tensors (neither a recognised gate nor "
                "attention); set 'products: uniform' in the config to split its relevance "
                "equally between the factors",
            )

    def propagate(self, step, env, r, explainer):
        mode = self._mode(step, explainer)
        out = env[step.node]
        epsilon = self._epsilon(step, explainer)
        if mode == "cp":
            (value,) = self.receivers(step, explainer)
            s = divide(r, out, epsilon)
            return [(n, env[n] * g) for n, g in vjp(step, env, s, explainer, [value]).items()]
        s = divide(r, 2 * out, epsilon)
        return [(n, env[n] * g) for n, g in vjp(step, env, s, explainer).items()]

    def describe(self, step, explainer):
        mode = self._mode(step, explainer)
        epsilon = self._epsilon(step, explainer)
        if mode == "cp":
            return f"attention value product: weights constant (cp-lrp, epsilon={epsilon})"
        return f"uniform split (epsilon={epsilon})"
