"""Loading ImageNet-layout folders: the torchvision reference transforms, seeded augmentation, the loaders.

The folders themselves (their layout check and the embedded digits written in that layout) are in
gnp.folders, which needs no torch, so the grid driver checks them before loading torch or Ray.

Augmentation is a pure function of (seed, epoch, sample index): each training sample's crop and flip come
from a generator seeded with those three numbers, so neither the number of loader processes, nor the
number of ranks, nor a restart can change a single image. Loaders hand out uint8 tensors (a quarter of
float32's bytes through shared and pinned memory), or with decode="device" the files still encoded
(gnp.decode); `to_device` turns either into normalized floats on the device.
"""

import functools
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import transforms
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import default_loader

from gnp import datasets, inception
from gnp import decode as device_decode
from gnp.errors import UserError

MEAN, STD = datasets.IMAGENET_MEAN, datasets.IMAGENET_STD  # image folders (the digits too)


def build_transforms(image_size: int, augmentation: str):
    """(training, evaluation) transforms of a preset (gnp.datasets.FOLDER_AUGMENTATIONS), ending in uint8 CHW
    tensors (see `normalize`):
    - rrc+flip, torchvision's classification reference: RRC(0.08–1) + flip; evaluation resizes to size·8/7
      and center-crops;
    - inception, the official code's: TF's Inception crop + flip; its central crop (gnp.inception);
    - crop (the digits): shifts by up to 1/8 of the side; the whole image for evaluation (flipping a digit
      would change its class).
    """
    presets = {
        "crop": ([transforms.RandomCrop(image_size, padding=image_size // 8)],
                 [transforms.Resize(image_size), transforms.CenterCrop(image_size)]),
        "rrc+flip": ([transforms.RandomResizedCrop(image_size, scale=(0.08, 1.0)), transforms.RandomHorizontalFlip()],
                     [transforms.Resize(round(image_size * 256 / 224)), transforms.CenterCrop(image_size)]),
        "inception": ([inception.InceptionCrop(image_size), transforms.RandomHorizontalFlip()],
                      [inception.CentralCrop(image_size)]),
    }
    if augmentation not in presets:
        raise UserError(f"no augmentation {augmentation!r} for image folders; choose one of: {', '.join(presets)}")
    train, evaluate = presets[augmentation]
    to_tensor = [transforms.PILToTensor()]
    return transforms.Compose(train + to_tensor), transforms.Compose(evaluate + to_tensor)


@functools.cache
def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """255·mean and 255·std on `device`, made once (not a host-to-device copy per batch)."""
    return tuple(torch.tensor(v, device=device).mul_(255).view(1, 3, 1, 1) for v in (MEAN, STD))


def normalize(images: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    """uint8 images (on their device) to the float inputs the models take: (x/255 − mean)/std."""
    mean, std = _mean_std(images.device)
    return images.to(memory_format=memory_format).float().sub_(mean).div_(std)


def uint8_on(images, device: torch.device) -> torch.Tensor:
    """A loader batch as uint8 images on `device`: copied there, or (an encoded batch) decoded there."""
    if isinstance(images, device_decode.EncodedBatch):
        return images.decode(device)
    return images.to(device, non_blocking=True)


def to_device(images, device: torch.device, memory_format=torch.contiguous_format) -> torch.Tensor:
    """A loader batch as the model's inputs on `device`: normalized floats (a tensor-backed batch already is)."""
    if isinstance(images, torch.Tensor) and images.is_floating_point():
        return images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
    return normalize(uint8_on(images, device), memory_format)


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


def read_image(path: str):
    """ImageFolder's default loader (any image as RGB: ImageNet has CMYK JPEGs and a PNG named .JPEG), with
    a file that is no image named in the error."""
    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError) as err:  # PIL's ways of saying "not an image I can read"
        raise UserError(f"{path} is not a readable image ({err}); replace or remove it") from None


class EpochLoader(DataLoader):
    """A DataLoader whose epoch (for the shuffle and the augmentation draws) is set like the tensor batches'."""

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)


class Loaders(NamedTuple):
    train: object
    test: object  # every test image once across the ranks (ImageNet's val/ folder)
    classes: int
    holdout: object | None = None  # the held-out training images, where asked for


HOLDOUT_SEED = 0x601D  # one draw for every seed and trial: selections compare runs on the same images


def held_out(images, labels, count: int):
    """((train images, labels), (held-out images, labels)): `count` training images drawn once, by a fixed
    permutation, the same whatever the run's seed."""
    if not 0 < count < len(labels):
        raise UserError(f"--holdout-images {count} must be between 1 and the {len(labels) - 1} training images "
                        "that leave one to train on")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(HOLDOUT_SEED)).numpy()
    keep, held = np.sort(order[count:]), np.sort(order[:count])
    return (images[keep], labels[keep]), (images[held], labels[held])


def dataset_loaders(spec: datasets.Dataset, root: Path, *, image_size, augmentation, batch_size, workers, rank,
                    world, seed, device: torch.device, decode="loader", holdout_images=0) -> Loaders:
    """The loaders of a registry dataset for this rank (`batch_size` per rank): DataLoaders over image
    folders, or tensors on `device` for CIFAR (gnp.batches), which can hold out training images."""
    if spec.layout == "cifar":
        from gnp import batches, cifar

        data = cifar.read(root, spec.cifar_format)
        holdout = None
        if holdout_images:
            data["train"], kept = held_out(*data["train"], holdout_images)
            holdout = batches.EvalBatches(batches.Split(*kept, device), batch_size=batch_size, rank=rank,
                                          world=world, mean=spec.mean, std=spec.std, image_size=image_size)
        if len(data["train"][1]) < batch_size * world:
            raise UserError(f"{root} has {len(data['train'][1])} training images, fewer than one global batch "
                            f"({batch_size * world}); lower --batch-size")
        train = batches.TrainBatches(batches.Split(*data["train"], device), batch_size=batch_size, rank=rank,
                                     world=world, seed=seed, augmentation=augmentation, mean=spec.mean,
                                     std=spec.std, classes=len(data["classes"]), image_size=image_size)
        val = batches.EvalBatches(batches.Split(*data["test"], device), batch_size=batch_size, rank=rank,
                                  world=world, mean=spec.mean, std=spec.std, image_size=image_size)
        return Loaders(train, val, len(data["classes"]), holdout)
    return Loaders(*build_loaders(root, image_size=image_size, augmentation=augmentation,
                                  batch_size=batch_size, workers=workers, rank=rank, world=world, seed=seed,
                                  pin_memory=device.type == "cuda", decode=decode))


def build_loaders(root: Path, *, image_size, augmentation, batch_size, workers, rank, world, seed, pin_memory,
                  decode="loader"):
    """Per-worker train and val loaders; `batch_size` is per worker. decode="device": the batches hold the
    files still encoded, for `to_device` to decode on the training device (gnp.decode)."""
    train_tf, val_tf = build_transforms(image_size, augmentation)
    # ImageFolder's default loader converts every image to RGB (ImageNet has CMYK JPEGs and a PNG named .JPEG)
    folders = dict(loader=read_image)
    if decode == "device":
        train_tf, val_tf = device_decode.DrawCrop(train_tf), device_decode.CenterCrop(val_tf)
        folders = dict(loader=device_decode.read_encoded)
    train_set = ImageFolder(root / "train", train_tf, **folders)
    val_set = ImageFolder(root / "val", val_tf, **folders)
    if len(train_set) < batch_size * world:
        raise UserError(f"{root / 'train'} has {len(train_set)} images, fewer than one global batch "
                        f"({batch_size * world}); lower --batch-size")
    sampler = EpochSampler(DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=seed))
    # Each loader's own generator: its worker seeds are drawn from it, not from the global stream, which a
    # persistent loader would otherwise draw from in whichever epoch it starts (a resume shifts that).
    common = dict(num_workers=workers, pin_memory=pin_memory, persistent_workers=workers > 0,
                  prefetch_factor=4 if workers > 0 else None,
                  collate_fn=device_decode.collate if decode == "device" else None)
    train = EpochLoader(SeededSamples(train_set, seed), batch_size, sampler=sampler, drop_last=True,
                        generator=torch.Generator().manual_seed(seed), **common)
    # Evaluation's processes end with each pass: kept, they would sit idle through every training epoch.
    val = DataLoader(val_set, batch_size, sampler=ShardSampler(len(val_set), rank, world),
                     generator=torch.Generator().manual_seed(seed), **{**common, "persistent_workers": False})
    return train, val, len(train_set.classes)
