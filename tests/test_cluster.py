"""The cluster configs in cluster/: Ray accepts them, they pin the Ray of constraints.txt, they submit a module
and recipe that exist, they hold up for a grid that runs for days, and they never open Ray to strangers
(cluster/check.py: the real configs pass it, and a copy of them with one insecure change fails it).

Offline and fast: no cloud account, no Kubernetes, no Ray cluster.
"""

import copy
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from cluster_files import CLUSTER, COMMIT, MAKE_FILL, ROOT, load, run_make

from jobs.driver import TRIAL_DRIVER

AWS = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
PREREQS = CLUSTER / "kuberay-prereqs.yaml"
KUBERAY = [RAYCLUSTER, RAYJOB]
POLICIES = [CLUSTER / "aws-head-policy.json", CLUSTER / "aws-worker-policy.json"]
DOCKERFILE = CLUSTER / "Dockerfile"
FILL = {"__BUCKET__": "test-bucket", "__REGION__": "us-west-2", "__AMI__": "ami-0123456789abcdef0",
        "__REGISTRY__": "registry.example/team", "__COMMIT__": COMMIT, "__SSH_CIDR__": "203.0.113.7/32",
        "__SECURITY_GROUP__": "sg-0123456789abcdef0", "__GPU_TYPE__": "p5.48xlarge", "__NVME__": "/mnt/k8s-disks/0",
        "__SHARDS_ROLE__": "arn:aws:iam::123456789012:role/gnp-ray-shards"}
PLACEHOLDER = re.compile(r"__[A-Z_]+__")
check = load("check")
aws_setup = load("aws_setup")


def docs(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def filled(text: str) -> str:
    for token, value in FILL.items():
        text = text.replace(token, value)
    return text


def launcher_configs() -> list[Path]:
    return [p for p in sorted(CLUSTER.glob("*.yaml")) if check.is_launcher_config(docs(p)[0])]


def cluster_specs(path: Path) -> list[dict]:
    """The RayCluster specs in a manifest (a RayJob's rayClusterSpec included)."""
    specs = []
    for doc in docs(path):
        if doc.get("kind") == "RayCluster":
            specs.append(doc["spec"])
        elif doc.get("kind") == "RayJob":
            specs.append(doc["spec"]["rayClusterSpec"])
    return specs


def ray_containers(spec: dict) -> list[dict]:
    templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    return [t["spec"]["containers"][0] for t in templates]  # KubeRay runs Ray in the first container


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def ray_pin() -> str:
    """The tested Ray: constraints.txt pins it (pyproject.toml declares only a range)."""
    match = re.search(r"^ray==([0-9][\w.]*)\s*$", (ROOT / "constraints.txt").read_text(), re.M)
    assert match, "constraints.txt pins no ray==X"
    return match.group(1)


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def make(*args: str) -> str:
    return run_make(*args, timeout=30).stdout


# ---- the cluster-launcher config ------------------------------------------------------------------------


def test_there_is_an_aws_launcher_config():
    assert AWS in launcher_configs()
    assert docs(AWS)[0]["provider"]["type"] == "aws"


@pytest.mark.parametrize("path", launcher_configs(), ids=lambda p: p.name)
def test_launcher_config_validates_against_the_schema_inside_ray(path):
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(docs(path)[0], schema)  # the file as written
    config = yaml.safe_load(filled(path.read_text()))
    prepared = prepare_config(config)  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(prepared)
    # Nothing of Ray's defaults sneaks in: every command list is ours (the defaults install a nightly Ray
    # and bind the dashboard to 0.0.0.0).
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in config, key
    assert check.launcher_problems(prepared) == []


def test_launcher_head_trains_nothing_and_workers_have_8_gpus():
    config = docs(AWS)[0]
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, TRIAL_DRIVER: 100}  # trial drivers on the head, off the GPU nodes
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert gpu_types, "no GPU node type"
    assert all(TRIAL_DRIVER not in t["resources"] for name, t in types.items() if name != config["head_node_type"])
    for t in gpu_types.values():
        assert t["resources"]["GPU"] == 8
        assert t["node_config"]["InstanceType"] in ("p4d.24xlarge", "p5.48xlarge")
        assert t["node_config"]["IamInstanceProfile"]["Name"] == "gnp-ray-worker"
        assert any("/opt/dlami/nvme/imagenet" in c for c in t["initialization_commands"])
    assert head["node_config"]["IamInstanceProfile"]["Name"] == "gnp-ray-head"
    assert sum(t.get("max_workers", 0) for t in gpu_types.values()) >= 1
    assert config["max_workers"] >= max(t.get("max_workers", 0) for t in gpu_types.values())
    options = " ".join(config["docker"]["worker_run_options"])
    assert "/opt/dlami/nvme/imagenet:/mnt/imagenet" in options and "--gpus all" in options
    (stage,) = config["worker_setup_commands"]  # GPU nodes only: the head is no worker
    assert shlex.split(stage)[:3] == ["python", "/home/ray/gnp-ray/cluster/imagenet_shards.py", "stage"]
    assert "s3://__BUCKET__/imagenet-shards /mnt/imagenet" in stage


def project_image() -> str:
    return f"__REGISTRY__/gnp-ray:{image_tag(base_image())}-__COMMIT__"


def base_image() -> str:
    return re.search(r"^ARG RAY_IMAGE=(\S+)", DOCKERFILE.read_text(), re.M).group(1)


def test_every_node_runs_the_one_project_image_and_installs_nothing():
    """AWS and KubeRay run the image of cluster/Dockerfile, tagged by commit; no node pip-installs anything."""
    config = docs(AWS)[0]
    assert config["docker"]["image"] == project_image()
    assert not {"head_image", "worker_image"} & set(config["docker"])
    for spec in (s for path in KUBERAY for s in cluster_specs(path)):
        templates = [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
        for pod in (t["spec"] for t in templates):
            for container in pod["containers"][:1] + pod.get("initContainers", []):
                assert container["image"] == project_image(), container["name"]
                assert container["imagePullPolicy"] == "IfNotPresent"
    node_types = [config, *config["available_node_types"].values()]
    commands = [c for t in node_types for key, value in t.items() if key.endswith("_commands") for c in value]
    assert commands and not [c for c in commands if re.search(r"\bpip3? install\b", c)]
    assert set(config["file_mounts"]) == {"~/.ray/auth_token"}  # the code is in the image
    # ... and so is its version, for the rows (the image has no .git)
    assert re.search(r"^ARG COMMIT=.*\n(?:.*\n)*ENV GNP_CODE_VERSION=\$\{COMMIT\}$", DOCKERFILE.read_text(), re.M)


def test_token_reaches_every_node_without_being_written_down():
    config = docs(AWS)[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    text = AWS.read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text)


# ---- one Ray version everywhere ----------------------------------------------------------------------------


def test_the_oldest_versions_checked_are_pyprojects_lower_bounds_and_the_tested_ones_within_its_ranges():
    from packaging.requirements import Requirement
    from packaging.version import Version

    declared = {r.name: r.specifier for r in map(Requirement, tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["dependencies"])}
    oldest = dict(pin.split("==") for pin in re.search(r"^OLDEST := (.*)$", (ROOT / "Makefile").read_text(),
                                                         re.M).group(1).split())
    assert set(oldest) == {"torch", "torchvision"}
    for name, version in oldest.items():
        assert Version(version) in declared[name]
        assert [Version(s.version) for s in declared[name] if s.operator == ">="] == [Version(version)]
    tested = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M))
    for name in ("torch", "torchvision", "ray"):
        assert Version(tested[name]) in declared[name], name


def test_every_image_and_ray_version_matches_the_constraints_pin():
    pin = ray_pin()
    import ray

    assert ray.__version__ == pin  # the environment the tests run in
    base = base_image()
    assert base.startswith("rayproject/ray:") and image_tag(base).startswith(pin + "-")
    assert image_tag(project_image()).startswith(pin + "-")  # the project image is named after its base
    for path in KUBERAY:
        specs = cluster_specs(path)
        assert specs
        for spec in specs:
            assert spec["rayVersion"] == pin, path.name


def test_the_image_installs_exactly_the_tested_versions():
    text = DOCKERFILE.read_text()
    assert re.search(r"^COPY .*\bconstraints\.txt\b", text, re.M)
    assert re.search(r"pip install .*-c constraints\.txt \.", text)
    assert "cluster/imagenet_shards.py" in text  # the stager the nodes run
    installs = [part for line in re.sub(r"\\\n", " ", text).splitlines() if not line.lstrip().startswith("#")
                for part in re.split(r"&&|;", line) if re.search(r"\bpip3? install\b", part)]
    assert installs and all(re.search(r"(?:-c|--constraint)[ =]+constraints\.txt\b", part) for part in installs)
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text()
    for needed in ("constraints.txt", "pyproject.toml", "gnp/", "jobs/", "analysis/", "cluster/imagenet_shards.py"):
        assert f"!{needed}" in ignore, needed


def test_image_python_is_one_the_project_supports():
    from packaging.specifiers import SpecifierSet

    supported = SpecifierSet(pyproject()["project"]["requires-python"])
    text = "\n".join(p.read_text() for p in [AWS, *KUBERAY, DOCKERFILE])
    tags = set(re.findall(r"-py(3)(\d+)\b", text))
    assert tags
    for major, minor in tags:
        assert f"{major}.{minor}" in supported


# ---- the KubeRay manifests ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", KUBERAY, ids=lambda p: p.name)
def test_kuberay_manifest_has_what_kuberay_needs(path):
    objects = docs(path)
    assert objects and all(d["apiVersion"] == "ray.io/v1" for d in objects)
    for spec in cluster_specs(path):
        head = spec["headGroupSpec"]
        assert "rayStartParams" in head and head["template"]["spec"]["containers"]
        assert head["serviceType"] == "ClusterIP"
        assert str(head["rayStartParams"].get("num-cpus")) == "0"  # the head trains nothing
        assert spec["workerGroupSpecs"]
        for group in spec["workerGroupSpecs"]:
            for key in ("groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"):
                assert key in group, key
            pod = group["template"]["spec"]
            limits = pod["containers"][0]["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) == 8
            assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
            assert "/mnt/imagenet" in mounts and "/mnt/shared" in mounts
            (stage,) = pod["initContainers"]  # ImageNet from its tar shards, not file by file
            assert stage["command"][1:] == ["/home/ray/gnp-ray/cluster/imagenet_shards.py", "stage"]
        # one ReadWriteMany volume for results and Ray's storage, mounted at the same path on every Ray pod
        claims = set()
        for template in [head["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]:
            volumes = {v["name"]: v for v in template["spec"]["volumes"]}
            shared = [m for m in template["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/mnt/shared"]
            assert shared
            claims.add(volumes[shared[0]["name"]]["persistentVolumeClaim"]["claimName"])
        assert len(claims) == 1
        pvc = {d["metadata"]["name"]: d for d in docs(PREREQS) if d["kind"] == "PersistentVolumeClaim"}
        assert pvc[claims.pop()]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_rayjob_runs_the_grid_and_shuts_the_cluster_down():
    (job,) = docs(RAYJOB)
    assert job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m jobs.grid ")
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    assert "--recipe imagenet-resnet50" in spec["entrypoint"]
    assert spec["submissionMode"] == "HTTPMode" and spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] >= 3 * 24 * 3600  # a grid that runs for days


def entrypoints() -> dict[str, list[str]]:
    """Every grid command line a config submits, as argv."""
    (job,) = docs(RAYJOB)
    lines = {"kuberay-rayjob.yaml": job["spec"]["entrypoint"],
             "cluster.mk cluster-submit": make("cluster-args", "BUCKET=test-bucket").strip()}
    return {name: shlex.split(line) for name, line in lines.items()}


def parsed(argv: list[str]):
    """An entrypoint's arguments as `python -m jobs.grid` reads them (jobs.grid.main: options.parse_args)."""
    from jobs import options

    assert argv[2] == "jobs.grid", argv
    return options.parse_args(argv[3:])


def test_entrypoints_name_a_module_parser_and_recipe_that_exist():
    from gnp.recipes import get_recipe

    for name, argv in entrypoints().items():
        assert argv[:2] == ["python", "-m"], name
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        args = parsed(argv)  # argparse exits (SystemExit) on an unknown flag
        recipe = get_recipe(args.recipe)
        assert recipe.dataset == "imagenet", name
        assert args.data == "/mnt/imagenet", name
        assert args.seeds == [0, 1, 2] and args.alpha == [0.0, 0.2, 0.3, 1.0] and args.r == [0.05], name
        for location in (args.results, args.storage):  # shared by all nodes: a URI or an absolute path
            assert "://" in location or location.startswith("/"), (name, location)
        assert recipe.batch_size % args.workers == 0, name


def test_no_entrypoint_passes_precision_flags():
    """The ImageNet recipes choose bf16 + channels_last on CUDA themselves."""
    for name, argv in entrypoints().items():
        args = parsed(argv)
        assert args.amp is None and args.channels_last is None, name


def test_a_trial_fits_on_one_gpu_node():
    """4 workers x 1 GPU x 10 CPUs (+ the trial driver's sliver) fit the node types / worker pods."""
    from jobs.driver import TRIAL_DRIVER_CPU

    for name, argv in entrypoints().items():
        args = parsed(argv)
        gpus, cpus = args.workers * args.gpus_per_worker, args.workers * args.cpus_per_worker + TRIAL_DRIVER_CPU
        if name.startswith("kuberay"):
            for group in cluster_specs(RAYJOB)[0]["workerGroupSpecs"]:
                limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
                assert gpus <= int(limits["nvidia.com/gpu"]) and cpus <= float(limits["cpu"]), name
        else:
            for t in docs(AWS)[0]["available_node_types"].values():
                if t["resources"].get("GPU"):
                    assert gpus <= t["resources"]["GPU"] and cpus <= t["resources"]["CPU"], name


# ---- make renders what Ray and KubeRay get --------------------------------------------------------------


def test_make_renders_every_placeholder(tmp_path):
    make("cluster-render", "kuberay-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL)
    rendered = {p.name: p for p in tmp_path.iterdir()}
    assert set(rendered) == {"aws-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml",
                             "aws-head-policy.json", "aws-worker-policy.json"}
    for name, path in rendered.items():
        text = path.read_text()
        # cluster/aws_setup.py fills __SECURITY_GROUP__ when it has created the group (make cluster-up)
        assert set(PLACEHOLDER.findall(text)) <= {"__SECURITY_GROUP__"}, name
        assert filled(text) == filled((CLUSTER / name).read_text()), name  # make fills what the tests fill
        path.write_text(filled(text))
        assert check.file_problems(path) == []
    assert check.paths_problems([PREREQS, *(rendered[p.name] for p in KUBERAY)]) == []
    config = yaml.safe_load(rendered["aws-gpu.yaml"].read_text())
    assert config["provider"]["region"] == "us-west-2"
    assert {t["node_config"]["ImageId"] for t in config["available_node_types"].values()} == {"ami-0123456789abcdef0"}
    image = f"registry.example/team/gnp-ray:{image_tag(base_image())}-{COMMIT}"
    assert config["docker"]["image"] == image
    assert make("cluster-image-name", "REGISTRY=registry.example/team", f"COMMIT={COMMIT}").strip() == image


def test_every_placeholder_is_one_make_fills():
    mk = (CLUSTER / "cluster.mk").read_text()
    setup = (CLUSTER / "aws_setup.py").read_text()
    for path in [AWS, *KUBERAY, *POLICIES]:
        for token in set(PLACEHOLDER.findall(path.read_text())):
            assert f"s|{token}|" in mk or f'PLACEHOLDER = "{token}"' in setup, (path.name, token)


def test_images_are_tagged_by_the_commit_of_a_clean_tree():
    mk = (CLUSTER / "cluster.mk").read_text()
    assert re.search(r"^COMMIT \?= \$\(shell git rev-parse --short=12 HEAD", mk, re.M)
    assert re.search(r"^IMAGE_TAG = .*-\$\(COMMIT\)$", mk, re.M)
    body = re.search(r"^cluster-image:.*\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "git status --porcelain -- $(IMAGE_SOURCES)" in body  # a dirty tree would mislabel the image
    assert "--build-arg COMMIT=$(COMMIT)" in body
    sources = re.search(r"^IMAGE_SOURCES = ((?:.*\\\n)*.*)$", mk, re.M).group(1)
    for copied in re.findall(r"^COPY \S+ (.+?) \S+$", DOCKERFILE.read_text(), re.M):
        for source in copied.split():
            assert source in sources, source


def test_make_targets_reach_ray_through_the_tunnel_with_token_auth():
    mk = (CLUSTER / "cluster.mk").read_text()
    assert re.search(r"^RAY := RAY_AUTH_MODE=token \$\(VENV\)/bin/ray$", mk, re.M)
    assert re.search(r"^CLUSTER_ADDRESS \?= http://127\.0\.0\.1:8265$", mk, re.M)
    for target, command in (("cluster-up", "up"), ("cluster-submit", "job submit"), ("cluster-down", "down"),
                            ("cluster-dashboard", "dashboard")):
        body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", mk, re.M)
        assert body and f"$(RAY) {command}" in body.group(1), target
        assert "$(VENV)/.installed" in body.group(0).splitlines()[0], target
    runtime_env = json.loads(make("cluster-runtime-env", f"PY={sys.executable}"))
    from jobs import submit

    assert runtime_env == submit.runtime_env()  # `make cluster-submit` uploads what `make submit` does
    assert runtime_env["working_dir"] == str(ROOT) and ".venv*" in runtime_env["excludes"]  # .venv-oldest too
    assert check.secret_problems(runtime_env) == []
    # the rows record the version of the tree uploaded (which has no .git), computed where make runs
    from jobs.results import code_version

    assert runtime_env["env_vars"]["GNP_CODE_VERSION"] == code_version() != "unknown"
    # the autoscaler version is said, not left to Ray's default (the config's install timeout is v2's)
    up = re.search(r"^cluster-up:.*\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "RAY_UP_enable_autoscaler_v2=1 $(RAY) up" in up
    assert "cluster/aws_setup.py" in up and "cluster/check.py" in up


def test_kuberay_targets_validate_against_the_installed_crds_before_applying():
    """The API server validates the manifests against the installed KubeRay CRDs (an older CRD would drop
    authOptions.secretName), strictly: a field it would drop is an error, not silence."""
    mk = (CLUSTER / "cluster.mk").read_text()
    preflight = re.search(r"^kuberay-preflight:.*\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "kubectl apply --dry-run=server --validate=strict" in preflight
    assert "cluster/check.py $(KUBERAY_PREREQS)" in preflight
    up = re.search(r"^kuberay-up: kuberay-preflight\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "kubectl create --validate=strict" in up
    logs = re.search(r"^kuberay-logs:.*\n((?:\t.*\n)+)", mk, re.M).group(1)
    assert "{.status.jobId}" in logs and "job-driver-$$job.log" in logs


# ---- security: the real configs pass, and one insecure change to them fails --------------------------------


CHECKED = sorted(CLUSTER.glob("*.yaml")) + POLICIES


@pytest.mark.parametrize("path", CHECKED, ids=lambda p: p.name)
def test_config_passes_the_check(path):
    assert check.file_problems(path) == []


def test_the_configs_pass_the_check_together():
    assert check.paths_problems(CHECKED) == []


def aws() -> dict:
    return copy.deepcopy(docs(AWS)[0])


@pytest.mark.parametrize("rule", [
    {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
    {"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "10.0.0.0/8"}, {"CidrIp": "0.0.0.0/0"}]},
])
def test_checker_rejects_a_public_security_group_rule(rule):
    config = aws()
    config["provider"]["security_group"]["IpPermissions"].append(rule)
    problems = check.launcher_problems(config)
    assert problems and all("to the internet" in p or "SSH" in p for p in problems)
    assert any("to the internet" in p for p in problems)


@pytest.mark.parametrize("rule", [
    {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    {"IpProtocol": "tcp", "FromPort": 8266, "ToPort": 10000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
])
def test_checker_accepts_private_or_unrelated_rules(rule):
    config = aws()
    config["provider"]["security_group"]["IpPermissions"].append(rule)
    assert check.launcher_problems(config) == []


@pytest.mark.parametrize("role", ["head", "worker"])
def test_checker_rejects_a_ray_start_without_token_auth(role):
    key = f"{role}_start_ray_commands"
    config = aws()
    config[key] = [c.replace("RAY_AUTH_MODE=token", "RAY_AUTH_MODE=disabled") for c in config[key]]
    assert any(key in p and "token" in p for p in check.launcher_problems(config))
    config = aws()  # set in an earlier command: a separate shell, so `ray start` never sees it
    config[key] = ["export RAY_AUTH_MODE=token"] + [c.replace("export RAY_AUTH_MODE=token", "true")
                                                    for c in config[key]]
    assert any(key in p for p in check.launcher_problems(config))
    config = aws()
    del config[key]  # Ray's defaults would start the node without token auth
    assert any(key in p for p in check.launcher_problems(config))


def test_checker_rejects_an_open_dashboard_without_token():
    config = aws()
    config["head_start_ray_commands"] = ["ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0"]
    one_problem(check.launcher_problems(config), "head_start_ray_commands", "without RAY_AUTH_MODE=token")


def test_checker_validates_against_rays_schema():
    """Ray's own cluster-config schema, not a copy: a misspelt or mistyped field is refused, one line each."""
    config = aws()
    config["max_worker"] = config.pop("max_workers")
    one_problem(check.launcher_problems(config), "max_worker", "Ray's cluster-config schema")
    config = aws()
    config["available_node_types"]["gpu_p5"]["max_workers"] = "four"
    one_problem(check.launcher_problems(config), "available_node_types.gpu_p5.max_workers", "'four'")


def test_checker_rejects_published_ports_and_inline_secrets():
    config = aws()
    config["docker"]["run_options"] = ["-p 8265:8265"]
    assert any("publishes port 8265" in p for p in check.launcher_problems(config))
    config = aws()
    config["setup_commands"].append("echo RAY_AUTH_TOKEN=abc123 >> ~/.bashrc")
    assert any("secret" in p for p in check.launcher_problems(config))
    config = aws()
    config["setup_commands"].append('export RAY_AUTH_TOKEN="$(cat ~/.ray/auth_token)"')  # a reference is fine
    assert check.launcher_problems(config) == []


def rayjob() -> dict:
    return copy.deepcopy(docs(RAYJOB)[0])


def kuberay_problems_after(change) -> list[str]:
    job = rayjob()
    change(job["spec"]["rayClusterSpec"], job)
    return check.kuberay_problems([job])


@pytest.mark.parametrize("service_type", ["LoadBalancer", "NodePort"])
def test_checker_rejects_a_public_head_service(service_type):
    def change(spec, job):
        spec["headGroupSpec"]["serviceType"] = service_type
    assert any("serviceType" in p for p in kuberay_problems_after(change))

    def head_service(spec, job):
        spec["headGroupSpec"]["headService"] = {"spec": {"type": service_type}}
    assert any("headService" in p for p in kuberay_problems_after(head_service))


def test_checker_rejects_services_ingresses_and_host_ports_in_front_of_ray():
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash"},
               "spec": {"type": "LoadBalancer", "ports": [{"port": 443, "targetPort": 8265}]}}
    assert check.kuberay_problems([service])
    service["spec"]["type"] = "ClusterIP"
    assert check.kuberay_problems([service]) == []
    ingress = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": {"name": "dash"},
               "spec": {"rules": [{"http": {"paths": [{"path": "/", "backend": {
                   "service": {"name": "gnp-ray-head-svc", "port": {"number": 8265}}}}]}}]}}
    assert check.kuberay_problems([ingress])

    def enable_ingress(spec, job):
        spec["headGroupSpec"]["enableIngress"] = True
    assert any("enableIngress" in p for p in kuberay_problems_after(enable_ingress))

    def host_port(spec, job):
        spec["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][1]["hostPort"] = 8265
    assert any("hostPort" in p for p in kuberay_problems_after(host_port))

    def host_network(spec, job):
        spec["workerGroupSpecs"][0]["template"]["spec"]["hostNetwork"] = True
    assert any("hostNetwork" in p for p in kuberay_problems_after(host_network))


def _drop_auth_env(container):
    container["env"] = [e for e in container["env"] if e["name"] not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")]


def test_checker_rejects_a_kuberay_cluster_without_token_auth():
    def no_auth(spec, job):
        del spec["authOptions"]
        _drop_auth_env(spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0])
    assert any("workerGroupSpecs" in p and "token" in p for p in kuberay_problems_after(no_auth))

    def auth_options_only(spec, job):  # KubeRay's authOptions alone sets the token on every container
        for container in ray_containers(spec):
            _drop_auth_env(container)
    assert kuberay_problems_after(auth_options_only) == []

    def disabled(spec, job):  # an explicit env entry wins over authOptions: KubeRay does not overwrite it
        spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = "disabled"
    assert any("headGroupSpec" in p and "disabled" in p for p in kuberay_problems_after(disabled))

    def auth_off(spec, job):
        spec["authOptions"]["mode"] = "disabled"
        for container in ray_containers(spec):
            _drop_auth_env(container)
    assert any("authOptions" in p for p in kuberay_problems_after(auth_off))


def test_checker_rejects_secrets_in_manifests():
    def literal_token(spec, job):
        env = spec["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
        env[1] = {"name": "RAY_AUTH_TOKEN", "value": "abc123"}
    assert any("literal value" in p for p in kuberay_problems_after(literal_token))

    def runtime_env_secret(spec, job):
        job["spec"]["runtimeEnvYAML"] = "env_vars:\n  AWS_SECRET_ACCESS_KEY: abc\n  NCCL_DEBUG: INFO\n"
    problems = kuberay_problems_after(runtime_env_secret)
    assert len(problems) == 1 and "AWS_SECRET_ACCESS_KEY" in problems[0]


def test_checker_command_line(tmp_path, capsys):
    bad = aws()
    bad["provider"]["security_group"] = {"IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    path = tmp_path / "open.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert check.main([str(path)]) == 1
    assert "8265" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("provider: [\n")
    assert check.main([str(DOCKERFILE), str(broken), str(tmp_path / "missing.json")]) == 1
    dockerfile, unparsed, missing = capsys.readouterr().err.splitlines()  # one line each
    assert "not a launcher config" in dockerfile and "cannot read it" in unparsed and "cannot read it" in missing
    assert check.main([str(p) for p in CHECKED]) == 0
    out = subprocess.run([sys.executable, str(CLUSTER / "check.py"), str(path)], capture_output=True, text=True)
    assert out.returncode == 1
    for line in out.stderr.splitlines():  # one line per problem
        assert line.startswith("refused: "), line


# ---- the GPU-hour estimate in cluster/README.md --------------------------------------------------------


def test_readme_gpu_hours_follow_from_the_throughput_targets():
    images = 1_281_167 * 100  # one 100-epoch ImageNet run
    standard, two_pass = 3_000, 1_500  # throughput targets, images/s per H100 (not measurements)
    gpu_hours = images * (3 / standard + 9 / two_pass) / 3600  # 3 standard runs, 9 GNP/SAM runs
    assert round(gpu_hours) == 249
    readme = (CLUSTER / "README.md").read_text()
    assert f"{round(gpu_hours)} GPU-hours" in readme
    assert "targets, not measurements" in readme


# ---- least privilege and SSH on AWS --------------------------------------------------------------------------


def one_problem(problems: list[str], *words: str) -> str:
    """Exactly one problem, on one line, that says what is wrong."""
    assert len(problems) == 1, problems
    assert "\n" not in problems[0]
    for word in words:
        assert word in problems[0], (word, problems[0])
    return problems[0]


def ssh_rule(config: dict) -> dict:
    return config["provider"]["security_group"]["IpPermissions"][0]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "not-a-cidr"])
def test_checker_rejects_ssh_from_everywhere(cidr):
    config = aws()
    key = "CidrIpv6" if ":" in cidr else "CidrIp"
    ssh_rule(config)["IpRanges" if key == "CidrIp" else "Ipv6Ranges"] = [{key: cidr}]
    one_problem(check.launcher_problems(config), "SSH (22) open to", cidr)
    config = aws()
    ssh_rule(config)["IpRanges"] = [{"CidrIp": "203.0.113.7/32"}]  # what make renders from SSH_CIDR
    assert check.launcher_problems(config) == []


def test_checker_rejects_a_security_group_ray_would_make_itself():
    config = aws()
    del config["provider"]["security_group"]  # Ray's own group: SSH from 0.0.0.0/0
    one_problem(check.launcher_problems(config), "provider.security_group", "0.0.0.0/0")
    config = aws()
    del config["available_node_types"]["gpu_p5"]["node_config"]["SecurityGroupIds"]
    one_problem(check.launcher_problems(config), "SecurityGroupIds")
    config = aws()
    config["available_node_types"]["gpu_p4d"]["node_config"]["SecurityGroupIds"] = ["sg-0fedcba9876543210"]
    one_problem(check.launcher_problems(config), "SecurityGroupIds")


@pytest.mark.parametrize("profile", [None, "ray-autoscaler-v1", "gnp-ray-head"])
def test_checker_rejects_workers_without_their_own_profile(profile):
    config = aws()
    node_config = config["available_node_types"]["gpu_p5"]["node_config"]
    if profile is None:
        del node_config["IamInstanceProfile"]
    else:
        node_config["IamInstanceProfile"] = {"Name": profile}
    one_problem(check.launcher_problems(config), "gpu_p5", "IamInstanceProfile")


def policy(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("statement, words", [
    ({"Effect": "Allow", "Action": "s3:*", "Resource": "arn:aws:s3:::b/gnp-results/*"}, ["s3:*", "whole service"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::b"}, ["whole service"]),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}, ['Resource "*"']),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*"}, ["not one bucket"]),
    ({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::b/*"}, ["not one bucket"]),
    ({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::*:role/*"}, ["PassRole"]),
    ({"Effect": "Allow", "Action": "iam:PassRole", "Resource": "arn:aws:iam::*:role/ray-autoscaler-v1"},
     ["PassRole"]),
])
def test_checker_rejects_broad_iam_policies(statement, words):
    for path in POLICIES:
        bad = policy(path)
        bad["Statement"].append(statement)
        one_problem(check.iam_policy_problems(bad), *words)


def test_worker_policy_reads_the_shards_and_writes_the_results_only():
    statements = policy(CLUSTER / "aws-worker-policy.json")["Statement"]
    actions = {a for s in statements for a in check._as_list(s["Action"])}
    assert not {a for a in actions if a.split(":")[0] in ("iam", "ec2")}
    writes = {r for s in statements if "s3:PutObject" in check._as_list(s["Action"]) for r in s["Resource"]}
    assert {r.split(":::")[1].split("/")[1] for r in writes} == {"gnp-results", "gnp-ray-storage"}
    reads = {r for s in statements if check._as_list(s["Action"]) == ["s3:GetObject"]
             for r in check._as_list(s["Resource"])}
    assert reads == {"arn:aws:s3:::__BUCKET__/imagenet-shards/*"}
    head = policy(CLUSTER / "aws-head-policy.json")["Statement"]
    passed = [s["Resource"] for s in head if s["Action"] == "iam:PassRole"]
    assert passed == ["arn:aws:iam::*:role/gnp-ray-worker"]  # the profile the GPU node types name


class FakeEC2:
    """Just enough of boto3's EC2 client for aws_setup.ensure_security_group."""

    def __init__(self, groups):
        self.groups, self.calls = groups, []

    def describe_vpcs(self, Filters):
        return {"Vpcs": [{"VpcId": "vpc-1"}]}

    def describe_security_groups(self, Filters):
        return {"SecurityGroups": self.groups}

    def create_security_group(self, **kwargs):
        self.calls.append(("create", kwargs["GroupName"]))
        return {"GroupId": "sg-new"}

    def revoke_security_group_ingress(self, GroupId, IpPermissions):
        self.calls.append(("revoke", IpPermissions))

    def authorize_security_group_ingress(self, GroupId, IpPermissions):
        self.calls.append(("authorize", IpPermissions))


def test_aws_setup_gives_the_group_exactly_the_configs_rules():
    config = yaml.safe_load(filled(AWS.read_text()))
    assert aws_setup.profiles(config) == {"gnp-ray-head": "head", "gnp-ray-worker": "worker"}
    # a group left by an earlier `ray up`: SSH from anywhere. Its rules are replaced by the config's.
    old = [{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
            "Ipv6Ranges": [], "PrefixListIds": [], "UserIdGroupPairs": []}]
    ec2 = FakeEC2([{"GroupId": "sg-old", "IpPermissions": old}])
    assert aws_setup.ensure_security_group(ec2, config) == "sg-old"
    (_, revoked), (_, granted) = ec2.calls
    assert revoked == old
    assert {r["CidrIp"] for p in granted for r in p.get("IpRanges", [])} == {"203.0.113.7/32"}
    assert any(p["UserIdGroupPairs"] == [{"GroupId": "sg-old", "Description": "between cluster nodes"}]
               for p in granted if "UserIdGroupPairs" in p)
    # described back by EC2 (descriptions, user ids added): nothing to change
    described = [{**p, "UserIdGroupPairs": [{**g, "UserId": "123"} for g in p.get("UserIdGroupPairs", [])]}
                 for p in granted]
    again = FakeEC2([{"GroupId": "sg-old", "IpPermissions": described}])
    aws_setup.ensure_security_group(again, config)
    assert again.calls == []
    fresh = FakeEC2([])
    assert aws_setup.ensure_security_group(fresh, config) == "sg-new"
    assert [c[0] for c in fresh.calls] == ["create", "authorize"]


# ---- the autoscaler's node-ready timeouts ------------------------------------------------------------------------


def test_node_ready_timeouts_cover_the_measured_staging_estimate():
    """A GPU node's ImageNet staging counts against the autoscaler's (v2) node-ready timeout, and a node that
    times out restarts the staging from nothing: every config's timeout is at least what bench/staging.py
    derived from its measurement (cluster/README.md), in the setting the autoscaler reads."""
    results = sorted((ROOT / "bench" / "results").glob("staging-*.json"))
    assert results, "no bench/results/staging-*.json: run python bench/staging.py"
    estimate = json.loads(results[-1].read_text())["estimate"]
    assert "ESTIMATE" in estimate["label"]
    # AWS: in the head's `ray start --head` command, the one process (the autoscaler) that reads it
    head_start = next(c for c in docs(AWS)[0]["head_start_ray_commands"] if "ray start --head" in c)
    timeouts = {int(re.search(r"\bRAY_AUTOSCALER_RECONCILE_RAY_INSTALL_STATUS_TIMEOUT_S=(\d+)", head_start)[1])}
    for path in KUBERAY:  # KubeRay: the autoscaler container's env, with autoscaler v2 said explicitly
        for spec in cluster_specs(path):
            options = spec["autoscalerOptions"]
            assert options["version"] == "v2"
            env = {e["name"]: e["value"] for e in options["env"]}
            timeouts.add(int(env["RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"]))
    (timeout,) = timeouts
    assert estimate["node_ready_timeout_s"] <= timeout
    assert timeout > estimate["slow"]["launch_to_training_s"] * 2
    readme = (CLUSTER / "README.md").read_text()
    assert "estimate" in readme.lower() and str(timeout) in readme


# ---- KubeRay: the NetworkPolicy ------------------------------------------------------------------------------------


def prereqs() -> list:
    return copy.deepcopy(docs(PREREQS))


def network_problems(change=None) -> list[str]:
    objects = prereqs() + [rayjob()]
    policy = next(d for d in objects if d["kind"] == "NetworkPolicy")
    if change:
        change(policy)
    return check.network_policy_problems(objects)


def test_network_policy_admits_only_ray_pods_and_the_operator():
    assert network_problems() == []
    policy = next(d for d in docs(PREREQS) if d["kind"] == "NetworkPolicy")
    for labels in check._ray_pod_labels(cluster_specs(RAYJOB)[0]) + check._ray_pod_labels(cluster_specs(RAYCLUSTER)[0]):
        assert check._selects(policy["spec"]["podSelector"], labels)
    operator = policy["spec"]["ingress"][1]
    assert [p["port"] for p in operator["ports"]] == [8265]


@pytest.mark.parametrize("change, words", [
    (lambda p: p["spec"].update(ingress=[{}]), ["anywhere"]),
    (lambda p: p["spec"]["ingress"][1].pop("ports"), ["kuberay-operator", "6379"]),
    (lambda p: p["spec"]["ingress"][0]["from"][0].update(namespaceSelector={}), ["namespaceSelector", "6379"]),
    (lambda p: p["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}}],
                                            "ports": [{"port": "gcs-server"}]}), ["10.0.0.0/8", "6379"]),
    (lambda p: p["spec"]["ingress"][1]["from"][0].update(podSelector={}), ["8265"]),
])
def test_checker_rejects_a_network_policy_that_lets_others_in(change, words):
    one_problem(network_problems(change), *words)


def test_checker_wants_a_network_policy_with_the_manifests(capsys):
    one_problem(check.network_policy_problems([rayjob()]), "no NetworkPolicy")
    assert check.main([str(RAYJOB)]) == 1
    assert "kuberay-prereqs.yaml" in capsys.readouterr().err
    assert network_problems(lambda p: p["spec"]["podSelector"]["matchLabels"].update(app="other"))


# ---- trial drivers on the head only ---------------------------------------------------------------------------


def test_the_head_alone_has_the_trial_driver_resource_in_the_format_kuberay_and_ray_read():
    from ray.autoscaler._private.kuberay.autoscaling_config import _get_custom_resources

    for path in KUBERAY:
        for spec in cluster_specs(path):
            params = spec["headGroupSpec"]["rayStartParams"]
            assert _get_custom_resources({}, params, "head") == {TRIAL_DRIVER: 100}  # Ray's own reader
            # KubeRay writes `--resources=<value>` into the shell command of the head's container
            assert shlex.split(f"ray start --resources={params['resources']}")[-1] == \
                f'--resources={{"{TRIAL_DRIVER}": 100}}'
            for group in spec["workerGroupSpecs"]:
                assert "resources" not in group["rayStartParams"] and "resources" not in group


# ---- staging ImageNet from tar shards ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards_module():
    sys.path.insert(0, str(CLUSTER))  # spawned stage processes import it by name, as the nodes do
    import imagenet_shards

    yield imagenet_shards
    sys.path.remove(str(CLUSTER))


def small_imagenet(root: Path, salt: bytes = b"") -> dict[str, bytes]:
    """A small ImageNet layout of random files; `salt` changes their sizes, so a pack of it has another index."""
    files = {f"{split}/n{c:08d}/n{c:08d}_{i}.JPEG": os.urandom(1000 + 37 * i) + salt
             for split in ("train", "val") for c in range(3) for i in range(4)}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def test_shards_round_trip_and_a_rerun_skips_what_is_staged(tmp_path, shards_module):
    files = small_imagenet(tmp_path / "src")
    index = shards_module.pack(tmp_path / "src", tmp_path / "shards", shard_bytes=8000)
    assert index["files"] == len(files) and len(index["shards"]) > 2
    stats = shards_module.stage(str(tmp_path / "shards"), tmp_path / "dst", processes=2, log=lambda *_: None)
    assert stats["shards"] == len(index["shards"]) and stats["files"] == len(files)
    assert stats["bytes"] == sum(map(len, files.values()))
    for name, data in files.items():
        assert (tmp_path / "dst" / name).read_bytes() == data
    from gnp.folders import check_layout

    check_layout(tmp_path / "dst")  # the layout --data expects, .staged/ markers and all
    again = shards_module.stage(f"file://{tmp_path / 'shards'}", tmp_path / "dst", log=lambda *_: None)
    assert again["shards"] == 0 and again["skipped"] == len(index["shards"])
    (tmp_path / "dst" / ".staged" / index["shards"][0]["name"]).with_suffix(".tar.done").write_text("1")
    with pytest.raises(RuntimeError, match="index"):
        shards_module.stage(str(tmp_path / "shards"), tmp_path / "dst", log=lambda *_: None)


def test_a_second_stage_of_the_same_manifest_copies_nothing(tmp_path, shards_module):
    small_imagenet(tmp_path / "src")
    index = shards_module.pack(tmp_path / "src", tmp_path / "shards", shard_bytes=2000)
    quiet = dict(log=lambda *_: None)
    first = shards_module.stage(str(tmp_path / "shards"), tmp_path / "cache", processes=2, **quiet)
    assert first["shards"] == len(index["shards"]) and first["bytes"] > 0
    assert (tmp_path / "cache" / ".staged" / "manifest").read_text() == first["manifest"]
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.JPEG")}
    again = shards_module.stage(str(tmp_path / "shards"), tmp_path / "cache", **quiet)  # a RayJob retry on the node
    assert again["shards"] == 0 and again["bytes"] == 0 and again["manifest"] == first["manifest"]
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.JPEG")} == before


def test_a_new_manifest_restages_everything(tmp_path, shards_module):
    small_imagenet(tmp_path / "src")
    shards_module.pack(tmp_path / "src", tmp_path / "shards", shard_bytes=2000)
    shards_module.stage(str(tmp_path / "shards"), tmp_path / "cache", log=lambda *_: None)
    files = small_imagenet(tmp_path / "src2", salt=b"v2")  # same shard names, other contents: repacked ImageNet
    index = shards_module.pack(tmp_path / "src2", tmp_path / "shards2", shard_bytes=2000)
    said = []
    new = shards_module.stage(str(tmp_path / "shards2"), tmp_path / "cache", log=said.append)
    assert new["shards"] == len(index["shards"]) and new["skipped"] == 0
    assert any("another manifest" in line for line in said)
    for name, data in files.items():
        assert (tmp_path / "cache" / name).read_bytes() == data


def test_staging_refuses_paths_out_of_the_folder(tmp_path, shards_module):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.JPEG")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    buffer.seek(0)
    with tarfile.open(fileobj=buffer, mode="r|") as tar, pytest.raises(tarfile.FilterError):
        shards_module._extract_members(tar, tmp_path / "dst")
    assert not (tmp_path / "escaped.JPEG").exists()
