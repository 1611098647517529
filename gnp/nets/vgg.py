"""VGG16 and VGG16-BN as the official code defines them (models/available_models/vgg.py in zhaoyang-0204/gnp).

Blocks of 3×3 convolutions (with bias) → BatchNorm (VGG16BN) → ReLU, a 2×2 max-pool after each; then the
flattened features (any input size: 1×1×512 at 32 px, 7×7×512 at 224 px; no adaptive pooling) → 4096 →
4096 → classes, with ReLU and dropout 0.5 after each hidden layer. Convolutions N(0, 2/fan_out), every
dense layer U(±1/√units out), biases 0. Parameters for 10 classes at 32 px: 33,638,218 (VGG16) and
33,646,666 (VGG16BN).
"""

from torch import nn

from gnp.nets.layers import conv_init_, dense_init_

BLOCKS = [2, 2, 3, 3, 3]


def vgg16(num_classes: int, image_size: int, batch_norm: bool) -> nn.Module:
    layers, channels = [], 3
    for i, convs in enumerate(BLOCKS):
        width = min(64 * 2**i, 512)
        for _ in range(convs):
            layers += [nn.Conv2d(channels, width, 3, padding=1)]
            layers += [nn.BatchNorm2d(width)] if batch_norm else []
            layers += [nn.ReLU(inplace=True)]
            channels = width
        layers += [nn.MaxPool2d(2, 2)]
    side = image_size // 2 ** len(BLOCKS)
    head = [nn.Flatten(), nn.Linear(512 * side * side, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(4096, num_classes)]
    model = nn.Sequential(*layers, *head)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            conv_init_(m)
        elif isinstance(m, nn.Linear):
            dense_init_(m)
    return model
