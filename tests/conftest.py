"""Shared fixtures: an isolated cache for the embedded dataset and a tiny ImageNet-layout folder, built once
per test session."""

import os

import numpy as np
import pytest
from PIL import Image

# Ray reads these once, at import, so they are set here, before any test module imports it. Loopback:
# Ray on Linux gives a node its network address; with this the test head and this process's ray.init both
# use 127.0.0.1. Token auth, as `ray start` enforces it (the token itself: tests/test_ray.py's cluster).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"


@pytest.fixture(scope="session")
def digits_root(tmp_path_factory):
    cache = tmp_path_factory.mktemp("gnp-cache")
    os.environ["GNP_CACHE"] = str(cache)  # child processes (DDP, Ray workers) inherit it
    from gnp.folders import ensure_digits

    return ensure_digits()


@pytest.fixture(scope="session")
def tiny_imagenet(tmp_path_factory):
    """4 classes × 12 train / 5 val smooth JPEGs (80×64, q90) in the ImageNet layout; a class is a colour
    and a stripe direction, so the images are learnable, not noise."""
    root = tmp_path_factory.mktemp("tiny-imagenet")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:80] / 64.0
    for c in range(4):
        colour, angle = np.array([0.2, 0.5, 0.8]) * (1 + c) % 1, c * np.pi / 4
        for split, n in (("train", 12), ("val", 5)):
            folder = root / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                phase, freq = rng.uniform(0, 2 * np.pi), rng.uniform(4, 8)
                wave = 0.5 + 0.5 * np.cos(freq * (xx * np.cos(angle) + yy * np.sin(angle)) + phase)
                pixels = 255 * (0.6 * colour + 0.4 * wave[..., None] * rng.uniform(0.5, 1, 3))
                image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
                image.save(folder / f"{split}_{i}.JPEG", quality=90)
    return root


@pytest.fixture
def odd_files(tmp_path):
    """What ImageNet holds besides RGB JPEGs: CMYK JPEGs, a PNG named .JPEG, greyscale JPEGs."""
    for split in ("train", "val"):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = tmp_path / split / f"n{c}"
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), colour).save(folder / "rgb.JPEG")
            Image.new("CMYK", (40, 30), (0, 255, 0, 40 * c)).save(folder / "cmyk.JPEG")
            Image.new("RGBA", (30, 40), (*colour, 255)).save(folder / "png.JPEG", format="PNG")
            Image.new("L", (36, 36), 60 + 100 * c).save(folder / "grey.JPEG")
    return tmp_path
