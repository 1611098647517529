"""The datasets by name: a registry, torch-free (the grid checks a root and names its data before torch or
Ray load). Each entry says how to find and check its root, how to identify the data under it (the same
files under another path are the same data), and which augmentation presets it has; gnp.data builds the
loaders from it.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gnp import dataset_id, folders
from gnp.errors import UserError


@dataclass(frozen=True)
class Dataset:
    name: str
    summary: str
    layout: str  # "folders": train/<class>/*.JPEG and val/<class>/*.JPEG
    augmentations: dict[str, str]  # preset → what it does in training; evaluation
    check: Callable[[str | Path], Path]  # a --data root, checked (one line naming what is wrong and the fix)
    identify: Callable[[Path], dict]  # {classes, train_images, val_images, fingerprint}
    embedded: Callable[[], Path] | None = None  # the copy used without --data (None: --data is required)

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

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset("imagenet", "the folder that holds train/<class>/*.JPEG and val/<class>/*.JPEG", "folders",
                FOLDER_AUGMENTATIONS, folders.check_layout, dataset_id.dataset_identity),
        Dataset("digits", "scikit-learn's 8×8 digits as 32×32 JPEGs in the ImageNet layout (embedded)", "folders",
                FOLDER_AUGMENTATIONS, folders.check_layout, dataset_id.dataset_identity, folders.ensure_digits),
    )
}


def get(name: str) -> Dataset:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(REGISTRY)}") from None
