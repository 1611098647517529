"""PyramidNet with ShakeDrop as the official code defines it (PyramidNetShakeDrop in
models/available_models/pyramidnet_shakedrop.py of zhaoyang-0204/gnp; PyramidNet_272_200_ShakeDrop is
depth 272, alpha 200).

Bottleneck blocks, (depth − 2)/9 per stage, the first of stages 2 and 3 at stride 2. Block l of L widens
the network by alpha/L: its bottleneck is round(16 + l·alpha/L) channels, its output 4 times that. Each
block: BN → conv 1×1 → BN → ReLU → conv 3×3 → BN → ReLU → conv 1×1 → BN, through ShakeDrop (gnp.nets.shake)
with survival probability 1 − 0.5·l/L, plus the input average-pooled by the stride with the new channels
zeros. Stem conv 3×3 to 16 → BN (no ReLU); head BN → ReLU → 8×8 average (global at 32 px) → dense.
Convolutions "SAME" (the strided ones the TF way), N(0, 2/fan_out); the dense layer U(±1/√classes), zero
bias. Parameters for 10 classes: 26,210,842 (272, 200); 27,216,021 (164, 270).

The official network passes each block its survival probability as `prob=`, a name the block does not have
(its field is `mask_prob`), so it fails to build as written; here the block gets it, as intended.
"""

from torch import nn

from gnp.nets.layers import dense_init_
from gnp.nets.shake import shake_drop
from gnp.nets.wrn import bn_relu, conv, pooled_padded

DROP_AT_LAST_BLOCK = 0.5  # the official mask_prob: block l of L survives with p_l = 1 − (l/L)·0.5


class Bottleneck(nn.Module):
    def __init__(self, cin: int, channels: int, stride: int, survival: float):
        super().__init__()
        self.cout, self.stride, self.survival = 4 * channels, stride, survival
        self.branch = nn.Sequential(
            nn.BatchNorm2d(cin), conv(cin, channels, 1), *bn_relu(channels),
            conv(channels, channels, 3, stride), *bn_relu(channels),
            conv(channels, self.cout, 1), nn.BatchNorm2d(self.cout),
        )

    def forward(self, x):
        return shake_drop(self.branch(x), self.survival, self.training) + pooled_padded(x, self.cout, self.stride)


def pyramidnet_shakedrop(depth: int, alpha: int, num_classes: int) -> nn.Module:
    if (depth - 2) % 9:
        raise ValueError(f"a bottleneck PyramidNet has depth 9n + 2, not {depth}")
    per_stage = (depth - 2) // 9
    total = 3 * per_stage
    layers, cin, width = [conv(3, 16, 3), nn.BatchNorm2d(16)], 16, 16
    for layer_num in range(1, total + 1):  # l = 1, …, L
        width += alpha / total  # accumulated in floating point, as the official code does
        stride = 2 if layer_num in (per_stage + 1, 2 * per_stage + 1) else 1
        block = Bottleneck(cin, int(round(width)), stride, 1 - layer_num / total * DROP_AT_LAST_BLOCK)
        layers.append(block)
        cin = block.cout
    head = nn.Linear(cin, num_classes)
    dense_init_(head)
    return nn.Sequential(*layers, *bn_relu(cin), nn.AvgPool2d(8, stride=1), nn.Flatten(), head)
