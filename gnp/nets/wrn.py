"""WRN-28-10 as the official code defines it (WideResNet_28_10 in models/available_models/wrn.py of
zhaoyang-0204/gnp: the variant of the SAM repo, google-research/sam).

Pre-activation blocks, BN → ReLU → conv 3×3 → BN → ReLU → conv 3×3, no dropout. The model's first block
activates before the branch, so its shortcut carries the activated input; the others shortcut the raw
input. A shortcut that widens average-pools by the stride and pads the new channels with zeros: no 1×1
convolution (and none between groups: the official config's use_additional_skip_connections_in_wrn is
False). Stem conv 3×3 to 16; head BN → ReLU → global average → dense. Convolutions "SAME" (the strided ones
the TF way), N(0, 2/fan_out); the dense layer U(±1/√classes), zero bias. 36,220,634 parameters for 10
classes.
"""

import torch
import torch.nn.functional as F
from torch import nn

from gnp.nets.layers import Conv2dSame, conv_init_, dense_init_


def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """Flax's nn.Conv(padding="SAME", use_bias=False, kernel_init=conv_kernel_init)."""
    layer = (Conv2dSame(cin, cout, kernel, stride, bias=False) if stride > 1
             else nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False))
    conv_init_(layer)
    return layer


def pooled_padded(x: torch.Tensor, channels: int, stride: int) -> torch.Tensor:
    """The parameter-free shortcut: average-pooled by the stride, the missing channels zeros."""
    if stride > 1:
        x = F.avg_pool2d(x, stride)
    if channels > x.shape[1]:
        x = F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))
    return x


def bn_relu(channels: int) -> nn.Sequential:
    """The official ActivationOp."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, activation_before_residual: bool):
        super().__init__()
        self.activation_before_residual, self.cout, self.stride = activation_before_residual, cout, stride
        self.act1, self.conv1 = bn_relu(cin), conv(cin, cout, 3, stride)
        self.act2, self.conv2 = bn_relu(cout), conv(cout, cout, 3)

    def forward(self, x):
        if self.activation_before_residual:
            x = branch = self.act1(x)
        else:
            branch = self.act1(x)
        branch = self.conv2(self.act2(self.conv1(branch)))
        return branch + pooled_padded(x, self.cout, self.stride)


def wide_resnet(blocks_per_group: int, width: int, num_classes: int) -> nn.Module:
    layers, cin = [conv(3, 16, 3)], 16
    for group, (channels, stride) in enumerate(((16 * width, 1), (32 * width, 2), (64 * width, 2))):
        for i in range(blocks_per_group):
            layers.append(Block(cin, channels, stride if i == 0 else 1, group == 0 and i == 0))
            cin = channels
    head = nn.Linear(cin, num_classes)
    dense_init_(head)
    return nn.Sequential(*layers, *bn_relu(cin), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def wrn28_10(num_classes: int) -> nn.Module:
    return wide_resnet(4, 10, num_classes)
