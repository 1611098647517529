"""Models by name: the paper's torchvision ImageNet models and a small CNN for the embedded default."""

import torchvision
from torch import nn

from gnp.errors import UserError

TORCHVISION_MODELS = ("resnet18", "resnet50", "resnet101", "vgg16_bn")


def small_cnn(num_classes: int) -> nn.Module:
    """Three conv-BN-ReLU stages and a linear head: trains the 32×32 digits to ~99% on two CPU cores."""

    def stage(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *stage(3, 32, 1), *stage(32, 64, 2), *stage(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


MODELS = (*TORCHVISION_MODELS, "smallcnn")


def build_model(name: str, num_classes: int) -> nn.Module:
    """Randomly initialized, as in the paper (no pretrained weights)."""
    if name == "smallcnn":
        return small_cnn(num_classes)
    if name in TORCHVISION_MODELS:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    raise UserError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}")
