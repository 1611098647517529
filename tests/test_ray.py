"""Ray integration on a local 2-CPU cluster started by `ray start` (token auth on, bound to 127.0.0.1).

Small on purpose: the digits, a few epochs, 2 gloo workers per trial.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
import torch

from analysis.schema import RESULT_SCHEMA
from gnp import checkpoint
from gnp.recipes import get_recipe
from jobs import grid
from jobs.submit import submit
from jobs.trial import Placement, fit_trial, rows_of, train_loop_per_worker

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import this test file
BIN = Path(sys.executable).parent
FAST = dict(batch_size=32, loader_workers=0)
PLACEMENT = Placement(workers=2, gpus_per_worker=0, cpus_per_worker=0.99)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def cluster(tmp_path_factory, digits_root):
    temp = tmp_path_factory.mktemp("ray")
    port, dashboard = free_port(), free_port()
    token = temp / "auth_token"  # the test cluster's own token: a fresh machine has no ~/.ray/auth_token
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "ray"), "start", "--head", "--num-cpus=2", "--num-gpus=0", f"--port={port}",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}",
                    "--disable-usage-stats"], env=env, check=True, capture_output=True)
    # 127.0.0.1:<port> (conftest puts Ray on loopback), as the head wrote it for drivers to join.
    address = (temp / "ray_current_cluster").read_text().strip()
    os.environ["RAY_ADDRESS"] = address
    ray.init(address=address, log_to_driver=False)
    yield {"dashboard": f"http://127.0.0.1:{dashboard}", "env": env}
    ray.shutdown()
    subprocess.run([str(BIN / "ray"), "stop"], env=env, capture_output=True)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(key, None)


def digits(**overrides):
    return get_recipe("digits", **{**FAST, "out": "unused", **overrides})


def parquet_rows(folder: Path) -> list[dict]:
    return [row for f in sorted(folder.glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s")} for r in rows]


def test_two_ray_workers_give_the_same_parameters_as_torchrun(cluster, tmp_path):
    cfg = digits(epochs=1, variant="gnp", alpha=0.5)
    result = fit_trial(cfg, PLACEMENT, storage=str(tmp_path / "storage"), name="same-maths")
    ours = checkpoint.load(Path(result.checkpoint.path) / checkpoint.FILENAME)["model"]
    subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node=2", f"--master-port={free_port()}", "-m", "gnp.train",
         "--epochs", "1", "--batch-size", "32", "--loader-workers", "0", "--threads", "1", "--variant", "gnp",
         "--alpha", "0.5", "--out", str(tmp_path / "torchrun")],
        check=True, capture_output=True, env={**os.environ, "RAY_ADDRESS": ""},
    )
    theirs = checkpoint.load(tmp_path / "torchrun" / checkpoint.FILENAME)["model"]
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def run_grid(tmp_path, *extra):
    args = ["--recipe", "digits", "--batch-size", "32", "--loader-workers", "0", "--workers", "2",
            "--results", str(tmp_path / "results"), *extra]
    return grid.main(args)


def test_grid_writes_one_file_per_trial_with_the_schema_and_a_rerun_adds_nothing(cluster, tmp_path):
    assert run_grid(tmp_path, "--seeds", "0,1", "--alpha", "0,0.8", "--epochs", "2", "--experiment", "g") == 0
    folder = tmp_path / "results" / "g"
    files = sorted(folder.glob("*.parquet"))
    assert len(files) == 4
    assert all(pq.read_schema(f).remove_metadata() == RESULT_SCHEMA for f in files)
    rows = parquet_rows(folder)
    assert len(rows) == 4 * 2 and {(r["trial_key"], r["epoch"]) for r in rows}.__len__() == 8
    assert {(r["variant"], r["alpha"], r["seed"]) for r in rows} == {
        ("standard", 0.0, 0), ("standard", 0.0, 1), ("gnp", 0.8, 0), ("gnp", 0.8, 1)}
    assert all(r["status"] == "ok" and r["workers"] == 2 and r["seeds_planned"] == 2 for r in rows)
    stamps = {f.name: f.stat().st_mtime_ns for f in files}

    assert run_grid(tmp_path, "--seeds", "0,1", "--alpha", "0,0.8", "--epochs", "2", "--experiment", "g") == 0
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.parquet")} == stamps
    assert len(parquet_rows(folder)) == 8


def test_a_diverging_trial_is_recorded_and_the_grid_goes_on(cluster, tmp_path):
    # r = 1e20 makes θ' overflow BatchNorm's variance in float32: a NaN loss in the first epoch for α ≠ 0,
    # while α = 0 (standard) ignores r.
    assert run_grid(tmp_path, "--seeds", "0", "--alpha", "-0.5,0", "--r", "1e20", "--epochs", "2",
                    "--experiment", "d") == 0
    rows = parquet_rows(tmp_path / "results" / "d")
    diverged = [r for r in rows if r["alpha"] == -0.5]
    assert [r["status"] for r in diverged] == ["diverged"]
    assert [r["status"] for r in rows if r["alpha"] == 0] == ["ok", "ok"]


def test_negative_alpha_lists_parse_as_values():
    argv = grid.negative_lists_joined(["--alpha", "-0.5,0", "--r", "0.05", "--seeds", "0"])
    args = grid.build_parser().parse_args(argv)
    assert args.alpha == [-0.5, 0.0] and args.r == [0.05] and args.seeds == [0]


def killing_loop(config):
    """train_loop_per_worker, with rank 1 killed by SIGKILL right after the epoch-2 checkpoint, once."""
    marker = Path(config["marker"])
    real_report = ray.train.report

    def report(metrics, **kwargs):
        real_report(metrics, **kwargs)
        if metrics["epoch"] == 2 and ray.train.get_context().get_world_rank() == 1 and not marker.exists():
            marker.write_text("killed")
            os.kill(os.getpid(), signal.SIGKILL)

    ray.train.report = report
    train_loop_per_worker(config)


def test_a_killed_worker_resumes_from_its_checkpoint_with_the_same_result(cluster, tmp_path):
    cfg = digits(epochs=3, variant="gnp", alpha=0.5)
    marker = tmp_path / "killed"

    def loop(config):
        killing_loop({**config, "marker": str(marker)})

    killed = fit_trial(cfg, PLACEMENT, storage=str(tmp_path / "s"), name="killed", loop=loop)
    assert marker.exists(), "the worker was never killed"
    clean = fit_trial(cfg, PLACEMENT, storage=str(tmp_path / "s"), name="clean")
    assert without_timing(rows_of(killed)) == without_timing(rows_of(clean))
    a = checkpoint.load(Path(killed.checkpoint.path) / checkpoint.FILENAME)["model"]
    b = checkpoint.load(Path(clean.checkpoint.path) / checkpoint.FILENAME)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_driver_resumes_and_runs_every_trial_exactly_once(cluster, tmp_path):
    command = [sys.executable, "-m", "jobs.grid", "--recipe", "digits", "--seeds", "0,1,2", "--alpha", "0.8",
               "--epochs", "2", "--batch-size", "32", "--loader-workers", "0", "--workers", "2",
               "--experiment", "i", "--results", str(tmp_path / "results")]
    folder = tmp_path / "results" / "i"
    driver = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not list(folder.glob("*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.5)
    first = sorted(folder.glob("*.parquet"))
    assert first, "no trial finished before the deadline"
    driver.send_signal(signal.SIGINT)  # Ctrl-C mid-grid
    driver.wait(timeout=120)
    stamp = first[0].stat().st_mtime_ns
    assert len(list(folder.glob("*.parquet"))) < 3, "the grid finished before it was interrupted"

    subprocess.run(command, check=True, capture_output=True, timeout=600)
    rows = parquet_rows(folder)
    assert sorted((r["seed"], r["epoch"]) for r in rows) == [(s, e) for s in (0, 1, 2) for e in (1, 2)]
    assert first[0].stat().st_mtime_ns == stamp  # the finished trial was not rerun


def test_a_grid_submitted_through_the_jobs_api_writes_its_rows(cluster, tmp_path):
    results = tmp_path / "results"
    _, status = submit(cluster["dashboard"], [
        "--recipe", "digits", "--seeds", "0", "--alpha", "0.8", "--epochs", "1", "--batch-size", "32",
        "--loader-workers", "0", "--workers", "2", "--experiment", "job", "--results", str(results)],
        python=sys.executable, timeout_s=300)
    assert status == "SUCCEEDED"
    rows = parquet_rows(results / "job")
    assert [(r["alpha"], r["epoch"], r["status"]) for r in rows] == [(0.8, 1, "ok")]


@pytest.mark.parametrize(
    "extra,message",
    [(["--workers", "4"], "the cluster has 2"), (["--gpus-per-worker", "1"], "GPUs"),
     (["--alpha", "0.5", "--r", "-1"], "r must be >= 0"), (["--alpha", "x"], None)],
)
def test_grid_bad_input_is_one_line_before_anything_starts(cluster, tmp_path, capsys, extra, message):
    if message is None:
        with pytest.raises(SystemExit) as exit_info:
            run_grid(tmp_path, *extra)
        assert exit_info.value.code == 2
        return
    assert run_grid(tmp_path, "--seeds", "0", "--experiment", "bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and message in err[-1], err
    assert not list((tmp_path / "results").glob("**/*.parquet"))


def test_the_same_experiment_name_with_another_grid_is_refused(cluster, tmp_path, capsys):
    grid.remember_grid(str(tmp_path), "x", {"alpha": [0.1]})
    grid.remember_grid(str(tmp_path), "x", {"alpha": [0.1]})  # the same grid: resumes
    with pytest.raises(grid.UserError, match="already ran another grid"):
        grid.remember_grid(str(tmp_path), "x", {"alpha": [0.2]})
    shutil.rmtree(tmp_path / "x")
