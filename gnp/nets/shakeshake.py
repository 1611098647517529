"""WRN-26 Shake-Shake 2×96d as the official code defines it (WideResNet_2_96_ShakeShake in
models/available_models/wrn_shakeshake.py of zhaoyang-0204/gnp, after google-research's flax_models/cifar).

Each block: two branches ReLU → conv 3×3 → BN → ReLU → conv 3×3 → BN, mixed by Shake-Shake (gnp.nets.shake),
plus the shortcut. Where the width changes (each group's first block, the first one too, at stride 1) the
shortcut is two 1×1 convolutions to half the width each, one on the input subsampled by the stride, one on
the input shifted by a pixel down and right (zeros after) and subsampled, concatenated → BN; elsewhere the
identity. Stem conv 3×3 to 16 → BN (no ReLU); groups of 4 blocks at widths 96, 192, 384; head ReLU → global
average → dense. Convolutions "SAME" (the strided ones the TF way), N(0, 2/fan_out); the dense layer
U(±1/√classes), zero bias. 26,192,922 parameters for 10 classes.
"""

import torch
import torch.nn.functional as F
from torch import nn

from gnp.nets.layers import dense_init_
from gnp.nets.shake import shake_shake
from gnp.nets.wrn import bn_relu, conv


class Shortcut(nn.Module):
    """The official ShortCut of a block that widens."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1, self.conv2 = conv(cin, cout // 2, 1), conv(cin, cout // 2, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        s = self.stride
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        return self.bn(torch.cat([self.conv1(x[:, :, ::s, ::s]), self.conv2(shifted[:, :, ::s, ::s])], 1))


def _branch(cin: int, cout: int, stride: int) -> nn.Sequential:
    """After the block's ReLU: conv → BN → ReLU → conv → BN."""
    return nn.Sequential(conv(cin, cout, 3, stride), *bn_relu(cout), conv(cout, cout, 3), nn.BatchNorm2d(cout))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a, self.b = _branch(cin, cout, stride), _branch(cin, cout, stride)
        self.shortcut = nn.Identity() if cin == cout else Shortcut(cin, cout, stride)

    def forward(self, x):
        h = F.relu(x)
        return self.shortcut(x) + shake_shake(self.a(h), self.b(h), self.training)


def wide_resnet_shakeshake(blocks_per_group: int, width: int, num_classes: int) -> nn.Module:
    layers, cin = [conv(3, 16, 3), nn.BatchNorm2d(16)], 16
    for channels, stride in ((16 * width, 1), (32 * width, 2), (64 * width, 2)):
        for i in range(blocks_per_group):
            layers.append(Block(cin, channels, stride if i == 0 else 1))
            cin = channels
    head = nn.Linear(cin, num_classes)
    dense_init_(head)
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def wrn26_shakeshake_2x96d(num_classes: int) -> nn.Module:
    return wide_resnet_shakeshake(4, 6, num_classes)
