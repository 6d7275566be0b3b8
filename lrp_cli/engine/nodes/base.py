"""What a node handler is, and the registry that the graph and the explainer consult.

A handler owns one kind of graph node end to end: it recognises its nodes while the graph is
classified, says which forward values its relevance step reads, computes the node's value
where that is special, and maps the relevance of the node's output to its inputs. Adding a
node type means adding one handler (plus its config entry and tests); nothing else dispatches
on kinds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, fx, nn

if TYPE_CHECKING:  # pragma: no cover
    from ..explainer import Explainer
    from ..graph import Step


class UnsupportedModelError(ValueError):
    """The model contains something the engine cannot explain correctly."""


@dataclass
class Context:
    """What recognition sees: the model's modules and the nodes classified so far."""

    modules: dict[str, nn.Module]
    steps: dict  # fx.Node -> Step, for the nodes before this one
    depends: dict  # fx.Node -> whether its value depends on the model's input

    def data_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if self.depends[n]]

    def data_args(self, node: fx.Node) -> list[fx.Node]:
        """Data-dependent positional/keyword arguments, repeats counted (``x * x`` has two)."""
        found = []
        fx.node.map_arg((node.args, node.kwargs), found.append)
        return [n for n in found if self.depends[n]]

    def nonnegative(self, node: fx.Node) -> bool:
        inputs = self.data_inputs(node)
        return bool(inputs) and all(self.steps[n].nonnegative for n in inputs)


class NodeHandler:
    """Base of all handlers: a kind name and the four things a node type must say."""

    kind: ClassVar[str]
    # which config decides the rule: "layer" slots are matched per node by the config's
    # entries (LayerInfo.kind); a composite field name is one setting for every such node
    rule_slot: ClassVar[str | None] = None
    composite_field: ClassVar[str | None] = None

    def recognise(self, node: fx.Node, ctx: Context) -> Step | None:
        """A Step for ``node`` if this handler owns it, else None."""
        return None

    def prepare(self, step: Step, dtype: torch.dtype, device: torch.device):
        """What the node needs in the explainer's dtype and device (cast weights), built once
        per dtype/device and kept in ``explainer.ops``; None if nothing."""
        return None

    def keeps(self, step: Step, explainer: Explainer) -> Iterable[fx.Node]:
        """The forward values the relevance step reads (kept until the pass reaches it)."""
        return ()

    def forward(self, step: Step, env: dict, explainer: Explainer):
        return explainer.call(step, env.__getitem__)

    def receivers(self, step: Step, explainer: Explainer) -> list[fx.Node]:
        """The inputs that can get relevance from this node (for the liveness analysis)."""
        return explainer.graph_inputs(step.node)

    def check(self, step: Step, explainer: Explainer) -> None:
        """Refuse, once rules are known, a node that receives relevance but has no rule."""

    def describe(self, step: Step, explainer: Explainer) -> str | None:
        """The rule shown by ``lrp inspect`` for a node without a per-layer rule, or None
        where the node is not worth a row (moves, activations)."""
        return None

    def propagate(self, step: Step, env: dict, r, explainer: Explainer) -> list[tuple]:
        """Relevance of the node's graph inputs: a list of ``(input node, relevance)``."""
        raise UnsupportedModelError(f"no relevance handler for node '{step.node.name}'")


BY_KIND: dict[str, NodeHandler] = {}


def register(handler_class: type[NodeHandler]) -> type[NodeHandler]:
    """Class decorator: add one instance of the handler to the registry."""
    handler = handler_class()
    if handler.kind in BY_KIND:
        raise ValueError(f"two handlers for kind {handler.kind!r}")
    BY_KIND[handler.kind] = handler
    return handler_class


# ---------------------------------------------------------------------- shared helpers
def describe_node(node: fx.Node, module: nn.Module | None = None) -> str:
    if node.op == "call_module":
        return f"node '{node.name}' (module '{node.target}' of type {type(module).__name__})"
    target = getattr(node.target, "__name__", str(node.target))
    owner = enclosing_module(node)
    where = f" in module '{owner[0]}' of type {owner[1]}" if owner else ""
    return f"node '{node.name}' ({node.op} {target}{where})"


def refuse(node: fx.Node, why: str, module: nn.Module | None = None):
    raise UnsupportedModelError(f"cannot explain {describe_node(node, module)}: {why}")


def enclosing_module(node: fx.Node) -> tuple[str, str] | None:
    """The innermost module a functional node was traced in: (qualified name, type name)."""
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    name, cls = list(stack.values())[-1]
    return name, getattr(cls, "__name__", str(cls))


def named_function(target, module: str, name: str) -> bool:
    """Whether ``target`` is the function ``module.name``, without importing ``module``
    (torchvision's import pulls in sympy: half a second the engine need not pay)."""
    return (
        getattr(target, "__module__", None) == module and getattr(target, "__name__", None) == name
    )


def method_name(node: fx.Node) -> str:
    """A method node's name, in-place methods (``relu_``) as their out-of-place twin."""
    name = node.target
    if name.endswith("_") and not name.startswith("__"):
        name = name[:-1]
    return name


def call_step(node: fx.Node, ctx: Context, kind: str, modules=(), functions=(), methods=(),
              **fields) -> Step | None:  # fmt: skip
    """A Step of ``kind`` if ``node`` calls one of ``modules`` (exact types), ``functions``
    or ``methods``, else None; ``fields`` go to the Step (e.g. ``nonnegative``)."""
    from ..graph import Step

    if node.op == "call_module":
        module = ctx.modules[node.target]
        if modules and exact_type(module, modules):
            return Step(node, kind, module=module, module_name=str(node.target), **fields)
    elif node.op == "call_function" and node.target in functions:
        return Step(node, kind, function=node.target, **fields)
    elif node.op == "call_method" and method_name(node) in methods:
        return Step(node, kind, function=method_name(node), **fields)
    return None


def exact_type(module: nn.Module, types: tuple) -> bool:
    """True for instances of ``types`` that do not override ``forward`` (a subclass might)."""
    return any(isinstance(module, t) and type(module).forward is t.forward for t in types)


def vector_jacobian(
    outputs: list[Tensor], inputs: list[Tensor], grads: list[Tensor]
) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(outputs, inputs, grads, allow_unused=True)``, minus its checks.

    Why: ``torch.autograd.grad`` checks each grad's shape through ``torch.fx``'s symbolic
    shapes, whose first use imports sympy: 0.5-0.65 s once per process (the built-in model's
    first batch of 8 took 1.35 s with it, 0.75 s without). Our grads are relevances of the
    outputs' own shapes, so the engine that torch calls after its checks is called directly
    (torch is pinned).
    """
    if _run_backward is None:  # pragma: no cover - only on a torch without it
        return torch.autograd.grad(outputs, inputs, grads, allow_unused=True)
    args = (tuple(outputs), tuple(grads), False, False, tuple(inputs), True)
    return _run_backward(*args, accumulate_grad=False)


_run_backward = getattr(torch.autograd.graph, "_engine_run_backward", None)


def vjp(step: Step, env: dict, r, explainer: Explainer, inputs: list[fx.Node] | None = None):
    """The op's vector-Jacobian product with ``r`` for each graph input (or ``inputs``):
    a dict ``{input node: gradient}``; inputs the op does not reach are left out."""
    inputs = explainer.graph_inputs(step.node) if inputs is None else inputs
    with torch.enable_grad():
        leaves = {n: env[n].detach().requires_grad_() for n in inputs}
        out = explainer.call(step, lambda n: leaves.get(n, env[n]))
        if isinstance(r, dict):  # relevance of some items of a tuple output
            outs = [out[i] for i in r]
            grads = list(r.values())
        else:
            outs, grads = [out], [r]
        found = vector_jacobian(outs, [leaves[n] for n in inputs], grads)
    return {n: g for n, g in zip(inputs, found, strict=True) if g is not None}


def reduce_to(r: Tensor, shape: torch.Size) -> Tensor:
    """``r`` summed over the dims an operand of ``shape`` was broadcast along."""
    return r if r.shape == shape else r.sum_to_size(shape)
