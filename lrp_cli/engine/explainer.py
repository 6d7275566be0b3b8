"""The explainer: one forward pass that keeps what the rules need, one relevance pass back.

The forward runs the traced graph node by node without autograd, keeping each node's value.
The relevance pass visits the nodes in reverse order; every value is freed as soon as the
node is done, so peak memory stays near a plain gradient's. Linear layers whose rule keeps the
weights (LRP-0, epsilon) reuse the forward output as the denominator: no second forward.
What happens at each node is its handler's business (``engine/nodes/``); this module only
schedules: which values to keep, the forward, the backward and the accumulation.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn

from .composite import Composite, LayerInfo
from .graph import Plan, Step, UnsupportedModelError, build_plan
from .linear import LinearOp, ieee_float32
from .nodes.base import enclosing_module
from .nodes.movement import maxpool2d_params
from .rules import ZeroRule

#: Where relevance starts: the target's logit, or its log-odds (Montavon et al.'s top layer).
STARTS = ("logit", "log-odds")


@dataclass
class Explanation:
    """Relevance of the input (same shape), the logits and the target class per sample.

    ``score``: what relevance started from, per sample: the target's logit, or with
    ``start="log-odds"`` its log-odds ``z_c - logsumexp_{c' != c} z_c'``.
    """

    relevance: Tensor
    logits: Tensor
    targets: Tensor
    score: Tensor | None = None


@dataclass(frozen=True)
class LayerRule:
    """One row of the rule table: a layer (or gate, attention, product) and its rule."""

    name: str
    type: str
    position: int | None
    rule: str
    source: str  # the config entry or setting that chose the rule, or "default"
    folded: str | None = None  # the BatchNorm folded into this layer
    relevance: bool = True  # False: nothing reaches it (a gate branch, attention's q and k)


class Explainer:
    """LRP for a traced PyTorch model under a :class:`Composite` rule configuration.

    ``input_bounds`` are the lowest and highest input values (scalars or per channel), the
    default bounds of the z-box rule. ``channels_last``: compute in that memory format
    ("auto": for float32 images on the CPU, where oneDNN then skips a reorder per
    convolution; the relevance comes back in the input's format either way).
    ``chunk_bytes``: a layer whose input or output takes more than this per slice of the
    batch gets its rule applied slice by slice ("auto": 16 MiB on the CPU, 256 MiB on a
    GPU; None: never), so the rule's temporaries, several times the layer's output, exist
    for one slice at a time. On a CUDA GPU, float32 is computed as IEEE float32, without
    TF32 (:func:`~lrp_cli.engine.linear.ieee_float32`). The user's model is only read,
    never modified.

    ``start``: where relevance starts. ``"logit"`` (default): the target's logit, one-hot.
    ``"log-odds"``: the target's log-odds ``log p_c / (1 - p_c)``, with the top-layer rule of
    Montavon et al.'s overview (section 10.3): the log-odds is a soft minimum of the margins
    ``m_c' = z_c - z_c'``, each a linear layer on the last layer's input ``a`` with weights
    ``w_c - w_c'``; relevance goes to the margins with the softmin weights
    ``beta_c' = softmax_{c' != c}(-m_c')`` and into ``a`` by LRP-0 on each margin:
    ``R_a = a * sum_c' beta_c' (w_c - w_c')``. That is LRP-0 on the model's last layer started
    from ``z_c`` at the target and ``-beta_c' z_c'`` at the others, which is how it is
    computed: the model must end in a linear layer, whose rule becomes LRP-0 (shown in
    :attr:`layer_rules`). With zero biases, ``sum R_a = sum_c' beta_c' m_c'``.
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Composite | None = None,
        *,
        input_bounds=None,
        channels_last: bool | str = "auto",
        chunk_bytes: int | str | None = "auto",
        start: str = "logit",
    ):
        if start not in STARTS:
            raise ValueError(f"start must be one of {', '.join(map(repr, STARTS))}, got {start!r}")
        self.start = start
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be True, False or 'auto', got {channels_last!r}")
        sized = isinstance(chunk_bytes, int) and not isinstance(chunk_bytes, bool)
        if not (chunk_bytes in ("auto", None) or (sized and chunk_bytes > 0)):
            raise ValueError(
                f"chunk_bytes must be a positive int, 'auto' or None, got {chunk_bytes!r}"
            )
        self.chunk_bytes = chunk_bytes
        self.composite = composite or Composite()
        self.input_bounds = input_bounds
        self.channels_last = channels_last
        self.plan: Plan = build_plan(model)
        self._index = {s.node: s for s in self.plan.steps}
        self._check_output()
        self._assign_rules()
        self._modules = {
            id(s): _runnable(s.module) for s in self.plan.steps if s.module is not None
        }
        self.pools = {
            id(s): params
            for s in self.plan.steps
            if self.composite.maxpool == "winner-take-all" and (params := maxpool2d_params(s))
        }
        self.live = self._live_nodes()
        for step in self.plan.steps:
            if step.node in self.live:
                step.handler.check(step, self)
        self.layer_rules = self._rule_table()
        self._drop_after, self._recompute = self._plan_memory()
        self.tuple_items: set[fx.Node] = set()  # getitem nodes that pick from a tuple value
        self._prepared: tuple | None = None
        self.ops: dict[int, object] = {}
        self.constants: dict[fx.Node, object] = {}
        self._shapes: dict[fx.Node, torch.Size] = {}
        self._returned = None

    # ------------------------------------------------------------------ public API
    def __call__(self, x: Tensor, target=None) -> Explanation:
        """Explain a batch ``x`` for ``target``: None (top-1), a class index, or one per sample."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise TypeError("x must be a floating-point tensor")
        given, x = x, self._prepare(x)
        with torch.no_grad(), ieee_float32(x.device):
            env = self._forward(x)
            logits = env[self._logits_node]
            targets = _targets(target, logits)
            if self.start == "logit":
                start = torch.zeros_like(logits)
                start.scatter_(1, targets[:, None], logits.gather(1, targets[:, None]))
                score = logits.gather(1, targets[:, None]).squeeze(1)
            else:
                start, score = _log_odds_start(logits, targets)
            self._returned = logits  # the caller's: never overwritten
            try:
                relevance = self._backward(env, start, x)
            finally:
                self._returned = None
        if relevance.dim() == 4 and given.is_contiguous() and not relevance.is_contiguous():
            relevance = relevance.contiguous()
        return Explanation(relevance, logits, targets, score)

    # ------------------------------------------------------------ for the handlers
    def call(self, step: Step, lookup) -> object:
        """Compute a node's value with its inputs taken from ``lookup``."""
        node = step.node
        args, kwargs = self.arguments(step, lookup)
        if step.kind == "linear":
            op = self.ops[id(step)]
            return op.forward(args[0], op.weight, op.bias)
        if node.op == "call_module":
            return self._modules[id(step)](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], step.function)(*args[1:], **kwargs)
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        return step.function(*args, **kwargs)

    def arguments(self, step: Step, lookup) -> tuple[tuple, dict]:
        """The node's positional and keyword arguments with nodes replaced by values."""
        node = step.node
        return fx.node.map_arg(node.args, lookup), dict(fx.node.map_arg(node.kwargs, lookup))

    def graph_inputs(self, node: fx.Node) -> list[fx.Node]:
        """The node's inputs whose values depend on the model's input."""
        return [n for n in node.all_input_nodes if self._index[n].kind != "constant"]

    def step_of(self, node: fx.Node) -> Step:
        return self._index[node]

    def shape_of(self, node: fx.Node) -> torch.Size:
        """The shape the node's value had in this batch's forward (kept for every node)."""
        return self._shapes[node]

    def is_returned(self, value: Tensor) -> bool:
        """Whether ``value`` is (or views the storage of) the logits handed to the caller."""
        returned = self._returned
        if returned is None:
            return False
        return value.untyped_storage().data_ptr() == returned.untyped_storage().data_ptr()

    def divides_by_output(self, step: Step) -> bool:
        """Whether a linear layer's rule reads the layer's own output."""
        producer = self._index[self.graph_inputs(step.node)[0]]
        return getattr(step.rule, "needs_output", lambda _: False)(producer.nonnegative)

    def chunk_limit(self, like: Tensor) -> int | None:
        if self.chunk_bytes == "auto":
            return (16 if like.device.type == "cpu" else 256) << 20
        return self.chunk_bytes

    def bounds(self, rule):
        low, high = getattr(rule, "low", None), getattr(rule, "high", None)
        if low is not None:
            return low, high
        return self.input_bounds

    # ------------------------------------------------------------------ set-up
    def _check_output(self):
        (result,) = self.plan.output.args
        if not isinstance(result, fx.Node):
            raise UnsupportedModelError(
                "the model must return a single tensor of logits, not a tuple or dict"
            )
        self._logits_node = result
        last = self._index[result]
        if self.start == "log-odds" and not (
            last.kind == "linear" and isinstance(last.module, nn.Linear)
        ):
            raise UnsupportedModelError(
                "start 'log-odds' needs a model whose output is an nn.Linear layer (its "
                f"classifier); {last.name!r} is not"
            )
        placeholders = [s.node for s in self.plan.steps if s.kind == "input"]
        if len(placeholders) != 1:
            raise UnsupportedModelError("the model must take exactly one input tensor")
        self._input_node = placeholders[0]

    def _assign_rules(self):
        """Per-layer rules from the composite's entries; one setting for the other kinds."""
        matched = [s for s in self.plan.steps if s.handler.rule_slot is not None]
        self.assignment = self.composite.assign([_layer_info(s) for s in matched])
        self._sources = {}
        for step, (_, rule, source) in zip(matched, self.assignment.layers, strict=True):
            step.rule = rule
            self._sources[id(step)] = source
            if self.start == "log-odds" and step.node is self._logits_node:
                step.rule, self._sources[id(step)] = ZeroRule(), "start: log-odds"
        for step in self.plan.steps:
            field = step.handler.composite_field
            if field is not None:
                step.rule = getattr(self.composite, field)

    def _live_nodes(self) -> set[fx.Node]:
        """The nodes relevance can reach from the logits (not a gate's branch, not the
        queries and keys under CP-LRP)."""
        live = {self._logits_node}
        for step in reversed(self.plan.steps):
            if step.node in live:
                live.update(step.handler.receivers(step, self))
        return live

    def _rule_table(self) -> list[LayerRule]:
        rows = []
        for step in self.plan.steps:
            if step.handler.rule_slot is not None:
                rule, source = step.rule.describe(), self._sources[id(step)]
            else:
                rule = step.handler.describe(step, self)
                if rule is None:
                    continue
                source = self.composite.origin(step.handler.composite_field or step.kind)
            owner = enclosing_module(step.node) if step.module_name is None else None
            rows.append(
                LayerRule(
                    f"{owner[0]}:{step.node.name}" if owner else step.name,
                    step.type_names[0] if step.handler.rule_slot or step.module else step.kind,
                    step.position,
                    rule,
                    source,
                    step.batchnorm_name,
                    step.node in self.live,
                )
            )
        return rows

    def _plan_memory(self) -> tuple[list[list[fx.Node]], dict[fx.Node, Step]]:
        """For each step, the values the forward can drop after it: what the handlers of
        live steps read (the rest only feeds the forward).

        Values that are cheap to recompute from ones kept anyway are recomputed in the
        relevance pass instead (the second value returned): the output of a layer on the
        model's input (three channels for images), and an activation whose input is kept
        (``relu(z)`` after a gamma layer or a residual sum, ``gelu(z)`` after an epsilon
        layer): one cheap pass instead of a second copy of a large tensor."""
        keep = {self._logits_node}
        for step in self.plan.steps:
            if step.kind == "constant" or step.node in self.live:
                keep.update(step.handler.keeps(step, self))
        recompute: dict[fx.Node, Step] = {}
        for step in self.plan.steps:  # a layer on the model's input: a few channels, cheap
            if step.kind == "linear" and step.node in keep and self.divides_by_output(step):
                if self.graph_inputs(step.node) == [self._input_node]:
                    keep.discard(step.node)
                    recompute[step.node] = step
        for step in self.plan.steps:  # activations, dropout and identity in eval mode
            inputs = self.graph_inputs(step.node)
            if step.kind == "pass" and step.node in keep and len(inputs) == 1:
                if inputs[0] in keep and inputs[0] not in recompute:
                    keep.discard(step.node)
                    recompute[step.node] = step
        last_use = {}
        for index, step in enumerate(self.plan.steps):
            for node in step.node.all_input_nodes:
                last_use[node] = index
        drops: list[list[fx.Node]] = [[] for _ in self.plan.steps]
        for node, index in last_use.items():
            if node not in keep:
                drops[index].append(node)
        return drops, recompute

    def _prepare(self, x: Tensor) -> Tensor:
        """Cast weights (BatchNorms folded) once per dtype/device/memory format, not per
        call; ``x`` in the memory format to compute in."""
        channels_last = self._use_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype, device = x.dtype, x.device
        if self._prepared == (dtype, device, channels_last):
            return x
        self.ops = {}
        for step in self.plan.steps:
            op = step.handler.prepare(step, dtype, device)
            if op is None:
                continue
            if isinstance(op, LinearOp) and channels_last and op.weight.dim() == 4:
                op.weight = op.weight.contiguous(memory_format=torch.channels_last)
            self.ops[id(step)] = op
        self.constants = {}
        for step in self.plan.steps:
            if step.node.op == "get_attr":
                value = _fetch_attr(self.plan.graph_module, step.node.target)
                if isinstance(value, Tensor) and value.is_floating_point():
                    value = value.to(device=device, dtype=dtype)
                self.constants[step.node] = value
        self._prepared = (dtype, device, channels_last)
        return x

    def _use_channels_last(self, x: Tensor) -> bool:
        if x.dim() != 4 or self.channels_last is False:
            return False
        return self.channels_last is True or (x.device.type, x.dtype) == ("cpu", torch.float32)

    # ------------------------------------------------------------------ the passes
    def _forward(self, x: Tensor) -> dict:
        env: dict[fx.Node, object] = {}
        shapes = self._shapes
        for step, drops in zip(self.plan.steps, self._drop_after, strict=True):
            node = step.node
            value = x if step.kind == "input" else step.handler.forward(step, env, self)
            env[node] = value
            if isinstance(value, Tensor):
                shapes[node] = value.shape
            for done in drops:
                env.pop(done, None)
        return env

    def _backward(self, env: dict, start: Tensor, x: Tensor) -> Tensor:
        relevance: dict[fx.Node, object] = {self._logits_node: start}
        result = None
        for step in reversed(self.plan.steps):
            node = step.node
            if node in relevance and step.kind not in ("constant", "input"):
                own = step.kind == "linear"  # recomputed only where its rule reads it
                needed = node.all_input_nodes + ([node] if own else [])
                for value_node in needed:
                    if value_node in self._recompute and value_node not in env:
                        env[value_node] = self.call(self._recompute[value_node], env.__getitem__)
                for source, value in step.handler.propagate(step, env, relevance.pop(node), self):
                    _accumulate(relevance, source, value)
            elif step.kind == "input":
                result = relevance.pop(node, None)
            env.pop(node, None)
        return torch.zeros_like(x) if result is None else result


# ---------------------------------------------------------------------- helpers
def _layer_info(step: Step) -> LayerInfo:
    return LayerInfo(step.name, step.type_names, step.position, step.handler.rule_slot)


def _runnable(module: nn.Module) -> nn.Module:
    """A module safe to call on kept values: in-place activations get an out-of-place copy."""
    if getattr(module, "inplace", False):
        module = copy.copy(module)
        module.inplace = False
    return module


def _fetch_attr(gm: fx.GraphModule, target: str):
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _accumulate(relevance: dict, node: fx.Node, value) -> None:
    if isinstance(value, dict):
        items = relevance.setdefault(node, {})
        for key, part in value.items():
            items[key] = part if key not in items else items[key] + part
    elif node in relevance:
        relevance[node] = relevance[node] + value
    else:
        relevance[node] = value


def _log_odds_start(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Relevance at the logits for the log-odds start, and the log-odds per sample.

    Under LRP-0 on the last layer, starting from ``z_c`` at the target and ``-beta_c' z_c'``
    at each other class gives ``R_a = a * sum_c' beta_c' (w_c - w_c')``, the overview's rule.
    """
    own = logits.gather(1, targets[:, None])
    margins = own - logits  # m_c' = z_c - z_c'; 0 at the target itself
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, targets[:, None], True)
    beta = torch.softmax((-margins).masked_fill(mask, float("-inf")), dim=1)
    score = own.squeeze(1) - torch.logsumexp(logits.masked_fill(mask, float("-inf")), dim=1)
    start = torch.where(mask, logits, -beta * logits)
    return start, score


def _targets(target, logits: Tensor) -> Tensor:
    n, classes = logits.shape[0], logits.shape[-1]
    if logits.dim() != 2:
        raise UnsupportedModelError(
            f"expected logits of shape (N, classes), got {tuple(logits.shape)}"
        )
    if target is None:
        targets = logits.argmax(dim=1)
    elif isinstance(target, int):
        targets = torch.full((n,), target, dtype=torch.long, device=logits.device)
    elif isinstance(target, (Tensor, Sequence)):
        targets = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
        if targets.numel() == 1:
            targets = targets.expand(n)
        if targets.numel() != n:
            raise ValueError(f"got {targets.numel()} targets for a batch of {n}")
    else:
        raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}")
    if ((targets < 0) | (targets >= classes)).any():
        raise ValueError(f"target class out of range 0..{classes - 1}")
    return targets
