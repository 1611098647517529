"""The `heavy` preset (the paper's ViT-on-CIFAR augmentation) against plain resizes and crops computed with
F.interpolate, its geometry (flip, rotation, zoom axes), its draws, and the whole CIFAR path at 48 px."""

import math

import pytest
import torch
import torch.nn.functional as F

from gnp import batches, data, datasets

TOLERANCE = 1e-2  # in pixel values (0–255): float32 rounding of two bilinear resamplings


def draws(flip=0.9, rotation=0.5, zoom=(0.5, 0.5), crop=(4.5 / 9, 4.5 / 9), n=1):
    """One row of heavy's draws per image; the defaults are no flip, angle 0, zoom 1 and the centred crop."""
    return torch.tensor([[flip, rotation, *zoom, *crop]], dtype=torch.float64).expand(n, batches.HEAVY_COLUMNS)


def random_images(n=4, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def resized(images, size):
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=False)


def test_a_batch_comes_out_float_at_the_asked_size_in_the_pixel_range():
    images = random_images(64)
    out = batches.heavy(images, batches.uniforms(1, torch.arange(64), batches.HEAVY_COLUMNS), 48)
    assert out.shape == (64, 3, 48, 48) and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255 and out.std() > 30


@pytest.mark.parametrize("top,left", [(4, 4), (0, 8), (8, 1)])
def test_the_identity_draw_is_a_resize_to_72_a_64_crop_and_a_resize_to_48(top, left):
    images = random_images()
    crop = ((top + 0.5) / 9, (left + 0.5) / 9)
    out = batches.heavy(images, draws(crop=crop, n=4), 48)
    expected = resized(resized(images, 72)[:, :, top:top + 64, left:left + 64], 48)
    assert (out - expected).abs().max() < TOLERANCE


def test_zoom_above_1_zooms_out_each_axis_on_its_own():
    """Zoom 72/64 = 1.125 = 1 + (2·0.8125 − 1)·0.2 widens the centred 64 crop to the whole 72 on its axis."""
    images = random_images()
    big = resized(images, 72)
    both = batches.heavy(images, draws(zoom=(0.8125, 0.8125), n=4), 48)
    assert (both - resized(big, 48)).abs().max() < TOLERANCE
    columns = batches.heavy(images, draws(zoom=(0.5, 0.8125), n=4), 48)  # rows zoom 1, columns 1.125
    assert (columns - resized(big[:, :, 4:68, :], 48)).abs().max() < TOLERANCE
    rows = batches.heavy(images, draws(zoom=(0.8125, 0.5), n=4), 48)
    assert (rows - resized(big[:, :, :, 4:68], 48)).abs().max() < TOLERANCE


def test_the_flip_mirrors_the_image_before_rotation_and_crop():
    """Flipping first: flip(θ, crop column c) is the mirror of no-flip(−θ, crop column 8 − c)."""
    images = random_images()
    flipped = batches.heavy(images, draws(flip=0.1, rotation=0.8, zoom=(0.3, 0.9), crop=(1.5 / 9, 2.5 / 9), n=4), 48)
    plain = batches.heavy(images, draws(flip=0.9, rotation=0.2, zoom=(0.3, 0.9), crop=(1.5 / 9, 6.5 / 9), n=4), 48)
    assert (flipped - plain.flip(3)).abs().max() < TOLERANCE
    assert (flipped - plain).abs().max() > 50


def test_points_outside_the_image_are_reflected_with_the_edge_pixel_repeated():
    """Zoom 1.1875 = 1 + (2·0.96875 − 1)·0.2 of the columns widens the centred crop to columns −2..74 of the 72:
    past each edge, the image's last 2 columns mirrored (Keras' "reflect", d c b a | a b c d | d c b a)."""
    images = random_images()
    big = resized(images, 72)[:, :, 4:68]
    out = batches.heavy(images, draws(zoom=(0.5, 0.96875), n=4), 48)
    window = torch.cat([big[..., :2].flip(3), big, big[..., -2:].flip(3)], 3)
    assert (out - resized(window, 48)).abs().max() < TOLERANCE


def test_a_quarter_turn_is_rot90_counter_clockwise(monkeypatch):
    """At 0.25 turns (the draw 1 at a patched magnitude) the pixel grid maps onto itself: exactly torch.rot90."""
    images = random_images()
    monkeypatch.setitem(batches.HEAVY, "rotation_turns", 0.25)
    turned = batches.heavy(images, draws(rotation=1.0, n=4), 48)
    still = batches.heavy(images, draws(n=4), 48)
    assert (turned - torch.rot90(still, 1, (2, 3))).abs().max() < TOLERANCE


def test_the_largest_angle_turns_a_spot_by_7_2_degrees_counter_clockwise_about_the_centre():
    image = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    image[:, :, 15:17, 25:27] = 255  # a spot 10 px right of the centre (15.5, 15.5)

    def bearing(draw):
        """The spot's angle on screen (counter-clockwise from the right) and its distance from the centre."""
        out = batches.heavy(image, draws(rotation=draw), 48)[0, 0]
        rows, cols = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
        y, x = 23.5 - (out * rows).sum() / out.sum(), (out * cols).sum() / out.sum() - 23.5
        return math.degrees(math.atan2(y, x)), math.hypot(x, y)

    (start, radius), (end, radius_after) = bearing(0.5), bearing(1.0)
    assert abs(start) < 0.1 and abs(end - 7.2) < 0.2 and abs(radius_after - radius) < 0.1
    assert abs(bearing(0.0)[0] + 7.2) < 0.2


def test_the_draws_are_a_function_of_seed_epoch_and_index():
    images = random_images(16)
    split = batches.Split(images, torch.arange(16) % 4, torch.device("cpu"))

    def loader(epoch, seed=0):
        b = batches.TrainBatches(split, batch_size=8, rank=0, world=1, seed=seed, augmentation="heavy",
                                 mean=(0, 0, 0), std=(1, 1, 1), classes=4, image_size=48)
        b.set_epoch(epoch)
        return b

    indices = torch.tensor([3, 11, 5])
    one = loader(2).images_of(indices)
    assert one.shape == (3, 3, 48, 48)
    assert torch.equal(one, loader(2).images_of(indices))
    assert torch.equal(one[1:2], loader(2).images_of(indices[1:2]))  # whichever other samples come along
    assert not torch.equal(one, loader(3).images_of(indices)) and not torch.equal(one, loader(2, 1).images_of(indices))
    for x, _ in loader(2):  # normalized by mean 0, std 1: pixels / 255
        assert x.shape == (8, 3, 48, 48) and 0 <= x.min() and x.max() <= 1


def test_training_sizes_other_than_the_images_need_a_resizing_preset():
    split = batches.Split(random_images(8), torch.arange(8), torch.device("cpu"))
    common = dict(batch_size=4, rank=0, world=1, seed=0, mean=(0, 0, 0), std=(1, 1, 1), classes=8)
    with pytest.raises(ValueError, match="keeps the 32×32 images, not image_size 48"):
        batches.TrainBatches(split, augmentation="basic", image_size=48, **common)
    assert datasets.RESIZING_AUGMENTATIONS == ("heavy",) and "heavy" in datasets.CIFAR_AUGMENTATIONS
    assert next(iter(batches.TrainBatches(split, augmentation="heavy", image_size=48, **common)))[0].shape[-1] == 48
    assert next(iter(batches.TrainBatches(split, augmentation="heavy", **common)))[0].shape[-1] == 32


def test_evaluation_resizes_the_test_images_to_the_training_size():
    images = random_images(5)
    split = batches.Split(images, torch.arange(5), torch.device("cpu"))
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    scale = torch.tensor(std).view(1, 3, 1, 1) * 255
    shift = torch.tensor(mean).view(1, 3, 1, 1) * 255
    out = torch.cat([x for x, _ in batches.EvalBatches(split, batch_size=2, rank=0, world=1, mean=mean, std=std,
                                                        image_size=48)])
    assert out.shape == (5, 3, 48, 48)
    assert (out * scale + shift - resized(images, 48)).abs().max() < TOLERANCE
    native = torch.cat([x for x, _ in batches.EvalBatches(split, batch_size=2, rank=0, world=1, mean=mean, std=std)])
    assert (native * scale + shift - images.float()).abs().max() < TOLERANCE


def test_the_cifar_path_trains_and_evaluates_at_48_px_on_the_embedded_digits(digits_root):
    spec = datasets.get("digits-cifar")
    train, val, classes, _ = data.dataset_loaders(spec, spec.root(None), image_size=48, augmentation="heavy",
                                                  batch_size=16, workers=0, rank=0, world=1, seed=0,
                                                  device=torch.device("cpu"))
    assert classes == 10 and len(train) == 1437 // 16
    images, labels = next(iter(train))
    assert images.shape == (16, 3, 48, 48) and images.dtype == torch.float32 and labels.shape == (16,)
    shapes = [x.shape for x, _ in val]
    assert all(s[1:] == (3, 48, 48) for s in shapes) and sum(s[0] for s in shapes) == 360
