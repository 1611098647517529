"""The per-worker loop: metrics, divergence, exact resume, DDP evaluation coverage, one-line CLI errors."""

import hashlib
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from gnp import checkpoint
from gnp.data import build_loaders
from gnp.loop import Run, averaged_buffers, close_distributed, eval_counts, regularizes, step_sums, train
from gnp.models import build_model
from gnp.recipes import get_recipe
from gnp.train import main

FAST = dict(epochs=2, batch_size=32, loader_workers=0, threads=1)


def digits(tmp_path, **overrides):
    return get_recipe("digits", out=str(tmp_path / "run"), **{**FAST, **overrides})


def test_rows_have_every_metric_and_training_learns(digits_root, tmp_path):
    rows = train(digits(tmp_path, variant="gnp", alpha=0.5))
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["status"] == "ok" for r in rows)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["test_top1_err"] < 50 and rows[-1]["val_images"] == 360
    assert all(r["grad_norm"] > 0 and r["images_per_s"] > 0 and r["workers"] == 1 for r in rows)
    saved = checkpoint.load(tmp_path / "run" / checkpoint.FILENAME)
    assert saved["epoch"] == 2 and len(saved["rows"]) == 2
    # each epoch folder is deleted once reported: the run's folder holds only the latest checkpoint
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [checkpoint.FILENAME, checkpoint.ROWS_FILENAME]


def test_a_handed_over_epoch_folder_is_whole_and_never_changes(digits_root, tmp_path):
    """What Ray uploads in the background while the next epoch trains: the folder must not move under it."""
    handed = []

    def report(row, folder):
        files = {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}
        handed.append((Path(folder), files))
        assert Path(folder).name == f"epoch_{row['epoch']:04d}"
        assert checkpoint.load(Path(folder) / checkpoint.FILENAME)["epoch"] == row["epoch"]
        assert json.loads(files[checkpoint.ROWS_FILENAME])[-1]["epoch"] == row["epoch"]

    train(digits(tmp_path, epochs=3), report=report, hand_over_checkpoints=True)
    assert [folder.name for folder, _ in handed] == ["epoch_0001", "epoch_0002", "epoch_0003"]
    for folder, files in handed:
        assert {p.name: p.read_bytes() for p in sorted(folder.iterdir())} == files, folder
    latest = handed[-1][0]
    for name in (checkpoint.FILENAME, checkpoint.ROWS_FILENAME):
        assert (tmp_path / "run" / name).stat().st_ino == (latest / name).stat().st_ino  # a link, not a copy
    shutil.rmtree(latest)  # what Ray does after the upload: the run's latest checkpoint stays
    assert checkpoint.load(tmp_path / "run" / checkpoint.FILENAME)["epoch"] == 3


def test_a_nan_loss_ends_the_run_as_diverged(digits_root, tmp_path):
    rows = train(digits(tmp_path, lr=1e6, epochs=3))
    assert len(rows) == 1 and rows[0]["status"] == "diverged"


class Crash(Exception):
    pass


def crash_in_epoch(epoch, at_step=None):
    """A stand-in for Run.run_epoch that dies in `epoch` (mid-epoch after `at_step` steps, else at its start)."""
    real_run_epoch, real_ramp = Run.run_epoch, Run.regularization_ramp

    def run_epoch(self):
        if self.epoch + 1 == epoch and at_step is None:
            raise Crash
        return real_run_epoch(self)

    def ramp(self, step):
        if self.epoch + 1 == epoch and step == at_step:
            raise Crash  # a worker killed in the middle of the epoch
        return real_ramp(self, step)

    return run_epoch if at_step is None else ramp


def crash_after_epoch(epoch):
    """A report that dies once `epoch`'s checkpoint is written, as a worker killed then would."""
    def report(row, folder):
        if row["epoch"] == epoch:
            raise Crash
    return report


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s", "started_at", "ended_at")} for r in rows]


@pytest.mark.parametrize("variant", ["gnp", "standard"])
def test_resuming_from_a_checkpoint_continues_exactly(digits_root, tmp_path, variant):
    cfg = dict(epochs=3, variant=variant, alpha=0.5 if variant == "gnp" else 0.0)
    straight = train(digits(tmp_path / "a", **cfg))
    final = checkpoint.load(tmp_path / "a" / "run" / checkpoint.FILENAME)

    with pytest.raises(Crash):
        train(digits(tmp_path / "b", **cfg), report=crash_after_epoch(2))
    resumed_state = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    assert (tmp_path / "b" / "run" / "epoch_0002").is_dir()  # the crash came before its folder was deleted
    resumed = train(digits(tmp_path / "b", **cfg), resume=resumed_state)
    assert comparable(resumed) == comparable(straight)
    assert not list((tmp_path / "b" / "run").glob("*epoch_*"))
    again = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name


def with_dropout(name, num_classes, image_size, **options):
    model = build_model(name, num_classes, image_size, **options)
    return nn.Sequential(*model[:-1], nn.Dropout(0.2), model[-1])


def test_a_kill_mid_epoch_resumes_to_the_same_rows_with_loader_workers(digits_root, tmp_path, monkeypatch):
    """Loader processes (persistent, 2 then 1 after the restart) cannot change a number: augmentation is
    a function of (seed, epoch, sample index), not of a worker's stream."""
    cfg = dict(epochs=2, variant="gnp", alpha=0.5, batch_size=64)
    monkeypatch.setattr("gnp.loop.build_model", with_dropout)  # the CPU generator is drawn from in training
    straight = train(digits(tmp_path / "a", loader_workers=2, **cfg))
    with monkeypatch.context() as patch:
        patch.setattr(Run, "regularization_ramp", crash_in_epoch(2, at_step=7))
        with pytest.raises(Crash):
            train(digits(tmp_path / "b", loader_workers=2, **cfg))
    state = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    assert state["epoch"] == 1
    resumed = train(digits(tmp_path / "b", loader_workers=1, **cfg), resume=state)
    assert comparable(resumed) == comparable(straight)


def test_augmentation_is_the_same_for_any_loader_processes_and_ranks(digits_root):
    def batches(workers, rank=0, world=1, epoch=1):
        loader, _, _ = build_loaders(digits_root, image_size=32, augmentation="crop", batch_size=16,
                                     workers=workers, rank=rank, world=world, seed=3, pin_memory=False)
        loader.sampler.set_epoch(epoch)
        keys = list(loader.sampler)
        images = torch.cat([x for x, _ in itertools.islice(loader, 4)])
        return {key[0]: image for key, image in zip(keys, images, strict=False)}

    alone = batches(0)
    assert all(torch.equal(alone[i], image) for i, image in batches(2).items())
    for rank in (0, 1):
        shard = batches(0, rank=rank, world=2)
        common = set(shard) & set(alone)
        assert all(torch.equal(alone[i], shard[i]) for i in common)
    other_epoch = batches(0, epoch=2)
    common = set(other_epoch) & set(alone)
    assert common and not all(torch.equal(alone[i], other_epoch[i]) for i in common)


def test_the_per_batch_sums_make_no_cpu_tensor():
    """Run on the meta device, which refuses a mix with CPU tensors as CUDA does."""
    logits, targets = torch.randn(8, 10, device="meta"), torch.zeros(8, dtype=torch.long, device="meta")
    loss, norm = torch.ones((), device="meta"), torch.ones((), device="meta")
    assert step_sums(loss, logits, targets, norm, None).device.type == "meta"
    assert step_sums(loss, logits, targets, norm, torch.zeros((), dtype=torch.bool, device="meta")).shape == (5,)
    assert eval_counts(logits, targets, 5).device.type == "meta"


def test_the_per_batch_sums_count_what_they_say():
    logits = torch.tensor([[3.0, 1, 0, 0, 0, 0, 0], [0, 3.0, 2, 1, 0, 0, 0], [1, 1, 1, 1, 1, 9.0, -5]])
    targets = torch.tensor([0, 2, 6])
    assert eval_counts(logits, targets, 5).tolist() == [1, 2]  # the last one is not in its top 5
    sums = step_sums(torch.tensor(0.5), logits, targets, torch.tensor(float("inf")), torch.tensor(True))
    assert sums.tolist() == [1.5, 2, 0, 0, 1]  # a non-finite norm is left out of the mean, the skip counted


def test_fp16_overflows_are_counted_skipped_steps_not_divergence(digits_root, tmp_path):
    run = Run(digits(tmp_path, amp="fp16", epochs=1, alpha=0.5))
    run.scaler = run.optimizer.grad_scaler = torch.amp.GradScaler("cpu", init_scale=2.0**40)  # overflows first
    row = run.run_epoch()
    assert row["status"] == "ok" and 10 < row["skipped_steps"] < row["regularized_steps"]
    assert math.isfinite(row["grad_norm"]) and math.isfinite(row["test_top1_err"])


def test_rank_0_prints_a_heartbeat_within_an_epoch(digits_root, tmp_path, capsys):
    train(digits(tmp_path, epochs=1, heartbeat_s=1e-9))
    beats = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch 1/1 step ")]
    assert len(beats) > 10 and "img/s" in beats[0] and "run ETA" in beats[0]
    train(digits(tmp_path / "quiet", epochs=1, heartbeat_s=0))
    assert "step " not in capsys.readouterr().err


def test_which_steps_regularize():
    base = get_recipe("digits", alpha=0.5, variant="gnp")
    zero = base.replace(gr_warmup="zero", gr_warmup_epochs=2)
    assert [regularizes(zero, epoch, 0, 100) for epoch in range(4)] == [False, False, True, True]
    every = base.replace(regularize_every=4)
    assert [regularizes(every, 0, s, 100) for s in range(8)] == [True, False, False, False] * 2
    draws = [regularizes(base.replace(regularize_prob=0.25), 0, s, 4000) for s in range(4000)]
    assert 0.22 < sum(draws) / 4000 < 0.28
    assert draws == [regularizes(base.replace(regularize_prob=0.25), 0, s, 4000) for s in range(4000)]
    rising = [regularizes(base.replace(regularize_prob=1.0, regularize_schedule="increasing"), 0, s, 4000)
              for s in range(4000)]
    assert sum(rising[:1000]) < sum(rising[-1000:])


def test_the_gr_warmup_ramps_r_linearly(digits_root, tmp_path):
    run = Run(digits(tmp_path, alpha=0.5, gr_warmup_epochs=2, gr_warmup="r", r=0.1))
    ramp = []
    for epoch, step in [(0, 0), (0, run.steps_per_epoch // 2), (1, 0), (2, 0), (3, 5)]:
        run.epoch = epoch
        run.regularization_ramp(step)
        ramp.append(round(run.optimizer.r, 6))
    assert ramp == [0.0, round(0.1 * (run.steps_per_epoch // 2) / run.steps_per_epoch / 2, 6), 0.05, 0.1, 0.1]


def digest(tensors) -> str:
    return hashlib.sha256(b"".join(t.detach().double().numpy().tobytes() for t in tensors)).hexdigest()


def ddp_worker(rank, init_file, out, data, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    cfg = get_recipe("digits", out=out, variant="gnp", alpha=0.5, data=data, **{**FAST, "epochs": 1})
    run = Run(cfg)
    weights = digest(run.model.parameters())
    draw = torch.rand(4).tolist()  # this rank's own stream after the common initialization
    row = run.run_epoch()
    # small messages only: the queue is read after both processes end, and a full pipe would block them
    evaluated = digest(averaged_buffers(run.model, 2).values())
    queue.put((rank, dict(row=row, weights=weights, draw=draw, own=digest(run.model.buffers()), evaluated=evaluated)))
    dist.barrier()
    del run
    close_distributed()


def test_two_ddp_workers_evaluate_every_image_once_with_one_model(digits_root, tmp_path):
    data = tmp_path / "digits-361"  # 361 validation images: 181 + 180, which a padding sampler would miss
    shutil.copytree(digits_root, data)
    extra = next((data / "val" / "digit_0").iterdir())
    shutil.copy(extra, extra.with_name("extra.JPEG"))
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "run"), str(data), queue), nprocs=2)
    got = dict(queue.get() for _ in range(2))
    rows = [got[k]["row"] for k in (0, 1)]
    assert rows[0]["val_images"] == rows[1]["val_images"] == 361
    assert rows[0]["workers"] == 2 and rows[0]["test_top1_err"] == rows[1]["test_top1_err"]
    assert got[0]["weights"] == got[1]["weights"]  # the same initial weights on every rank
    assert got[0]["draw"] != got[1]["draw"]  # but each rank its own random stream
    assert got[0]["own"] != got[1]["own"]  # each rank keeps the BatchNorm statistics of its own batches
    assert got[0]["evaluated"] == got[1]["evaluated"]  # and evaluates with their mean, the same on both


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--r", "-0.1", "--alpha", "0.5"], "r must be >= 0"),
        (["--alpha", "nan"], "alpha must be a finite number"),
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--batch-size", "0"], "batch_size must be >= 1"),
        (["--threads", "-1"], "threads must be >= 0"),
        (["--loader-workers", "-2"], "loader_workers must be >= 0"),
        (["--variant", "asam", "--alpha", "1", "--variant-options", "rho=2"], "has no option 'rho'"),
        (["--recipe", "cifar"], "unknown recipe 'cifar'"),
        (["--model", "resnet7"], "model must be one of ResNet50"),
        (["--augmentation", "rrc+filp"], "dataset 'digits' has no augmentation 'rrc+filp'"),
        (["--variant", "adam"], "unknown variant 'adam'"),
        (["--data", "/no/such/imagenet"], "does not exist"),
        (["--recipe", "imagenet-resnet50"], "needs --data"),
        (["--out", "/proc/gnp-not-writable"], "not writable"),
        (["--device", "cuda"], "no CUDA GPU"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(digits_root, tmp_path, capsys, argv, message):
    if "--device" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    argv = argv + ([] if "--out" in argv else ["--out", str(tmp_path / "out")]) + ["--epochs", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err


def test_an_existing_run_is_not_overwritten_and_resumes_only_the_same_configuration(digits_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    args = ["--out", out, "--epochs", "2", "--batch-size", "32", "--loader-workers", "0", "--alpha", "0.5"]
    with pytest.MonkeyPatch.context() as patch:  # a run that stops after its first epoch
        patch.setattr("gnp.loop.Run.run_epoch", crash_in_epoch(2))
        with pytest.raises(Crash):
            main(args)
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*args, "--alpha", "0.8", "--resume"]) == 2
    assert "trained with alpha=0.5, this command says 0.8" in capsys.readouterr().err
    assert main([*args, "--loader-workers", "1", "--resume"]) == 0  # runtime options may change
    err = capsys.readouterr().err
    assert "resuming" in err and "at epoch 1 of 2" in err
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["alpha"], r["variant"]) for r in rows] == [(1, 0.5, "gnp"), (2, 0.5, "gnp")]


def test_help_and_errors_from_a_real_process():
    help_text = subprocess.run([sys.executable, "-m", "gnp.train", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--alpha" in help_text.stdout and "--resume" in help_text.stdout
    recipe = subprocess.run([sys.executable, "-m", "gnp.train", "--recipe", "imagenet-vgg16bn", "--help"],
                            capture_output=True, text=True, env={**os.environ, "COLUMNS": "400"}).stdout
    assert "[imagenet-vgg16bn: 5.0]" in recipe and "[imagenet-vgg16bn: 64]" in recipe  # clip, per-rank batch
    printed = subprocess.run([sys.executable, "-m", "gnp.train", "--recipe", "imagenet-resnet50", "--print-recipe",
                              "--alpha", "0.2"], capture_output=True, text=True)
    assert json.loads(printed.stdout)["alpha"] == 0.2 and json.loads(printed.stdout)["clip_grad_norm"] == 5.0
    lazy = subprocess.run([sys.executable, "-c", "import sys, gnp.train; gnp.train.build_parser(); "
                           "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert lazy.stdout.strip() == "False"  # --help does not pay for importing torch
    bad = subprocess.run([sys.executable, "-m", "gnp.train", "--lr", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: lr must be >= 0, got -1.0"]
