"""Named training recipes: the paper's ImageNet setups and the embedded default.

The ImageNet recipes follow the paper and the official JAX code (zhaoyang-0204/gnp): SGD with Nesterov
momentum 0.9, L2 weight decay 1e-4 inside the gradient, 100 epochs with a cosine schedule and no warm-up,
batch 512 (256 for VGG16-BN, lr 0.1), r = 0.05, the final gradient clipped to global norm 5.0 (the
official `gradient_clipping`). The perturbation (and BatchNorm) batch is per rank: the official code
perturbs on each device's shard; its scripts use every visible GPU and the paper does not state the
count, so these recipes fix one 8-GPU node: 64 images per rank (32 for VGG16-BN), and a grid with another
number of workers is refused rather than silently changing it. On CUDA they run bf16 autocast with
channels_last (`amp=auto`); on a CPU, fp32. `digits` is the embedded default: scikit-learn's 8×8 digits
as JPEGs in the ImageNet layout, small enough to train on two CPU cores in about a minute.
"""

from gnp.config import TrainConfig, validate
from gnp.errors import UserError

_IMAGENET = dict(
    dataset="imagenet", image_size=224, epochs=100, lr=0.2, batch_size=512, weight_decay=1e-4,
    r=0.05, alpha=0.3, loader_workers=8, augmentation="rrc+flip", clip_grad_norm=5.0,
    perturbation_batch=64, amp="auto", channels_last=True,
)

RECIPES: dict[str, TrainConfig] = {
    "digits": TrainConfig(recipe="digits", augmentation="crop", lr=0.1),
    "imagenet-resnet50": TrainConfig(recipe="imagenet-resnet50", model="resnet50", **_IMAGENET),
    "imagenet-resnet101": TrainConfig(recipe="imagenet-resnet101", model="resnet101", **_IMAGENET),
    "imagenet-vgg16bn": TrainConfig(
        recipe="imagenet-vgg16bn", model="vgg16_bn",
        **{**_IMAGENET, "batch_size": 256, "lr": 0.1, "perturbation_batch": 32},
    ),
}


def get_recipe(name: str, **overrides) -> TrainConfig:
    """The named preset with `overrides` applied (None values are ignored) and validated."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise UserError(f"unknown config field(s) {sorted(unknown)} for recipe {name!r}")
    cfg = RECIPES[name].replace(**changes)
    validate(cfg)
    return cfg
