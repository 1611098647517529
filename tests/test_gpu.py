"""The GPU tier: training runs, every variant's update, evaluation, exact resume and torch.compile on CUDA.

Skipped without a CUDA GPU. `GNP_GPU_TIER_DEVICE=cpu` runs the same tests on the CPU (the shapes are small
already), to check the tier's own logic on a machine without a GPU; the CUDA-only checks skip there.

    PYTHONPATH=. python3 -m pytest -m gpu tests/test_gpu.py -q
"""

import copy
import math
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from test_decode import batches, differences
from test_loop_gpu_path import tied_head
from test_optim import batch, mlp, reference_gradient
from test_train import Crash, comparable, crash_after_epoch
from torch import nn

from gnp import checkpoint
from gnp.data import normalize
from gnp.loop import Run, train
from gnp.models import build_model
from gnp.optim import GNP
from gnp.recipes import get_recipe

DEVICE = os.environ.get("GNP_GPU_TIER_DEVICE", "cuda")
CUDA = DEVICE == "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(CUDA and not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (GNP_GPU_TIER_DEVICE=cpu runs this tier on the CPU)"),
]
cuda_only = pytest.mark.skipif(not CUDA, reason="a CUDA-only check")

ALPHA = {"standard": 0.0, "gnp": 0.5, "sam": 1.0}
AMPS = ("none", "bf16", "fp16")
R = 0.05


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.suffix == ".JPEG")


def recipe(out, **overrides):
    """The digits recipe on the tier's device: 2 epochs, 2 loader processes (pinned memory on CUDA)."""
    return get_recipe("digits", **{"out": str(out), "device": DEVICE, "epochs": 2, "loader_workers": 2,
                                   **overrides})


def imagenet(out, root, **overrides):
    return recipe(out, **{"dataset": "imagenet", "data": str(root), "augmentation": "rrc+flip",
                          "image_size": 32, "batch_size": 16, "channels_last": True, **overrides})


def check_rows(rows, cfg, root, *, learns):
    """What every run must give: ok rows with finite numbers, every validation image counted once, the
    two-pass steps counted, the fp16 scaler on exactly when amp=fp16, and (where meaningful) a lower loss."""
    steps = count_images(root / "train") // cfg.batch_size
    assert [r["epoch"] for r in rows] == list(range(1, cfg.epochs + 1))
    for r in rows:
        assert r["status"] == "ok", r
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0, r
        assert r["val_images"] == count_images(root / "val"), r
        if cfg.variant != "standard":  # standard's column counts the steps its schedule marked (one pass)
            assert r["regularized_steps"] == steps, r
        assert r["skipped_steps"] < steps if cfg.amp == "fp16" else r["skipped_steps"] == 0, r
        assert r["device"] == (torch.cuda.get_device_name() if CUDA else "cpu")
    saved = checkpoint.load(Path(cfg.out) / checkpoint.FILENAME)
    assert bool(saved["scaler"]) == (cfg.amp == "fp16")  # a disabled GradScaler saves an empty state
    if learns:
        assert rows[-1]["train_loss"] < rows[0]["train_loss"], rows
        assert rows[-1]["test_top1_err"] < 80, rows  # chance is 90%


# ---- training runs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("variant", ALPHA)
def test_digits_train_in_every_precision(digits_root, tmp_path, variant, amp):
    cfg = recipe(tmp_path, variant=variant, alpha=ALPHA[variant], amp=amp)
    check_rows(train(cfg), cfg, digits_root, learns=True)


@pytest.mark.parametrize("amp", AMPS)
@pytest.mark.parametrize("variant", ALPHA)
def test_an_imagenet_folder_trains_with_random_resized_crops(tiny_imagenet, tmp_path, variant, amp):
    """3 steps an epoch: too few to ask for learning, enough for the JPEG → uint8 → device path."""
    cfg = imagenet(tmp_path, tiny_imagenet, variant=variant, alpha=ALPHA[variant], amp=amp)
    check_rows(train(cfg), cfg, tiny_imagenet, learns=False)


def test_resnet18_on_an_imagenet_folder(tiny_imagenet, tmp_path):
    cfg = imagenet(tmp_path, tiny_imagenet, model="resnet18", image_size=64, variant="gnp", alpha=0.5,
                   amp="bf16" if CUDA else "none")
    check_rows(train(cfg), cfg, tiny_imagenet, learns=False)


@pytest.mark.parametrize("decode", ["loader", "device"])
def test_the_official_resnet50_and_inception_preset_train(tiny_imagenet, tmp_path, decode):
    """The paper's recipe's network and preprocessing: SAME padding under channels_last and bf16, the
    Inception crop and central crop, decoded by PIL or (bicubic) on the device."""
    cfg = imagenet(tmp_path, tiny_imagenet, model="ResNet50", augmentation="inception", image_size=64,
                   variant="gnp", alpha=0.3, amp="bf16" if CUDA else "none", decode=decode, epochs=1)
    check_rows(train(cfg), cfg, tiny_imagenet, learns=False)


@pytest.mark.parametrize("data", ["digits", "imagenet"])
def test_decoding_on_the_device_trains(digits_root, tiny_imagenet, tmp_path, data):
    """--decode device with 2 loader processes (pinned memory on CUDA): nvJPEG, then crops and flips there."""
    overrides = dict(variant="gnp", alpha=0.5, amp="bf16" if CUDA else "none", decode="device")
    cfg = recipe(tmp_path, **overrides) if data == "digits" else imagenet(tmp_path, tiny_imagenet, **overrides)
    check_rows(train(cfg), cfg, digits_root if data == "digits" else tiny_imagenet, learns=data == "digits")


def test_images_decoded_on_the_device_are_the_loader_images(tiny_imagenet, odd_files):
    """The same crops, flips and labels as PIL in the loader processes, greyscale JPEGs turned to RGB and
    CMYK/PNG files carried as pixels; nvJPEG and a float resize differ from libjpeg and PIL by a grey level
    or so (a wrong box or flip: 8 to 19 levels on average, tests/test_decode.py)."""
    for root, size, augmentation in ((tiny_imagenet, 48, "rrc+flip"), (odd_files, 16, "rrc+flip"),
                                     (tiny_imagenet, 48, "inception")):
        loader = batches(root, "loader", augmentation=augmentation, size=size)
        device = batches(root, "device", augmentation=augmentation, size=size, device=torch.device(DEVICE))
        assert all(mean < 2 for mean, _ in differences(loader, device)), differences(loader, device)


# ---- one step of every variant against the float64 formulas ---------------------------------------------

UPDATES = [("standard", 0.0, "paper"), ("gnp", 0.3, "paper"), ("gnp", 0.8, "official"), ("sam", 1.0, "paper"),
           ("fgr", 0.5, "paper"), ("bgr", 0.5, "paper"), ("asam", 0.5, "paper"), ("db", 0.4, "paper")]


def device_gradient(model, x, y, variant, alpha, mix, l2, amp):
    """The g of one step on the tier's device (lr 1, so g = θ before − θ after), in float64 on the CPU."""
    model = copy.deepcopy(model).to(DEVICE)
    x, y = x.to(DEVICE), y.to(DEVICE)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**10) if amp == "fp16" else None
    opt = GNP(model, torch.optim.SGD, alpha=alpha, r=R, variant=variant, mix=mix, weight_decay=l2, lr=1.0,
              grad_scaler=scaler)
    before = {k: p.detach().clone() for k, p in model.named_parameters()}

    def closure(create_graph=False):
        with torch.autocast(DEVICE, dtype=dtype, enabled=dtype is not None):
            loss = F.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward(create_graph=create_graph)
        return loss

    opt.step(closure)
    assert opt.skipped is None if scaler is None else not opt.skipped.item()
    return {k: (before[k] - p.detach()).double().cpu() for k, p in model.named_parameters()}


def expected_gradient(model, x, y, variant, alpha, mix, l2):
    """tests/test_optim.py's float64 formulas, at the same float32 weights (standard is gnp at α = 0)."""
    name = "gnp" if variant == "standard" else variant
    return reference_gradient(copy.deepcopy(model).double(), x.double(), y, name, alpha, R, l2, mix)


@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("variant,alpha,mix", UPDATES)
def test_each_variant_step_in_float32_matches_the_float64_formula(variant, alpha, mix, l2):
    model, (x, y) = mlp(), batch()
    got = device_gradient(model, x, y, variant, alpha, mix, l2, "none")
    expected = expected_gradient(model, x, y, variant, alpha, mix, l2)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-4, atol=1e-5, msg=k)


def relative_error(got, expected):
    diff = torch.sqrt(sum(((got[k] - expected[k]) ** 2).sum() for k in expected))
    return (diff / torch.sqrt(sum((v**2).sum() for v in expected.values()))).item()


@pytest.mark.parametrize("amp,tolerance", [("bf16", 0.03), ("fp16", 0.005)])
@pytest.mark.parametrize("variant,alpha,mix", UPDATES)
def test_each_variant_step_under_autocast_is_near_the_float64_formula(variant, alpha, mix, amp, tolerance):
    """bf16 keeps 8 bits of mantissa, fp16 11 (with the GradScaler): ‖g − g_exact‖/‖g_exact‖ within those."""
    model, (x, y) = mlp(), batch()
    got = device_gradient(model, x, y, variant, alpha, mix, 0.01, amp)
    assert relative_error(got, expected_gradient(model, x, y, variant, alpha, mix, 0.01)) < tolerance


# ---- evaluation, resume, compile, host syncs ------------------------------------------------------------


def test_evaluation_counts_every_validation_image_once(tiny_imagenet, tmp_path):
    """20 images in batches of 16 (a partial last batch); the errors agree with one image at a time."""
    run = Run(imagenet(tmp_path, tiny_imagenet, variant="gnp", alpha=0.5, epochs=1))
    run.run_epoch()
    top1, top5, n = run.evaluate()
    assert n == count_images(tiny_imagenet / "val") == 20
    assert top5 == 0.0  # 4 classes: the top-4 (k = min(5, classes)) always holds the label
    wrong = 0
    with torch.no_grad():
        for image, target in run.val_loader.dataset:
            logits = run.model(normalize(image[None].to(run.device), run.memory_format))
            wrong += int(logits.argmax(1).item() != target)
    assert abs(top1 - 100 * wrong / n) <= 100 / n + 1e-9  # one near-tie may flip with the batch shape


def test_a_bf16_near_tie_is_scored_as_in_fp32(digits_root, tmp_path, monkeypatch):
    """Under bf16 autocast the head's outputs tie; evaluation scores float32 logits (compiled too:
    tests/test_loop_gpu_path.py, on the CPU)."""
    monkeypatch.setattr("gnp.loop.build_model", tied_head)
    run = Run(recipe(tmp_path, amp="bf16", loader_workers=0))
    images, targets = torch.zeros(8, 3, 32, 32, dtype=torch.uint8), torch.full((8,), run.num_classes - 1)
    assert run.evaluate([(images, targets)]) == (0.0, 0.0, 8)


def with_dropout(name, num_classes, image_size, **options):
    """The model with dropout before its head: training then draws from the device's generator."""
    model = build_model(name, num_classes, image_size, **options)
    return nn.Sequential(*model[:-1], nn.Dropout(0.3), model[-1])


@pytest.fixture
def deterministic():
    before = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.deterministic = before


def test_resume_from_a_checkpoint_continues_exactly_with_the_device_generator(
        digits_root, tmp_path, monkeypatch, deterministic):
    """2 epochs straight = 1 epoch, a stop, and a resume; with a stale device generator it is not."""
    monkeypatch.setattr("gnp.loop.build_model", with_dropout)
    # On a CPU, dropout shares the global generator with DataLoader, whose persistent iterators draw their
    # base seed from it once per loader: a resumed run draws in epoch 2, a straight one did in epoch 1.
    cfg = dict(variant="gnp", alpha=0.5, amp="bf16" if CUDA else "none", loader_workers=2 if CUDA else 0)
    straight = train(recipe(tmp_path / "a", **cfg))

    with pytest.raises(Crash):
        train(recipe(tmp_path / "b", **cfg), report=crash_after_epoch(1))
    state = checkpoint.load(tmp_path / "b" / checkpoint.FILENAME)
    assert state["epoch"] == 1 and (state["rng"][0]["cuda"] is not None) == CUDA
    resumed = train(recipe(tmp_path / "b", **cfg), resume=state)
    assert comparable(resumed) == comparable(straight)
    final, again = (checkpoint.load(tmp_path / d / checkpoint.FILENAME)["model"] for d in ("a", "b"))
    assert all(torch.equal(final[k], again[k]) for k in final)

    generator = "cuda" if CUDA else "torch"  # the one dropout draws from
    state["rng"][0][generator] = torch.Generator(DEVICE).manual_seed(12345).get_state()
    stale = train(recipe(tmp_path / "c", **cfg), resume=state)
    assert stale[1]["train_loss"] != straight[1]["train_loss"]


def test_a_compiled_model_trains_and_the_second_epoch_compiles_nothing(digits_root, tmp_path):
    """Both passes of a step and every later step reuse the first graphs: a recompile per step would show
    as many graphs in epoch 1 (up to dynamo's limit), a guard on something that changes as more in epoch 2."""
    from torch._dynamo.utils import counters  # here: importing dynamo costs the suite's collection seconds

    torch._dynamo.reset()
    counters.clear()
    graphs = []
    cfg = recipe(tmp_path, variant="gnp", alpha=0.5, amp="bf16" if CUDA else "none", compile=True)
    rows = train(cfg, report=lambda row, folder: graphs.append(counters["stats"]["unique_graphs"]))
    check_rows(rows, cfg, digits_root, learns=True)
    assert 1 <= graphs[0] <= 3 and graphs[1] == graphs[0], graphs
    saved = checkpoint.load(tmp_path / checkpoint.FILENAME)
    assert not any(k.startswith("_orig_mod.") for k in saved["model"])  # the plain module's names


@cuda_only
def test_a_training_epoch_does_not_sync_the_host_every_step(digits_root, tmp_path):
    """The per-step sums stay on the device: one sync at the epoch's end (reading the sums), none a step."""
    run = Run(recipe(tmp_path, variant="gnp", alpha=0.5, amp="bf16"))
    run.run_epoch()  # the first epoch pays for cuDNN's search and the loader's start
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run.train_one_epoch()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert 1 <= len(syncs) < run.steps_per_epoch // 2, [str(w.message) for w in syncs]


# ---- the ViTs: bf16 through torch's fused attention ----------------------------------------------------


def test_the_vit_recipe_trains_in_bf16_through_fused_attention(tmp_path):
    """The ViT recipes' whole path on the device: AdamW, warm-up, dropout, drop path, bf16, SDPA."""
    cfg = get_recipe("digits-cifar-vit", out=str(tmp_path), device=DEVICE, amp="bf16", epochs=3, drop_path=0.1)
    run = Run(cfg)
    assert run.model.blocks[0].attn.fused_attn  # timm's attention calls F.scaled_dot_product_attention
    rows = [run.run_epoch() for _ in range(cfg.epochs)]
    assert all(r["status"] == "ok" and r["regularized_steps"] > 0 for r in rows), rows
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] and rows[-1]["test_top1_err"] < 80, rows


def test_vit_dropout_masks_replay_on_the_device():
    """Pass 2 of a GNP step replays pass 1's generator state: attention dropout inside the fused kernel must
    draw the same masks from it, or the two passes score different networks."""
    torch.manual_seed(0)
    model = build_model("ViT_TI16", 10, 32).to(DEVICE).train()
    x = torch.randn(16, 3, 32, 32, device=DEVICE)
    state = torch.cuda.get_rng_state() if CUDA else torch.get_rng_state()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):  # the features: the zero-initialized head gives zeros
        first = model.forward_features(x)
        (torch.cuda.set_rng_state if CUDA else torch.set_rng_state)(state)
        again = model.forward_features(x)
        other = model.forward_features(x)  # the stream goes on: new masks
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_a_vit_s_gnp_step_in_bf16_is_near_the_fp32_step():
    torch.manual_seed(0)
    fp32 = build_model("ViT_S16", 10, 32).to(DEVICE).eval()  # no dropout: the two precisions' masks differ
    bf16 = copy.deepcopy(fp32)
    x = torch.randn(64, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (64,), device=DEVICE)
    before = [p.detach().clone() for p in fp32.parameters()]
    for model, amp in ((fp32, False), (bf16, True)):
        opt = GNP(model, torch.optim.SGD, alpha=0.8, r=0.1, lr=0.1)  # the step is lr·g: compares the gradients

        def closure(model=model, amp=amp):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    moved = torch.cat([(p - b).flatten() for p, b in zip(fp32.parameters(), before, strict=True)])
    gap = torch.cat([(p - q).flatten() for p, q in zip(bf16.parameters(), fp32.parameters(), strict=True)])
    assert torch.linalg.vector_norm(gap) / torch.linalg.vector_norm(moved) < 0.1
