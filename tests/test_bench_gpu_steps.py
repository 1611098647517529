"""The GPU run's steps (bench/gpu_steps.py) on a CPU: GNP_GPU_TIER_DEVICE=cpu, gloo for NCCL, a tiny
network and a few steps. Each step writes a line per figure as it goes, keeps to its cap, ends with what it
has (exit 124) when `timeout`'s SIGTERM comes, and leaves only its own two files."""

import json
import os
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
CPU = {**os.environ, "GNP_GPU_TIER_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
FAST = ["--points", "digits@8", "--warmup", "1", "--steps", "4", "--chunk", "2"]


def start(step, out, *options, env=CPU):
    return subprocess.Popen([sys.executable, "bench/gpu_steps.py", step, "--out", str(out), *options], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith('{"step"')]


def wait_for(path: Path, kind: str, proc, timeout=180) -> dict:
    """The first line of `kind` in `path`, read while the step still runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [r for r in lines(path) if r["kind"] == kind] if path.exists() else []
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()[0]
        time.sleep(0.2)
    raise AssertionError(f"no {kind} line in {path} within {timeout} s")


def test_step_a_writes_each_scheme_as_it_is_measured_through_ddp(tmp_path):
    proc = start("A", tmp_path, *FAST)
    first = wait_for(tmp_path / "A.jsonl", "step", proc)
    assert proc.poll() is None  # on disk while the other schemes still run
    assert first["scheme"] == "standard"
    assert proc.wait(timeout=300) == 0, proc.communicate()[0]
    records = lines(tmp_path / "A.jsonl")
    assert records[0]["kind"] == "preflight" and records[0]["device_type"] == "cpu"
    assert {"torch", "torchvision", "triton", "timm", "c_compiler", "nvidia_smi"} <= set(records[0])
    steps = {r["scheme"]: r for r in records if r["kind"] == "step"}
    assert list(steps) == ["standard", "gnp", "sam", "amortized_1/4"]
    for r in steps.values():
        assert r["ddp"] and r["backend"] == "gloo" and r["classes"] == 10 and r["timed_steps"] == 4, r
        assert r["cut"] is None and r["img_s"] > 0, r
        assert r["allreduces_per_step"] == 1.0, r  # the comm hook ran; GNP all-reduces as often as standard
    assert steps["amortized_1/4"]["two_pass_steps"] == 1  # global steps 2..5: step 4 is its two-pass step
    assert steps["gnp"]["ratio_to_standard"] == steps["gnp"]["step_s"] / steps["standard"]["step_s"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.jsonl", "A.log"]
    assert "amortized_1/4" in (tmp_path / "A.log").read_text()


def test_sigterm_ends_a_step_with_the_figures_so_far(tmp_path):
    proc = start("A", tmp_path, *FAST[:4], "--steps", "400", "--chunk", "2")
    wait_for(tmp_path / "A.jsonl", "start", proc)
    time.sleep(5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 124
    records = lines(tmp_path / "A.jsonl")
    assert [r["kind"] for r in records][-3:] == ["start", "step", "cut"]
    assert records[-2]["cut"] == "Cut: SIGTERM" and records[-2]["timed_steps"] < 400  # the steps timed so far


def test_a_step_starts_nothing_it_cannot_finish_within_its_cap(tmp_path):
    began = time.monotonic()
    proc = start("A", tmp_path, *FAST, "--cap", "15")  # the margin takes it all
    assert proc.wait(timeout=120) == 0
    skipped = [r for r in lines(tmp_path / "A.jsonl") if r["kind"] == "skipped"]
    assert [r["scheme"] for r in skipped] == ["standard", "gnp", "sam", "amortized_1/4"]
    assert time.monotonic() - began < 90  # starting Python and torch on a loaded CI machine, nothing timed


def test_a_scheme_stops_at_the_deadline_with_the_steps_it_timed():
    from grid_step import point_config, time_scheme

    results = []
    cfg = point_config("digits", 8, torch.device("cpu"), variant="gnp", alpha=0.8)
    time_scheme(cfg, torch.device("cpu"), ddp=False, warmup=0, steps=8, chunk=2, deadline=time.perf_counter(),
                report=results.append)
    (result,) = results
    assert result["cut"] == "deadline" and result["timed_steps"] == 2 and not result["ddp"]


def test_step_b_runs_the_tier_verbose_with_durations_and_junit(tmp_path):
    proc = start("B", tmp_path, "--", "-k", "float32_matches and standard")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    log = (tmp_path / "B.log").read_text()
    assert "test_each_variant_step_in_float32_matches_the_float64_formula[standard-0.0-paper-0.0] PASSED" in log
    assert "slowest durations" in log
    cases = ET.parse(tmp_path / "B.xml").getroot().iter("testcase")
    assert len(list(cases)) == 2
    assert [r["kind"] for r in lines(tmp_path / "B.log")] == ["preflight", "tests"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B.log", "B.xml"]


def test_step_b_at_its_cap_says_which_test_was_running(tmp_path):
    tests = tmp_path / "slow" / "test_slow.py"
    tests.parent.mkdir()
    tests.write_text("import time\nimport pytest\n\n\n@pytest.mark.gpu\ndef test_fast():\n    pass\n\n\n"
                     "@pytest.mark.gpu\ndef test_sleeps():\n    time.sleep(600)\n")
    out = tmp_path / "out"
    began = time.monotonic()
    proc = start("B", out, "--tests", str(tests), "--cap", "35")  # 20 s after the 15 s margin
    output = proc.communicate(timeout=180)[0]
    assert proc.returncode == 124, output
    assert time.monotonic() - began < 35 + 45  # the cap, and room for a loaded machine to stop pytest
    log = (out / "B.log").read_text()
    assert "test_slow.py::test_sleeps" in log and "KeyboardInterrupt" in log
    names = [c.get("name") for c in ET.parse(out / "B.xml").getroot().iter("testcase")]
    assert "test_fast" in names
    assert [r["kind"] for r in lines(out / "B.log")][-2:] == ["tests", "cut"]


def test_step_c_skips_the_compiled_step_past_its_share_then_runs_the_loop(tmp_path):
    proc = start("C", tmp_path, *FAST, "--compile-share", "0", "--loader-workers", "1", "--pipeline-model",
                 "smallcnn", "--pipeline-size", "32", "--pipeline-classes", "3", "--pipeline-batch", "8",
                 "--pipeline-steps", "2", "--pipeline-warmup", "1", "--pipeline-waves", "1",
                 "--pipeline-decode", "loader")
    output = proc.communicate(timeout=400)[0]
    assert proc.returncode == 0, output
    records = lines(tmp_path / "C.jsonl")
    kinds = [r["kind"] for r in records]
    assert kinds.count("skipped") == 4 and all(r["scheme"] for r in records if r["kind"] == "skipped")
    assert kinds[-6:] == ["data", "loader", "loader", "cores_per_gpu", "train", "train"], kinds
    trains = records[-2:]
    assert [r["variant"] for r in trains] == ["standard", "gnp"]
    assert all(r["model"] == "smallcnn" and r["batch"] == 8 and r["end_to_end_img_s"] > 0 for r in trains), trains
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C.jsonl", "C.log"]


def test_step_d_packs_trials_through_the_grid_step(tmp_path):
    proc = start("D", tmp_path, "--packing-recipe", "digits-cifar", "--packing-batch", "8", "--packing-steps",
                 "2", "--trials", "1")
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output
    (packed,) = [r for r in lines(tmp_path / "D.jsonl") if r["kind"] == "packing"]
    assert packed["trials"] == 1 and packed["summed_img_s"] > 0 and packed["recipe"] == "digits-cifar"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run on a machine without a GPU")
def test_gpu_sh_without_a_gpu_stops_after_the_preflight(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "GNP_GPU_TIER_DEVICE"}
    done = subprocess.run(["bash", "bench/gpu.sh", str(tmp_path)], cwd=REPO, env={**env, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "step A: exit 2" in done.stdout, done.stdout + done.stderr
    (preflight,) = lines(tmp_path / "A.jsonl")
    assert preflight["kind"] == "preflight" and preflight["cuda_available"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["A.jsonl", "A.log"]
