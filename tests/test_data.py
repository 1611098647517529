"""The embedded default's layout, the layout checks' messages, and odd images loading as RGB."""

import multiprocessing
from pathlib import Path

import pytest
from PIL import Image
from torchvision import datasets

from gnp.data import ShardSampler, build_loaders
from gnp.errors import UserError
from gnp.folders import check_layout, ensure_digits


def test_digits_are_written_once_in_the_imagenet_layout(digits_root, tmp_path):
    train = datasets.ImageFolder(digits_root / "train")
    val = datasets.ImageFolder(digits_root / "val")
    assert train.classes == val.classes == [f"digit_{d}" for d in range(10)]
    assert (len(train), len(val)) == (1437, 360)
    assert all(p.endswith(".JPEG") for p, _ in train.samples)
    again = ensure_digits(tmp_path / "again")  # the split is fixed: a second build gives the same files
    assert sorted(p.name for p in (again / "val").rglob("*.JPEG")) == sorted(
        p.name for p in (digits_root / "val").rglob("*.JPEG")
    )
    assert check_layout(digits_root) == digits_root


def make_layout(root: Path, splits=("train", "val"), classes=("a", "b")):
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(root / split / c / "x.JPEG")
    return root


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda r: r / "missing", "does not exist"),
        (lambda r: make_layout(r) / "train", "pass its parent"),
        (lambda r: make_layout(r, splits=("train",)), "no val/ folder"),
        (lambda r: (make_layout(r, splits=("train",)), (r / "val").mkdir(),
                    Image.new("RGB", (8, 8)).save(r / "val" / "ILSVRC2012_val_00000001.JPEG"))[0],
         "torchvision.datasets.ImageNet"),
        (lambda r: (r.mkdir(exist_ok=True), (r / "ILSVRC2012_img_train.tar").write_text(""))[0] and r,
         "extract them"),
        (lambda r: (make_layout(r, splits=("train",)), make_layout(r, splits=("val",), classes=("a", "c")))[0],
         "different class folders"),
    ],
)
def test_bad_layouts_are_named(tmp_path, build, expected):
    root = build(tmp_path / "imagenet") or tmp_path / "imagenet"
    with pytest.raises(UserError, match=expected) as err:
        check_layout(root)
    assert "\n" not in str(err.value)


def test_cmyk_and_png_named_jpeg_load_as_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(tmp_path / "cmyk.JPEG")
    Image.new("RGBA", (8, 8)).save(tmp_path / "png.JPEG", format="PNG")
    Image.new("L", (8, 8)).save(tmp_path / "gray.JPEG")
    for name in ("cmyk", "png", "gray"):
        assert datasets.folder.default_loader(str(tmp_path / f"{name}.JPEG")).mode == "RGB"


def test_shards_cover_every_index_once_without_padding():
    shards = [list(ShardSampler(10, rank, 3)) for rank in range(3)]
    assert sorted(sum(shards, [])) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]


def test_evaluation_processes_end_with_each_pass_and_training_ones_stay(digits_root):
    """Kept between passes, the validation loader's processes would idle through every training epoch (8 a
    GPU by default); the training loader's stay for the next epoch."""
    train, val, _ = build_loaders(digits_root, image_size=32, augmentation="crop", batch_size=64, workers=2,
                                  rank=0, world=1, seed=0, pin_memory=False)
    before = set(multiprocessing.active_children())
    for _ in range(2):
        assert sum(len(targets) for _, targets in val) == 360
        assert set(multiprocessing.active_children()) == before
    next(iter(train))
    assert len(set(multiprocessing.active_children()) - before) == 2
    del train  # its persistent processes end with it
