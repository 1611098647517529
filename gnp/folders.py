"""Dataset folders in the ImageNet layout: their check, and the embedded default dataset written in it.

The embedded default is scikit-learn's 8×8 handwritten digits, written once as JPEG files in the ImageNet
layout (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`, a fixed stratified split), so the same ImageFolder +
JPEG path runs on a fresh machine as on ImageNet. Torch-free: the grid driver checks a dataset, and names
the embedded one, before it loads torch or starts Ray.
"""

import os
import shutil
import tempfile
from pathlib import Path

from gnp.errors import UserError

DIGITS_VERSION = "digits-v1"  # bump when the written files change
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def cache_dir() -> Path:
    return Path(os.environ.get("GNP_CACHE", Path.home() / ".cache" / "gnp-ray"))


def digits_split():
    """scikit-learn's digits as uint8 8×8 images, their labels, and the fixed stratified split (80/20)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype("uint8")
    train_idx, val_idx = train_test_split(
        range(len(images)), test_size=0.2, stratify=digits.target, random_state=0
    )
    return images, digits.target, train_idx, val_idx


def ensure_digits(root: Path | None = None) -> Path:
    """Write the digits as 32×32 JPEGs once (atomically: a temp folder renamed into place)."""
    root = root or cache_dir() / DIGITS_VERSION
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    from PIL import Image

    images, targets, train_idx, val_idx = digits_split()
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            folder = tmp / split / f"digit_{targets[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(images[i], mode="L").resize((32, 32), Image.BICUBIC)
            image.save(folder / f"{split}_{i:04d}.JPEG", quality=95)
    try:
        tmp.rename(root)
    except OSError:  # another worker finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def check_layout(root: str | Path) -> Path:
    """Say exactly what is wrong with a dataset root, before any worker starts loading it."""
    root = Path(root).expanduser()
    if root.is_file():
        raise UserError(f"dataset root {root} is a file, not a folder; pass the folder that holds train/ and val/")
    if not root.is_dir():
        raise UserError(f"dataset root {root} does not exist; pass the folder that holds train/ and val/")
    missing = [split for split in ("train", "val") if not (root / split).is_dir()]
    if missing:
        if (root.parent / "train").is_dir() and root.name in ("train", "val"):
            raise UserError(f"{root} is a split folder; pass its parent {root.parent}, which holds train/ and val/")
        if any(p.name.endswith(".tar") for p in root.iterdir()):
            raise UserError(
                f"{root} holds archives but no {'/ '.join(missing)}/ folder; extract them with "
                "torchvision.datasets.ImageNet(root, split='train') and split='val'"
            )
        raise UserError(f"{root} has no {' and no '.join(m + '/' for m in missing)} folder; expected "
                        "train/<class>/*.JPEG and val/<class>/*.JPEG")
    for split in ("train", "val"):
        loose = [p.name for p in (root / split).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        if loose:
            raise UserError(
                f"{root / split} holds images directly (e.g. {loose[0]}), not one folder per class; "
                "torchvision.datasets.ImageNet(root, split='val') sorts the official val images into classes"
            )
    train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    val_classes = sorted(p.name for p in (root / "val").iterdir() if p.is_dir())
    if not train_classes:
        raise UserError(f"{root / 'train'} has no class folders; expected train/<class>/*.JPEG")
    if train_classes != val_classes:
        extra = sorted(set(train_classes) ^ set(val_classes))[:3]
        raise UserError(f"train/ and val/ under {root} have different class folders (e.g. {extra}); "
                        "both need the same classes")
    return root
