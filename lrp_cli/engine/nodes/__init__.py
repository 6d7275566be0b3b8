"""Node handlers, one module per family of graph nodes; importing this package registers
them. ``HANDLERS`` is the order in which recognition tries them: what a value is (input,
constant) before what computes it, specific ops before the generic products."""

from . import attention, elementwise, layernorm, layers, local_renorm, movement, products, sums
from .base import BY_KIND, Context, NodeHandler, UnsupportedModelError

RECOGNITION_ORDER = (
    "input", "constant", "linear", "pass", "scale", "move", "maxpool", "proportional", "lrn",
    "layernorm", "attention", "gate", "softmax", "product",
)  # fmt: skip
HANDLERS = [BY_KIND[kind] for kind in RECOGNITION_ORDER]
_UNORDERED = set(BY_KIND) - set(RECOGNITION_ORDER) - {"folded"}  # folded: made by folding
assert not _UNORDERED, f"handlers missing from RECOGNITION_ORDER: {_UNORDERED}"

__all__ = ["BY_KIND", "HANDLERS", "Context", "NodeHandler", "UnsupportedModelError"]
__all__ += [m.__name__ for m in (attention, elementwise, layernorm, layers, local_renorm)]
__all__ += [m.__name__ for m in (movement, products, sums)]
