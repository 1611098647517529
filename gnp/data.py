"""ImageNet in its folder layout, the torchvision reference transforms, and the embedded default dataset.

The embedded default is scikit-learn's 8×8 handwritten digits, written once as JPEG files in the ImageNet
layout (`train/<class>/*.JPEG`, `val/<class>/*.JPEG`, a fixed stratified split), so the same ImageFolder +
JPEG path runs on a fresh machine as on ImageNet.

Augmentation is a pure function of (seed, epoch, sample index): each training sample's crop and flip come
from a generator seeded with those three numbers, so neither the number of loader processes, nor the
number of ranks, nor a restart can change a single image. Loaders hand out uint8 tensors (a quarter of
float32's bytes through shared and pinned memory); `normalize` turns them into floats on the device.
"""

import functools
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets, transforms

from gnp.errors import UserError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DIGITS_VERSION = "digits-v1"  # bump when the written files change
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def cache_dir() -> Path:
    return Path(os.environ.get("GNP_CACHE", Path.home() / ".cache" / "gnp-ray"))


def ensure_digits(root: Path | None = None) -> Path:
    """Write the digits as 32×32 JPEGs once (atomically: a temp folder renamed into place)."""
    root = root or cache_dir() / DIGITS_VERSION
    if (root / "train").is_dir() and (root / "val").is_dir():
        return root
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype("uint8")
    train_idx, val_idx = train_test_split(
        range(len(images)), test_size=0.2, stratify=digits.target, random_state=0
    )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    for split, indices in (("train", train_idx), ("val", val_idx)):
        for i in indices:
            folder = tmp / split / f"digit_{digits.target[i]}"
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


def build_transforms(image_size: int, augmentation: str):
    """torchvision's classification reference: RRC(0.08-1) + flip; eval resize image_size·8/7, center crop.

    "crop" (the digits): shifts by up to 1/8 of the side for training, the whole image for evaluation;
    flipping a digit would change its class. Both end in uint8 CHW tensors (see `normalize`).
    """
    to_tensor = [transforms.PILToTensor()]
    if augmentation == "crop":
        train = [transforms.RandomCrop(image_size, padding=image_size // 8)]
        evaluate = [transforms.Resize(image_size), transforms.CenterCrop(image_size)]
    else:
        train = [transforms.RandomResizedCrop(image_size, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip()]
        evaluate = [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]
    return transforms.Compose(train + to_tensor), transforms.Compose(evaluate + to_tensor)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 255·std on `device`, made once (not a host-to-device copy per batch)."""
    return tuple(torch.tensor(v, device=device).mul_(255).view(1, 3, 1, 1) for v in (MEAN, STD))


def normalize(images: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 images (on their device) to the float inputs the models take: (x/255 − mean)/std."""
    mean, std = _mean_std(images.device)
    return images.to(memory_format=memory_format).float().sub_(mean).div_(std)


def derived_seed(*numbers: int) -> int:
    """A well-mixed 63-bit seed from a tuple of numbers (e.g. seed, epoch, sample index)."""
    return int(np.random.SeedSequence(list(numbers)).generate_state(1, np.uint64)[0] >> 1)


class SeededSamples(Dataset):
    """Training samples keyed by (index, epoch): the transform draws from derived_seed(seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __getitem__(self, key):
        index, epoch = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, epoch, index))
            return self.dataset[index]

    def __len__(self):
        return len(self.dataset)


class EpochSampler(Sampler):
    """DistributedSampler's shuffled shard of the indices, each paired with the epoch for SeededSamples."""

    def __init__(self, sampler: DistributedSampler):
        self.sampler = sampler

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return ((index, self.sampler.epoch) for index in self.sampler)

    def __len__(self):
        return len(self.sampler)


class ShardSampler(Sampler):
    """Every index exactly once across ranks (rank, rank+world, ...): DistributedSampler pads, this doesn't."""

    def __init__(self, length: int, rank: int, world: int):
        self.indices = range(rank, length, world)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def build_loaders(root: Path, *, image_size, augmentation, batch_size, workers, rank, world, seed, pin_memory):
    """Per-worker train and val loaders; `batch_size` is per worker."""
    train_tf, val_tf = build_transforms(image_size, augmentation)
    # ImageFolder's default loader converts every image to RGB (ImageNet has CMYK JPEGs and a PNG named .JPEG)
    train_set = datasets.ImageFolder(root / "train", train_tf)
    val_set = datasets.ImageFolder(root / "val", val_tf)
    if len(train_set) < batch_size * world:
        raise UserError(f"{root / 'train'} has {len(train_set)} images, fewer than one global batch "
                        f"({batch_size * world}); lower --batch-size")
    sampler = EpochSampler(DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed))
    # Each loader's own generator: its worker seeds are drawn from it, not from the global stream, which a
    # persistent loader would otherwise draw from in whichever epoch it starts (a resume shifts that).
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                  prefetch_factor=4 if workers > 0 else None)
    train = DataLoader(SeededSamples(train_set, seed), batch_size, sampler=sampler, drop_last=True,
                       generator=torch.Generator().manual_seed(seed), **common)
    val = DataLoader(val_set, batch_size, sampler=ShardSampler(len(val_set), rank, world),
                     generator=torch.Generator().manual_seed(seed), **common)
    return train, val, len(train_set.classes)
