"""Linear maps the rules act on: convolutions, dense layers and per-channel affine maps.

A rule needs three things from a linear layer: its forward with substitute weights
(``forward``), the transposed map that distributes a per-output signal back to the inputs
(``transpose``, the vector-Jacobian product, computed directly so no autograd graph is kept),
and its weight and bias. BatchNorm folding happens here, once, in the explainer's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CONV_FORWARD = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


@dataclass
class LinearOp:
    """Base: ``z = forward(a, weight, bias)``; subclasses define the map."""

    weight: Tensor
    bias: Tensor | None

    input_dim = 1  # the input's feature dim, along which stacked inputs are concatenated

    @property
    def stackable(self) -> bool:
        """Whether inputs (and weights, along ``input_dim``) can be stacked into one call."""
        return False

    def stacked_like(self, a: Tensor, copies: int) -> Tensor:
        """An uninitialised tensor like ``a`` (an input or output) with ``copies`` times its
        features: the shape of a stacked transposed map's input or signal."""
        shape = list(a.shape)
        shape[self.input_dim] *= copies
        return torch.empty(shape, dtype=a.dtype, device=a.device, memory_format=memory_format(a))

    def forward(self, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def transpose(self, s: Tensor, weight: Tensor, a: Tensor) -> Tensor:
        """``W^T s`` shaped like the layer's input ``a`` (whose values are not read)."""
        raise NotImplementedError

    def broadcast_bias(self, bias: Tensor, out: Tensor) -> Tensor:
        """``bias`` shaped to add to an output like ``out`` (channels on dim 1, or last)."""
        if out.dim() <= 2:
            return bias
        return bias.view((1, -1) + (1,) * (out.dim() - 2))


@dataclass
class ConvOp(LinearOp):
    dims: int = 2
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)
    groups: int = 1

    @property
    def stackable(self):
        return self.groups == 1

    def forward(self, a, weight, bias):
        conv = _CONV_FORWARD[self.dims]
        return conv(a, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s, weight, a):
        # the real input, not torch.nn.grad's expanded dummy, which oneDNN copies in full
        return torch.ops.aten.convolution_backward(
            s,
            a,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            False,
            [0] * self.dims,
            self.groups,
            (True, False, False),
        )[0]


@dataclass
class DenseOp(LinearOp):
    input_dim = -1

    @property
    def stackable(self):
        return True

    def forward(self, a, weight, bias):
        return F.linear(a, weight, bias)

    def broadcast_bias(self, bias, out):
        return bias  # features are the last dim

    def transpose(self, s, weight, a):
        return s @ weight


@dataclass
class AffineOp(LinearOp):
    """Per-channel ``a * weight + bias`` (channel dim 1): a BatchNorm with no layer to fold into."""

    def _shape(self, a: Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (a.dim() - 2)

    def forward(self, a, weight, bias):
        out = a * weight.view(self._shape(a))
        return out if bias is None else out + bias.view(self._shape(a))

    def transpose(self, s, weight, a):
        return s * weight.view(self._shape(s))


@contextlib.contextmanager
def ieee_float32(device: torch.device) -> Iterator[None]:
    """float32 convolutions and matrix products in full float32 on a CUDA device, for the
    duration: PyTorch lets cuDNN convolutions use TF32 (a 10-bit mantissa, errors near 1e-3
    relative) on Ampere and later GPUs by default, and LRP's divisions amplify such errors.
    The global flags are restored afterwards; nothing changes on other devices."""
    if device.type != "cuda":
        yield
        return
    flags = (torch.backends.cudnn.conv, torch.backends.cuda.matmul)
    saved = [flag.fp32_precision for flag in flags]
    try:
        for flag in flags:
            flag.fp32_precision = "ieee"
        yield
    finally:
        for flag, value in zip(flags, saved, strict=True):
            flag.fp32_precision = value


def memory_format(t: Tensor) -> torch.memory_format:
    """channels-last for a 4-D tensor laid out so, else contiguous."""
    channels_last = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _conv_padding(module: nn.Module) -> tuple:
    """Numeric padding of a conv module; string paddings converted when symmetric."""
    if module.padding_mode != "zeros":
        raise TypeError(f"padding_mode={module.padding_mode!r} is not supported")
    padding = module.padding
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * len(module.kernel_size)
        total = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            raise TypeError(
                "padding='same' with an even kernel extent is asymmetric; pad explicitly"
            )
        return tuple(t // 2 for t in total)
    return tuple(padding)


def batchnorm_scale_shift(bn: nn.Module, dtype, device) -> tuple[Tensor, Tensor]:
    """The exact per-channel affine map of an eval-mode BatchNorm, in ``dtype``."""

    def get(t, default):
        return (t if t is not None else default).detach().to(device=device, dtype=dtype)

    ones = torch.ones(bn.num_features)
    mean = get(bn.running_mean, torch.zeros(bn.num_features))
    var = get(bn.running_var, ones)
    scale = get(bn.weight, ones) / torch.sqrt(var + bn.eps)
    shift = get(bn.bias, torch.zeros(bn.num_features)) - mean * scale
    return scale, shift


def fold_batchnorm(
    weight: Tensor, bias: Tensor | None, scale: Tensor, shift: Tensor
) -> tuple[Tensor, Tensor]:
    """Fold ``y = scale * (W a + b) + shift`` into one weight and bias (output channel dim 0)."""
    folded_weight = weight * scale.view((-1,) + (1,) * (weight.dim() - 1))
    folded_bias = shift if bias is None else bias * scale + shift
    return folded_weight, folded_bias


def make_linear_op(module: nn.Module, batchnorm: nn.Module | None, dtype, device) -> LinearOp:
    """Build the op for a Conv/Linear/BatchNorm module (with an optional BatchNorm to fold)."""

    def cast(t):
        return None if t is None else t.detach().to(device=device, dtype=dtype)

    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        scale, shift = batchnorm_scale_shift(module, dtype, device)
        return AffineOp(scale, shift)
    weight, bias = cast(module.weight), cast(module.bias)
    if batchnorm is not None:
        weight, bias = fold_batchnorm(
            weight, bias, *batchnorm_scale_shift(batchnorm, dtype, device)
        )
    if isinstance(module, nn.Linear):
        return DenseOp(weight, bias)
    return ConvOp(
        weight,
        bias,
        dims=weight.dim() - 2,
        stride=tuple(module.stride),
        padding=_conv_padding(module),
        dilation=tuple(module.dilation),
        groups=module.groups,
    )
