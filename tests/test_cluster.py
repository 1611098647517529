"""The cluster configs in cluster/: Ray accepts them, they pin the Ray of pyproject.toml, they submit a module
and recipe that exist, and they never open Ray to strangers (cluster/check.py, tested here on bad configs).

Offline and fast: no cloud account, no Kubernetes, no Ray cluster.
"""

import copy
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CLUSTER = ROOT / "cluster"
AWS = CLUSTER / "aws-gpu.yaml"
RAYCLUSTER = CLUSTER / "kuberay-raycluster.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
PREREQS = CLUSTER / "kuberay-prereqs.yaml"
KUBERAY = [RAYCLUSTER, RAYJOB]
FILL = {"__BUCKET__": "test-bucket", "__REGION__": "us-west-2", "__AMI__": "ami-0123456789abcdef0",
        "__REGISTRY__": "registry.example/team"}
PLACEHOLDER = re.compile(r"__[A-Z]+__")


def _load_checker():
    spec = importlib.util.spec_from_file_location("cluster_check", CLUSTER / "check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_checker()


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
    for dep in pyproject()["project"]["dependencies"]:
        match = re.fullmatch(r"ray(\[[^\]]*\])?==([0-9][\w.]*)", dep.replace(" ", ""))
        if match:
            return match.group(2)
    raise AssertionError("pyproject.toml pins no ray==X")


def image_tag(image: str) -> str:
    return image.rsplit(":", 1)[1]


def make(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    out = subprocess.run(["make", "--no-print-directory", "-s", "-f", "cluster/cluster.mk", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 0, out.stderr
    return out.stdout


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
    assert head["resources"] == {"CPU": 0}
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert gpu_types, "no GPU node type"
    for t in gpu_types.values():
        assert t["resources"]["GPU"] == 8
        assert t["node_config"]["InstanceType"] in ("p4d.24xlarge", "p5.48xlarge")
        assert "IamInstanceProfile" in t["node_config"]  # S3 for ImageNet, checkpoints and results
        assert any("aws s3 sync" in c and "/opt/dlami/nvme/imagenet" in c for c in t["initialization_commands"])
    assert sum(t.get("max_workers", 0) for t in gpu_types.values()) >= 1
    assert config["max_workers"] >= max(t.get("max_workers", 0) for t in gpu_types.values())
    options = " ".join(config["docker"]["worker_run_options"])
    assert "/opt/dlami/nvme/imagenet:/mnt/imagenet" in options and "--gpus all" in options


def test_launcher_installs_the_project_from_its_pins():
    config = docs(AWS)[0]
    assert config["file_mounts"]["~/gnp-ray"] == "."
    assert any(re.search(r"pip install .*-e ~/gnp-ray", c) for c in config["setup_commands"])
    for excluded in ("/.venv", "/.git", "/results"):
        assert excluded in config["rsync_exclude"]
    commands = [c for k, v in config.items() if k.endswith("commands") for c in v]
    commands += [c for t in config["available_node_types"].values() for c in t.get("initialization_commands", [])]
    for command in commands:  # versions live in pyproject.toml only
        assert not re.search(r"\b(torch|torchvision|ray)(\[[^\]]*\])?[=<>~]=", command), command


def test_token_reaches_every_node_without_being_written_down():
    config = docs(AWS)[0]
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    text = AWS.read_text()
    assert not re.search(r"RAY_AUTH_TOKEN\s*[=:]", text)


# ---- one Ray version everywhere ----------------------------------------------------------------------------


def test_every_image_and_ray_version_matches_the_pyproject_pin():
    pin = ray_pin()
    import ray

    assert ray.__version__ == pin  # the environment the tests run in
    docker = docs(AWS)[0]["docker"]
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    images += [t["docker"]["worker_image"] for t in docs(AWS)[0]["available_node_types"].values()
               if "worker_image" in t.get("docker", {})]
    assert images
    for image in images:
        assert image.startswith("rayproject/ray:")
        assert image_tag(image) == pin or image_tag(image).startswith(pin + "-"), image
    for path in KUBERAY:
        specs = cluster_specs(path)
        assert specs
        for spec in specs:
            assert spec["rayVersion"] == pin, path.name
            for container in ray_containers(spec):
                assert image_tag(container["image"]).startswith(pin + "-"), (path.name, container["image"])
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert base.startswith("rayproject/ray:") and image_tag(base).startswith(pin + "-")
    kuberay_tag = image_tag(ray_containers(cluster_specs(RAYJOB)[0])[0]["image"])
    assert kuberay_tag == image_tag(base)  # the project image is named after the Ray image it is built on


def test_image_python_is_one_the_project_supports():
    from packaging.specifiers import SpecifierSet

    supported = SpecifierSet(pyproject()["project"]["requires-python"])
    text = "\n".join(p.read_text() for p in [AWS, *KUBERAY, CLUSTER / "Dockerfile"])
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


def entrypoints() -> dict[str, list[str]]:
    """Every grid command line a config submits, as argv."""
    (job,) = docs(RAYJOB)
    lines = {"kuberay-rayjob.yaml": job["spec"]["entrypoint"],
             "cluster.mk cluster-submit": make("cluster-args", "BUCKET=test-bucket").strip()}
    return {name: shlex.split(line) for name, line in lines.items()}


def test_entrypoints_name_a_module_parser_and_recipe_that_exist():
    from gnp.recipes import get_recipe

    for name, argv in entrypoints().items():
        assert argv[:2] == ["python", "-m"], name
        module = argv[2]
        assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
        parser = importlib.import_module(module).build_parser()
        args = parser.parse_args(argv[3:])  # argparse exits (SystemExit) on an unknown flag
        recipe = get_recipe(args.recipe)
        assert recipe.dataset == "imagenet", name
        assert args.data == "/mnt/imagenet", name
        assert args.seeds == [0, 1, 2] and args.alpha == [0.0, 0.2, 0.3, 1.0] and args.r == [0.05], name
        for location in (args.results, args.storage):  # shared by all nodes: a URI or an absolute path
            assert "://" in location or location.startswith("/"), (name, location)
        assert recipe.batch_size % args.workers == 0, name


def test_a_trial_fits_on_one_gpu_node():
    """8 workers x 1 GPU x 10 CPUs (+ the trial driver's sliver) fit the node types / worker pods."""
    from jobs.grid import TRIAL_DRIVER_CPU

    for name, argv in entrypoints().items():
        args = importlib.import_module(argv[2]).build_parser().parse_args(argv[3:])
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
    make("cluster-render", "kuberay-render", f"CLUSTER_BUILD={tmp_path}", "BUCKET=test-bucket",
         "CLUSTER_AMI=ami-0123456789abcdef0", "REGISTRY=registry.example/team")
    rendered = {p.name: p for p in tmp_path.glob("*.yaml")}
    assert set(rendered) == {"aws-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"}
    for name, path in rendered.items():
        text = path.read_text()
        assert not PLACEHOLDER.search(text), name
        assert text == filled((CLUSTER / name).read_text()), name  # make fills exactly what the tests fill
        assert check.file_problems(path) == []
    config = yaml.safe_load(rendered["aws-gpu.yaml"].read_text())
    assert config["provider"]["region"] == "us-west-2"
    assert {t["node_config"]["ImageId"] for t in config["available_node_types"].values()} == {"ami-0123456789abcdef0"}


def test_every_placeholder_is_one_make_fills():
    mk = (CLUSTER / "cluster.mk").read_text()
    for path in [AWS, *KUBERAY]:
        for token in set(PLACEHOLDER.findall(path.read_text())):
            assert f"s|{token}|" in mk, (path.name, token)


def test_make_targets_reach_ray_through_the_tunnel_with_token_auth():
    mk = (CLUSTER / "cluster.mk").read_text()
    assert re.search(r"^RAY := RAY_AUTH_MODE=token \$\(VENV\)/bin/ray$", mk, re.M)
    assert re.search(r"^CLUSTER_ADDRESS \?= http://127\.0\.0\.1:8265$", mk, re.M)
    for target, command in (("cluster-up", "up"), ("cluster-submit", "job submit"), ("cluster-down", "down"),
                            ("cluster-dashboard", "dashboard")):
        body = re.search(rf"^{target}:.*\n((?:\t.*\n)+)", mk, re.M)
        assert body and f"$(RAY) {command}" in body.group(1), target
        assert "$(VENV)/.installed" in body.group(0).splitlines()[0], target
    runtime_env = json.loads(re.search(r"^CLUSTER_RUNTIME_ENV = (.*)$", mk, re.M).group(1))
    assert runtime_env["working_dir"] == "." and ".venv" in runtime_env["excludes"]
    assert check.runtime_env_problems(runtime_env, "cluster.mk") == []


# ---- security: the real configs pass, and one insecure change to them fails --------------------------------


@pytest.mark.parametrize("path", sorted(CLUSTER.glob("*.yaml")), ids=lambda p: p.name)
def test_config_keeps_ray_closed_to_strangers(path):
    assert check.file_problems(path) == []


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
    config["provider"]["security_group"] = {"GroupName": "x", "IpPermissions": [rule]}
    problems = check.launcher_problems(config)
    assert problems and all("to the internet" in p for p in problems)


@pytest.mark.parametrize("rule", [
    {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
    {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
    {"IpProtocol": "tcp", "FromPort": 8266, "ToPort": 10000, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]},
])
def test_checker_accepts_private_or_unrelated_rules(rule):
    config = aws()
    config["provider"]["security_group"] = {"IpPermissions": [rule]}
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
    assert any("dashboard bound to 0.0.0.0" in p for p in check.launcher_problems(config))


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
    assert check.main([str(AWS), str(RAYCLUSTER), str(RAYJOB)]) == 0
    out = subprocess.run([sys.executable, str(CLUSTER / "check.py"), str(path)], capture_output=True, text=True)
    assert out.returncode == 1


# ---- the GPU-hour estimate in cluster/README.md --------------------------------------------------------


def test_readme_gpu_hours_follow_from_the_design_targets():
    images = 1_281_167 * 100  # one 100-epoch ImageNet run
    standard, two_pass = 3_000, 1_500  # DESIGN §6 targets, images/s per H100 (targets, not measurements)
    gpu_hours = images * (3 / standard + 9 / two_pass) / 3600  # 3 standard runs, 9 GNP/SAM runs
    assert round(gpu_hours) == 249
    readme = (CLUSTER / "README.md").read_text()
    assert f"{round(gpu_hours)} GPU-hours" in readme
    assert "targets, not measurements" in readme
