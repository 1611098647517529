"""Ray integration on a local 2-CPU cluster started by `ray start` (token auth on, bound to 127.0.0.1).

Small on purpose: the digits, a few epochs, 2 gloo workers per trial. The tests stop only the Ray
processes they started (never `ray stop`, which stops every Ray cluster of the machine).
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import ray.cloudpickle
import torch
from ray.job_submission import JobSubmissionClient

from gnp import checkpoint
from gnp.dataset_id import dataset_identity
from gnp.recipes import get_recipe
from gnp.rows import RESULT_SCHEMA
from jobs import grid
from jobs import results as res
from jobs.local import free_port, stop, tree
from jobs.submit import submit
from jobs.trial import Placement, TrialClock, fit_trial, rows_of, scratch_name, train_loop_per_worker

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers can't import this test file
BIN = Path(sys.executable).parent
FAST = dict(batch_size=32, loader_workers=0)
PLACEMENT = Placement(workers=2, gpus_per_worker=0, cpus_per_worker=0.99)


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
    yield {"dashboard": f"http://127.0.0.1:{dashboard}", "env": env, "digits": digits_root}
    ray.shutdown()
    stop(str(temp), f"--address={address} ")  # this cluster's only: its temp dir or its GCS (client server)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        os.environ.pop(key, None)


def digits(**overrides):
    return get_recipe("digits", **{**FAST, "out": "unused", **overrides})


def parquet_rows(folder: Path) -> list[dict]:
    return [row for f in sorted(folder.glob("*.parquet")) for row in pq.read_table(f).to_pylist()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s", "started_at", "ended_at")} for r in rows]


def test_two_ray_workers_give_the_same_parameters_as_torchrun(cluster, tmp_path):
    cfg = digits(epochs=1, variant="gnp", alpha=0.5)
    result = fit_trial(cfg, PLACEMENT, storage=str(tmp_path / "storage"), name="same-maths")
    ours = checkpoint.load(Path(result.checkpoint.path) / checkpoint.FILENAME)["model"]
    # the epoch's folder was uploaded in the background, then the workers' local folders were all removed
    assert Path(result.checkpoint.path).name == "epoch_0001"
    scratch = Path(ray.get(ray.remote(tempfile.gettempdir).remote()))  # the workers' temp folder
    assert not list(scratch.glob(f"{scratch_name(str(tmp_path / 'storage'), 'same-maths')}*"))
    done = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node=2", f"--master-port={free_port()}", "-m", "gnp.train",
         "--epochs", "1", "--batch-size", "32", "--loader-workers", "0", "--threads", "1", "--variant", "gnp",
         "--alpha", "0.5", "--out", str(tmp_path / "torchrun")],
        capture_output=True, text=True, env={**os.environ, "RAY_ADDRESS": ""},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = checkpoint.load(tmp_path / "torchrun" / checkpoint.FILENAME)["model"]
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), name


def run_grid(tmp_path, *extra):
    """A grid on the test cluster, two trials at once (half a CPU per worker), as the demo runs."""
    args = ["--recipe", "digits", "--batch-size", "32", "--loader-workers", "0", "--workers", "2",
            "--cpus-per-worker", "0.49", "--results", str(tmp_path / "results"), *extra]
    return grid.main(args)


def test_a_grid_writes_one_file_per_trial_grows_by_new_seeds_and_a_rerun_adds_nothing(cluster, tmp_path):
    base = ["--alpha", "0,0.8", "--epochs", "2", "--experiment", "g"]
    assert run_grid(tmp_path, "--seeds", "0", *base) == 0
    folder = tmp_path / "results" / "g"
    first = {f.name: f.stat().st_mtime_ns for f in folder.glob("*.parquet")}
    assert len(first) == 2
    assert run_grid(tmp_path, "--seeds", "0,1", *base) == 0  # one more seed: two new trials, none rerun
    files = sorted(folder.glob("*.parquet"))
    assert len(files) == 4 and all(first[f.name] == f.stat().st_mtime_ns for f in files if f.name in first)
    assert all(pq.read_schema(f).remove_metadata() == RESULT_SCHEMA for f in files)
    rows = parquet_rows(folder)
    assert len(rows) == 4 * 2 and {(r["trial_key"], r["epoch"]) for r in rows}.__len__() == 8
    assert {(r["variant"], r["alpha"], r["seed"]) for r in rows} == {
        ("standard", 0.0, 0), ("standard", 0.0, 1), ("gnp", 0.8, 0), ("gnp", 0.8, 1)}
    assert all(r["status"] == "ok" and r["workers"] == 2 for r in rows)
    assert {r["code_version"] for r in rows} == {res.code_version()}
    assert {r["seeds_planned"] for r in rows if r["seed"] == 1} == {2}
    recorded = json.loads((folder / "_grid.json").read_text())
    assert recorded["workers"] == 2 and recorded["axes"]["seed"] == [0, 1]
    assert recorded["dataset"] == dataset_identity(cluster["digits"])
    stamps = {f.name: f.stat().st_mtime_ns for f in files}

    assert run_grid(tmp_path, "--seeds", "0,1", *base) == 0
    assert {f.name: f.stat().st_mtime_ns for f in folder.glob("*.parquet")} == stamps
    assert len(parquet_rows(folder)) == 8


def test_a_cifar_grid_sweeping_two_options_reaches_the_table_and_the_rows(cluster, tmp_path, capsys):
    """The CIFAR path in Ray workers (the embedded digits in CIFAR's format, tensors, no loader processes),
    sweeping the augmentation and the mix: the printed table and the pandas rows tell all four apart."""
    import analysis

    assert grid.main(["--recipe", "digits-cifar", "--batch-size", "32", "--workers", "2", "--cpus-per-worker",
                      "0.49", "--results", str(tmp_path / "results"), "--seeds", "0", "--alpha", "0.8",
                      "--epochs", "1", "--augmentation", "basic,cutout", "--mix", "paper,official",
                      "--experiment", "swept"]) == 0
    printed = capsys.readouterr().out
    assert "| Model | Data | mix | Scheme |" in printed
    for augmentation in ("basic", "cutout"):
        assert f"| smallcnn | digits-cifar ({augmentation}) | official | GNP | 0.8 | 0.05 |" in printed
    assert printed.count("| paper | GNP | 0.8 | 0.05 |") == 2
    df = analysis.load_results(tmp_path / "results" / "swept")
    assert sorted(set(zip(df["augmentation"], df["mix"], strict=True))) == [
        ("basic", "official"), ("basic", "paper"), ("cutout", "official"), ("cutout", "paper")]
    assert (df["status"] == "ok").all() and (df["val_images"] == 360).all()


def test_rows_record_the_dataset_and_the_trial_time_and_another_dataset_or_workers_is_refused(
        cluster, tmp_path, capsys):
    base = ["--seeds", "0", "--alpha", "0.8", "--epochs", "1", "--experiment", "d"]
    assert run_grid(tmp_path, *base) == 0
    (row,) = parquet_rows(tmp_path / "results" / "d")
    identity = dataset_identity(cluster["digits"])
    assert json.loads((tmp_path / "results" / "d" / "_grid.json").read_text())["dataset"] == identity
    # The rows carry both once the schema has their columns (the writer keeps the columns it knows).
    assert row.get("dataset_id", identity["fingerprint"]) == identity["fingerprint"]
    assert row.get("trial_wall_s", 1e9) > row["wall_s"] > 0
    capsys.readouterr()
    other = tmp_path / "digits-copy"
    shutil.copytree(cluster["digits"], other)
    next((other / "val").glob("*/*.JPEG")).unlink()  # the same layout, one image fewer
    for extra, named in ((["--data", str(other)], "--data holds another dataset"),
                         (["--workers", "1"], "--workers was 2, now 1")):
        assert run_grid(tmp_path, *base, *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and named in err[0], err
    assert len(parquet_rows(tmp_path / "results" / "d")) == 1


def test_a_diverging_trial_is_recorded_and_the_grid_goes_on(cluster, tmp_path):
    # r = 1e20 makes θ' overflow BatchNorm's variance in float32: a NaN loss in the first epoch for α ≠ 0,
    # while α = 0 (standard) ignores r.
    assert run_grid(tmp_path, "--seeds", "0", "--alpha", "-0.5,0", "--r", "1e20", "--epochs", "2",
                    "--experiment", "d") == 0
    rows = parquet_rows(tmp_path / "results" / "d")
    diverged = [r for r in rows if r["alpha"] == -0.5]
    assert [r["status"] for r in diverged] == ["diverged"]
    assert [r["status"] for r in rows if r["alpha"] == 0] == ["ok", "ok"]


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


KILLED = {  # exact resume with loader processes; and the ViT recipe's AdamW, warm-up, dropout and drop path
    "digits": lambda: digits(epochs=3, variant="gnp", alpha=0.5, loader_workers=1),
    "digits-cifar-vit": lambda: get_recipe("digits-cifar-vit", epochs=3, warmup_epochs=1, drop_path=0.1,
                                           threads=1, out="unused"),
}


@pytest.mark.parametrize("recipe", list(KILLED))
def test_a_killed_worker_resumes_from_its_checkpoint_with_the_same_result(cluster, tmp_path, recipe):
    cfg = KILLED[recipe]()
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


def test_a_trials_clock_adds_each_drivers_time_up_to_its_last_report(tmp_path):
    first = TrialClock(str(tmp_path / "storage"), "key")
    assert first.earlier == 0
    time.sleep(0.3)
    first.after_report(None, [{}], None)  # what Train's controller calls at each epoch's report
    saved = json.loads((tmp_path / "storage" / "key" / TrialClock.FILENAME).read_text())["trial_wall_s"]
    assert saved >= 0.3
    time.sleep(0.2)  # after the last report: lost when this driver is interrupted
    second = TrialClock(str(tmp_path / "storage"), "key")  # the next driver, resuming the trial
    assert second.earlier == saved
    time.sleep(0.1)
    assert saved + 0.1 <= second.elapsed() < first.elapsed()


def listening(pids) -> set[str]:
    """The local addresses the processes `pids` listen on (TCP, from /proc)."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                address = fields[1].split(":")[0]
                loopback = {"0100007F": "127.0.0.1", "0" * 24 + "01000000": "::1",
                            "0" * 16 + "FFFF0000" + "0100007F": "127.0.0.1"}  # the last: ::ffff:127.0.0.1
                found.add(loopback.get(address, address))
    return found


def test_ctrl_c_exits_130_records_no_failure_and_a_rerun_finishes_on_a_quiet_local_cluster(cluster, tmp_path):
    # No RAY_ADDRESS: the grid starts its own local cluster, as `make imagenet` does.
    command = [sys.executable, "-m", "jobs.grid", "--recipe", "digits", "--seeds", "0,1,2", "--alpha", "0.8",
               "--epochs", "2", "--batch-size", "32", "--loader-workers", "1", "--workers", "2",
               "--experiment", "i", "--results", str(tmp_path / "results")]
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")  # the grid binds its cluster to loopback by itself
    folder = tmp_path / "results" / "i"
    out = tmp_path / "out.txt"
    with out.open("w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.PIPE, text=True, env=env)
        try:
            deadline = time.monotonic() + 240
            while not list(folder.glob("*.parquet")) and time.monotonic() < deadline:
                time.sleep(0.5)
            first = sorted(folder.glob("*.parquet"))
            assert first, "no trial finished before the deadline"
            # ... and the next one has reported an epoch: the rerun resumes it
            clocks = tmp_path / "results" / "_ray" / "i-train"
            while not [c for c in clocks.glob(f"*/{TrialClock.FILENAME}") if c.parent.name != first[0].stem] \
                    and time.monotonic() < deadline:
                time.sleep(0.5)
            # GCS, raylet, workers, dashboard, gloo: all on loopback
            assert listening(tree([driver.pid])) <= {"127.0.0.1", "::1"}
        finally:
            driver.send_signal(signal.SIGINT)  # Ctrl-C mid-grid (its local cluster ends with it)
            _, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted; rerun the same command to resume i")
    assert "dashboard http://127.0.0.1:" in out.read_text()
    stamp = first[0].stat().st_mtime_ns
    assert len(list(folder.glob("*.parquet"))) < 3, "the grid finished before it was interrupted"
    assert all(r["status"] == "ok" for r in parquet_rows(folder))  # the interrupted trial is not "failed"
    done = {f.stem for f in folder.glob("*.parquet")}
    saved = {c.parent.name: json.loads(c.read_text())["trial_wall_s"]
             for c in clocks.glob(f"*/{TrialClock.FILENAME}") if c.parent.name not in done}
    assert saved, "the interrupted trial had reported no epoch"

    subprocess.run(command, check=True, capture_output=True, timeout=600, env=env)
    rows = parquet_rows(folder)
    assert sorted((r["seed"], r["epoch"]) for r in rows) == [(s, e) for s in (0, 1, 2) for e in (1, 2)]
    assert first[0].stat().st_mtime_ns == stamp  # the finished trial was not rerun
    for key, before in saved.items():  # a resumed trial's time counts the interrupted driver's too
        resumed = [r for r in rows if r["trial_key"] == key]
        assert resumed[0]["trial_wall_s"] > before + resumed[-1]["wall_s"]


def test_a_grid_submitted_through_the_jobs_api_writes_its_rows_with_the_submitters_version(cluster, tmp_path):
    results = tmp_path / "results"
    job_id, status = submit(cluster["dashboard"], [
        "--recipe", "digits", "--seeds", "0", "--alpha", "0.8", "--epochs", "2", "--batch-size", "32",
        "--loader-workers", "0", "--workers", "2", "--experiment", "job", "--results", str(results)],
        python=sys.executable, timeout_s=300)
    assert status == "SUCCEEDED"
    rows = parquet_rows(results / "job")
    assert [(r["alpha"], r["epoch"], r["status"]) for r in rows] == [(0.8, 1, "ok"), (0.8, 2, "ok")]
    assert rows[0]["code_version"] == res.code_version()  # computed here: the job has no .git
    # the workers' console: no line per report or checkpoint (Ray Train's INFO records stay in its files)
    logs = JobSubmissionClient(cluster["dashboard"]).get_job_logs(job_id)
    assert "Started training worker group" in logs  # the controller's INFO lines still show
    assert "Reporting training result" not in logs and "Checkpoint successfully created" not in logs


@pytest.mark.parametrize(
    "extra,message",
    [(["--workers", "8"], "the largest node has 2"), (["--gpus-per-worker", "1"], "GPU"),
     (["--cpus-per-worker", "1.5"], "the largest node has 2")],
)
def test_grid_bad_input_is_one_line_before_anything_starts(cluster, tmp_path, capsys, extra, message):
    assert run_grid(tmp_path, "--seeds", "0", "--experiment", "bad", *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not list((tmp_path / "results").glob("**/*.parquet"))
    assert not (tmp_path / "results" / "bad" / "_grid.json").exists()  # a refused grid reserves no name


# ---- two nodes on one machine: where things run, and a lost node ------------------------------------------


def ray_start(*args, env):
    started = subprocess.run([str(BIN / "ray"), "start", "--node-ip-address=127.0.0.1", "--num-gpus=0",
                              "--disable-usage-stats", *args],
                             env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]


def ray_list(kind: str, dashboard: int, env) -> list[dict]:
    """The alive nodes or actors of another cluster (this process's own ray.init would answer instead)."""
    listed = subprocess.run([str(BIN / "ray"), "list", kind, f"--address=http://127.0.0.1:{dashboard}",
                             "--filter=state=ALIVE", "--format=json", "--limit=10000"],
                            env=env, capture_output=True, text=True, check=True, timeout=60)
    return json.loads(listed.stdout)


def test_two_nodes_drivers_on_the_head_a_lost_node_resumed_and_a_smoke_run_of_another_grid(cluster, tmp_path):
    temp = Path(tempfile.mkdtemp(prefix="gnp-ray-", dir="/tmp"))  # short: Ray's socket paths have a limit
    port, dashboard = free_port(), free_port()
    # Without the loopback-only switch: a head started with it refuses a second node.
    env = {k: v for k, v in cluster["env"].items()
           if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    # The head notices a lost node within seconds (Ray's default waits about a minute).
    env.update(RAY_health_check_period_ms="1000", RAY_health_check_failure_threshold="3",
               RAY_health_check_timeout_ms="1000", RAY_health_check_initial_delay_ms="1000")
    ray_start("--head", "--num-cpus=0", '--resources={"trial_driver": 100}', f"--port={port}",
              f"--ray-client-server-port={free_port()}",
              "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--temp-dir={temp}", env=env)
    nodes = [free_port(), free_port()]  # each worker node's raylet port: what names its processes
    driver = None
    try:
        ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--node-manager-port={nodes[0]}", env=env)
        results = tmp_path / "results"
        base = [sys.executable, "-m", "jobs.grid", "--recipe", "digits", "--seeds", "0,1", "--epochs", "3",
                "--batch-size", "32", "--loader-workers", "1", "--workers", "2", "--results", str(results)]
        on_cluster = {**env, "RAY_ADDRESS": f"127.0.0.1:{port}", "PYTHONPATH": os.pathsep.join(sys.path)}
        driver = subprocess.Popen([*base, "--alpha", "0.8", "--experiment", "two"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True, env=on_cluster)
        deadline = time.monotonic() + 240
        checkpoints = results / "_ray" / "two-train"
        while not (done := list(checkpoints.glob("*/epoch_0001"))) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert done, "no epoch checkpoint before the deadline"
        killed_key = done[0].parent.name
        (head,) = [n["node_id"] for n in ray_list("nodes", dashboard, env) if n["is_head_node"]]
        placed = {(a["class_name"], a["node_id"] == head) for a in ray_list("actors", dashboard, env)}
        # Only training workers on the worker node; the Train controllers (which Train V2 attaches to their
        # trial driver's node) and every other actor on the head.
        assert {name for name, head in placed if not head} == {"RayTrainWorker"}, placed
        assert ("TrainController", True) in placed and ("RayTrainWorker", True) not in placed, placed
        stop(f"--node_manager_port={nodes[0]}", sig=signal.SIGKILL)  # the node is lost: raylet and workers
        ray_start(f"--address=127.0.0.1:{port}", "--num-cpus=2", f"--node-manager-port={nodes[1]}", env=env)
        _, err = driver.communicate(timeout=400)
        assert driver.returncode == 0, err[-3000:]
        # The smoke run of another grid on this cluster: drivers on the head, workers on the new node.
        smoke = subprocess.run([*base, "--alpha", "0,0.8,1", "--experiment", "g", "--smoke", "3"],
                               capture_output=True, text=True, env=on_cluster, timeout=300)
        assert smoke.returncode == 0, smoke.stderr[-3000:]
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        stop(str(temp), f":{port} ", *(f"--node_manager_port={n}" for n in nodes))
        shutil.rmtree(temp, ignore_errors=True)

    rows = parquet_rows(results / "two")
    assert sorted((r["seed"], r["epoch"]) for r in rows) == [(s, e) for s in (0, 1) for e in (1, 2, 3)]
    killed = [r for r in rows if r["trial_key"] == killed_key]
    cfg = digits(epochs=3, variant="gnp", alpha=0.8, seed=killed[0]["seed"], loader_workers=1)
    clean = without_timing(rows_of(fit_trial(cfg, PLACEMENT, storage=str(tmp_path / "s"), name="clean")))
    shared = clean[0].keys() & killed[0].keys()  # the metrics the schema keeps
    assert [{k: r[k] for k in shared} for r in without_timing(killed)] == [{k: r[k] for k in shared}
                                                                            for r in clean]
    assert {"train_loss", "test_top1_err", "grad_norm"} <= shared

    # --smoke 3: one trial of one pass and one of two passes, 3 steps of one epoch each, under
    # <experiment>-smoke-<time>; the grid itself does not run, and its plan is priced at the smoke's rates.
    (folder,) = results.glob("g-smoke-*")
    rows = parquet_rows(folder)
    assert sorted((r["variant"], r["epoch"], r["status"]) for r in rows) == [("gnp", 1, "ok"), ("standard", 1, "ok")]
    assert all(json.loads(r["config"])["max_steps_per_epoch"] == 3 and r["workers"] == 2 for r in rows)
    assert not (results / "g").exists()
    assert "GO: every smoke trial" in smoke.stdout and smoke.stdout.count(" s/step, ") == 2
    assert "img/s per device" in smoke.stdout
    plan = smoke.stdout.split("== the grid at the rates measured:")[1]
    assert "6 trials, 6 to run" in plan and "results" in plan


def test_the_greedy_protocol_stopped_between_stages_resumes_and_picks_by_its_rule(cluster, tmp_path, monkeypatch):
    """Stages 1-2 run, Ctrl-C before stage 3; the rerun runs stage 3 only (stage 4 at seed 0 is the search
    trials it shares), and each pick is the cell of lowest mean held-out error, never the test error."""
    from analysis import load_results
    from analysis.summary import summarize_trials, trial_scores
    from jobs import protocol

    argv = ["--recipe", "digits-cifar", "--protocol", "greedy", "--search-r", "0.02,0.1", "--search-alpha", "0.3,0.7",
            "--seeds", "0", "--epochs", "2", "--batch-size", "64", "--workers", "1", "--holdout-images", "300",
            "--select", "holdout", "--loader-workers", "0", "--results", str(tmp_path), "--experiment", "greedy"]
    fitted = []
    real_fit = grid.fit_grid

    def fit(todo, **kwargs):
        fitted.append([res.trial_key(c) for c in todo])
        return real_fit(todo, **kwargs)

    monkeypatch.setattr(grid, "fit_grid", fit)
    real_stage_args = protocol.stage_args

    def interrupted_before_stage_3(args, name, axes, experiment):
        if name == "alpha":
            raise KeyboardInterrupt
        return real_stage_args(args, name, axes, experiment)

    with monkeypatch.context() as patch:
        patch.setattr(protocol, "stage_args", interrupted_before_stage_3)
        with pytest.raises(KeyboardInterrupt):
            grid.main(argv)
    record = json.loads((tmp_path / "greedy" / "_protocol.json").read_text())
    assert list(record["picks"]) == ["r"] and len(fitted) == 2
    first = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "greedy").glob("*.parquet")}
    assert len(first) == 3  # standard, SAM at r = 0.02 and at r = 0.1, seed 0

    assert grid.main(argv) == 0
    assert len(fitted) == 3 and not set(fitted[2]) & {k[:-len(".parquet")] for k in first}
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "greedy").glob("*.parquet") if f.name in first} == first
    record = json.loads((tmp_path / "greedy" / "_protocol.json").read_text())
    df = load_results(tmp_path / "greedy")
    assert df["holdout_images"].eq(300).all() and df["holdout_top1_err"].notna().all()
    for stage, alphas in (("r", [1.0]), ("alpha", [0.3, 0.7])):
        rows = df[df["alpha"].isin(alphas) & (df["seed"] == 0) & (df["r"].isin([0.02, 0.1]) if stage == "r"
                                                                  else df["r"] == record["picks"]["r"]["value"])]
        cells = summarize_trials(trial_scores(rows, "holdout"))
        best = cells.sort_values("selection_err_mean").iloc[0][stage]
        assert record["picks"][stage]["value"] == best, (stage, cells)
    r, alpha = record["picks"]["r"]["value"], record["picks"]["alpha"]["value"]
    cells = {(round(a, 3), round(x, 3)) for a, x in zip(df["alpha"], df["r"], strict=True)}
    assert {(0.0, 0.0), (1.0, r), (alpha, r)} <= cells  # stage 4's cells, every one a search trial already
    assert df["trial_key"].nunique() == 1 + 2 + 2
    assert record["select"] == "holdout" and "never looked at" in record["rule"]


def test_asha_stops_a_search_trial_which_is_never_picked_and_its_train_run_ends(cluster, tmp_path, monkeypatch):
    """--asha: a stopped search trial is written as `stopped` with the epochs it ran, never averaged, its
    Train run torn down with it; a cell all of whose trials stopped is never picked; the final stage runs
    to the end. Tune's ASHA is replaced by one that stops r = 0.1 at its first epoch, so which trial stops
    does not hang on the noise of 2-epoch runs (a final stage continuing a stopped trial: tests/test_asha.py)."""
    from ray.tune import schedulers
    from ray.util.state import list_actors

    from analysis import format_table, load_results
    from analysis.summary import summarize_trials, trial_scores

    made = []

    class StopsR01(schedulers.ASHAScheduler):
        def __init__(self, **kwargs):
            made.append(kwargs)
            super().__init__(**kwargs)

        @staticmethod
        def chosen(trial) -> bool:
            return trial.config["train"]["r"] == 0.1

        def on_trial_result(self, tune_controller, trial, result):
            return self.STOP if self.chosen(trial) else super().on_trial_result(tune_controller, trial, result)

        def on_trial_complete(self, tune_controller, trial, result):
            if not self.chosen(trial):  # ASHA's rungs never see it: it could not stop the others
                super().on_trial_complete(tune_controller, trial, result)

    def training_actors() -> set:
        return {a.actor_id for a in list_actors(filters=[("state", "=", "ALIVE")])
                if a.class_name in ("TrainController", "RayTrainWorker")}

    earlier = training_actors()  # an earlier test's, if any: not this one's
    monkeypatch.setattr(schedulers, "ASHAScheduler", StopsR01)
    argv = ["--recipe", "digits-cifar", "--protocol", "greedy", "--search-r", "0.02,0.1", "--search-alpha", "0.5",
            "--search-seeds", "0", "--seeds", "0", "--epochs", "2", "--batch-size", "64", "--workers", "1",
            "--loader-workers", "0", "--asha", "--asha-grace-epochs", "1", "--results", str(tmp_path),
            "--experiment", "asha"]
    assert grid.main(argv) == 0
    assert [m["grace_period"] for m in made] == [1, 1] and made[0]["metric"] == "test_top1_err"  # stages 2, 3
    record = json.loads((tmp_path / "asha" / "_protocol.json").read_text())
    assert record["picks"]["r"]["value"] == 0.02 and record["picks"]["r"]["errors"]["0.1"] == "stopped"
    assert record["picks"]["r"]["asha"] == {"metric": "test_top1_err", "grace_period": 1, "reduction_factor": 3}
    trials = trial_scores(load_results(tmp_path / "asha")).set_index(["alpha", "r"]).sort_index()
    assert trials.loc[(1.0, 0.1), "status"] == "stopped"
    assert trials.loc[(1.0, 0.1), "scored_epoch"] == 1  # the rows up to the epoch ASHA stopped at
    for alpha in (0.0, 0.5, 1.0):  # every final-stage trial ran to the end (ASHA stopped the others at max_t)
        rows = load_results(tmp_path / "asha").query(f"alpha == {alpha} and r in [0, 0.02]")
        assert sorted(rows["epoch"]) == [1, 2] and set(rows["status"]) == {"ok"}, alpha
    cell = summarize_trials(trials.reset_index()).query("alpha == 1 and r == 0.1").iloc[0]
    assert (cell["n"], cell["stopped"]) == (0, 1)
    table = format_table(load_results(tmp_path / "asha"), kind="cells")
    assert "1 stopped" in table and "ASHA ended early" in table
    deadline = time.monotonic() + 60  # an actor's death reaches the state API after a moment
    while training_actors() - earlier and time.monotonic() < deadline:
        time.sleep(1)
    assert not training_actors() - earlier  # the stopped trial is not still training
    # A rerun has nothing left to run: the stopped search trial counts as done under --asha.
    before = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "asha").glob("*.parquet")}
    assert grid.main(argv) == 0
    assert {f.name: f.stat().st_mtime_ns for f in (tmp_path / "asha").glob("*.parquet")} == before
