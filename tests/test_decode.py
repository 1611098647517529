"""--decode device: the same crops, flips and labels as the loader path, odd files, and a whole run.

Here the device is the CPU (torchvision's decoder instead of nvJPEG); tests/test_gpu.py runs it on CUDA.
"""

import torch
from test_train import comparable

from gnp.data import build_loaders
from gnp.decode import EncodedBatch
from gnp.loop import train
from gnp.recipes import get_recipe

CPU = torch.device("cpu")


def batches(root, decode, *, augmentation, size, epoch=1, workers=0, batch_size=8, limit=None, device=CPU):
    """The (uint8 images, targets) of the train and the val loader, decoded on `device` where encoded (on
    the CPU after)."""
    train_loader, val_loader, _ = build_loaders(
        root, image_size=size, augmentation=augmentation, batch_size=batch_size, workers=workers, rank=0,
        world=1, seed=3, pin_memory=False, decode=decode)
    train_loader.sampler.set_epoch(epoch)
    out = []
    for loader in (train_loader, val_loader):
        for i, (images, targets) in enumerate(loader):
            if i == limit:
                break
            if decode == "device":
                assert isinstance(images, EncodedBatch)
                images = images.decode(device).cpu()
            out.append((images, targets))
    return out


def differences(a, b):
    """Per batch: (mean, max) absolute difference in grey levels, after checking shapes and labels."""
    assert len(a) == len(b)
    out = []
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape == xb.shape and xa.dtype == xb.dtype == torch.uint8
        assert torch.equal(ya, yb)
        d = (xa.int() - xb.int()).abs()
        out.append((d.float().mean().item(), d.max().item()))
    return out


def test_digits_decoded_on_the_device_are_the_loader_images_bit_for_bit(digits_root):
    """The digits' shift augmentation (zero padding included) and evaluation crop: identical pixels."""
    loader = batches(digits_root, "loader", augmentation="crop", size=32, limit=20)
    device = batches(digits_root, "device", augmentation="crop", size=32, limit=20)
    assert all(d == (0.0, 0) for d in differences(loader, device))


def test_random_resized_crops_and_flips_are_the_loader_ones(tiny_imagenet):
    """The same boxes and flips from the same seeded draws; only the resampling differs (a grey level at
    most). The other flip, or a box moved by 4 pixels, differs by far more: the tolerance would catch it."""
    loader = batches(tiny_imagenet, "loader", augmentation="rrc+flip", size=48)
    device = batches(tiny_imagenet, "device", augmentation="rrc+flip", size=48)
    assert all(mean < 0.5 and worst <= 2 for mean, worst in differences(loader, device))

    train_loader = build_loaders(tiny_imagenet, image_size=48, augmentation="rrc+flip", batch_size=8, workers=0,
                                 rank=0, world=1, seed=3, pin_memory=False, decode="device")[0]
    train_loader.sampler.set_epoch(1)
    encoded, _ = next(iter(train_loader))
    right = encoded.decode(CPU)
    for wrong in ([(top, left, h, w, not flip) for top, left, h, w, flip in encoded.boxes],
                  [(top + 4, left, h, w, flip) for top, left, h, w, flip in encoded.boxes]):
        encoded.boxes = wrong
        assert (encoded.decode(CPU).int() - right.int()).abs().float().mean() > 3


def test_the_official_inception_crops_are_the_loader_ones(tiny_imagenet):
    """The official preset on the device: the same distorted boxes and flips, the central evaluation crop,
    both resized bicubic (a tensor's against PIL's: within two grey levels)."""
    loader = batches(tiny_imagenet, "loader", augmentation="inception", size=48)
    device = batches(tiny_imagenet, "device", augmentation="inception", size=48)
    assert all(mean < 0.5 and worst <= 2 for mean, worst in differences(loader, device))


def test_cmyk_png_and_greyscale_files_give_the_loader_images(odd_files):
    """CMYK and PNG go the loader path's way (as pixels in the batch), greyscale JPEGs are decoded to RGB;
    each lands in its place in the batch."""
    loader = batches(odd_files, "loader", augmentation="rrc+flip", size=16)
    device = batches(odd_files, "device", augmentation="rrc+flip", size=16)
    assert all(mean < 0.5 and worst <= 2 for mean, worst in differences(loader, device))
    encoded = next(iter(build_loaders(odd_files, image_size=16, augmentation="rrc+flip", batch_size=8, workers=0,
                                      rank=0, world=1, seed=3, pin_memory=False, decode="device")[0]))[0]
    assert len(encoded.encoded_slots) == 4 and len(encoded.pixel_slots) == 4  # rgb, grey | cmyk, png


def test_loader_processes_do_not_change_the_encoded_batches(tiny_imagenet):
    one = batches(tiny_imagenet, "device", augmentation="rrc+flip", size=48)
    two = batches(tiny_imagenet, "device", augmentation="rrc+flip", size=48, workers=2)
    assert all(d == (0.0, 0) for d in differences(one, two))


def test_a_run_decoding_on_the_device_equals_the_loader_run_on_the_digits(digits_root, tmp_path):
    """Identical inputs, so identical training: every row's numbers, with 2 loader processes."""
    def run(decode):
        return train(get_recipe("digits", out=str(tmp_path / decode), device="cpu", epochs=1, loader_workers=2,
                                decode=decode))

    assert comparable(run("device")) == comparable(run("loader"))
