"""The official code's ImageNet preprocessing (TF's Inception crop), as torchvision transforms.

Read from ds_pipeline/datasets/dataset_source_imagenet.py in zhaoyang-0204/gnp and TF's
sample_distorted_bounding_box kernel, which it calls:
- Training (`InceptionCrop`): up to 10 attempts, each an aspect ratio uniform in [3/4, 4/3] and a crop
  height uniform (an integer) between the smallest and the largest that give an area of 8% to 100% of the
  image at that ratio; an attempt counts if the crop covers at least 10% of the image (min_object_covered).
  When none does, or the crop is the whole image, the evaluation crop is taken instead (the official
  `_decode_and_random_crop`). The crop is resized to size × size, bicubic; the flip comes after.
  Unlike torchvision's RandomResizedCrop, the height, not the area, is uniform, and a crop's top-left corner
  never reaches the last row or column it could start at (TF draws it in [0, H − h), not [0, H − h]).
- Evaluation (`CentralCrop`): the centred square of size/(size + 32) of the shorter side (224/256 at 224
  px), resized to size × size, bicubic.
The arithmetic is TF's, in float32 with round-half-to-even. The resize is PIL's bicubic (antialiased);
the official code's tf.compat.v1 resize_bicubic is not antialiased, the one difference left.
Draws come from torch's global generator, which gnp.data seeds per (seed, epoch, sample index).
"""

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

F32 = np.float32
CROP_PADDING = 32  # the official CROP_PADDING: evaluation keeps size/(size + 32) of the shorter side
AREA, RATIO, COVERED, ATTEMPTS = (0.08, 1.0), (3 / 4, 4 / 3), 0.1, 10


def _rint(x) -> int:
    """lrintf: round half to even."""
    return int(np.rint(x))


def _uniform_float() -> float:
    return torch.rand(()).item()


def _uniform_int(n: int) -> int:
    """An integer in [0, n), as TF's random->Uniform(n)."""
    return int(torch.randint(n, ()).item())


def random_crop(height: int, width: int, aspect, uniform_int=_uniform_int):
    """TF's GenerateRandomCrop at one aspect ratio: (top, left, h, w), or None when no crop fits."""
    min_area = F32(AREA[0]) * F32(width) * F32(height)
    max_area = F32(AREA[1]) * F32(width) * F32(height)
    h = _rint(np.sqrt(min_area / aspect))
    max_h = _rint(np.sqrt(max_area / aspect))
    if _rint(F32(max_h) * aspect) > width:  # the largest max_h with round(max_h·aspect) <= width
        max_h = int((width + 0.5 - float(F32(1e-7))) / float(aspect))
        if _rint(F32(max_h) * aspect) > width:
            max_h -= 1
    max_h = min(max_h, height)
    h = min(h, max_h)
    if h < max_h:
        h += uniform_int(max_h - h + 1)
    w = _rint(F32(h) * aspect)
    area = F32(w * h)
    for _ in range(2):  # rounding may leave the area just short: try one, then two pixels taller
        if area < min_area:
            h += 1
            w = _rint(F32(h) * aspect)
            area = F32(w * h)
    if area < min_area or area > max_area or w > width or h > height or w <= 0 or h <= 0:
        return None
    top = uniform_int(height - h) if h < height else 0
    left = uniform_int(width - w) if w < width else 0
    return top, left, h, w


def central_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """The official evaluation crop: (top, left, side, side)."""
    side = int(F32(size / (size + CROP_PADDING)) * F32(min(height, width)))
    return (height - side + 1) // 2, (width - side + 1) // 2, side, side


def distorted_box(height: int, width: int, size: int, uniform_float=_uniform_float, uniform_int=_uniform_int):
    """The training crop (top, left, h, w): sample_distorted_bounding_box, else the evaluation crop."""
    low, high = F32(RATIO[0]), F32(RATIO[1])
    for _ in range(ATTEMPTS):
        aspect = F32(F32(uniform_float()) * (high - low) + low)
        box = random_crop(height, width, aspect, uniform_int)
        if box is not None and F32(box[2] * box[3]) >= F32(COVERED) * F32(width * height):
            if (box[2], box[3]) != (height, width):
                return box
            break  # the whole image: the official code takes the evaluation crop then
    return central_box(height, width, size)


class BoxCrop(torch.nn.Module):
    """A crop box of a PIL image (`get_params`), resized size × size with bicubic interpolation."""

    interpolation = InterpolationMode.BICUBIC

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, image):
        width, height = image.size
        return F.resized_crop(image, *self.get_params(height, width), [self.size, self.size], self.interpolation)


class InceptionCrop(BoxCrop):
    """Training: the distorted-box crop."""

    def get_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        return distorted_box(height, width, self.size)


class CentralCrop(BoxCrop):
    """Evaluation: the centred size/(size + 32) square of the shorter side."""

    def get_params(self, height: int, width: int) -> tuple[int, int, int, int]:
        return central_box(height, width, self.size)
