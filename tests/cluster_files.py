"""What the cluster tests share: the cluster/ folder, its scripts loaded as modules (they are not a package),
the variables a render needs, and `make -f cluster/cluster.mk` run as a user runs it."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
COMMIT = "0123456789ab"
MAKE_FILL = ["BUCKET=test-bucket", "CLUSTER_AMI=ami-0123456789abcdef0", "REGISTRY=registry.example/team",
             f"COMMIT={COMMIT}", "SSH_CIDR=203.0.113.7/32", f"PY={sys.executable}"]


def load(name: str):
    """cluster/<name>.py as the module cluster_<name>."""
    spec = importlib.util.spec_from_file_location(f"cluster_{name}", CLUSTER / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_make(*args: str, env: dict | None = None, ok: bool = True, timeout: int = 60) -> subprocess.CompletedProcess:
    """`make -f cluster/cluster.mk ARGS` from the project's root, outside any calling make; asserts it
    succeeded (or, with ok=False, failed)."""
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    base = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-s", "-f", "cluster/cluster.mk", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout, env={**base, **(env or {})})
    assert (out.returncode == 0) == ok, out.stdout + out.stderr
    return out
