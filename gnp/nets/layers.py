"""Layers and initializations as the official JAX code (Flax) defines them, in PyTorch."""

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF/Flax "SAME" padding of one dimension: the output is ceil(size/stride), the extra pixel (if the total
    is odd) after, not before, as in PyTorch's symmetric padding."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1])
    if top == bottom and left == right:  # a symmetric padding: PyTorch's own would do (no copy)
        return x, (top, left)
    return F.pad(x, (left, right, top, bottom), value=value), (0, 0)


class Conv2dSame(nn.Conv2d):
    """A strided convolution with Flax's padding="SAME"."""

    def forward(self, x):
        x, padding = _pad_same(x, self.kernel_size, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class MaxPool2dSame(nn.MaxPool2d):
    """Flax's nn.max_pool(..., padding="SAME"): padded with −inf."""

    def forward(self, x):
        kernel, stride = nn.modules.utils._pair(self.kernel_size), nn.modules.utils._pair(self.stride)
        x, padding = _pad_same(x, kernel, stride, value=-math.inf)
        return F.max_pool2d(x, kernel, stride, padding)


def conv_init_(conv: nn.Conv2d) -> None:
    """The official conv_kernel_init: variance_scaling(2.0, "fan_out", "normal"), i.e. N(0, 2/fan_out) with
    fan_out = kernel area × output channels; biases 0 (Flax's default)."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def dense_init_(linear: nn.Linear) -> None:
    """The official dense_layer_init_fn (from google-research/sam): U(±1/√units out), zero bias."""
    bound = 1.0 / math.sqrt(linear.out_features)
    nn.init.uniform_(linear.weight, -bound, bound)
    nn.init.zeros_(linear.bias)
