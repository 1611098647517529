"""Choosing the GPU nodes (cluster/render.py through `make cluster-render`), the NVIDIA driver check the nodes
run before staging (cluster/gpu_driver.py), and the ImageNet cache keyed by the manifest (imagenet_shards).

Offline: render, validate against Ray's schema and prepare_config, and run the stager on local folders.
"""

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cluster_files import CLUSTER, MAKE_FILL, ROOT, load, run_make

render = load("render")
gpu_driver = load("gpu_driver")
check = load("check")


make = run_make


def rendered(tmp_path: Path, *choices: str) -> tuple[dict, str]:
    make("cluster-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL, *choices)
    text = (tmp_path / "aws-gpu.yaml").read_text().replace("__SECURITY_GROUP__", "sg-0123456789abcdef0")
    return yaml.safe_load(text), text


def gpu_workers(config: dict) -> dict[str, int]:
    return {t["node_config"]["InstanceType"]: t["max_workers"] for t in config["available_node_types"].values()
            if t["resources"].get("GPU")}


def valid_for_ray(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    assert check.schema_problems(config) == []
    validate_config(prepare_config(copy.deepcopy(config)))
    assert check.launcher_problems(config) == []


# ---- item 1: GPU type, count, capacity and place are variables ------------------------------------------


@pytest.mark.parametrize("gpu_type, other, cpus", [("p4d.24xlarge", "p5.48xlarge", 96),
                                                   ("p5.48xlarge", "p4d.24xlarge", 192)])
def test_gpu_type_and_count_are_make_variables(tmp_path, gpu_type, other, cpus):
    config, text = rendered(tmp_path, f"GPU_TYPE={gpu_type}", "NODES=3")
    assert gpu_workers(config) == {gpu_type: 3, other: 0}
    assert config["max_workers"] == 3
    chosen = next(t for t in config["available_node_types"].values() if t["node_config"]["InstanceType"] == gpu_type)
    assert chosen["resources"] == {"CPU": cpus, "GPU": 8}
    assert "InstanceMarketOptions" not in chosen["node_config"]  # on-demand by default
    assert "# Worker nodes at most" in text  # edited line by line: the comments stay
    valid_for_ray(config)


def test_default_render_is_the_template_p5_with_four_nodes(tmp_path):
    config, _ = rendered(tmp_path)
    assert gpu_workers(config) == {"p5.48xlarge": 4, "p4d.24xlarge": 0} and config["max_workers"] == 4


@pytest.mark.parametrize("choices, node_config, provider", [
    (["MARKET=spot"], {"InstanceMarketOptions": {"MarketType": "spot"}}, {}),
    (["RESERVATION=cr-0123456789abcdef0", "ZONE=us-west-2b"],
     {"CapacityReservationSpecification": {"CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}}},
     {"availability_zone": "us-west-2b"}),
    (["MARKET=capacity-block", "RESERVATION=cr-0123456789abcdef0", "SUBNET=subnet-0123456789abcdef0"],
     {"InstanceMarketOptions": {"MarketType": "capacity-block"},
      "CapacityReservationSpecification": {"CapacityReservationTarget": {"CapacityReservationId": "cr-0123456789abcdef0"}},
      "SubnetIds": ["subnet-0123456789abcdef0"]}, {}),
])
def test_capacity_and_placement_options_reach_the_gpu_nodes_only(tmp_path, choices, node_config, provider):
    config, _ = rendered(tmp_path, "GPU_TYPE=p4d.24xlarge", "NODES=4", *choices)
    types = config["available_node_types"]
    assert node_config.items() <= types["gpu_p4d"]["node_config"].items()
    assert provider.items() <= config["provider"].items()
    for name in ("head", "gpu_p5"):  # capacity is the GPU nodes' alone; a subnet is every node's (one VPC)
        assert not {"InstanceMarketOptions", "CapacityReservationSpecification"} & set(types[name]["node_config"])
        assert types[name]["node_config"].get("SubnetIds") == node_config.get("SubnetIds")
    valid_for_ray(config)


@pytest.mark.parametrize("choices, words", [
    (["GPU_TYPE=p3.16xlarge"], ["GPU_TYPE=p3.16xlarge", "p4d.24xlarge, p5.48xlarge"]),
    (["NODES=0"], ["NODES=0"]),
    (["NODES=four"], ["NODES=four", "at least 1"]),
    (["MARKET=cheap"], ["MARKET=cheap", "spot"]),
    (["MARKET=capacity-block"], ["needs RESERVATION"]),
    (["MARKET=spot", "RESERVATION=cr-0123456789abcdef0", "ZONE=us-west-2a"], ["spot", "RESERVATION"]),
    (["RESERVATION=cr-0123456789abcdef0"], ["one AZ", "ZONE="]),
    (["RESERVATION=r-1", "ZONE=us-west-2a"], ["RESERVATION=r-1"]),
    (["ZONE=us-east-1a"], ["ZONE=us-east-1a", "us-west-2"]),
    (["SUBNET=sn-1"], ["SUBNET=sn-1"]),
])
def test_a_choice_that_cannot_work_is_one_line(tmp_path, choices, words):
    err = make("cluster-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL, *choices, ok=False).stderr
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    for word in words:
        assert word in line
    assert not (tmp_path / "aws-gpu.yaml").exists()  # nothing half-rendered is left for cluster-up


def test_set_key_keeps_every_other_line():
    text = "a: 1  # one\nb:\n  # about c\n  c: 2\n  d:\n    c: 3\ne: 4\n"
    out = render.set_key(text, ("b", "c"), 5)
    assert out == "a: 1  # one\nb:\n  # about c\n  c: 5\n  d:\n    c: 3\ne: 4\n"
    added = render.set_key(text, ("b", "d", "x"), ["y"])
    assert yaml.safe_load(added)["b"]["d"] == {"x": ["y"], "c": 3}
    assert render.set_key(text, ("e",), 4) is text
    listed = "groups:\n  # the first\n  - name: a\n    max: 1\n  - name: b  # b\n    max: 1\nmax: 1\n"
    assert render.set_key(listed, ("groups", 1, "max"), 3) == listed.replace("max: 1\nmax", "max: 3\nmax")
    assert render.set_key(listed, ("groups", 0, "name"), "z") == listed.replace("- name: a", '- name: "z"')


# ---- KubeRay: NODES sizes the GPU worker group ----------------------------------------------------------

KUBERAY = ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml")


def kuberay_groups(tmp_path: Path, *choices: str) -> dict[str, dict]:
    """make kuberay-render CHOICES: each manifest's one worker group."""
    make("kuberay-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL, *choices)
    out = {}
    for name in KUBERAY:
        manifest = yaml.safe_load((tmp_path / name).read_text())
        (out[name],) = manifest["spec"].get("rayClusterSpec", manifest["spec"])["workerGroupSpecs"]
        assert check.file_problems(tmp_path / name) == []
    return out


@pytest.mark.parametrize("nodes", [2, 6])
def test_nodes_is_the_kuberay_gpu_worker_groups_size(tmp_path, nodes):
    groups = kuberay_groups(tmp_path, f"NODES={nodes}", "GPU_TYPE=p4d.24xlarge")
    raycluster, rayjob = groups["kuberay-raycluster.yaml"], groups["kuberay-rayjob.yaml"]
    assert raycluster["maxReplicas"] == rayjob["maxReplicas"] == nodes
    assert raycluster["replicas"] == 0 and rayjob["replicas"] == nodes  # the RayJob's grid starts at full size
    for group in (raycluster, rayjob):
        assert group["minReplicas"] == 0
        assert group["template"]["spec"]["nodeSelector"] == {"node.kubernetes.io/instance-type": "p4d.24xlarge"}
    default = tmp_path / "default"
    defaults = kuberay_groups(default, "GPU_TYPE=p4d.24xlarge")
    assert {name: g["maxReplicas"] for name, g in defaults.items()} == dict.fromkeys(KUBERAY, 4)
    sizes = {"kuberay-raycluster.yaml": ["maxReplicas"], "kuberay-rayjob.yaml": ["replicas", "maxReplicas"]}
    for name in KUBERAY:  # line by line: only the sizes differ from the default render, the comments stay
        changed = [(a, b) for a, b in zip((default / name).read_text().splitlines(),
                                          (tmp_path / name).read_text().splitlines(), strict=True) if a != b]
        assert [a.strip() for a, _ in changed] == [f"{key}: 4" for key in sizes[name]]
        assert [b for _, b in changed] == [a.replace(": 4", f": {nodes}") for a, _ in changed]


@pytest.mark.parametrize("nodes", ["0", "-1", "2.5", "many"])
def test_kuberay_render_refuses_a_bad_nodes_in_one_line(tmp_path, nodes):
    err = make("kuberay-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL, f"NODES={nodes}", ok=False).stderr
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert line == f"error: NODES={nodes}: a whole number of GPU nodes, at least 1"
    assert list(tmp_path.iterdir()) == []  # neither manifest written, nor a half-rendered one left


def test_a_kuberay_manifest_takes_nodes_only(tmp_path):
    """Its GPU type is the nodeSelector make fills in: an AWS choice given for it would be silently ignored."""
    path = tmp_path / "rayjob.yaml"
    path.write_text((CLUSTER / "kuberay-rayjob.yaml").read_text())
    with pytest.raises(SystemExit, match="takes --nodes only"):
        render.main([str(path), "--nodes", "2", "--market", "spot"])
    assert path.read_text() == (CLUSTER / "kuberay-rayjob.yaml").read_text()


# ---- item 2: the NVIDIA driver the image's torch needs ----------------------------------------------------


@pytest.mark.parametrize("found, ok", [("580.65.06", True), ("580.95.05", True), ("590.1", True),
                                       ("575.57.08", False), ("570.172.08", False), ("535.261.03", False),
                                       (None, False)])
def test_driver_check_for_cuda_13(found, ok):
    problem = gpu_driver.driver_problem(found, "13.0")
    assert (problem is None) == ok
    if problem:
        assert "\n" not in problem and ">= 580" in problem


def test_driver_minimum_follows_the_cuda_major():
    assert gpu_driver.required_driver("12.8") == 525 and gpu_driver.required_driver("13.2") == 580
    with pytest.raises(ValueError):
        gpu_driver.required_driver("14.0")
    with pytest.raises(ValueError):
        gpu_driver.parse_driver("N/A")


def test_the_pinned_torch_needs_the_driver_the_makefile_checks_for():
    """The image installs constraints.txt's torch, as the venv does: its CUDA is make's IMAGE_CUDA."""
    torch = pytest.importorskip("torch")
    pin = re.search(r"^torch==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M).group(1)
    if torch.__version__.split("+")[0] != pin or not torch.version.cuda:
        pytest.skip(f"torch {torch.__version__} here is not the pinned CUDA wheel")
    mk = (CLUSTER / "cluster.mk").read_text()
    assert re.search(r"^IMAGE_CUDA \?= (\S+)$", mk, re.M).group(1) == torch.version.cuda
    assert gpu_driver.required_driver(torch.version.cuda) == 580


def test_driver_version_is_read_from_nvidia_smi_or_the_kernel_module(tmp_path, monkeypatch):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.172.08  Release Build\n")
    monkeypatch.setattr(gpu_driver, "PROC_VERSION", proc)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi: the init container that has no GPU
    assert gpu_driver.installed_driver() == "570.172.08"
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 580.65.06\necho 580.65.06\n")
    smi.chmod(0o755)
    assert gpu_driver.installed_driver() == "580.65.06"
    assert gpu_driver.check("13.0") is None
    smi.write_text("#!/bin/sh\necho 575.57.08\n")
    assert ">= 580" in gpu_driver.check("13.0")


def test_the_stager_checks_the_driver_before_staging(tmp_path):
    """On a node, `imagenet_shards.py stage` refuses before copying a byte (here: no NVIDIA driver at all)."""
    if Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi"):
        pytest.skip("this machine has an NVIDIA driver")
    out = subprocess.run([sys.executable, str(CLUSTER / "imagenet_shards.py"), "stage", str(tmp_path / "nothing"),
                          str(tmp_path / "dst")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: no NVIDIA driver") and ">= " in line
    assert not (tmp_path / "dst").exists()
    for config in ("aws-gpu.yaml", "kuberay-rayjob.yaml", "kuberay-raycluster.yaml"):  # the nodes run the CLI
        assert "--no-driver-check" not in (CLUSTER / config).read_text()
    assert "cluster/gpu_driver.py" in (CLUSTER / "Dockerfile").read_text()


def test_kuberay_workers_stage_into_the_nodes_nvme_not_an_empty_dir():
    """An emptyDir dies with its pod, so a RayJob retry restaged 150 GB; the node's NVMe folder outlives it."""
    for path in ("kuberay-rayjob.yaml", "kuberay-raycluster.yaml"):
        for doc in yaml.safe_load_all((CLUSTER / path).read_text()):
            spec = doc["spec"].get("rayClusterSpec", doc["spec"])
            for group in spec["workerGroupSpecs"]:
                pod = group["template"]["spec"]
                volume = next(v for v in pod["volumes"] if v["name"] == "imagenet")
                assert volume["hostPath"] == {"path": "__NVME__/gnp-imagenet", "type": "DirectoryOrCreate"}
                (stage,) = pod["initContainers"]
                assert stage["securityContext"] == {"runAsUser": 0}  # kubelet makes the host folder root's
                mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "imagenet")
                assert mount["readOnly"] is True
                assert pod["nodeSelector"] == {"node.kubernetes.io/instance-type": "__GPU_TYPE__"}


def test_the_security_group_is_made_in_the_subnets_vpc(tmp_path):
    """SUBNET=... may be outside the default VPC: the group (and so every node) must be in the subnet's."""
    aws_setup = load("aws_setup")
    config, _ = rendered(tmp_path, "SUBNET=subnet-0123456789abcdef0")

    class EC2:
        made = []

        def describe_subnets(self, SubnetIds):
            return {"Subnets": [{"SubnetId": s, "VpcId": "vpc-gpu"} for s in SubnetIds]}

        def describe_vpcs(self, Filters):
            raise AssertionError("the default VPC is not asked for when the config names subnets")

        def describe_security_groups(self, Filters):
            assert {"Name": "vpc-id", "Values": ["vpc-gpu"]} in Filters
            return {"SecurityGroups": []}

        def create_security_group(self, **kwargs):
            self.made.append(kwargs["VpcId"])
            return {"GroupId": "sg-new"}

        def authorize_security_group_ingress(self, GroupId, IpPermissions):
            pass

    assert aws_setup.ensure_security_group(EC2(), config) == "sg-new" and EC2.made == ["vpc-gpu"]
