"""`make kuberay-preflight` against a stand-in kubectl: the GPU nodes' driver and NVMe kubelet storage, the
RWX StorageClass and its CSI driver, and the workers' IRSA role (cluster/preflight.py). Offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cluster_files import CLUSTER, ROOT, load

preflight = load("preflight")
ROLE = "arn:aws:iam::123456789012:role/gnp-ray-shards"


def node(name="gpu-1", driver="580.65.06", storage="7500Gi", kind="p4d.24xlarge") -> dict:
    labels = {"node.kubernetes.io/instance-type": kind}
    if driver:
        labels["nvidia.com/cuda.driver-version.full"] = driver
    return {"metadata": {"name": name, "labels": labels},
            "status": {"capacity": {"nvidia.com/gpu": "8", "ephemeral-storage": storage}}}


EFS_CLASS = {"metadata": {"name": "efs-sc"}, "provisioner": "efs.csi.aws.com",
             "parameters": {"provisioningMode": "efs-ap", "fileSystemId": "fs-0123456789abcdef0"}}
GOOD = {"nodes": {"items": [node(), {"metadata": {"name": "cpu"}, "status": {"capacity": {"cpu": "8"}}}]},
        "storageclass": EFS_CLASS, "csidriver": {"metadata": {"name": "efs.csi.aws.com"}}}


def prereqs(role=ROLE) -> list[dict]:
    text = (CLUSTER / "kuberay-prereqs.yaml").read_text().replace("__SHARDS_ROLE__", role)
    text = text.replace("    eks.amazonaws.com/role-arn: pod-identity\n", "")  # as make renders pod-identity
    return [d for d in yaml.safe_load_all(text) if d]


def fake_run(world: dict):
    def run(argv):
        if argv[:2] == ["kubectl", "get"] and argv[2] in world and world[argv[2]] is not None:
            return json.dumps(world[argv[2]])
        if argv[:3] == ["aws", "eks", "list-pod-identity-associations"]:
            return json.dumps({"associations": world.get("associations", [])})
        return "" if argv[:3] == ["kubectl", "config", "view"] else None
    return run


def found(world=GOOD, role=ROLE, eks="") -> list[str]:
    problems, _ = preflight.problems(prereqs(role), "13.0", eks, run=fake_run(world))
    return problems


def test_a_ready_cluster_passes():
    assert found() == []


@pytest.mark.parametrize("change, words", [
    ({"nodes": {"items": [node(driver="570.172.08")]}}, ["gpu-1", "570.172.08", ">= 580"]),
    ({"nodes": {"items": [node(storage="104845292Ki")]}}, ["gpu-1", "kubelet storage", "RAID0"]),
    ({"storageclass": None}, ["efs-sc", "does not exist", "EFS CSI"]),
    ({"csidriver": None}, ["efs.csi.aws.com", "not installed"]),
    ({"storageclass": {**EFS_CLASS, "parameters": {}}}, ["fileSystemId"]),
    ({"storageclass": {"metadata": {"name": "efs-sc"}, "provisioner": "ebs.csi.aws.com"}}, ["ReadWriteOnce"]),
])
def test_each_silent_prerequisite_is_one_line(change, words):
    (line,) = found({**GOOD, **change})
    for word in words:
        assert word in line
    assert "\n" not in line


def test_nodes_not_up_or_unlabelled_are_notes_not_failures():
    for nodes in ([], [node(driver=None)]):
        problems, notes = preflight.problems(prereqs(), "13.0", run=fake_run({**GOOD, "nodes": {"items": nodes}}))
        assert problems == [] and len(notes) == 1 and "stager" in notes[0]
    assert preflight.node_driver({"nvidia.com/cuda.driver.major": "580", "nvidia.com/cuda.driver.minor": "65",
                                  "nvidia.com/cuda.driver.rev": "06"}) == "580.65.6"


def test_the_workers_need_an_irsa_role_or_a_pod_identity_association():
    (line,) = found(role="pod-identity")  # rendered without the annotation, and no EKS_CLUSTER to look in
    assert "gnp-ray" in line and "EKS_CLUSTER" in line
    (line,) = found(role="not-an-arn")
    assert "not a role ARN" in line
    (line,) = found(role="pod-identity", eks="gnp")
    assert "no EKS Pod Identity association" in line
    assert found({**GOOD, "associations": [{"associationId": "a-1"}]}, role="pod-identity", eks="gnp") == []


def test_quantities():
    assert preflight.quantity("100Gi") == 100 << 30 and preflight.quantity("7681470196Ki") > preflight.MIN_NVME
    assert preflight.quantity("107361579008") < preflight.MIN_NVME


KUBECTL = """#!{python}
import json, os, sys
world = json.load(open(os.environ["FAKE_WORLD"]))
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(" ".join(args) + "\\n")
if args[:1] == ["get"] and world.get(args[1]) is not None:
    print(json.dumps(world[args[1]]))
elif args[:1] == ["get"]:
    sys.exit(1)
"""


def preflight_run(tmp_path: Path, world: dict, *extra: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    bin_ = tmp_path / "bin"
    bin_.mkdir(exist_ok=True)
    (bin_ / "kubectl").write_text(KUBECTL.format(python=sys.executable))
    (bin_ / "kubectl").chmod(0o755)
    (tmp_path / "world.json").write_text(json.dumps(world))
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    env.update(PATH=f"{bin_}:{env['PATH']}", FAKE_WORLD=str(tmp_path / "world.json"), FAKE_LOG=str(tmp_path / "log"))
    build = [f"CLUSTER_BUILD={tmp_path / 'build'}", "BUCKET=b", "REGISTRY=registry.example/team",
             "COMMIT=0123456789ab", f"PY={sys.executable}"]
    run = lambda *a: subprocess.run(["make", "--no-print-directory", "-s", "-f", "cluster/cluster.mk", *a, *build],  # noqa: E731
                                    cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert run("kuberay-render").returncode == 0
    return run("kuberay-preflight", *extra)


def test_make_kuberay_preflight_dry_run(tmp_path):
    """The whole target with a stand-in kubectl: a ready cluster reaches the server-side dry run; an old
    driver stops it first, with one line; no SHARDS_ROLE is refused before anything."""
    out = preflight_run(tmp_path, GOOD, f"SHARDS_ROLE={ROLE}")
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "log").read_text()
    assert "apply --dry-run=server --validate=strict" in log
    rendered = yaml.safe_load_all((tmp_path / "build" / "kuberay-prereqs.yaml").read_text())
    account = next(d for d in rendered if d and d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"] == {"eks.amazonaws.com/role-arn": ROLE}
    (tmp_path / "log").unlink()
    out = preflight_run(tmp_path, {**GOOD, "nodes": {"items": [node(driver="570.172.08")]}}, f"SHARDS_ROLE={ROLE}")
    assert out.returncode != 0
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("preflight:")]
    assert ">= 580" in line and "dry-run" not in (tmp_path / "log").read_text()
    out = preflight_run(tmp_path, GOOD)
    assert out.returncode != 0 and "set SHARDS_ROLE=" in out.stderr
