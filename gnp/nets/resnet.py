"""ResNet-50/101 as the official code defines them (models/available_models/resnet.py in zhaoyang-0204/gnp).

torchvision's layers with the official code's differences: the stem is conv 7×7/2 → BatchNorm → max-pool
3×3/2 with NO ReLU after the BatchNorm; strided convolutions and the max-pool pad the TF/Flax way ("SAME":
the odd pixel after, not before); the classifier is initialized U(±1/√classes) with a zero bias. The same
parameters as torchvision's (ResNet-50: 25,557,032 for 1,000 classes). Convolutions are N(0, 2/fan_out) as
torchvision's, BatchNorm as PyTorch's (Flax's momentum 0.9 is 0.1 here, eps 1e-5).
"""

import torchvision
from torch import nn

from gnp.nets.layers import Conv2dSame, MaxPool2dSame, conv_init_, dense_init_

BLOCKS = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}


def _same(conv: nn.Conv2d) -> Conv2dSame:
    same = Conv2dSame(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, 0,
                      bias=conv.bias is not None)
    conv_init_(same)
    return same


def resnet(depth: int, num_classes: int) -> nn.Module:
    model = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, BLOCKS[depth],
                                             num_classes=num_classes)
    model.conv1 = _same(model.conv1)
    model.relu = nn.Identity()  # used by the stem only: conv → BN → max-pool
    model.maxpool = MaxPool2dSame(3, 2)
    for layer in (model.layer2, model.layer3, model.layer4):
        layer[0].conv2 = _same(layer[0].conv2)  # the stride-2 3×3 (the 1×1 shortcut needs no padding)
    dense_init_(model.fc)
    return model
