"""Mistakes a user makes, each refused with one line and exit code 2 before anything runs, writing nothing:
a table of command → message, run as the user runs them (a process each, no Ray cluster needed)."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def digits_copy(tmp_path: Path, digits_root: Path) -> Path:
    """A copy of the embedded digits' folders (links to the files: cheap), to spoil."""
    copy = tmp_path / "digits"
    for image in digits_root.rglob("*.JPEG"):
        target = copy / image.relative_to(digits_root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(image)
    return copy


def spoiled(tmp_path, digits_root, how: str) -> Path:
    root = digits_copy(tmp_path, digits_root)
    if how == "dangling link":
        (root / "train" / "digit_3" / "gone.JPEG").symlink_to(tmp_path / "nowhere.JPEG")
    elif how == "empty class":
        (root / "val" / "digit_9_extra").mkdir()
        (root / "train" / "digit_9_extra").mkdir()
        Image.new("RGB", (8, 8)).save(root / "train" / "digit_9_extra" / "x.JPEG")
    return root


GRID = [
    (["--recipe", "imagenet-resnet50"], "recipe 'imagenet-resnet50' (imagenet) needs --data"),
    (["--experiment", "../../escape"], "--experiment '../../escape' is not a plain name"),
    (["--max-concurrent", "0"], "--max-concurrent must be >= 1, got 0"),
    (["--batch-size", "100000", "--workers", "1"], "--batch-size 100000 is larger than the 1437 training images"),
    (["--data", "{file}"], "is a file, not a folder"),
    (["--data", "{dangling link}"], "gone.JPEG is a link to nothing"),
    (["--data", "{empty class}"], "digit_9_extra holds no image"),
    (["--variant", "foo"], "--variant takes gnp, fgr, bgr, asam, db; got 'foo'"),
    (["--alpha", "0.5", "--r", "-1"], "r must be >= 0"),
    (["--protocol", "greedy", "--alpha", "0.5"], "--protocol greedy sets --alpha itself"),
    (["--protocol", "greedy", "--select", "holdout"], "--select holdout needs held-out training images"),
    (["--recipe", "digits-cifar", "--protocol", "greedy", "--augmentation", "basic,cutout"],
     "--augmentation sweeps several: run the protocol once per value"),
    (["--asha"], "--asha stops trials early in the greedy protocol's search stages only"),
    (["--smoke", "0"], "--smoke takes a number of steps >= 1, for a plain grid"),
    (["--protocol", "greedy", "--smoke"], "--smoke takes a number of steps >= 1, for a plain grid"),
    (["--protocol", "greedy", "--asha-grace-epochs", "2"], "--asha-grace-epochs sets ASHA's grace period; add --asha"),
    (["--protocol", "greedy", "--asha", "--asha-reduction", "1"], "--asha-reduction >= 2"),
    (["--protocol", "greedy", "--asha", "--asha-grace-epochs", "30", "--epochs", "30"],
     "--asha-grace-epochs 30 leaves ASHA nothing to stop in 30 epochs"),
    (["--holdout-images", "100"], "holdout_images is a count of CIFAR training images"),
    (["--gpus-per-worker", "0.5"], "--gpus-per-worker 0.5 packs trials onto a GPU and needs --workers 1"),
]


def run(module: str, argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": ""}
    return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=180,
                          cwd=cwd, env=env)


def one_line(done: subprocess.CompletedProcess, message: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


@pytest.mark.parametrize("argv,message", GRID)
def test_the_grid_refuses_in_one_line_before_ray_and_writes_nothing(tmp_path, digits_root, argv, message):
    (tmp_path / "notes.txt").write_text("not a dataset")
    places = {"{file}": str(tmp_path / "notes.txt"), "{dangling link}": None, "{empty class}": None}
    argv = [str(spoiled(tmp_path, digits_root, a[1:-1])) if a in places and places[a] is None
            else places.get(a, a) for a in argv]
    done = run("jobs.grid", [*argv, "--results", str(tmp_path / "results")], tmp_path)
    one_line(done, message)
    assert not (tmp_path / "results").exists()


def test_a_corrupt_result_file_does_not_stop_the_dry_run(tmp_path, digits_root):
    folder = tmp_path / "results" / "other"
    folder.mkdir(parents=True)
    (folder / "broken.parquet").write_bytes(b"PAR1 not really")
    pq.write_table(pa.table({"x": [1]}), folder / "foreign.parquet")
    done = run("jobs.grid", ["--dry-run", "--seeds", "0", "--results", str(tmp_path / "results")], tmp_path)
    assert done.returncode == 0 and "4 trials, 4 to run" in done.stdout, done.stderr[-2000:]  # α 0, 0.2, 0.3, 1


@pytest.mark.parametrize("argv,message", [
    (["--address", "not-a-url", "--", "--seeds", "0"], "--address 'not-a-url' is not the Jobs API's URL"),
    (["--", "--alpha", "0.5", "--r", "-1"], "r must be >= 0"),
    (["--", "--recipe", "nope"], "unknown recipe 'nope'"),
])
def test_submit_checks_here_before_uploading(tmp_path, argv, message):
    one_line(run("jobs.submit", ["--address", "http://127.0.0.1:9", *argv], tmp_path), message)


TRAIN = [
    (["--epochs", "many"], "--epochs takes int values, got 'many'"),
    (["--no-such-option"], "unrecognized arguments: --no-such-option"),
    (["--resume"], "there is nothing to resume; drop --resume"),
    (["--recipe", "imagenet-resnet50"], "needs --data"),
    (["--model", "resnet7"], "model must be one of"),
    (["--optimizer", "adamw"], "momentum and nesterov are SGD's options; with --optimizer adamw pass --momentum 0"),
    (["--recipe", "digits-cifar-vit", "--momentum", "0.9"], "momentum and nesterov are SGD's options"),
    (["--beta2", "0.98"], "beta2 is AdamW's; with --optimizer sgd leave them at their defaults"),
    (["--drop-path", "0.1"], "model 'smallcnn' has no drop path; --drop-path is for ViT_TI16, ViT_S16, vit-digits"),
    (["--recipe", "digits-cifar-vit", "--patch-size", "5"], "patch size 5 does not tile image_size 32"),
    (["--recipe", "digits-cifar", "--image-size", "48"], "augmentation 'basic' keeps them so; use image_size 32"),
]


@pytest.mark.parametrize("argv,message", TRAIN)
def test_gnp_train_refuses_in_one_line_and_makes_no_out_folder(tmp_path, digits_root, argv, message):
    one_line(run("gnp.train", [*argv, "--out", str(tmp_path / "run")], tmp_path), message)
    assert not (tmp_path / "run").exists()


def test_gnp_train_names_a_file_that_is_no_image(tmp_path, digits_root):
    root = digits_copy(tmp_path, digits_root)
    bad = next((root / "train" / "digit_5").iterdir())
    bad.unlink()
    bad.write_text("not a JPEG at all")
    done = run("gnp.train", ["--data", str(root), "--epochs", "1", "--out", str(tmp_path / "run")], tmp_path)
    last = done.stderr.strip().splitlines()[-1]  # after the run's own "training ..." line
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert last.startswith(f"error: {bad} is not a readable image") and last.endswith("replace or remove it")


def test_gnp_train_names_runs_as_the_grid_does_and_says_a_finished_run_is_finished(tmp_path, digits_root):
    import json

    out = tmp_path / "run"
    argv = ["--epochs", "1", "--batch-size", "64", "--loader-workers", "0", "--out", str(out)]
    assert run("gnp.train", argv, tmp_path).returncode == 0
    (row,) = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert (row["variant"], row["alpha"], row["r"]) == ("standard", 0.0, 0.0)  # α = 0, as a grid records it
    again = run("gnp.train", [*argv, "--resume"], tmp_path)
    assert again.returncode == 0 and "has finished (1 of 1 epochs, ok); nothing to resume" in again.stderr
    help_text = run("gnp.train", ["--recipe", "imagenet-vgg16bn", "--help"], tmp_path).stdout
    assert "[imagenet-vgg16bn: runs/imagenet-vgg16bn]" in " ".join(help_text.split())
