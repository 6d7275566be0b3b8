"""The explainer: one forward pass that keeps what the rules need, one relevance pass back.

The forward runs the traced graph node by node without autograd, keeping each node's value.
The relevance pass visits the nodes in reverse order; every value is freed as soon as the
node is done, so peak memory stays near a plain gradient's. Linear layers whose rule keeps the
weights (LRP-0, epsilon) reuse the forward output as the denominator: no second forward.
"""

from __future__ import annotations

import copy
import functools
import inspect
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from .composite import Composite, LayerInfo, LRNRule
from .graph import Plan, Step, UnsupportedModelError, build_plan
from .linear import ieee_float32, make_linear_op
from .lrn import lrn_relevance


@dataclass
class Explanation:
    """Relevance of the input (same shape), the logits and the target class per sample."""

    relevance: Tensor
    logits: Tensor
    targets: Tensor


@dataclass(frozen=True)
class LayerRule:
    """One row of the rule table: a layer and the rule it gets."""

    name: str
    type: str
    position: int | None
    rule: str
    source: str  # the config entry that chose the rule, or "default"
    folded: str | None = None  # the BatchNorm folded into this layer


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
    """

    def __init__(
        self,
        model: nn.Module,
        composite: Composite | None = None,
        *,
        input_bounds=None,
        channels_last: bool | str = "auto",
        chunk_bytes: int | str | None = "auto",
    ):
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
        self._check_output()
        infos = {id(s): _layer_info(s) for s in self.plan.steps if s.kind in ("linear", "lrn")}
        steps = [s for s in self.plan.steps if id(s) in infos]
        self.assignment = self.composite.assign([infos[id(s)] for s in steps])
        self.layer_rules: list[LayerRule] = []
        for step, (info, rule, source) in zip(steps, self.assignment.layers, strict=True):
            step.rule = rule
            self.layer_rules.append(
                LayerRule(
                    info.name,
                    info.type_names[0],
                    info.position,
                    rule.describe(),
                    source,
                    step.batchnorm_name,
                )
            )
        for step in self.plan.steps:
            if step.kind == "norm":
                step.rule = self.composite.norm
        self._modules = {
            id(s): _runnable(s.module) for s in self.plan.steps if s.module is not None
        }
        self._pools = {
            id(s): params
            for s in self.plan.steps
            if self.composite.maxpool == "winner-take-all" and (params := _maxpool2d_params(s))
        }
        self._drop_after, self._recompute = self._plan_memory()
        self._tuple_items: set[fx.Node] = set()  # getitem nodes that pick from a tuple value
        self._prepared: tuple | None = None
        self._ops: dict[int, object] = {}

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
            start = torch.zeros_like(logits)
            start.scatter_(1, targets[:, None], logits.gather(1, targets[:, None]))
            env[_LOGITS] = logits  # stays until the end: the caller's, never overwritten
            relevance = self._backward(env, start, x)
        if relevance.dim() == 4 and given.is_contiguous() and not relevance.is_contiguous():
            relevance = relevance.contiguous()
        return Explanation(relevance, logits, targets)

    def forward(self, x: Tensor) -> Tensor:
        """The model's logits as the engine computes them (folded BatchNorm, explainer dtype)."""
        x = self._prepare(x)
        with torch.no_grad(), ieee_float32(x.device):
            env = self._forward(x)
            return env[self._logits_node]

    # ------------------------------------------------------------------ internals
    def _check_output(self):
        (result,) = self.plan.output.args
        if not isinstance(result, fx.Node):
            raise UnsupportedModelError(
                "the model must return a single tensor of logits, not a tuple or dict"
            )
        self._logits_node = result
        placeholders = [s.node for s in self.plan.steps if s.kind == "input"]
        if len(placeholders) != 1:
            raise UnsupportedModelError("the model must take exactly one input tensor")
        self._input_node = placeholders[0]

    def _prepare(self, x: Tensor) -> Tensor:
        """Fold BatchNorms and cast weights once per dtype/device/memory format, not per call;
        ``x`` in the memory format to compute in."""
        channels_last = self._use_channels_last(x)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype, device = x.dtype, x.device
        if self._prepared == (dtype, device, channels_last):
            return x
        self._ops = {}
        for step in self.plan.steps:
            if step.kind == "linear":
                op = make_linear_op(step.module, step.batchnorm, dtype, device)
                if channels_last and op.weight.dim() == 4:
                    op.weight = op.weight.contiguous(memory_format=torch.channels_last)
                self._ops[id(step)] = op
        self._constants = {}
        for step in self.plan.steps:
            if step.node.op == "get_attr":
                value = _fetch_attr(self.plan.graph_module, step.node.target)
                if isinstance(value, Tensor) and value.is_floating_point():
                    value = value.to(device=device, dtype=dtype)
                self._constants[step.node] = value
        self._prepared = (dtype, device, channels_last)
        return x

    def _use_channels_last(self, x: Tensor) -> bool:
        if x.dim() != 4 or self.channels_last is False:
            return False
        return self.channels_last is True or (x.device.type, x.dtype) == ("cpu", torch.float32)

    def _call(self, step: Step, lookup) -> object:
        """Compute a node's value with its inputs taken from ``lookup``."""
        node = step.node
        args = fx.node.map_arg(node.args, lookup)
        kwargs = dict(fx.node.map_arg(node.kwargs, lookup))
        if step.kind == "linear":
            op = self._ops[id(step)]
            return op.forward(args[0], op.weight, op.bias)
        if node.op == "call_module":
            return self._modules[id(step)](*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], step.function)(*args[1:], **kwargs)
        if kwargs.get("inplace"):
            kwargs["inplace"] = False
        return step.function(*args, **kwargs)

    def _plan_memory(self) -> tuple[list[list[fx.Node]], dict[fx.Node, Step]]:
        """For each step, the values the forward can drop after it: the relevance pass needs
        only linear layers' inputs (and outputs where the rule divides by them), the operands
        of sums and the inputs of ops whose vector-Jacobian product is re-run.

        Values that are cheap to recompute from ones kept anyway are recomputed in the
        relevance pass instead (the second value returned): the output of a layer on the
        model's input (three channels for images), and an activation whose input is kept
        (``relu(z)`` after a gamma layer or a residual sum): one cheap pass instead of a
        second copy of a large tensor."""
        keep = {self._logits_node}
        for step in self.plan.steps:
            inputs = self._graph_inputs(step.node)
            if step.kind == "constant":
                keep.add(step.node)
            elif step.kind == "linear":
                keep.update(inputs)
                if self._divides_by_output(step):
                    keep.add(step.node)
            elif step.kind == "norm":
                keep.update(inputs)
                keep.add(step.node)
            elif step.kind in ("move", "maxpool", "lrn") and id(step) not in self._pools:
                keep.update(inputs)
        recompute: dict[fx.Node, Step] = {}
        for step in self.plan.steps:  # a layer on the model's input: a few channels, cheap
            if step.kind == "linear" and step.node in keep and self._divides_by_output(step):
                if self._graph_inputs(step.node) == [self._input_node]:
                    keep.discard(step.node)
                    recompute[step.node] = step
        for step in self.plan.steps:  # deterministic activations (ReLU, sigmoid...) only
            inputs = self._graph_inputs(step.node)
            if step.kind == "pass" and step.nonnegative and step.node in keep and len(inputs) == 1:
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

    def _forward(self, x: Tensor) -> dict:
        env: dict[fx.Node, object] = {}
        lookup = env.__getitem__
        for step, drops in zip(self.plan.steps, self._drop_after, strict=True):
            node = step.node
            if step.kind == "input":
                env[node] = x
            elif node.op == "get_attr":
                env[node] = self._constants[node]
            elif step.kind == "folded":
                env[node] = env[step.function]
            else:
                if step.function is operator.getitem and isinstance(
                    env.get(node.args[0]), (tuple, list)
                ):
                    self._tuple_items.add(node)
                if id(step) in self._pools:  # keep the winners, not the input
                    a = env[node.args[0]]
                    env[node], indices = F.max_pool2d(
                        a, *self._pools[id(step)], return_indices=True
                    )
                    env[("indices", node)] = (indices, a.shape)
                else:
                    env[node] = self._call(step, lookup)
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
                        env[value_node] = self._call(self._recompute[value_node], env.__getitem__)
                for source, value in self._propagate(step, env, relevance.pop(node)):
                    _accumulate(relevance, source, value)
            elif step.kind == "input":
                result = relevance.pop(node, None)
            env.pop(node, None)
        return torch.zeros_like(x) if result is None else result

    def _propagate(self, step: Step, env: dict, r):
        """Relevance of the node's graph inputs: a list of (input node, relevance)."""
        node, kind = step.node, step.kind
        if kind == "folded":
            return [(step.function, r)]
        if kind == "pass":
            return [(self._graph_inputs(node)[0], r)]
        if kind == "linear":
            (source,) = self._graph_inputs(node)
            relevance = functools.partial(
                step.rule.relevance,
                self._ops[id(step)],
                nonnegative=_step_of(self.plan, source).nonnegative,
                bounds=self._bounds(step.rule),
                # modified weights live for this layer's step (all slices), once per batch:
                # kept across batches they would hold several copies of the model's weights
                cache={},
            )
            # the output is None where the rule does not divide by it
            z = env.pop(node, None)
            return [(source, _in_slices(relevance, env[source], z, r, self._chunk_limit(r)))]
        if kind == "norm":
            return self._norm(step, env, r)
        if kind == "maxpool" and self.composite.maxpool == "average":
            return self._maxpool_as_average(step, env, r)
        if id(step) in self._pools:
            indices, shape = env.pop(("indices", node))
            like = r.new_empty(1).expand(shape)  # the op reads only the input's shape
            r_in = torch.ops.aten.max_pool2d_with_indices_backward(
                r, like, *self._pools[id(step)], indices
            )
            return [(node.args[0], r_in)]
        if kind in ("move", "maxpool"):
            if node in self._tuple_items:
                return [(node.args[0], {node.args[1]: r})]
            return list(self._vjp(step, env, r).items())
        if kind == "lrn":
            return self._lrn(step, env, r)
        raise UnsupportedModelError(f"no relevance handler for node '{node.name}' ({kind})")

    def _divides_by_output(self, step: Step) -> bool:
        """Whether a linear layer's rule reads the layer's own output."""
        producer = _step_of(self.plan, self._graph_inputs(step.node)[0])
        return getattr(step.rule, "needs_output", lambda _: False)(producer.nonnegative)

    def _chunk_limit(self, like: Tensor) -> int | None:
        if self.chunk_bytes == "auto":
            return (16 if like.device.type == "cpu" else 256) << 20
        return self.chunk_bytes

    def _graph_inputs(self, node: fx.Node) -> list[fx.Node]:
        return [n for n in node.all_input_nodes if _step_of(self.plan, n).kind != "constant"]

    def _vjp(self, step: Step, env: dict, r) -> dict:
        """The op's vector-Jacobian product with ``r`` for each graph input."""
        inputs = self._graph_inputs(step.node)
        with torch.enable_grad():
            leaves = {n: env[n].detach().requires_grad_() for n in inputs}
            out = self._call(step, lambda n: leaves.get(n, env[n]))
            if isinstance(r, dict):  # relevance of some items of a tuple output
                outs = [out[i] for i in r]
                grads = list(r.values())
            else:
                outs, grads = [out], [r]
            found = _vector_jacobian(outs, [leaves[n] for n in inputs], grads)
        return {n: g for n, g in zip(inputs, found, strict=True) if g is not None}

    def _norm(self, step: Step, env: dict, r):
        inputs = self._graph_inputs(step.node)
        plain = _is_plain_add(step, inputs, env)
        # the sum's value is needed by nothing after this step (unless it is, or is viewed
        # by, the logits the caller gets back): its memory takes the signal, then the last
        # input's share
        z = env[step.node]
        owned = z.untyped_storage().data_ptr() != env[_LOGITS].untyped_storage().data_ptr()
        s = step.rule.divide(r, z, scratch=owned)
        if plain:
            *others, last = inputs
            shares = [(n, env[n] * s) for n in others]
            return shares + [(last, s.mul_(env[last]) if owned else env[last] * s)]
        return [(n, env[n] * g) for n, g in self._vjp(step, env, s).items()]

    def _maxpool_as_average(self, step: Step, env: dict, r):
        (source,) = self._graph_inputs(step.node)
        pool = _average_pool_like(step)
        a = env[source]
        with torch.enable_grad():
            leaf = a.detach().requires_grad_()
            z = pool(leaf)
            s = self.composite.norm.divide(r, z.detach())
            (g,) = _vector_jacobian([z], [leaf], [s])
        return [(source, a * g)]

    def _lrn(self, step: Step, env: dict, r):
        (source,) = self._graph_inputs(step.node)
        rule: LRNRule = step.rule
        if not isinstance(rule, LRNRule):  # pass
            return [(source, r)]
        params = _lrn_params(step)
        r_in = lrn_relevance(
            env[source], r, *params, mode=rule.mode, epsilon=rule.epsilon, sign_beta=rule.beta
        )
        return [(source, r_in)]

    def _bounds(self, rule):
        low, high = getattr(rule, "low", None), getattr(rule, "high", None)
        if low is not None:
            return low, high
        return self.input_bounds


_LOGITS = "logits returned"  # env key beside the nodes: the tensor handed back to the caller


# ---------------------------------------------------------------------- helpers
def _vector_jacobian(
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


def _in_slices(relevance, a: Tensor, z: Tensor | None, r: Tensor, limit: int | None) -> Tensor:
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


def _layer_info(step: Step) -> LayerInfo:
    names = tuple(t.__name__ for t in type(step.module).__mro__ if t is not object)
    return LayerInfo(step.name, names, step.position, "lrn" if step.kind == "lrn" else "linear")


def _runnable(module: nn.Module) -> nn.Module:
    """A module safe to call on kept values: in-place activations get an out-of-place copy."""
    if getattr(module, "inplace", False):
        module = copy.copy(module)
        module.inplace = False
    return module


def _step_of(plan: Plan, node: fx.Node) -> Step:
    index = getattr(plan, "_index", None)
    if index is None:
        index = plan._index = {s.node: s for s in plan.steps}
    return index[node]


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


def _is_plain_add(step: Step, inputs, env) -> bool:
    """``a + b`` of same-shaped tensors: its VJP is the identity for each term."""
    if step.function not in (operator.add, torch.add, "add", "__add__"):
        return False
    if len(inputs) != len(step.node.args) or step.node.kwargs:
        return False
    shapes = {env[n].shape for n in inputs}
    return len(shapes) == 1 and env[step.node].shape in shapes


def _maxpool2d_params(step: Step) -> tuple | None:
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


def _average_pool_like(step: Step):
    """The average pooling with a max pooling's window (Montavon's treatment of max pooling)."""
    if step.module is None:
        raise UnsupportedModelError(
            f"maxpool: average needs a MaxPool module, node '{step.node.name}' is functional"
        )
    m = step.module
    if isinstance(m, (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        dims = int(type(m).__name__[-2])
        adaptive = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
        return lambda a: adaptive[dims](a, m.output_size)
    dims = int(type(m).__name__[-2])
    if m.dilation not in (1, (1,) * dims):
        raise UnsupportedModelError(f"maxpool: average cannot mirror dilated '{step.name}'")
    avg = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
    stride = m.stride if m.stride is not None else m.kernel_size
    return lambda a: avg(a, m.kernel_size, stride, m.padding, m.ceil_mode, True)


def _lrn_params(step: Step) -> tuple:
    if step.module is not None:
        m = step.module
        return m.size, m.alpha, m.beta, m.k
    bound = inspect.signature(F.local_response_norm).bind(*step.node.args, **step.node.kwargs)
    bound.apply_defaults()
    a = bound.arguments
    return a["size"], a["alpha"], a["beta"], a["k"]


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
