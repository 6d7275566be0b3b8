"""Trace a model into a plan of relevance steps: one handler per graph node.

The model is traced with ``torch.fx.symbolic_trace`` (built-in layers stay leaf calls; user
code and functional ops become nodes). Each node is offered to the registered handlers
(``engine/nodes/``) in turn; the first that recognises it owns it. A node no handler owns is
refused with :class:`UnsupportedModelError` naming the node, its op and the module it came
from: nothing is ever explained silently wrong. The user's model is never changed: the plan
only reads its modules.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from torch import fx, nn

from .nodes import BY_KIND, HANDLERS, Context, UnsupportedModelError
from .nodes.base import exact_type, refuse
from .nodes.layers import LINEAR_MODULES, fold_batchnorms

__all__ = ["Plan", "Step", "UnsupportedModelError", "build_plan", "trace"]


@dataclass
class Step:
    """One graph node with what the relevance pass does there."""

    node: fx.Node
    kind: str  # the handler's kind: linear | pass | move | proportional | gate | ...
    module: nn.Module | None = None  # the leaf module called, if any
    module_name: str | None = None
    batchnorm: nn.Module | None = None  # folded into a linear step
    batchnorm_name: str | None = None
    nonnegative: bool = False  # the node's output is known to be >= 0
    rule: object = None  # set by the explainer from the composite
    function: object = None  # the callable that computes the node (in-place ops replaced)
    position: int | None = None  # index among the model's linear layers
    extra: dict = field(default_factory=dict)  # what the handler found while recognising

    @property
    def name(self) -> str:
        return self.module_name or self.node.name

    @property
    def handler(self):
        return BY_KIND[self.kind]

    @property
    def type_names(self) -> tuple[str, ...]:
        """The class of the module (or of the module a function was traced in) and its
        bases, most specific first; a bare function gives its own name."""
        if self.module is not None:
            cls = type(self.module)
        else:
            stack = self.node.meta.get("nn_module_stack")
            cls = list(stack.values())[-1][1] if stack else None
            if not isinstance(cls, type):
                return (getattr(self.function, "__name__", str(self.function)),)
        return tuple(t.__name__ for t in cls.__mro__ if t is not object)


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
        fixed = _optional_arguments(model)
        gm = fx.symbolic_trace(model, concrete_args=fixed)
        if fixed:
            _drop_fixed_placeholders(gm)
        return gm
    except Exception as error:  # fx raises many types; the message is what matters
        message = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise UnsupportedModelError(
            f"cannot trace {type(model).__name__} with torch.fx: {message}"
        ) from error
    finally:
        for module, flag in flags:
            module.training = flag


def _optional_arguments(model: nn.Module) -> dict | None:
    """``forward``'s arguments after the input that have defaults (timm's ViT takes
    ``attn_mask=None, is_causal=False``), fixed at those defaults: a classifier is explained
    as called on one image batch."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    fixed = {p.name: p.default for p in parameters if p.kind in plain and p.default is not p.empty}
    return fixed or None


def _drop_fixed_placeholders(gm: fx.GraphModule) -> None:
    """fx keeps a placeholder per fixed argument, used only by checks that the caller passes
    that value: remove both, so the graph takes the image batch alone."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for placeholder in placeholders[1:]:
        checks, frontier = [], [placeholder]
        while frontier:  # the placeholder's uses: comparisons ending in assertions
            node = frontier.pop()
            checks.append(node)
            frontier.extend(node.users)
        if all(n.op in ("placeholder", "call_function") for n in checks):
            for node in reversed(_topological(checks)):
                gm.graph.erase_node(node)
    gm.recompile()


def _topological(nodes: list[fx.Node]) -> list[fx.Node]:
    order = {n: i for i, n in enumerate(nodes[0].graph.nodes)}
    return sorted(set(nodes), key=order.__getitem__)


def build_plan(model: nn.Module) -> Plan:
    """Trace ``model`` and classify every node; raises UnsupportedModelError where needed."""
    _refuse_training_mode(model)
    if exact_type(model, LINEAR_MODULES):  # a bare layer would trace into F.linear/conv
        model = nn.Sequential(model)
    gm = trace(model)
    ctx = Context(dict(gm.named_modules()), {}, {})
    output = None
    for node in gm.graph.nodes:
        ctx.depends[node] = node.op == "placeholder" or (
            any(ctx.depends[n] for n in node.all_input_nodes) and not _is_shape_query(node)
        )
        if node.op == "output":
            output = node
            continue
        ctx.steps[node] = _classify(node, ctx)
    if output is None:
        raise UnsupportedModelError("the traced model has no output")
    fold_batchnorms(ctx.steps)
    ordered = list(ctx.steps.values())
    linear = [s for s in ordered if s.kind == "linear" and exact_type(s.module, LINEAR_MODULES)]
    for index, step in enumerate(linear):
        step.position = index
    return Plan(gm, ordered, output)


_TRAINING_SENSITIVE = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _refuse_training_mode(model: nn.Module) -> None:
    """Dropout, BatchNorm and stochastic depth behave differently in training mode, and
    the rules assume the eval-mode function: refuse, naming the first such module."""
    for name, module in model.named_modules():
        sensitive = (
            isinstance(module, _TRAINING_SENSITIVE)
            or type(module).__name__ in ("StochasticDepth", "DropPath")
            or (isinstance(module, nn.MultiheadAttention) and module.dropout > 0)
        )
        if module.training and sensitive:
            where = f"module '{name}' of type {type(module).__name__}" if name else "the model"
            raise UnsupportedModelError(
                f"cannot explain {where}: it is in training mode; call model.eval() first"
            )


def _is_shape_query(node: fx.Node) -> bool:
    """``x.size()``, ``x.shape``, ``x.dim()``: values that depend on shapes, not on data."""
    if node.op == "call_method":
        return node.target in ("size", "dim", "numel")
    return (
        node.op == "call_function"
        and node.target is getattr
        and node.args[1] in ("shape", "ndim", "dtype", "device")
    )


_MODULE_REASONS = {
    nn.Softmax: "start relevance from the logits: remove the final softmax",
    nn.LogSoftmax: "start relevance from the logits: remove the final log-softmax",
}


def _classify(node: fx.Node, ctx: Context):
    for handler in HANDLERS:
        step = handler.recognise(node, ctx)
        if step is not None:
            return step
    if node.op == "call_module":
        module = ctx.modules[node.target]
        reason = next(
            (r for t, r in _MODULE_REASONS.items() if isinstance(module, t)),
            "no LRP rule for this layer type",
        )
        refuse(node, reason, module)
    what = {"call_function": "function", "call_method": "method"}.get(node.op)
    if what is None:
        refuse(node, f"unknown node op {node.op!r}")
    refuse(node, f"no LRP rule for this {what}")
