"""Named training recipes (DESIGN §3) and the one config every entry point shares.

The ImageNet recipes follow the paper and the official JAX code (zhaoyang-0204/gnp): SGD with Nesterov
momentum 0.9, L2 weight decay 1e-4 inside the gradient, 100 epochs with a cosine schedule and no warm-up,
batch 512 (256 for VGG16-BN), r = 0.05. `digits` is the embedded default: scikit-learn's 8×8 digits as
JPEGs in the ImageNet layout, small enough to train on two CPU cores in about a minute.
"""

import dataclasses
import math
from dataclasses import dataclass

from gnp.errors import UserError

VARIANTS = ("standard", "gnp", "sam", "fgr", "bgr", "db")


@dataclass
class TrainConfig:
    recipe: str = "digits"
    model: str = "smallcnn"
    dataset: str = "digits"  # "digits" (embedded) or "imagenet" (folder layout under `data`)
    data: str | None = None  # dataset root holding train/ and val/; None = the embedded default
    image_size: int = 32  # training crop; eval resizes to image_size * 8/7 and center-crops
    epochs: int = 15
    batch_size: int = 64  # global batch, split evenly over the workers
    lr: float = 0.05  # for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    weight_decay_mode: str = "l2"  # "l2": in the gradient, as the paper; "base": the base optimizer's
    warmup_epochs: float = 0.0  # linear LR warm-up before the cosine decay
    label_smoothing: float = 0.0
    variant: str = "gnp"
    alpha: float = 0.0
    r: float = 0.05
    mix: str = "paper"  # "paper": (1-α)g1 + αg2; "official": (1-α)g1/||g1|| + αg2 (JAX code default)
    sync_perturbation: bool = False  # True: perturb along the all-reduced g1 (a second all-reduce)
    clip_grad_norm: float | None = None  # global-norm clip of the final gradient
    gr_warmup_epochs: float = 0.0  # ramp the regularization linearly over these epochs ...
    gr_warmup: str = "r"  # ... on "r" or on "alpha"
    seed: int = 0
    amp: str = "none"  # "none", "bf16" (autocast) or "fp16" (autocast + GradScaler)
    channels_last: bool = False
    device: str = "auto"  # "auto", "cpu" or "cuda"
    loader_workers: int = 2
    threads: int = 0  # torch intra-op threads per worker; 0 leaves torch's default
    augmentation: str = "standard"
    out: str = "runs/default"  # checkpoints and metrics of this run

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


_IMAGENET = dict(
    dataset="imagenet", image_size=224, epochs=100, lr=0.2, batch_size=512, weight_decay=1e-4,
    r=0.05, alpha=0.3, loader_workers=8, augmentation="rrc+flip",
)

RECIPES: dict[str, TrainConfig] = {
    "digits": TrainConfig(recipe="digits", augmentation="crop", lr=0.1),
    "imagenet-resnet50": TrainConfig(recipe="imagenet-resnet50", model="resnet50", **_IMAGENET),
    "imagenet-resnet101": TrainConfig(recipe="imagenet-resnet101", model="resnet101", **_IMAGENET),
    "imagenet-vgg16bn": TrainConfig(
        recipe="imagenet-vgg16bn", model="vgg16_bn", **{**_IMAGENET, "batch_size": 256, "lr": 0.1}
    ),
}


def get_recipe(name: str, **overrides) -> TrainConfig:
    """The named preset with `overrides` applied (None values are ignored) and validated."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose one of: {', '.join(RECIPES)}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise UserError(f"unknown config field(s) {sorted(unknown)} for recipe {name!r}")
    cfg = RECIPES[name].replace(**changes)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Reject bad values with one line that names the field and the fix."""
    for field in ("lr", "r", "alpha", "weight_decay", "label_smoothing", "warmup_epochs", "gr_warmup_epochs"):
        value = getattr(cfg, field)
        if not math.isfinite(value):
            raise UserError(f"{field} must be a finite number, got {value}")
        if field not in ("alpha",) and value < 0:
            raise UserError(f"{field} must be >= 0, got {value}")
    if cfg.lr <= 0:
        raise UserError(f"lr must be > 0, got {cfg.lr}")
    if cfg.variant not in VARIANTS:
        raise UserError(f"unknown variant {cfg.variant!r}; choose one of: {', '.join(VARIANTS)}")
    if cfg.variant != "standard" and cfg.alpha != 0 and cfg.r <= 0:
        raise UserError(f"r must be > 0 for variant {cfg.variant!r} with alpha={cfg.alpha}, got {cfg.r}")
    if cfg.variant == "sam" and cfg.alpha != 1:
        raise UserError(f"variant 'sam' means alpha=1, got alpha={cfg.alpha}; use --variant gnp for other alphas")
    if cfg.variant == "standard" and cfg.alpha != 0:
        raise UserError(f"variant 'standard' means alpha=0, got alpha={cfg.alpha}")
    if cfg.batch_size < 1:
        raise UserError(f"batch size must be >= 1, got {cfg.batch_size}")
    if cfg.epochs < 1:
        raise UserError(f"epochs must be >= 1, got {cfg.epochs}")
    if cfg.clip_grad_norm is not None and not (math.isfinite(cfg.clip_grad_norm) and cfg.clip_grad_norm > 0):
        raise UserError(f"clip_grad_norm must be a positive number, got {cfg.clip_grad_norm}")
    choices = {
        "mix": ("paper", "official"), "amp": ("none", "bf16", "fp16"), "device": ("auto", "cpu", "cuda"),
        "weight_decay_mode": ("l2", "base"), "gr_warmup": ("r", "alpha"), "dataset": ("digits", "imagenet"),
    }
    for field, allowed in choices.items():
        if getattr(cfg, field) not in allowed:
            raise UserError(f"{field} must be one of {', '.join(allowed)}; got {getattr(cfg, field)!r}")
    if cfg.mix == "official" and cfg.variant != "gnp":
        raise UserError(f"mix='official' is defined for variant 'gnp' only, got {cfg.variant!r}")
