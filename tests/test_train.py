"""The per-worker loop: metrics, divergence, exact resume, DDP evaluation coverage, one-line CLI errors."""

import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gnp import checkpoint
from gnp.loop import train
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


def test_a_nan_loss_ends_the_run_as_diverged(digits_root, tmp_path):
    rows = train(digits(tmp_path, lr=1e6, epochs=3))
    assert len(rows) == 1 and rows[0]["status"] == "diverged"


def comparable(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s")} for r in rows]


@pytest.mark.parametrize("variant", ["gnp", "standard"])
def test_resuming_from_a_checkpoint_continues_exactly(digits_root, tmp_path, variant):
    cfg = dict(epochs=3, variant=variant, alpha=0.5 if variant == "gnp" else 0.0)
    straight = train(digits(tmp_path / "a", **cfg))
    final = checkpoint.load(tmp_path / "a" / "run" / checkpoint.FILENAME)

    class Crash(Exception):
        pass

    def crash_after_epoch_2(row, folder):
        if row["epoch"] == 2:
            raise Crash  # after the checkpoint of epoch 2 was written, as a killed worker would

    with pytest.raises(Crash):
        train(digits(tmp_path / "b", **cfg), report=crash_after_epoch_2)
    resumed_state = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    resumed = train(digits(tmp_path / "b", **cfg), resume=resumed_state)
    assert comparable(resumed) == comparable(straight)
    again = checkpoint.load(tmp_path / "b" / "run" / checkpoint.FILENAME)
    for name, tensor in final["model"].items():
        assert torch.equal(tensor, again["model"][name]), name


def ddp_worker(rank, init_file, out, queue):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    rows = train(get_recipe("digits", out=out, variant="gnp", alpha=0.5, **{**FAST, "epochs": 1}))
    queue.put((rank, rows[-1]))
    dist.barrier()
    dist.destroy_process_group()


def test_two_ddp_workers_evaluate_every_image_once(digits_root, tmp_path):
    queue = mp.get_context("spawn").SimpleQueue()
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path / "run"), queue), nprocs=2)
    rows = dict(queue.get() for _ in range(2))
    assert rows[0]["val_images"] == rows[1]["val_images"] == 360  # 180 per rank, summed, no padding
    assert rows[0]["workers"] == 2 and rows[0]["test_top1_err"] == rows[1]["test_top1_err"]


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--r", "-0.1", "--alpha", "0.5"], "r must be >= 0"),
        (["--alpha", "nan"], "alpha must be a finite number"),
        (["--lr", "0"], "lr must be > 0"),
        (["--lr", "inf"], "lr must be a finite number"),
        (["--batch-size", "0"], "batch size must be >= 1"),
        (["--recipe", "cifar"], "unknown recipe 'cifar'"),
        (["--model", "resnet7"], "unknown model 'resnet7'"),
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


def test_an_existing_run_is_not_overwritten_without_resume(digits_root, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["--out", out, "--epochs", "1", "--batch-size", "32", "--loader-workers", "0"]) == 0
    assert main(["--out", out, "--epochs", "2"]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["--out", out, "--epochs", "2", "--batch-size", "32", "--loader-workers", "0", "--resume"]) == 0
    assert len((tmp_path / "out" / "metrics.jsonl").read_text().splitlines()) == 2


def test_help_and_errors_from_a_real_process():
    help_text = subprocess.run([sys.executable, "-m", "gnp.train", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "--alpha" in help_text.stdout and "--resume" in help_text.stdout
    bad = subprocess.run([sys.executable, "-m", "gnp.train", "--lr", "-1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["error: lr must be >= 0, got -1.0"]
