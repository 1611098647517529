"""The datasets by name: a registry, torch-free (the grid checks a root and names its data before torch or
Ray load). Each entry says how to find and check its root, how to identify the data under it (the same
files under another path are the same data), and which augmentation presets it has; gnp.data builds the
loaders from it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gnp import cifar, dataset_id, folders
from gnp.errors import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Dataset:
    name: str
    summary: str
    layout: str  # "folders": train/<class>/*.JPEG and val/<class>/*.JPEG; "cifar": the python pickles
    augmentations: dict[str, str]  # preset → what it does in training; evaluation
    check: Callable[[str | Path], Path]  # a --data root, checked (one line naming what is wrong and the fix)
    identify: Callable[[Path], dict]  # {classes, train_images, val_images, fingerprint}
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel normalization of [0, 1] pixels
    std: tuple[float, float, float] = IMAGENET_STD
    embedded: Callable[[], Path] | None = None  # the copy used without --data (None: --data is required)
    cifar_format: cifar.Format | None = None  # the pickles' layout (layout "cifar")
    train_images: int | None = None  # the official training set's size: a dry run's count where its data is not here

    def root(self, data: str | None, recipe: str = "") -> Path:
        """The checked root of `data`, or the embedded copy when none is given."""
        if data is not None:
            return self.check(data)
        if self.embedded is None:
            recipe = f"recipe {recipe!r} ({self.name})" if recipe else f"dataset {self.name!r}"
            raise UserError(f"{recipe} needs --data: {self.summary}")
        return self.embedded()

    def check_augmentation(self, augmentation: str) -> None:
        if augmentation not in self.augmentations:
            raise UserError(f"dataset {self.name!r} has no augmentation {augmentation!r}; choose one of: "
                            f"{', '.join(self.augmentations)}")


FOLDER_AUGMENTATIONS = {
    "rrc+flip": "torchvision's reference: random-resized crop (area 0.08–1, bilinear) and flip; evaluation "
                "resizes the shorter side to size·8/7 and center-crops",
    "inception": "the official code's: TF's Inception crop (sample_distorted_bounding_box, bicubic) and flip; "
                 "evaluation center-crops size/(size + 32) of the shorter side, bicubic",
    "crop": "shifts by up to 1/8 of the side (zero padding), no flip (a flipped digit is another digit); "
            "evaluation: the whole image",
}

CIFAR_AUGMENTATIONS = {
    "none": "no augmentation",
    "basic": "flip, reflect-pad 4 and a random 32×32 crop (the official `basic`)",
    "cutout": "basic, then a 16-px square set to 0 after normalization, one position per global batch (the "
              "official `cutout`)",
    "cutout-per-image": "basic, then cutout at its own position in each image (DeVries & Taylor)",
    "mixup": "basic, then mixup: one λ ~ Beta(1, 1) per global batch, max(λ, 1 − λ), with the reversed batch",
    "mixcut": "basic, then mixup, then cutout (the official `mixcut`)",
    "cutmix": "basic, then CutMix: a box of 1 − λ of the image from the reversed batch, labels by area",
    "autoaugment": "the official AutoAugment CIFAR policy on each image, then basic",
    "autoaugment+mixcut": "autoaugment, then mixup, then cutout (the official PyramidNet recipe)",
    "heavy": "the paper's ViT augmentation: resize to 72, flip, rotation ±0.02 turns, zoom 0.8–1.2 per axis, "
             "a random 64×64 crop, resize to image_size, reflect fill (magnitudes assumed, from Keras' ViT "
             "example; the paper gives none); evaluation resizes to image_size",
}
RESIZING_AUGMENTATIONS = ("heavy",)  # the presets that train at image_size, not at the native 32×32


def _cifar(name, summary, fmt, mean, std, embedded=None, train_images=None):
    return Dataset(name, summary, "cifar", CIFAR_AUGMENTATIONS, lambda data: cifar.locate(data, fmt),
                   lambda location: cifar.identity(location, fmt), mean, std, embedded, fmt, train_images)


CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215841, 0.44653091), (0.24703223, 0.24348513, 0.26158784)

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("imagenet", "the folder that holds train/<class>/*.JPEG and val/<class>/*.JPEG", "folders",
                FOLDER_AUGMENTATIONS, folders.check_layout, dataset_id.dataset_identity, train_images=1_281_167),
        Dataset("digits", "scikit-learn's 8×8 digits as 32×32 JPEGs in the ImageNet layout (embedded)", "folders",
                FOLDER_AUGMENTATIONS, folders.check_layout, dataset_id.dataset_identity,
                embedded=folders.ensure_digits),
        _cifar("cifar10", f"CIFAR-10: {cifar.CIFAR10.describe()}", cifar.CIFAR10, CIFAR10_MEAN, CIFAR10_STD,
               train_images=50_000),
        _cifar("cifar100", f"CIFAR-100: {cifar.CIFAR100.describe()}", cifar.CIFAR100,
               (0.50707516, 0.48654887, 0.44091784), (0.26733429, 0.25643846, 0.27615047), train_images=50_000),
        _cifar("digits-cifar", "scikit-learn's digits as 32×32 RGB in CIFAR-10's format (embedded; CIFAR-10's "
               "normalization)", cifar.CIFAR10, CIFAR10_MEAN, CIFAR10_STD,
               lambda: cifar.locate(cifar.ensure_digits(), cifar.CIFAR10)),
    )
}


def get(name: str) -> Dataset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(REGISTRY)}") from None
