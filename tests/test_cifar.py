"""CIFAR: the archives' reader (both formats, every root form, every way a file can be wrong), the embedded
digits, and the tensor batches' augmentations against hand-computed pixels."""

import pickle
import tarfile

import numpy as np
import pytest
import torch

from gnp import batches, cifar, datasets
from gnp.errors import UserError


def write_batches(folder, fmt, per_file=4, seed=0):
    """A tiny archive folder in the official format: pickles of {data: N×3072 uint8, labels: [...]}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for name in (*fmt.train, *fmt.test):
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data,
                 fmt.labels: [int(v) for v in rng.integers(0, fmt.classes, per_file)]}
        if fmt is cifar.CIFAR100:
            batch[b"coarse_labels"] = [0] * per_file
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {fmt.names: [f"class{i}".encode() for i in range(fmt.classes)]}
    (folder / fmt.meta).write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def archive_of(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return path


@pytest.mark.parametrize("fmt", [cifar.CIFAR10, cifar.CIFAR100])
def test_every_root_form_reads_the_same_data(tmp_path, fmt):
    folder = write_batches(tmp_path / "unpacked" / fmt.folder, fmt)
    archive = archive_of(folder, tmp_path / fmt.archive)
    (tmp_path / "holder").mkdir()
    archive_of(folder, tmp_path / "holder" / fmt.archive)
    forms = [folder, folder.parent, archive, tmp_path / "holder"]
    identities = [cifar.identity(cifar.locate(root, fmt), fmt) for root in forms]
    assert all(i == identities[0] for i in identities)
    per_file = 4
    assert identities[0]["train_images"] == per_file * len(fmt.train) and identities[0]["val_images"] == per_file
    data = cifar.read(cifar.locate(archive, fmt), fmt)
    raw = pickle.loads((folder / fmt.train[0]).read_bytes(), encoding="bytes")
    assert data["train"][0].shape == (per_file * len(fmt.train), 3, 32, 32)
    assert np.array_equal(data["train"][0][:per_file].reshape(per_file, -1), raw[b"data"])  # CHW, CIFAR's order
    assert list(data["train"][1][:per_file]) == raw[fmt.labels] and len(data["classes"]) == fmt.classes


def corrupt(tmp_path, how):
    folder = write_batches(tmp_path / cifar.CIFAR10.folder, cifar.CIFAR10)
    target = folder / "data_batch_2"
    if how == "truncated":
        target.write_bytes(target.read_bytes()[:500])
    elif how == "missing":
        target.unlink()
    elif how == "shape":
        target.write_bytes(pickle.dumps({b"data": np.zeros((4, 1024), np.uint8), b"labels": [0] * 4}))
    elif how == "labels":
        target.write_bytes(pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}))
    elif how == "code":
        class Evil:
            def __reduce__(self):
                return (print, ("pwned",))

        target.write_bytes(pickle.dumps({b"data": Evil()}))
    return folder


@pytest.mark.parametrize("how,message", [
    ("truncated", "data_batch_2 is not a readable data_batch_2 pickle"),
    ("missing", "lacks data_batch_2 of CIFAR-10"),
    ("shape", "data_batch_2: its data is not N×3072 uint8"),
    ("labels", "labels in 0..9 expected"),
    ("code", "names builtins.print"),
])
def test_a_bad_file_is_one_line_naming_it(tmp_path, how, message):
    fmt = cifar.CIFAR10
    with pytest.raises(UserError, match=message) as err:
        cifar.read(cifar.locate(corrupt(tmp_path, how), fmt), fmt)
    assert "\n" not in str(err.value)


def test_bad_roots_are_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        cifar.locate(tmp_path / "nope", cifar.CIFAR10)
    write_batches(tmp_path / "c100" / cifar.CIFAR100.folder, cifar.CIFAR100)
    with pytest.raises(UserError, match="holds CIFAR-100, not CIFAR-10"):
        cifar.locate(tmp_path / "c100", cifar.CIFAR10)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no CIFAR-10: expected cifar-10-batches-py/"):
        cifar.locate(tmp_path / "empty", cifar.CIFAR10)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="is a file"):
        cifar.locate(tmp_path / "notes.txt", cifar.CIFAR10)
    (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
    with pytest.raises(UserError, match="not a readable .tar.gz"):
        cifar.read(cifar.locate(tmp_path / "broken.tar.gz", cifar.CIFAR10), cifar.CIFAR10)


def test_the_embedded_digits_are_cifar_10_s_format(digits_root):
    spec = datasets.get("digits-cifar")
    location = spec.root(None)
    assert location.name == cifar.CIFAR10.folder
    assert sorted(p.name for p in location.iterdir()) == sorted(cifar.CIFAR10.files)
    assert spec.identify(location) == spec.identify(location)
    data = cifar.read(location, cifar.CIFAR10)
    assert data["train"][0].shape == (1437, 3, 32, 32) and data["test"][0].shape == (360, 3, 32, 32)
    images = data["train"][0]
    assert np.array_equal(images[:, 0], images[:, 1]) and images.max() > 200  # grey digits, R = G = B
    assert data["classes"] == [f"digit_{d}" for d in range(10)]


# ---- augmentations against hand-computed pixels ---------------------------------------------------------


def ramp(n=1, size=8):
    """Images whose pixel (r, c) is 8·r + c in every channel."""
    one = (torch.arange(size)[:, None] * size + torch.arange(size)[None, :]).to(torch.uint8)
    return one.expand(n, 3, size, size).clone()


def test_basic_reflect_pads_by_4_and_crops_and_flips_first():
    image = ramp()
    # no flip (0.9 >= 0.5), crop at row 0, column 0 of the padded image: row i reads reflect(i − 4)
    out = batches.basic(image, torch.tensor([[0.9, 0.0, 0.0, 0, 0]], dtype=torch.float64))[0, 0]
    rows = [4, 3, 2, 1, 0, 1, 2, 3]
    assert out.tolist() == [[8 * r + c for c in rows] for r in rows]
    # flip first (0.1 < 0.5), then the crop at row 8, column 8: reads reflect(i + 4) = 4, 5, 6, 7, 6, 5, 4, 3,
    # and the flipped image's column c is the original's 7 − c
    out = batches.basic(image, torch.tensor([[0.1, 0.999, 0.999, 0, 0]], dtype=torch.float64))[0, 0]
    rows = [4, 5, 6, 7, 6, 5, 4, 3]
    assert out.tolist() == [[8 * r + (7 - c) for c in rows] for r in rows]
    # the centre crop (4, 4) of an unflipped image is the image
    middle = torch.tensor([[0.9, 4.5 / 9, 4.5 / 9, 0, 0]], dtype=torch.float64)
    assert torch.equal(batches.basic(image, middle), image)


def test_the_cutout_box_is_16_px_around_its_centre_clipped():
    box = batches.box_mask(32, 32, torch.tensor([5]), torch.tensor([20]), 16, 16)[0, 0]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[0:13, 12:28] = True  # rows 5 − 8 .. 5 + 8 clipped at 0; columns 20 − 8 .. 20 + 8
    assert torch.equal(box, expected)


def constant_split(n=16, classes=16):
    """Image i is the constant i (unchanged by flips and reflect crops), label i mod classes."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 32, 32).clone()
    return batches.Split(images, torch.arange(n) % classes, torch.device("cpu"))


def epoch_of(split, augmentation, world=1, batch=8, seed=0, epoch=3, classes=16):
    """The epoch's batches, each rank's part concatenated in rank order (the global batches)."""
    ranks = [batches.TrainBatches(split, batch_size=batch // world, rank=r, world=world, seed=seed,
                                  augmentation=augmentation, mean=(0, 0, 0), std=(1, 1, 1), classes=classes)
             for r in range(world)]
    for b in ranks:
        b.set_epoch(epoch)
    return [(torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts]))
            for parts in zip(*ranks, strict=True)]


def test_mixup_mixes_each_image_with_its_mirror_in_the_global_batch_by_one_lambda():
    """Image i is the constant i with label i: x_j = λ·i_j + (1 − λ)·i_{B−1−j}, labels λ and 1 − λ."""
    lams = []
    for world in (1, 2):
        for images, targets in epoch_of(constant_split(), "mixup", world=world):
            own = targets.argmax(1)  # λ ≥ 1/2 on the own label
            partner = own.flip(0)
            lam = targets[torch.arange(8), own]
            assert torch.allclose(lam, lam[0].expand_as(lam)) and lam[0] >= 0.5  # one λ per global batch
            assert torch.allclose(targets[torch.arange(8), partner], 1 - lam)
            expected = lam * own + (1 - lam) * partner
            assert torch.allclose(images[:, 0, 0, 0] * 255, expected, atol=1e-4)
            assert torch.all(images == images[:, :1, :1, :1])  # constant images stay constant
            lams.append(lam[0].item())
    assert len(set(lams)) > 1  # a new λ for each global batch


def test_cutmix_pastes_the_mirror_s_box_and_weighs_the_labels_by_area():
    for images, targets in epoch_of(constant_split(), "cutmix"):
        own, partner = targets.argmax(1), targets.argmax(1).flip(0)
        plane = images[:, 0] * 255
        pasted = (plane - partner[:, None, None]).abs() < 1e-4
        kept = (plane - own[:, None, None]).abs() < 1e-4
        assert torch.all(pasted | kept) and torch.equal(pasted[1:], pasted[1:2].expand_as(pasted[1:]))
        weights = pasted[1].float().mean()  # one box for the global batch, its area is the partner's weight
        assert torch.allclose(targets[torch.arange(8), partner], weights.expand(8))


def test_cutout_zeroes_one_16_px_box_per_global_batch_after_normalization():
    for world in (1, 2):
        for images, _ in epoch_of(constant_split(), "cutout", world=world):
            zero = images[:, 0] == 0
            assert torch.equal(zero[1:], zero[1:2].expand_as(zero[1:]))  # the same box in every image (0 is 0)
            rows, cols = zero[1].any(1).sum().item(), zero[1].any(0).sum().item()
            assert 8 <= rows <= 16 and 8 <= cols <= 16 and zero[1].sum().item() == rows * cols


@pytest.mark.parametrize("augmentation", list(batches.PRESETS))
def test_every_preset_is_a_function_of_seed_epoch_and_index_whatever_the_ranks(augmentation):
    torch.manual_seed(0)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    split = batches.Split(images, torch.arange(16) % 4, torch.device("cpu"))
    one, two, again = epoch_of(split, augmentation), epoch_of(split, augmentation, world=2), epoch_of(split, augmentation)
    for (x1, y1), (x2, y2), (x3, y3) in zip(one, two, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # 1 rank or 2: the same global batch
        assert torch.equal(x1, x3) and torch.equal(y1, y3)
    if augmentation != "none":
        other = epoch_of(split, augmentation, epoch=4)
        assert not all(torch.equal(a[0], b[0]) for a, b in zip(one, other, strict=True))


def test_the_draws_do_not_depend_on_which_other_samples_are_drawn():
    ids = torch.tensor([3, 17, 40000, 5])
    all_at_once = batches.uniforms(123456789, ids, 4)
    one_by_one = torch.cat([batches.uniforms(123456789, ids[i:i + 1], 4) for i in range(4)])
    assert torch.equal(all_at_once, one_by_one)
    assert 0 <= all_at_once.min() and all_at_once.max() < 1
    many = batches.uniforms(7, torch.arange(100_000), 1)[:, 0]
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.002


def test_evaluation_batches_cover_every_test_image_once_across_ranks():
    split = constant_split(n=11)
    seen = []
    for rank in range(3):
        for images, labels in batches.EvalBatches(split, batch_size=2, rank=rank, world=3, mean=(0, 0, 0),
                                                  std=(1, 1, 1)):
            values = (images[:, 0, 0, 0] * 255).round().long()
            assert torch.equal(labels, values)  # each image with its own label
            seen += values.tolist()
    assert sorted(seen) == list(range(11))


# ---- training on the tensor path ------------------------------------------------------------------------


def test_a_kill_mid_epoch_resumes_to_the_same_rows_on_the_cifar_path(digits_root, tmp_path, monkeypatch):
    """The heaviest preset (AutoAugment, mixup, cutout): every draw a function of (seed, epoch, index or
    step), so a run killed in epoch 2 and resumed from epoch 1's checkpoint ends where a straight one does."""
    from test_train import Crash, comparable, crash_in_epoch

    from gnp import checkpoint
    from gnp.loop import Run, train
    from gnp.recipes import get_recipe

    def cfg(folder):
        return get_recipe("digits-cifar", out=str(folder), device="cpu", epochs=2, batch_size=64, threads=1,
                          variant="gnp", alpha=0.5, augmentation="autoaugment+mixcut")

    straight = train(cfg(tmp_path / "a"))
    with monkeypatch.context() as patch:
        patch.setattr(Run, "regularization_ramp", crash_in_epoch(2, at_step=7))
        with pytest.raises(Crash):
            train(cfg(tmp_path / "b"))
    state = checkpoint.load(tmp_path / "b" / checkpoint.FILENAME)
    assert state["epoch"] == 1
    assert comparable(train(cfg(tmp_path / "b"), resume=state)) == comparable(straight)
    assert all(r["status"] == "ok" and r["val_images"] == 360 for r in straight)


def test_mixed_labels_count_as_their_largest_in_the_train_error():
    from gnp.loop import step_sums

    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    soft = torch.tensor([[0.7, 0.3], [0.6, 0.4], [0.2, 0.8]])
    sums = step_sums(torch.tensor(1.0), logits, soft, torch.tensor(1.0), None)
    assert sums[0].item() == 3.0 and sums[1].item() == 2.0  # loss · 3 images; rows 2 and 3 wrong
