"""The official ImageNet preprocessing (TF's Inception crop) against boxes computed by hand from TF's kernel."""

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from gnp import datasets, inception
from gnp.data import build_transforms


def draws(floats, ints):
    """Fixed draws: the aspect ratios' uniforms in order, and the integers (each checked against its range)."""
    floats, ints, asked = iter(floats), iter(ints), []

    def uniform_int(n):
        value, bound = next(ints)
        assert n == bound, (n, bound)
        asked.append(n)
        return value

    return (lambda: next(floats)), uniform_int, asked


def test_one_attempt_gives_the_box_computed_by_hand():
    """500×375, u = 0.5: ratio 0.75 + 0.5·(4/3 − 3/4) = 1.0416667; heights from round(√(0.08·500·375/ratio))
    = 120 to round(√(500·375/ratio)) = 424, capped at 375: h = 120 + 100 (of 256 values); w = round(220 ·
    1.0416667) = 229; top in [0, 155), left in [0, 271)."""
    rand, randint, asked = draws([0.5], [(100, 256), (7, 155), (50, 271)])
    assert inception.distorted_box(375, 500, 224, rand, randint) == (7, 50, 220, 229)
    assert asked == [256, 155, 271]


def test_a_crop_under_a_tenth_of_the_image_is_drawn_again():
    """h = 120, w = 125: 15,000 pixels pass the area range (≥ 8%) but not min_object_covered (≥ 10% =
    18,750): a second attempt, here at ratio 3/4 (u = 0): h from 141 to 500, capped at 375; h = 141 + 59 =
    200, w = 150."""
    rand, randint, _ = draws([0.5, 0.0], [(0, 256), (3, 255), (4, 375), (59, 235), (11, 175), (12, 350)])
    assert inception.distorted_box(375, 500, 224, rand, randint) == (11, 12, 200, 150)


def test_without_a_fitting_crop_the_evaluation_crop_is_taken():
    """Ten attempts of 15,000 pixels fail: the centred 224/256 of 375 = 328 px square, offsets
    ((375 − 328 + 1) // 2, (500 − 328 + 1) // 2) = (24, 86)."""
    rand, randint, _ = draws([0.5] * 10, [(0, 256), (3, 255), (4, 375)] * 10)
    assert inception.distorted_box(375, 500, 224, rand, randint) == (24, 86, 328, 328)
    assert inception.central_box(375, 500, 224) == (24, 86, 328, 328)
    assert inception.central_box(500, 375, 224) == (86, 24, 328, 328)


def test_a_crop_of_the_whole_image_is_replaced_by_the_evaluation_crop():
    """A 100×100 image at ratio ≈ 1 whose drawn height is the full 100 (heights 28 to 100, the last one), so
    w = 100 too: the official code takes the central crop then, not the whole image."""
    aspect_one = float((1.0 - 0.75) / (4 / 3 - 0.75))
    rand, randint, asked = draws([aspect_one], [(72, 73)])
    assert inception.distorted_box(100, 100, 224, rand, randint) == inception.central_box(100, 100, 224)
    assert asked == [73]  # no corner drawn: the crop fills the image


def test_the_preset_crops_then_resizes_bicubic_for_evaluation():
    image = Image.new("RGB", (96, 64))
    image.paste((255, 0, 0), (0, 0, 48, 64))
    train, evaluate = build_transforms(56, "inception")
    torch.manual_seed(0)
    assert train(image).shape == evaluate(image).shape == (3, 56, 56)
    # evaluation: the centred 56/88 of 64 = 40 px square, resized bicubic (not resize-then-crop)
    central = image.crop((28, 12, 68, 52)).resize((56, 56), Image.BICUBIC)
    assert torch.equal(evaluate(image), pil_to_tensor(central))


def test_every_folder_preset_of_the_registry_has_transforms():
    for name in datasets.FOLDER_AUGMENTATIONS:
        build_transforms(32, name)


def test_an_unknown_preset_is_refused():
    from gnp.errors import UserError

    with pytest.raises(UserError, match=r"no augmentation .rrc\+filp."):
        build_transforms(32, "rrc+filp")
