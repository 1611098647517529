"""Named training recipes: the paper's ImageNet setups and the embedded default.

The ImageNet recipes are the official scripts' (recipes/resnet-imagenet.sh, vggbn-imagenet.sh in
zhaoyang-0204/gnp) with its base config: SGD with Nesterov momentum 0.9, L2 weight decay 1e-4 inside the
gradient (on every parameter), 100 epochs with a cosine schedule per step and no warm-up, global batch 512
at lr 0.2 (VGG16-BN: 256 at 0.1), r = 0.05, the final gradient clipped to global norm 5.0 (the official
`gradient_clipping`). The networks and preprocessing are the official code's (gnp.nets, gnp.inception).
The paper's runs were on a DGX Station A100 (paper §4: 4 GPUs) and the official code splits each global
batch over every visible device: 128 images per GPU (VGG16-BN: 64) are what each rank perturbs on and
BatchNorm normalizes over, so the recipes fix 4 workers, and a grid with another number is refused rather
than silently changing them. α defaults to 0.3 (the paper's Table 4 reports α ∈ {0.2, 0.3}; the script
says 0.8). Deliberately unlike the official code: on CUDA they run bf16 autocast with channels_last
(`amp=auto`; the official code computes in float32), on a CPU fp32; they evaluate all 50,000 validation
images exactly once (the official code scores a random 49,664 each epoch); top-5 is always computed. `digits` is the embedded default: scikit-learn's 8×8 digits as JPEGs in
the ImageNet layout, small enough to train on two CPU cores in about a minute.

The CIFAR recipes (`cifar10-<model>`, `cifar100-<model>`; Table 1) are the official scripts'
(recipes/wideresnet-cifar.sh, wideresnet-ss-cifar.sh, pyramidnet-sd-cifar.sh) over its base config (which
is all VGG16 and VGG16-BN have): global batch 256 at lr 0.1, L2 1e-3, 200 epochs (Shake-Shake 1800), SGD
Nesterov 0.9, cosine per step, no warm-up, clip 5.0, r = 0.1, α = 0.8, augmentation `basic` (Table 1's
other column: `--augmentation cutout`); PyramidNet-272 ShakeDrop: batch 128 at lr 0.05, L2 5e-4, 1800
epochs, AutoAugment + mixup + cutout. 64 images per GPU (PyramidNet 32): the paper's 4 GPUs. The data are
tensors on the training device (gnp.batches), so no loader processes. `digits-cifar` is their embedded
default: the digits in CIFAR-10's format through the same reader and augmentations.

The ViT recipes (`cifar10-vit-ti-basic`, ..., `cifar100-vit-s-heavy`; Tables 2–3) are the official scripts'
(recipes/vit-cifar-basic.sh, vit_cifar_heavy.sh, vit-cifar-basic-grwarmup.sh) for ViT_TI16 and ViT_S16 with
4-px patches: global batch 256 (64 per GPU), AdamW (β 0.9/0.999, ε 1e-8) with its weight decay decoupled
and on every parameter (optax.adamw; no L2 term), cosine per step, clip 5.0, r = 0.1, α = 0.8.
- `basic`: lr 1e-3, weight decay 0.3, 200 epochs as the paper (the script says 300: --epochs 300).
- `heavy`: the paper's heavy setting: lr 5e-4, weight decay 0.03, 1200 epochs (the script's), 48-px images
  from the `heavy` augmentation, label smoothing 0.1 and drop path 0.1. The paper gives no magnitudes for
  the augmentation, the smoothing or the drop path: these are our assumptions (gnp.batches.HEAVY).
- `mixup`: what the official vit_cifar_heavy.sh runs instead (basic + mixup at 32 px, lr 5e-4, weight
  decay 0.03, 1200 epochs), which its authors say trains ViT-S far better than the paper's heavy setting.
- `basic-grwarmup`: vit-cifar-basic-grwarmup.sh: basic with α = 1 (SAM), 300 epochs, and 40 warm-up
  epochs shared by the learning rate (linear from 0) and the gradient regularization (strategy "zero":
  standard steps until epoch 40).
`digits-cifar-vit` is their embedded demo: a 4-layer ViT (`vit-digits`, 8-px patches on the 4×-upscaled
8-px digits) with AdamW and a 1-epoch warm-up, without augmentation (a flipped digit is another digit): 15
epochs to about 7% test error on two CPU cores.
"""

from gnp.config import TrainConfig, validate
from gnp.errors import UserError

_IMAGENET = dict(
    dataset="imagenet", image_size=224, epochs=100, lr=0.2, batch_size=512, weight_decay=1e-4,
    r=0.05, alpha=0.3, loader_workers=8, augmentation="inception", clip_grad_norm=5.0,
    perturbation_batch=128, amp="auto", channels_last=True,
)

_CIFAR = dict(
    image_size=32, epochs=200, lr=0.1, batch_size=256, weight_decay=1e-3, r=0.1, alpha=0.8, loader_workers=0,
    augmentation="basic", clip_grad_norm=5.0, perturbation_batch=64, amp="auto", channels_last=True,
)
_CIFAR_MODELS = {  # recipe name part: (model, changes from _CIFAR)
    "vgg16": ("VGG16", {}),
    "vgg16bn": ("VGG16BN", {}),
    "wrn28-10": ("WideResNet_28_10", {}),
    "wrn26-ss": ("WideResNet_2_96_ShakeShake", {"epochs": 1800}),
    "pyramidnet272": ("PyramidNet_272_200_ShakeDrop", {"epochs": 1800, "batch_size": 128, "lr": 0.05,
                                                       "weight_decay": 5e-4, "perturbation_batch": 32,
                                                       "augmentation": "autoaugment+mixcut"}),
}

_VIT = dict(
    image_size=32, epochs=200, lr=1e-3, batch_size=256, optimizer="adamw", momentum=0.0, nesterov=False,
    weight_decay=0.3, weight_decay_mode="base", r=0.1, alpha=0.8, loader_workers=0, augmentation="basic",
    clip_grad_norm=5.0, perturbation_batch=64, amp="auto", patch_size=4,
)
_VIT_SETTINGS = {  # recipe name part: changes from _VIT
    "basic": {},
    "heavy": {"lr": 5e-4, "weight_decay": 0.03, "epochs": 1200, "image_size": 48, "augmentation": "heavy",
              "label_smoothing": 0.1, "drop_path": 0.1},
    "mixup": {"lr": 5e-4, "weight_decay": 0.03, "epochs": 1200, "augmentation": "mixup"},
    "basic-grwarmup": {"alpha": 1.0, "epochs": 300, "warmup_epochs": 40, "gr_warmup": "zero",
                       "gr_warmup_epochs": 40},
}
_VIT_MODELS = {"vit-ti": "ViT_TI16", "vit-s": "ViT_S16"}

RECIPES: dict[str, TrainConfig] = {
    "digits": TrainConfig(recipe="digits", augmentation="crop", lr=0.1),
    "digits-cifar": TrainConfig(recipe="digits-cifar", dataset="digits-cifar", augmentation="basic", lr=0.1),
    "imagenet-resnet50": TrainConfig(recipe="imagenet-resnet50", model="ResNet50", **_IMAGENET),
    "imagenet-resnet101": TrainConfig(recipe="imagenet-resnet101", model="ResNet101", **_IMAGENET),
    "imagenet-vgg16bn": TrainConfig(
        recipe="imagenet-vgg16bn", model="VGG16BN",
        **{**_IMAGENET, "batch_size": 256, "lr": 0.1, "perturbation_batch": 64},
    ),
    **{f"{dataset}-{name}": TrainConfig(recipe=f"{dataset}-{name}", dataset=dataset, model=model,
                                        **{**_CIFAR, **changes})
       for dataset in ("cifar10", "cifar100") for name, (model, changes) in _CIFAR_MODELS.items()},
    **{f"{dataset}-{name}-{setting}": TrainConfig(recipe=f"{dataset}-{name}-{setting}", dataset=dataset,
                                                  model=model, **{**_VIT, **changes})
       for dataset in ("cifar10", "cifar100") for name, model in _VIT_MODELS.items()
       for setting, changes in _VIT_SETTINGS.items()},
    "digits-cifar-vit": TrainConfig(
        recipe="digits-cifar-vit", dataset="digits-cifar", model="vit-digits",
        **{**_VIT, "epochs": 15, "batch_size": 64, "perturbation_batch": None, "lr": 3e-3, "weight_decay": 0.05,
           "warmup_epochs": 1, "r": 0.05, "clip_grad_norm": None, "patch_size": 8, "augmentation": "none"},
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
