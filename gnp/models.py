"""The networks by name: a registry, torch-free (the choices and the check run before torch or Ray load).

Each network carries the name its source gives it. The official code's networks (models/available_models/
in zhaoyang-0204/gnp; its scripts' MODEL_NAME) keep their names, `ResNet50`, `VGG16BN`: they are what the
paper's recipes train. torchvision's keep torchvision's lowercase names, `resnet50`, `vgg16_bn`: the same
depth with torchvision's stem and initialization (see gnp.nets.resnet for the differences). A name is one
network, so a trial key that names it names its layers. Randomly initialized, as in the paper.
"""

from collections.abc import Callable
from dataclasses import dataclass

from gnp.errors import UserError


@dataclass(frozen=True)
class Model:
    name: str
    summary: str
    build: Callable  # (num_classes, image_size, **options) -> torch.nn.Module; imports torch when called
    source: str  # "official" (the official JAX code), "torchvision" or "gnp-ray"
    options: tuple[str, ...] = ()  # the config fields the network takes (drop_path, patch_size)


def _official_resnet(depth):
    def build(num_classes, image_size):
        from gnp.nets.resnet import resnet

        return resnet(depth, num_classes)

    return build


def _official_vgg16(batch_norm):
    def build(num_classes, image_size):
        from gnp.nets.vgg import vgg16

        return vgg16(num_classes, image_size, batch_norm)

    return build


def _cifar(module, function, *args):
    """A CIFAR network of gnp.nets, built for 32×32 inputs."""
    def build(num_classes, image_size):
        import importlib

        return getattr(importlib.import_module(f"gnp.nets.{module}"), function)(*args, num_classes)

    return build


def _vit(size):
    def build(num_classes, image_size, **options):
        from gnp.nets.vit import vit

        return vit(size, num_classes, image_size, **options)

    return build


def _torchvision(name):
    def build(num_classes, image_size):
        import torchvision

        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    return build


def _small_cnn(num_classes, image_size):
    """Three conv-BN-ReLU stages and a linear head: trains the 32×32 digits to ~99% on two CPU cores."""
    from torch import nn

    def stage(cin, cout, stride):
        return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

    return nn.Sequential(
        *stage(3, 32, 1), *stage(32, 64, 2), *stage(64, 128, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


VIT_OPTIONS = ("drop_path", "patch_size")

REGISTRY: dict[str, Model] = {
    m.name: m
    for m in (
        Model("ResNet50", "ResNet-50, the official code's (stem without ReLU, SAME padding, U(±1/√classes) head)",
              _official_resnet(50), "official"),
        Model("ResNet101", "ResNet-101, the official code's (as ResNet50)", _official_resnet(101), "official"),
        Model("VGG16", "VGG16, the official code's (flattened features → 4096 → 4096, dropout 0.5)",
              _official_vgg16(False), "official"),
        Model("VGG16BN", "VGG16 with BatchNorm, the official code's", _official_vgg16(True), "official"),
        Model("WideResNet_28_10", "WRN-28-10 for CIFAR, the official code's (the SAM repo's pre-activation "
              "variant: average-pool and zero-padding shortcuts, no dropout)", _cifar("wrn", "wrn28_10"), "official"),
        Model("WideResNet_2_96_ShakeShake", "WRN-26 Shake-Shake 2×96d for CIFAR, the official code's",
              _cifar("shakeshake", "wrn26_shakeshake_2x96d"), "official"),
        Model("PyramidNet_272_200_ShakeDrop", "PyramidNet-272 (α = 200, bottleneck) with ShakeDrop for CIFAR, the "
              "official code's", _cifar("pyramidnet", "pyramidnet_shakedrop", 272, 200), "official"),
        Model("ViT_TI16", "ViT-Ti (192 wide, 12 layers, 3 heads), the official code's, built with timm; 4-px "
              "patches for 10/100 classes, 16-px for 1,000", _vit("ti"), "official", VIT_OPTIONS),
        Model("ViT_S16", "ViT-S (384 wide, 12 layers, 6 heads), as ViT_TI16", _vit("s"), "official", VIT_OPTIONS),
        Model("resnet18", "torchvision's ResNet-18", _torchvision("resnet18"), "torchvision"),
        Model("resnet50", "torchvision's ResNet-50 (stem conv → BN → ReLU → max-pool, its default init)",
              _torchvision("resnet50"), "torchvision"),
        Model("resnet101", "torchvision's ResNet-101", _torchvision("resnet101"), "torchvision"),
        Model("vgg16_bn", "torchvision's VGG16-BN (adaptive 7×7 pooling, N(0, 0.01) dense init)",
              _torchvision("vgg16_bn"), "torchvision"),
        Model("vit-digits", "ViT_TI16's network at 4 layers of 64 (4 heads): the embedded digits' ViT, small "
              "enough for two CPU cores", _vit("digits"), "gnp-ray", VIT_OPTIONS),
        Model("smallcnn", "a small conv net for the embedded digits (three conv-BN-ReLU stages)", _small_cnn,
              "gnp-ray"),
    )
}


def get(name: str) -> Model:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(REGISTRY)}") from None


def build_model(name: str, num_classes: int, image_size: int, **options):
    """The named network, randomly initialized (the caller seeds torch first); `options` are the config
    fields it takes (Model.options), the others are left out."""
    model = get(name)
    return model.build(num_classes, image_size, **{k: v for k, v in options.items() if k in model.options})
