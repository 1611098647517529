"""Decoding on the training device (`--decode device`): the loader processes only read each file and draw its
crop and flip; the training process decodes the batch there (one batched nvJPEG call on CUDA, which uses the
hardware JPEG decoder of A100/H100 for baseline JPEGs) and crops, resizes and flips on the device.

Why: decoding and resizing are most of a loader process's work, so a GPU that would need ten loader
processes of PIL needs one or two of these. The decode runs in the training thread between steps (gnp.data's
`to_device`), not overlapped with them: it pays only where loader processes are short of cores (README). The
crop and flip are drawn by the same calls, from the same seeded generator, as gnp.data's transforms, so both
paths train on the same crops of the same images and keep augmentation a pure function of (seed, epoch,
sample index); only the resampling differs (a tensor resize with antialiasing, bilinear or bicubic as the
preset's, against PIL's), by about a grey level per pixel.

Files the device cannot decode (ImageNet has CMYK JPEGs and a PNG named .JPEG) go through gnp.data's
transform in the loader process, as on the default path, and ride along as pixels.
"""

import io
import warnings
from typing import NamedTuple

import torch
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import functional as TF

from gnp import inception
from gnp.errors import UserError


class Encoded(NamedTuple):
    """One image still encoded, and what the device does to it: crop `box` (top, left, height, width; it may
    reach past the edges, which are zero-padded) resized to `size` with `interpolation`, then flip; or (box
    None: torchvision's evaluation) resize the shorter side to `resize` and center-crop `size`."""

    data: torch.Tensor  # the file's bytes, uint8, 1-D
    width: int
    height: int
    size: int
    box: tuple[int, int, int, int] | None = None
    flip: bool = False
    resize: int | None = None
    interpolation: str = "bilinear"


def read_encoded(path: str):
    """ImageFolder's loader: the bytes of a JPEG the device can decode (RGB or greyscale), else the image
    converted to RGB as ImageFolder's default loader does (for the loader-side fallback)."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        with Image.open(io.BytesIO(raw)) as image:  # reads the header only
            if image.format == "JPEG" and image.mode in ("RGB", "L"):
                return Encoded(torch.frombuffer(bytearray(raw), dtype=torch.uint8), *image.size, size=0)
            return image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as err:
        raise UserError(f"{path} is not a readable image ({err}); replace or remove it") from None


def _shape(height: int, width: int) -> torch.Tensor:
    """A stand-in with an image's shape for torchvision's get_params (no memory behind it)."""
    return torch.empty(1, 1, 1).expand(1, height, width)


def _step(fallback: transforms.Compose, *kinds):
    return next(step for step in fallback.transforms if isinstance(step, kinds))


class DrawCrop:
    """The training transform: the crop and flip of the loader path's transform (`fallback`, from
    gnp.data.build_transforms), drawn by its own steps' calls in the same order, so from the same numbers;
    the device applies them later. Images the device cannot decode get `fallback` itself."""

    def __init__(self, fallback: transforms.Compose):
        self.fallback = fallback
        crop = _step(fallback, transforms.RandomResizedCrop, transforms.RandomCrop, inception.InceptionCrop)
        self.size = crop.size if isinstance(crop, inception.InceptionCrop) else crop.size[0]
        self.interpolation = "bicubic" if isinstance(crop, inception.InceptionCrop) else "bilinear"

    def __call__(self, sample):
        if not isinstance(sample, Encoded):
            return self.fallback(sample)
        box, flip = None, False
        for step in self.fallback.transforms:
            if isinstance(step, transforms.RandomResizedCrop):
                box = step.get_params(_shape(sample.height, sample.width), step.scale, step.ratio)
            elif isinstance(step, inception.InceptionCrop):
                box = step.get_params(sample.height, sample.width)
            elif isinstance(step, transforms.RandomCrop):
                pad = step.padding  # an int: build_transforms pads every side alike
                i, j, h, w = step.get_params(_shape(sample.height + 2 * pad, sample.width + 2 * pad), step.size)
                box = (i - pad, j - pad, h, w)
            elif isinstance(step, transforms.RandomHorizontalFlip):
                flip = bool(torch.rand(1) < step.p)
            elif not isinstance(step, transforms.PILToTensor):
                raise TypeError(f"no device version of {step}")
        return sample._replace(size=self.size, box=box, flip=flip, interpolation=self.interpolation)


class CenterCrop:
    """The evaluation transform on the device: the loader path's resize of the shorter side and center crop,
    or the official central crop resized (bicubic)."""

    def __init__(self, fallback: transforms.Compose):
        self.fallback = fallback
        self.central = next((s for s in fallback.transforms if isinstance(s, inception.CentralCrop)), None)
        if self.central is None:
            self.resize = _step(fallback, transforms.Resize).size
            self.size = _step(fallback, transforms.CenterCrop).size[0]

    def __call__(self, sample):
        if not isinstance(sample, Encoded):
            return self.fallback(sample)
        if self.central is not None:
            return sample._replace(size=self.central.size, box=self.central.get_params(sample.height, sample.width),
                                   interpolation="bicubic")
        return sample._replace(size=self.size, resize=self.resize)


class EncodedBatch:
    """A loader batch still encoded: the files' bytes in one tensor (a handful of shared-memory tensors per
    batch, not one per image), their boxes and flips, and the fallback images already as pixels."""

    def __init__(self, samples: list):
        self.n = len(samples)
        self.encoded_slots = [i for i, s in enumerate(samples) if isinstance(s, Encoded)]
        self.pixel_slots = [i for i, s in enumerate(samples) if not isinstance(s, Encoded)]
        items = [samples[i] for i in self.encoded_slots]
        self.data = torch.cat([s.data for s in items]) if items else torch.empty(0, dtype=torch.uint8)
        self.lengths = [len(s.data) for s in items]
        self.boxes = [(*s.box, s.flip) if s.box is not None else None for s in items]
        self.size, self.resize, self.interpolation = (
            (items[0].size, items[0].resize, items[0].interpolation) if items else (None, None, None))
        self.pixels = torch.stack([samples[i] for i in self.pixel_slots]) if self.pixel_slots else None

    def pin_memory(self):
        """DataLoader's pin_memory thread: the fallback pixels only (nvJPEG copies the bytes itself)."""
        if self.pixels is not None:
            self.pixels = self.pixels.pin_memory()
        return self

    def decode(self, device: torch.device) -> torch.Tensor:
        """The batch as uint8 NCHW on `device`, in the loader's order."""
        images = [None] * self.n
        if self.encoded_slots:
            chunks = list(self.data.split(self.lengths))
            with warnings.catch_warnings():  # 0.29 deprecates it for TorchCodec, which torchvision 0.26 predates
                warnings.simplefilter("ignore", DeprecationWarning)
                decoded = decode_jpeg(chunks, mode=ImageReadMode.RGB, device=device)
            for slot, image, box in zip(self.encoded_slots, decoded, self.boxes, strict=True):
                images[slot] = self._transform(image, box)
        if self.pixels is not None:
            for slot, image in zip(self.pixel_slots, self.pixels.to(device, non_blocking=True), strict=True):
                images[slot] = image
        return torch.stack(images)

    def _transform(self, image: torch.Tensor, box) -> torch.Tensor:
        if box is None:
            return TF.center_crop(TF.resize(image, [self.resize], antialias=True), [self.size, self.size])
        top, left, height, width, flip = box
        mode = transforms.InterpolationMode(self.interpolation)
        image = TF.resized_crop(image, top, left, height, width, [self.size, self.size], mode, antialias=True)
        return TF.horizontal_flip(image) if flip else image


def collate(batch: list) -> tuple[EncodedBatch, torch.Tensor]:
    """DataLoader's collate_fn for (Encoded or uint8 image, target) pairs (runs in the loader process)."""
    samples, targets = zip(*batch, strict=True)
    return EncodedBatch(list(samples)), torch.tensor(targets)
