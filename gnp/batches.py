"""CIFAR batches from tensors on the training device: each split is one uint8 tensor there (150 MB for
CIFAR's 50,000 training images), indexed and augmented a batch at a time, with no loader processes.

The augmentations are the official code's (ds_pipeline/datasets/augmentation.py in zhaoyang-0204/gnp):
per image, AutoAugment (where the preset has it) then `basic` (flip, then a 32×32 crop of the image
reflect-padded by 4); then the global batch is normalized and, per preset, mixed (mixup: one λ per global
batch, the partner of global position j is position B − 1 − j) and cut out (one 16-px square per global
batch, zeros after normalization). Under DDP each rank holds a contiguous part of each global batch, as
each device does in the official code, and computes its mixup partners itself (every rank holds the whole
split), so the batch-level operations see the global batch as there.

The `heavy` preset is the paper's ViT-on-CIFAR augmentation (resize to 72, flip, rotation, zoom, crop,
resize to the recipe's image_size), which the official code does not have: its magnitudes are ours (HEAVY).

Every draw is a pure function of (seed, epoch, sample index), or of (seed, epoch, global batch index) for
the batch-level ones: a counter-based hash computed on the device, the same on a CPU and a GPU, whatever
the number of ranks, and after any restart.
"""

import math

import torch
import torch.nn.functional as F

from gnp.data import derived_seed
from gnp.datasets import RESIZING_AUGMENTATIONS

MASK = 0xFFFFFFFF
PAD, CUTOUT = 4, 16  # the official random_crop_pad and cutout_length
SAMPLE_COLUMNS = 5  # flip, crop row, crop column, and a per-image cutout's centre (row, column)
# The paper (Zhao et al. 2022, ViT on CIFAR) names heavy's steps but no magnitudes; these are our assumptions:
# resize, rotation (±turns) and zoom (1 ± zoom per axis, independently) are Keras' "Image classification with
# Vision Transformer" example, which the paper's pipeline follows (Resizing(72, 72), RandomFlip("horizontal"),
# RandomRotation(0.02), RandomZoom(0.2, 0.2), fill "reflect"); the 64-px crop of the 72 is our choice.
HEAVY = dict(resize=72, rotation_turns=0.02, zoom=0.2, crop=64)
HEAVY_COLUMNS = 6  # flip, rotation, zoom of the rows, zoom of the columns, crop row, crop column
PRESETS = {  # preset: (image level, batch level)
    "none": ((), ()), "basic": (("basic",), ()), "cutout": (("basic",), ("cutout",)),
    "cutout-per-image": (("basic",), ("cutout-per-image",)), "mixup": (("basic",), ("mixup",)),
    "mixcut": (("basic",), ("mixup", "cutout")), "cutmix": (("basic",), ("cutmix",)),
    "autoaugment": (("autoaugment", "basic"), ()),
    "autoaugment+mixcut": (("autoaugment", "basic"), ("mixup", "cutout")),
    "heavy": (("heavy",), ()),
}


# ---- counter-based draws --------------------------------------------------------------------------------


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x·c) mod 2³² for 0 <= x < 2³², in int64 without overflow (by 16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & MASK


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Wellons' lowbias32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def uniforms(key: int, ids: torch.Tensor, columns: int) -> torch.Tensor:
    """float64 uniforms in [0, 1), (len(ids), columns), a function of (key, id, column) only."""
    k1, k2 = key & MASK, (key >> 32) & MASK
    h = _mix32((_mix32(ids.to(torch.int64) ^ k1) + k2) & MASK)
    column = torch.arange(1, columns + 1, device=ids.device, dtype=torch.int64)
    h = _mix32((h[:, None] + _mul32(column, 0x9E3779B9)[None, :]) & MASK)
    return h.double() / 2.0**32


# ---- the operations -------------------------------------------------------------------------------------


def _reflect(position: torch.Tensor, size: int) -> torch.Tensor:
    """Index into an image of `size` of a position in its reflect-padded copy (TF's REFLECT: no edge repeat)."""
    position = position.abs()
    return torch.where(position > size - 1, 2 * (size - 1) - position, position)


def basic(images: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
    """Flip (draws[:, 0] < 0.5), then the crop at (row, column) = ⌊9·draws[:, 1:3]⌋ of the 4-px reflect-padded
    image: uint8 in, uint8 out, by two gathers."""
    n, c, h, w = images.shape
    flip = draws[:, 0] < 0.5
    top = (draws[:, 1] * (2 * PAD + 1)).floor().long()
    left = (draws[:, 2] * (2 * PAD + 1)).floor().long()
    rows = _reflect(torch.arange(h, device=images.device)[None] + top[:, None] - PAD, h)
    cols = _reflect(torch.arange(w, device=images.device)[None] + left[:, None] - PAD, w)
    cols = torch.where(flip[:, None], w - 1 - cols, cols)  # the flip came first: read the mirrored column
    out = images.gather(2, rows[:, None, :, None].expand(n, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(n, c, h, w))


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images to float ones of size × size in [0, 255], bilinear without antialias (Keras' Resizing).
    Resized channels-last, the same values by CPU's vectorized kernel (4× NCHW's here), handed back NCHW."""
    images = images.float().contiguous(memory_format=torch.channels_last)
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=False).contiguous()


def heavy(images: torch.Tensor, draws: torch.Tensor, size: int) -> torch.Tensor:
    """The paper's heavy augmentation, uint8 in, float (N, 3, size, size) in [0, 255] out: a bilinear resize to
    HEAVY's 72, then flip, rotation, zoom, the 64-px crop and the resize to `size` as one bilinear resampling
    (one affine grid, not a blur per step), points outside the image reflected (Keras' fill "reflect"). Per
    image: flip if draws[:, 0] < 0.5; an angle of (2·draws[:, 1] − 1)·0.02 turns, counter-clockwise on screen
    when positive (Keras'); zooms 1 + (2·draws[:, 2:4] − 1)·0.2 of (rows, columns), above 1 zooming out
    (Keras'); the crop at pixel (row, column) ⌊9·draws[:, 4:6]⌋ of the 72 (integer offsets, as TF's
    random_crop)."""
    side, crop = HEAVY["resize"], HEAVY["crop"]
    big = resize(images, side)
    # theta maps an output point (x, y) to its source in `big`, both in [-1, 1] (x right, y down): into the
    # crop window (a scale crop/side and a shift), then through zoom, rotation and flip, each output-to-input
    sign = torch.where(draws[:, 0] < 0.5, -1.0, 1.0).to(draws)
    angle = (2 * draws[:, 1] - 1) * (HEAVY["rotation_turns"] * 2 * math.pi)
    zoom_y, zoom_x = (1 + (2 * draws[:, 2:4] - 1) * HEAVY["zoom"]).unbind(1)
    shift_y, shift_x = ((2 * (draws[:, 4:6] * (side - crop + 1)).floor() - (side - crop)) / side).unbind(1)
    cos, sin, scale = angle.cos(), angle.sin(), crop / side
    a, b = sign * cos * zoom_x, -sign * sin * zoom_y  # flip · rotation · zoom = [[a, b], [c, d]]
    c, d = sin * zoom_x, cos * zoom_y
    theta = torch.stack([a * scale, b * scale, a * shift_x + b * shift_y,
                         c * scale, d * scale, c * shift_x + d * shift_y], 1).view(-1, 2, 3).to(big.dtype)
    grid = F.affine_grid(theta, [len(images), images.shape[1], size, size], align_corners=False)
    out = F.grid_sample(big, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0, 255)  # bilinear weights summing to 1 + ε must not step outside the pixel range


def box_mask(height: int, width: int, centre_row, centre_col, size_row, size_col) -> torch.Tensor:
    """(n, 1, h, w) bool: the box of size_row × size_col around each centre (TF's cutout convention:
    rows [cy − ⌊s/2⌋, cy + ⌊s/2⌋)), clipped at the edges."""
    device = centre_row.device
    r = torch.arange(height, device=device)[None, :]
    c = torch.arange(width, device=device)[None, :]
    in_rows = (r >= (centre_row - size_row // 2)[:, None]) & (r < (centre_row + size_row // 2)[:, None])
    in_cols = (c >= (centre_col - size_col // 2)[:, None]) & (c < (centre_col + size_col // 2)[:, None])
    return (in_rows[:, :, None] & in_cols[:, None, :])[:, None]


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    return F.one_hot(labels, classes).float()


class Split:
    """One split as tensors on a device: uint8 images (N, 3, H, W) and int64 labels."""

    def __init__(self, images, labels, device: torch.device):
        self.images = torch.as_tensor(images).to(device)
        self.labels = torch.as_tensor(labels, dtype=torch.int64).to(device)

    def __len__(self):
        return len(self.labels)


class Normalize:
    """(x − 255·mean)/(255·std) of uint8 images, or of float ones in [0, 255] (those in place)."""

    def __init__(self, mean, std, device):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().sub_(self.mean).div_(self.std)


class TrainBatches:
    """One epoch of this rank's part of every global batch (the last partial one dropped), augmented; images of
    `image_size` (only a resizing preset, datasets.RESIZING_AUGMENTATIONS, changes the split's own size)."""

    def __init__(self, split: Split, *, batch_size: int, rank: int, world: int, seed: int, augmentation: str,
                 mean, std, classes: int, image_size: int = 32):
        if len(split) < batch_size * world:
            raise ValueError(f"{len(split)} training images are fewer than one global batch ({batch_size * world})")
        native = split.images.shape[-1]
        if image_size != native and augmentation not in RESIZING_AUGMENTATIONS:
            raise ValueError(f"augmentation {augmentation!r} keeps the {native}×{native} images, not image_size "
                             f"{image_size}; resizing ones: {', '.join(RESIZING_AUGMENTATIONS)}")
        self.split, self.batch, self.rank, self.world, self.seed = split, batch_size, rank, world, seed
        self.image_size = image_size
        self.image_ops, self.batch_ops = PRESETS[augmentation]
        self.normalize, self.classes, self.epoch = Normalize(mean, std, split.images.device), classes, 0
        if "autoaugment" in self.image_ops:
            from gnp import autoaugment

            self.autoaugment = autoaugment

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return len(self.split) // (self.batch * self.world)

    def images_of(self, indices: torch.Tensor) -> torch.Tensor:
        """The image-level augmentations of these samples, normalized (each a function of its own index)."""
        images = self.split.images[indices]
        key = derived_seed(self.seed, self.epoch, 0)
        if "autoaugment" in self.image_ops:
            draws = uniforms(derived_seed(self.seed, self.epoch, 1), indices, self.autoaugment.DRAWS)
            images = self.autoaugment.autoaugment(images, draws)
        if "basic" in self.image_ops:
            images = basic(images, uniforms(key, indices, SAMPLE_COLUMNS))
        if "heavy" in self.image_ops:
            draws = uniforms(derived_seed(self.seed, self.epoch, 4), indices, HEAVY_COLUMNS)
            images = heavy(images, draws, self.image_size)
        return self.normalize(images)

    def __iter__(self):
        device = self.split.images.device
        order = torch.randperm(len(self.split), generator=torch.Generator().manual_seed(
            derived_seed(self.seed, self.epoch, 2))).to(device)
        global_batch = self.batch * self.world
        mine = slice(self.rank * self.batch, (self.rank + 1) * self.batch)
        for step in range(len(self)):
            positions = order[step * global_batch:(step + 1) * global_batch]
            indices = positions[mine]
            images, targets = self.images_of(indices), self.split.labels[indices]
            if self.batch_ops:
                partners = positions.flip(0)[mine]  # the reversed global batch
                images, targets = self.batch_level(step, indices, partners, images, targets)
            yield images, targets

    def batch_level(self, step, indices, partners, images, targets):
        """Mixup, CutMix and cutout on this rank's part of global batch `step` (soft labels when mixed). The
        batch's own draws are made on the host (a few numbers: no device sync)."""
        n, _, h, w = images.shape
        device = images.device
        u = uniforms(derived_seed(self.seed, self.epoch, 3), torch.tensor([step]), 5)[0].tolist()
        if {"mixup", "cutmix"} & set(self.batch_ops):
            targets = one_hot(targets, self.classes)
            partner_targets = one_hot(self.split.labels[partners], self.classes)
        for op in self.batch_ops:
            if op == "mixup":
                lam = max(u[0], 1 - u[0])  # λ ~ Beta(1, 1), which is uniform
                images = lam * images + (1 - lam) * self.images_of(partners)
                targets = lam * targets + (1 - lam) * partner_targets
            elif op == "cutmix":
                side = math.sqrt(1 - u[0])
                size, centre = (int(h * side), int(w * side)), (int(u[1] * h), int(u[2] * w))
                box = box_mask(h, w, *(torch.tensor([c], device=device) for c in centre), *size)
                images = torch.where(box, self.images_of(partners), images)
                rows = min(h, centre[0] + size[0] // 2) - max(0, centre[0] - size[0] // 2)
                cols = min(w, centre[1] + size[1] // 2) - max(0, centre[1] - size[1] // 2)
                kept = 1 - rows * cols / (h * w)  # the labels follow the areas
                targets = kept * targets + (1 - kept) * partner_targets
            elif op == "cutout":
                centre = (torch.tensor([int(u[3] * h)], device=device), torch.tensor([int(u[4] * w)], device=device))
                images = images.masked_fill(box_mask(h, w, *centre, CUTOUT, CUTOUT), 0.0)
            elif op == "cutout-per-image":
                sample = uniforms(derived_seed(self.seed, self.epoch, 0), indices, SAMPLE_COLUMNS)
                centre = (sample[:, 3:5] * torch.tensor([h, w], device=device)).floor().long()
                images = images.masked_fill(box_mask(h, w, centre[:, 0], centre[:, 1], CUTOUT, CUTOUT), 0.0)
        return images, targets


class EvalBatches:
    """Every test image exactly once across the ranks (rank, rank + world, ...), normalized, in order; resized
    to `image_size` where that is not the split's own size (the size a resizing preset trains at)."""

    def __init__(self, split: Split, *, batch_size: int, rank: int, world: int, mean, std, image_size: int = 32):
        self.split, self.batch = split, batch_size
        self.image_size = None if image_size == split.images.shape[-1] else image_size
        self.indices = torch.arange(rank, len(split), world, device=split.images.device)
        self.normalize = Normalize(mean, std, split.images.device)

    def __len__(self):
        return math.ceil(len(self.indices) / self.batch)

    def __iter__(self):
        for chunk in self.indices.split(self.batch):
            images = self.split.images[chunk]
            if self.image_size is not None:
                images = resize(images, self.image_size)
            yield self.normalize(images), self.split.labels[chunk]
