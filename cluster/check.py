"""Refuse cluster configs that open Ray to strangers, or that a grid running for days would fall into.

    python cluster/check.py cluster/aws-gpu.yaml cluster/aws-*-policy.json cluster/Dockerfile
    python cluster/check.py cluster/kuberay-prereqs.yaml cluster/kuberay-raycluster.yaml cluster/kuberay-rayjob.yaml
    python cluster/check.py --kuberay-operator PODS.yaml --crds CRDS.yaml MANIFEST.yaml ...    # before kubectl

Security (Ray's security page: the dashboard/Jobs API (8265) and Ray Client (10001) run any code sent to them):
  - 8265 and 10001 never open to the internet: no security-group ingress from 0.0.0.0/0 or ::/0 covering them,
    no Docker port publishing, no LoadBalancer/NodePort Service, Ingress, hostPort or hostNetwork;
  - SSH only from the CIDR the user gives (Ray adds SSH from 0.0.0.0/0 to a group it creates itself);
  - a KubeRay cluster comes with a NetworkPolicy: only Ray pods reach GCS/dashboard/client, and the operator
    the dashboard only (pass kuberay-prereqs.yaml with the manifests);
  - token authentication (RAY_AUTH_MODE=token) on every node, dashboard on all interfaces only with it;
  - no secrets in the config; GPU workers with their own least-privilege instance profile, and IAM policies
    with no wildcard actions, S3 scoped to the bucket, iam:PassRole for one named role only.
A grid that runs for days:
  - nodes run the project image (built with constraints.txt), tagged by commit, with a pull policy; nothing
    pip-installs the project or torch at node start-up; ImageNet is staged from shards, not file by file;
  - the autoscaler version is explicit and its node-ready timeout covers the staging estimate
    (MIN_NODE_READY_TIMEOUT_S); a RayJob uses HTTPMode and a backoffLimit; no precision flags are passed;
  - the head, and only the head, has the `trial_driver` resource (trial drivers stay off GPU nodes);
  - before applying, the operator is KubeRay >= 1.6 and its CRDs prune no field of the manifests.
Exit status 1 and one line per problem. Needs only PyYAML.
"""

import argparse
import ipaddress
import json
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

PRIVATE_PORTS = {8265: "dashboard/Jobs API", 10001: "Ray Client"}
RAY_HEAD_PORTS = {6379: "GCS", 8265: "dashboard/Jobs API", 10001: "Ray Client"}
PORT_NAMES = {"gcs-server": 6379, "dashboard": 8265, "client": 10001}  # KubeRay's container port names
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*"}
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
# A secret written into a command as a literal value (a $VAR or $(...) reference is fine).
INLINE_SECRET = re.compile(r"\b(RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN)=(?![\"']?\$)\S")
TOKEN_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?token\b", re.I)
OTHER_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?(?!token\b)\w+", re.I)
DASHBOARD_HOST = re.compile(r"--dashboard-host[= ]+[\"']?([^\s\"']+)")
PLACEHOLDER = re.compile(r"^__[A-Z_]+__$")

# Ray's default instance profile (EC2 and S3 full access): the head's, never the GPU workers'.
RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"
TRIAL_DRIVER = "trial_driver"  # the head's custom resource: Tune trial drivers and Train controllers
PRECISION_FLAGS = ("--amp", "--channels-last")  # the ImageNet recipes choose bf16 + channels_last on CUDA
# An image tag that ends in the commit it was built from (make fills __COMMIT__).
COMMIT_TAG = re.compile(r"-(?:[0-9a-f]{7,40}|__COMMIT__)$")
# A pip install argument that is the project (a path to it) or one of its pinned heavyweights.
PROJECT_PACKAGE = re.compile(r"\.|\S*gnp-ray\S*|torch\S*|ray(\[[^\]]*\])?([=<>~!]\S*)?")
LOOSE_SYNC = re.compile(r"\baws\s+s3\s+(?:sync|cp\s.*--recursive)\b.*imagenet", re.I)
# How long a GPU node may take from launch to a running Ray node before the autoscaler (v2) gives it up:
# 3 x the slow end of the launch-to-training ESTIMATE in bench/results/staging-*.json (40 min), rounded up to
# the half hour (cluster/README.md). Too short restarts a slow staging from nothing, possibly forever.
MIN_NODE_READY_TIMEOUT_S = 9000
RECONCILE_ENV = re.compile(r"\bRAY_AUTOSCALER_RECONCILE_(\w+?)_TIMEOUT_S=[\"']?(\d+)")
ALLOCATE_TIMEOUT = "RAY_AUTOSCALER_RECONCILE_ALLOCATE_STATUS_TIMEOUT_S"  # KubeRay: pod created -> Ray node
RAY_INSTALL_TIMEOUT = "RAY_AUTOSCALER_RECONCILE_RAY_INSTALL_STATUS_TIMEOUT_S"  # launcher: SSH, setup, ray start
MIN_KUBERAY = (1, 6)  # authOptions.secretName; an older operator's CRD prunes it and the tokens stop matching
OPERATOR_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}  # Helm chart and kustomize install


# ---- cluster-launcher configs (ray up) ----------------------------------------------------------------


def _port_range(rule: dict) -> tuple[int, int]:
    """The ports an EC2 IpPermission covers; protocol -1 (all traffic) or port -1 means every port."""
    if str(rule.get("IpProtocol", "-1")).lower() in ("-1", "all"):
        return 0, 65535
    low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
    if low in (-1, None) or high in (-1, None):
        return 0, 65535
    return int(low), int(high)


def _cidrs(rule: dict) -> set[str]:
    v4 = {r.get("CidrIp") for r in rule.get("IpRanges", []) or []}
    v6 = {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", []) or []}
    return {c for c in v4 | v6 if c}


def _open_cidrs(rule: dict) -> set[str]:
    return _cidrs(rule) & OPEN_CIDRS


def security_group_problems(rules: Iterable[dict], where: str) -> list[str]:
    problems = []
    for rule in rules or []:
        cidrs = _open_cidrs(rule)
        low, high = _port_range(rule)
        for port, what in PRIVATE_PORTS.items():
            if cidrs and low <= port <= high:
                problems.append(f"{where}: ingress from {', '.join(sorted(cidrs))} on ports {low}-{high} "
                                f"opens {port} ({what}) to the internet")
    return problems


def _whole_internet(cidr: str) -> bool:
    """0.0.0.0/0 and the like; a placeholder (a template before make fills it) is not."""
    if PLACEHOLDER.match(cidr):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return True  # not a CIDR: EC2 would refuse it, and so do we


def ssh_problems(config: dict) -> list[str]:
    """SSH only from the user's CIDR. A group `ray up` creates gets 22 from 0.0.0.0/0 whatever the config says,
    so every node type names one group (SecurityGroupIds) whose rules are provider.security_group's: make
    cluster-up (cluster/aws_setup.py) creates it with exactly those."""
    if (config.get("provider") or {}).get("type") != "aws":
        return []
    where = "provider.security_group"
    groups = {name: tuple((t.get("node_config") or {}).get("SecurityGroupIds") or ())
              for name, t in (config.get("available_node_types") or {}).items()}
    if any(len(g) != 1 for g in groups.values()) or len(set(groups.values())) != 1:
        return [f"available_node_types.*.node_config.SecurityGroupIds: {groups}; every node type needs the one "
                f"group whose rules are {where} (a group `ray up` creates lets SSH in from 0.0.0.0/0)"]
    group = (config.get("provider") or {}).get("security_group") or {}
    ssh = [r for r in group.get("IpPermissions") or [] if _port_range(r)[0] <= 22 <= _port_range(r)[1]]
    if not group.get("GroupName") or not ssh:
        return [f"{where}: no GroupName with an SSH (22) rule from your CIDR, so Ray's own group lets SSH in "
                "from 0.0.0.0/0"]
    return [f"{where}: SSH (22) open to {cidr}; allow only your own CIDR (SSH_CIDR=...)"
            for rule in ssh for cidr in sorted(_cidrs(rule)) if _whole_internet(cidr)]


def _start_command_problems(commands, role: str) -> list[str]:
    key = f"{role}_start_ray_commands"
    if not commands:
        return [f"{key}: missing, so Ray's defaults start {role} nodes without RAY_AUTH_MODE=token"]
    starts = [c for c in commands if re.search(r"\bray start\b", c)]
    if not starts:
        return [f"{key}: no `ray start` command"]
    problems = []
    for command in starts:
        token = bool(TOKEN_MODE.search(command)) and not OTHER_MODE.search(command)
        if not token:
            problems.append(f"{key}: `ray start` without RAY_AUTH_MODE=token in the same command "
                            f"(token authentication off on the {role})")
        host = DASHBOARD_HOST.search(command)
        if role == "head" and host and host.group(1) in ALL_INTERFACES and not token:
            problems.append(f"{key}: dashboard bound to {host.group(1)} without token authentication")
    return problems


def _published_ports(options: Iterable[str]) -> set[int]:
    published = set()
    for option in options or []:
        for match in re.finditer(r"(?:-p|--publish)[= ]+(?:[\d.]+:)?(\d+)(?:-(\d+))?(?::\d+)?", str(option)):
            low = int(match.group(1))
            high = int(match.group(2) or low)
            published |= {p for p in PRIVATE_PORTS if low <= p <= high}
    return published


def _docker_port_problems(config: dict) -> list[str]:
    docker = dict(config.get("docker") or {})
    option_lists = {f"docker.{k}": docker.get(k) for k in ("run_options", "head_run_options", "worker_run_options")}
    for name, node_type in (config.get("available_node_types") or {}).items():
        option_lists[f"available_node_types.{name}.docker.worker_run_options"] = \
            (node_type.get("docker") or {}).get("worker_run_options")
    return [f"{where}: publishes port {port} ({PRIVATE_PORTS[port]})"
            for where, options in option_lists.items() for port in sorted(_published_ports(options))]


def launcher_commands(config: dict) -> list[tuple[str, str]]:
    """(where, command) for every shell command of a launcher config, node types' own included."""
    keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands"]
    commands = [(k, c) for k in keys for c in config.get(k) or []]
    for name, node_type in (config.get("available_node_types") or {}).items():
        for k in ("initialization_commands", "worker_setup_commands"):
            commands += [(f"available_node_types.{name}.{k}", c) for c in node_type.get(k) or []]
    return commands


def _inline_secret_problems(commands: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: a secret written into the config ({INLINE_SECRET.search(c).group(1)})"
            for where, c in commands if INLINE_SECRET.search(c)]


def install_problems(commands: list[tuple[str, str]]) -> list[str]:
    """Nodes run the image: pip-installing the project, torch or Ray at start-up is slow and unpinned."""
    problems = []
    for where, command in commands:
        for part in re.split(r"&&|;|\|\|", command):
            match = re.search(r"\bpip3?\s+install\b(.*)", part)
            try:
                args = shlex.split(match.group(1)) if match else []
            except ValueError:
                args = match.group(1).split()
            if any(PROJECT_PACKAGE.fullmatch(a) for a in args):
                problems.append(f"{where}: `{part.strip()}` installs the project or its pins on every node at "
                                "start-up; build them into the image (cluster/Dockerfile, make cluster-image)")
    return problems


def loose_sync_problems(commands: list[tuple[str, str]]) -> list[str]:
    return [f"{where}: copies ImageNet file by file (1.33M requests); stage the tar shards with "
            "cluster/imagenet_shards.py" for where, c in commands if LOOSE_SYNC.search(c)]


def _head_type(config: dict) -> tuple[str, dict]:
    name = config.get("head_node_type")
    return name, (config.get("available_node_types") or {}).get(name) or {}


def _profile(node_type: dict) -> str | None:
    profile = (node_type.get("node_config") or {}).get("IamInstanceProfile") or {}
    return profile.get("Name") or profile.get("Arn")


def profile_problems(config: dict) -> list[str]:
    """GPU workers get their own least-privilege profile: neither the head's nor Ray's EC2+S3-full default."""
    if (config.get("provider") or {}).get("type") != "aws":
        return []
    head_name, head = _head_type(config)
    head_profile = _profile(head) or RAY_DEFAULT_PROFILE  # Ray gives the head its default when none is named
    problems = []
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head_name:
            continue
        profile = _profile(node_type)
        where = f"available_node_types.{name}.node_config.IamInstanceProfile"
        if not profile:
            problems.append(f"{where}: none; the GPU workers need their own profile (S3 data read, results write)")
        elif profile.split("/")[-1] in (head_profile.split("/")[-1], RAY_DEFAULT_PROFILE):
            problems.append(f"{where}: {profile} is the head's / Ray's default profile (EC2 and S3 full access); "
                            "give the workers their own least-privilege one")
    return problems


def launcher_image_problems(config: dict) -> list[str]:
    """Every node runs the project image of one commit: a Ray-version tag lets nodes run stale cached code."""
    docker = config.get("docker") or {}
    images = {f"docker.{k}": docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)}
    for name, node_type in (config.get("available_node_types") or {}).items():
        for k in ("image", "worker_image"):
            if (node_type.get("docker") or {}).get(k):
                images[f"available_node_types.{name}.docker.{k}"] = node_type["docker"][k]
    if not images:
        return ["docker: no image; the nodes must run the project image (cluster/Dockerfile)"]
    return [p for where, image in images.items() for p in image_tag_problems(image, where)]


def image_tag_problems(image: str, where: str) -> list[str]:
    if not COMMIT_TAG.search(str(image)):
        return [f"{where}: image {image} is not tagged by commit (…-<git sha>); nodes that cached the tag keep "
                "running old code"]
    return []


def _resources_problems(head: dict, workers: dict[str, dict], where: str) -> list[str]:
    """The head has trial_driver (trial drivers stay off preemptible GPU nodes); no worker has it."""
    problems = []
    if not head.get(TRIAL_DRIVER, 0) >= 1:
        problems.append(f"{where}: the head has no `{TRIAL_DRIVER}` resource; trial drivers would land on GPU nodes")
    problems += [f"{name}: a worker with the `{TRIAL_DRIVER}` resource; only the head may run trial drivers"
                 for name, resources in workers.items() if resources.get(TRIAL_DRIVER)]
    return problems


def launcher_trial_driver_problems(config: dict) -> list[str]:
    head_name, head = _head_type(config)
    workers = {f"available_node_types.{name}.resources": t.get("resources") or {}
               for name, t in (config.get("available_node_types") or {}).items() if name != head_name}
    return _resources_problems(head.get("resources") or {}, workers, f"available_node_types.{head_name}.resources")


def launcher_autoscaler_problems(config: dict) -> list[str]:
    """`ray up` runs autoscaler v2 (Ray >= 2.50), which gives up a node still installing after
    RAY_INSTALL_TIMEOUT (default 1800 s): SSH, image pull, ImageNet staging. Only the head's `ray start`
    process tree (the autoscaler) reads it."""
    problems = []
    for where, command in launcher_commands(config):
        head_start = where == "head_start_ray_commands" and re.search(r"\bray start\b.*--head", command, re.S)
        if RECONCILE_ENV.search(command) and not head_start:
            problems.append(f"{where}: RAY_AUTOSCALER_RECONCILE_* set where the autoscaler never reads it; "
                            "set it in the head's `ray start --head` command")
    heads = [c for c in config.get("head_start_ray_commands") or [] if re.search(r"\bray start\b", c)]
    values = [int(v) for c in heads for name, v in RECONCILE_ENV.findall(c) if name == "RAY_INSTALL_STATUS"]
    if not values or min(values) < MIN_NODE_READY_TIMEOUT_S:
        problems.append(f"head_start_ray_commands: {RAY_INSTALL_TIMEOUT} must be >= {MIN_NODE_READY_TIMEOUT_S} "
                        f"(got {values[0] if values else 'the default 1800'}); a node's ImageNet staging counts "
                        "against it and a timed-out node restarts from nothing")
    return problems


def launcher_problems(config: dict) -> list[str]:
    """Problems of one Ray cluster-launcher config (the YAML `ray up` takes)."""
    provider = config.get("provider") or {}
    commands = launcher_commands(config)
    return [
        *security_group_problems((provider.get("security_group") or {}).get("IpPermissions"),
                                 "provider.security_group.IpPermissions"),
        *ssh_problems(config),
        *_start_command_problems(config.get("head_start_ray_commands"), "head"),
        *_start_command_problems(config.get("worker_start_ray_commands"), "worker"),
        *_docker_port_problems(config),
        *_inline_secret_problems(commands),
        *profile_problems(config),
        *launcher_image_problems(config),
        *install_problems(commands),
        *loose_sync_problems(commands),
        *launcher_trial_driver_problems(config),
        *launcher_autoscaler_problems(config),
    ]


# ---- Kubernetes manifests (KubeRay) ----------------------------------------------------------------------


def _env(container: dict) -> dict[str, dict]:
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}


def _literal_secret_env(container: dict, where: str) -> list[str]:
    return [f"{where}: env {name} holds a literal value; take it from a Secret (valueFrom.secretKeyRef)"
            for name, e in _env(container).items()
            if name in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and e.get("value")]


def _pod_image_problems(ray_container: dict, where: str) -> list[str]:
    problems = image_tag_problems(ray_container.get("image", "(none)"), where)
    if ray_container.get("imagePullPolicy") not in ("IfNotPresent", "Always"):
        problems.append(f"{where}: no imagePullPolicy (IfNotPresent with commit tags, or Always)")
    return problems


def _container_commands(containers: list[dict]) -> list[str]:
    return [" ".join(str(a) for a in (c.get("command") or []) + (c.get("args") or [])) for c in containers]


def _pod_problems(template: dict, where: str, auth_options_token: bool) -> list[str]:
    spec = (template or {}).get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        return [f"{where}: no containers"]
    problems = []
    ray_container = containers[0]  # KubeRay runs Ray in the first container
    mode = _env(ray_container).get("RAY_AUTH_MODE", {})
    if mode and str(mode.get("value", "")).lower() != "token":
        problems.append(f"{where}: RAY_AUTH_MODE={mode.get('value')!r} turns token authentication off")
    elif not mode and not auth_options_token:
        problems.append(f"{where}: no RAY_AUTH_MODE=token (and no authOptions: {{mode: token}}): "
                        "token authentication is off")
    if spec.get("hostNetwork"):
        problems.append(f"{where}: hostNetwork puts the Ray ports on the node's own addresses")
    problems += _pod_image_problems(ray_container, f"{where}.containers[{ray_container.get('name', 0)}]")
    init = spec.get("initContainers") or []
    for i, container in enumerate(containers + init):
        name = f"{where}.containers[{container.get('name', i)}]"
        problems += _literal_secret_env(container, name)
        if RECONCILE_ENV.search(" ".join(f"{k}={e.get('value', '')}" for k, e in _env(container).items())):
            problems.append(f"{name}: RAY_AUTOSCALER_RECONCILE_* on a Ray pod; the autoscaler container reads "
                            "it: autoscalerOptions.env")
        for port in container.get("ports") or []:
            if port.get("hostPort") and (port.get("containerPort") in PRIVATE_PORTS
                                         or port.get("hostPort") in PRIVATE_PORTS):
                problems.append(f"{name}: hostPort {port.get('hostPort')} exposes "
                                f"{port.get('containerPort')} on the node")
    problems += loose_sync_problems([(f"{where}.initContainers", c) for c in _container_commands(init)])
    return problems


def parse_ray_resources(value) -> dict:
    """rayStartParams.resources as both readers take it: KubeRay (quotes trimmed, JSON) and Ray's KubeRay
    autoscaler (outer quotes dropped, backslashes removed, JSON with integer values). ValueError if either fails."""
    text = str(value)
    kuberay = json.loads(text.strip("'\"` "))
    ray = json.loads(text[1:-1].replace("\\", ""))
    if kuberay != ray or not isinstance(ray, dict) or not all(isinstance(v, int) for v in ray.values()):
        raise ValueError(f"not '{{\"name\": integer}}': {value!r}")
    return ray


def _group_resources(group: dict, where: str) -> tuple[dict, list[str]]:
    """A KubeRay group's custom Ray resources (rayStartParams.resources or the group's resources field)."""
    resources = {k: float(v) for k, v in (group.get("resources") or {}).items()
                 if k not in ("CPU", "GPU", "TPU", "memory")}
    params = group.get("rayStartParams") or {}
    if "resources" not in params:
        return resources, []
    try:
        return {**parse_ray_resources(params["resources"]), **resources}, []
    except ValueError as err:
        return resources, [f"{where}.rayStartParams.resources: {err}; write it as "
                           "\"'{\\\"trial_driver\\\": 100}'\" (KubeRay passes it to `ray start` through a shell)"]


def kuberay_trial_driver_problems(spec: dict, where: str) -> list[str]:
    head, problems = _group_resources(spec.get("headGroupSpec") or {}, f"{where}.headGroupSpec")
    workers = {}
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        name = f"{where}.workerGroupSpecs[{group.get('groupName', i)}]"
        workers[name], more = _group_resources(group, name)
        problems += more
    return problems + _resources_problems(head, workers, f"{where}.headGroupSpec.rayStartParams.resources")


def kuberay_autoscaler_problems(spec: dict, where: str) -> list[str]:
    """An explicit autoscaler version; with v2, a pod-to-Ray-node timeout that covers the staging."""
    if not spec.get("enableInTreeAutoscaling"):
        return []
    options = spec.get("autoscalerOptions") or {}
    version = options.get("version")
    if version not in ("v1", "v2"):
        return [f"{where}.autoscalerOptions.version: set it (v2) instead of leaving the choice to the "
                "operator's and Ray's defaults"]
    timeouts = {name: e.get("value") for name, e in _env(options).items() if name.startswith("RAY_AUTOSCALER_RECONCILE_")}
    if version == "v1":
        return [f"{where}.autoscalerOptions.env: {name} is read by autoscaler v2 only" for name in timeouts]
    value = timeouts.get(ALLOCATE_TIMEOUT)
    if value is None or not str(value).isdigit() or int(value) < MIN_NODE_READY_TIMEOUT_S:
        return [f"{where}.autoscalerOptions.env: {ALLOCATE_TIMEOUT} must be >= {MIN_NODE_READY_TIMEOUT_S} "
                f"(got {value or 'the default 3600'}); provisioning, the image pull and the ImageNet staging count "
                "against it and a timed-out worker pod restarts from nothing"]
    return []


def raycluster_spec_problems(spec: dict, where: str) -> list[str]:
    """Problems of a RayCluster spec (also the rayClusterSpec of a RayJob)."""
    spec = spec or {}
    problems = []
    auth = spec.get("authOptions") or {}
    auth_token = str(auth.get("mode", "")).lower() == "token"
    if auth and not auth_token:
        problems.append(f"{where}.authOptions: mode {auth.get('mode')!r} turns token authentication off")
    head = spec.get("headGroupSpec") or {}
    if not head:
        problems.append(f"{where}: no headGroupSpec")
    if head.get("serviceType") in PUBLIC_SERVICE_TYPES:
        problems.append(f"{where}.headGroupSpec.serviceType: {head['serviceType']} exposes the dashboard "
                        "and Ray Client ports outside the cluster")
    head_service_type = ((head.get("headService") or {}).get("spec") or {}).get("type")
    if head_service_type in PUBLIC_SERVICE_TYPES:
        problems.append(f"{where}.headGroupSpec.headService: type {head_service_type} exposes the head")
    if head.get("enableIngress"):
        problems.append(f"{where}.headGroupSpec.enableIngress: an Ingress in front of the dashboard")
    params = {str(k): str(v) for k, v in (head.get("rayStartParams") or {}).items()}
    head_containers = ((head.get("template") or {}).get("spec") or {}).get("containers") or [{}]
    head_mode = _env(head_containers[0]).get("RAY_AUTH_MODE", {})
    head_token = str(head_mode.get("value", "")).lower() == "token" if head_mode else auth_token
    if params.get("dashboard-host") in ALL_INTERFACES and not head_token:
        problems.append(f"{where}.headGroupSpec.rayStartParams: dashboard-host {params['dashboard-host']} "
                        "without token authentication")
    problems += _pod_problems(head.get("template"), f"{where}.headGroupSpec.template", auth_token)
    for i, group in enumerate(spec.get("workerGroupSpecs") or []):
        name = group.get("groupName", i)
        problems += _pod_problems(group.get("template"), f"{where}.workerGroupSpecs[{name}].template",
                                  auth_token)
    autoscaler = spec.get("autoscalerOptions") or {}
    problems += _literal_secret_env(autoscaler, f"{where}.autoscalerOptions")
    problems += kuberay_autoscaler_problems(spec, where)
    problems += kuberay_trial_driver_problems(spec, where)
    return problems


def runtime_env_problems(runtime_env: dict, where: str) -> list[str]:
    env_vars = (runtime_env or {}).get("env_vars") or {}
    return [f"{where}: runtime_env env_vars {name!r} looks like a secret (Ray logs runtime_envs); "
            "use a Kubernetes Secret or the node's IAM role instead" for name in env_vars if SECRET_NAME.search(name)]


def command_line_problems(command: str, where: str) -> list[str]:
    """The ImageNet recipes pick bf16 + channels_last on CUDA themselves: a cluster passes no precision flag."""
    flags = [a.split("=")[0] for a in shlex.split(command or "")]
    return [f"{where}: passes {flag}; leave precision to the recipe" for flag in PRECISION_FLAGS if flag in flags]


def rayjob_problems(spec: dict, where: str) -> list[str]:
    """HTTPMode: K8sJobMode follows `ray job logs`, and a dropped stream fails the RayJob and deletes its cluster.
    backoffLimit: a failed run is retried on a new cluster, which resumes the grid."""
    problems = []
    if spec.get("submissionMode", "K8sJobMode") != "HTTPMode":
        problems.append(f"{where}.submissionMode: {spec.get('submissionMode', 'K8sJobMode (the default)')}; use "
                        "HTTPMode: a dropped `ray job logs` stream fails a K8sJobMode RayJob and deletes its cluster")
    if not isinstance(spec.get("backoffLimit"), int) or spec["backoffLimit"] < 1:
        problems.append(f"{where}.backoffLimit: {spec.get('backoffLimit', 'unset')}; set >= 1 so that a transient "
                        "failure reruns the grid (which resumes) on a new cluster")
    problems += command_line_problems(spec.get("entrypoint"), f"{where}.entrypoint")
    if "rayClusterSpec" in spec:
        problems += raycluster_spec_problems(spec["rayClusterSpec"], f"{where}.rayClusterSpec")
    text = spec.get("runtimeEnvYAML")
    if text:
        problems += runtime_env_problems(yaml.safe_load(text), f"{where}.runtimeEnvYAML")
    submitter = spec.get("submitterPodTemplate")
    if submitter:
        for container in (submitter.get("spec") or {}).get("containers") or []:
            problems += _literal_secret_env(container, f"{where}.submitterPodTemplate")
    return problems


def _service_exposes(service_spec: dict) -> bool:
    for port in service_spec.get("ports") or []:
        if {port.get("port"), port.get("targetPort")} & (set(PRIVATE_PORTS) | {"dashboard", "client"}):
            return True
    return False


def kuberay_problems(docs: Iterable[dict]) -> list[str]:
    """Problems of a list of Kubernetes objects (one YAML file's documents)."""
    problems = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        kind = doc.get("kind")
        name = (doc.get("metadata") or {}).get("name", "?")
        where = f"{kind}/{name}"
        spec = doc.get("spec") or {}
        if kind == "RayCluster":
            problems += raycluster_spec_problems(spec, f"{where}.spec")
        elif kind == "RayJob":
            problems += rayjob_problems(spec, f"{where}.spec")
        elif kind == "RayService":
            problems += raycluster_spec_problems(spec.get("rayClusterConfig"), f"{where}.spec.rayClusterConfig")
        elif kind == "Service":
            if spec.get("type") in PUBLIC_SERVICE_TYPES and _service_exposes(spec):
                problems.append(f"{where}: a {spec['type']} Service in front of the dashboard/Ray Client port")
        elif kind == "Ingress":
            for rule in spec.get("rules") or []:
                for path in ((rule.get("http") or {}).get("paths")) or []:
                    port = (((path.get("backend") or {}).get("service") or {}).get("port")) or {}
                    if port.get("number") in PRIVATE_PORTS or port.get("name") in ("dashboard", "client"):
                        problems.append(f"{where}: an Ingress to the dashboard/Ray Client port")
        elif kind in ("Pod", "Deployment", "Job", "StatefulSet"):
            template = doc if kind == "Pod" else spec.get("template")
            for container in ((template or {}).get("spec") or {}).get("containers") or []:
                problems += _literal_secret_env(container, where)
    return problems


# ---- the NetworkPolicy in front of the Ray pods (across files) ---------------------------------------------


def cluster_specs(docs: Iterable[dict]) -> list[tuple[str, dict]]:
    specs = []
    for doc in docs:
        if not isinstance(doc, dict):
            continue
        where = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name', '?')}"
        spec = doc.get("spec") or {}
        if doc.get("kind") == "RayCluster":
            specs.append((where, spec))
        elif doc.get("kind") == "RayJob" and spec.get("rayClusterSpec"):
            specs.append((where, spec["rayClusterSpec"]))
    return specs


def _ray_pod_labels(spec: dict) -> list[dict]:
    groups = [spec.get("headGroupSpec") or {}] + list(spec.get("workerGroupSpecs") or [])
    return [((g.get("template") or {}).get("metadata") or {}).get("labels") or {} for g in groups]


def _selects(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels; matchExpressions In/Exists) that picks a pod with these labels."""
    if selector is None:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if not ((op == "Exists" and key in labels) or (op == "In" and labels.get(key) in values)):
            return False
    return True


def _rule_ports(rule: dict) -> set[int]:
    """The Ray head ports an ingress rule admits (no ports: all of them)."""
    if not rule.get("ports"):
        return set(RAY_HEAD_PORTS)
    ports = set()
    for port in rule["ports"]:
        value = port.get("port")
        if value is None:
            return set(RAY_HEAD_PORTS)
        value = PORT_NAMES.get(value, value)
        end = port.get("endPort", value) if isinstance(value, int) else value
        ports |= {p for p in RAY_HEAD_PORTS if isinstance(value, int) and value <= p <= end}
    return ports


def _peer_problem(peer: dict, ports: set[int], ray_labels: list[dict]) -> str | None:
    """None if this peer may reach these ports: Ray pods of this namespace, or the operator on 8265 only."""
    if "ipBlock" in peer:
        return f"ipBlock {peer['ipBlock'].get('cidr')}"
    pod = peer.get("podSelector")
    if "namespaceSelector" not in peer and all(_selects(pod, labels) for labels in ray_labels):
        return None
    if ports <= {8265} and _selects(pod, OPERATOR_LABELS) and not _selects(pod, {}):
        return None  # the KubeRay operator submits (HTTPMode) and watches jobs through the dashboard
    return f"peer {json.dumps(peer, sort_keys=True)}"


def _policy_rule_problems(policy: dict, where: str, ray_labels: list[dict]) -> list[str]:
    problems = []
    for i, rule in enumerate((policy.get("spec") or {}).get("ingress") or []):
        ports = _rule_ports(rule)
        if not ports:
            continue
        names = ", ".join(f"{p} ({RAY_HEAD_PORTS[p]})" for p in sorted(ports))
        peers = rule.get("from") or [{"ipBlock": {"cidr": "anywhere"}}]
        for peer in peers:
            problem = _peer_problem(peer, ports, ray_labels)
            if problem:
                problems.append(f"{where}.spec.ingress[{i}]: {problem} reaches {names}; only Ray pods may "
                                "(and the KubeRay operator the dashboard)")
    return problems


def network_policy_problems(docs: list) -> list[str]:
    """A Kubernetes cluster's other pods must not reach the GCS, dashboard or client ports of ours."""
    specs = cluster_specs(docs)
    if not specs:
        return []
    ray_labels = [labels for _, spec in specs for labels in _ray_pod_labels(spec)]
    policies = [d for d in docs if isinstance(d, dict) and d.get("kind") == "NetworkPolicy"]
    covering = [p for p in policies
                if all(_selects((p.get("spec") or {}).get("podSelector"), labels) for labels in ray_labels)
                and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])]
    if not covering:
        return [f"{', '.join(w for w, _ in specs)}: no NetworkPolicy selects the Ray pods, so any pod reaches "
                "GCS 6379 and the dashboard 8265; check (and apply) cluster/kuberay-prereqs.yaml with it"]
    return [p for policy in covering
            for p in _policy_rule_problems(policy, f"NetworkPolicy/{policy['metadata']['name']}", ray_labels)]


# ---- IAM policies and the image ------------------------------------------------------------------------------


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _statement_problems(statement: dict, where: str) -> list[str]:
    actions = [str(a) for a in _as_list(statement.get("Action", []))]
    resources = [str(r) for r in _as_list(statement.get("Resource", []))]
    problems = [f"{where}: action {a} grants a whole service" for a in actions if a == "*" or a.endswith(":*")]
    if "*" in resources and set(actions) - {"ecr:GetAuthorizationToken"}:
        problems.append(f"{where}: Resource \"*\" for {', '.join(actions)}; name the bucket, repository or role")
    if any(a.startswith("s3:") for a in actions):
        problems += [f"{where}: S3 resource {r} is not one bucket" for r in resources
                     if r != "*" and not re.fullmatch(r"arn:aws:s3:::(?:[a-z0-9.-]+|__[A-Z]+__)(/[^*]+(/\*)?)?", r)]
    if any(a.lower() == "iam:passrole" for a in actions):
        problems += [f"{where}: iam:PassRole on {r}; pass one named role (the GPU workers')" for r in resources
                     if r != "*" and not re.fullmatch(r"arn:aws:iam::[\d*]*:role/[\w+=,.@-]+", r) or r.endswith(RAY_DEFAULT_PROFILE)]
    return problems


def iam_policy_problems(policy: dict) -> list[str]:
    """Least privilege: no wildcard actions or resources, S3 scoped to the bucket, PassRole for one role."""
    if not isinstance(policy, dict) or "Statement" not in policy:
        return ["not an IAM policy document (no Statement)"]
    return [p for i, s in enumerate(_as_list(policy["Statement"])) if s.get("Effect") == "Allow"
            for p in _statement_problems(s, f"Statement[{s.get('Sid', i)}]")]


def dockerfile_problems(text: str) -> list[str]:
    """The image has exactly the tested versions: every pip install goes through constraints.txt."""
    problems = []
    if not re.search(r"^COPY\b.*\bconstraints\.txt\b", text, re.M):
        problems.append("constraints.txt is not copied into the image")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    logical = re.sub(r"\\\n", " ", code)
    for line in logical.splitlines():
        for part in re.split(r"&&|;", line):
            if re.search(r"\bpip3?\s+install\b", part) and not re.search(r"(?:-c|--constraint)[ =]+\S*constraints\.txt",
                                                                         part):
                problems.append(f"`{part.strip()}` installs without -c constraints.txt (untested versions)")
    return problems


# ---- before applying: the operator and its CRDs ------------------------------------------------------------


def _items(docs: list) -> list[dict]:
    """Objects of `kubectl get -o yaml` output (a List) or of plain documents."""
    out = []
    for doc in docs:
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List"):
            out += doc.get("items") or []
        elif isinstance(doc, dict):
            out.append(doc)
    return out


def operator_version_problems(pods: list) -> list[str]:
    """The KubeRay operator running the cluster: >= 1.6, or authOptions.secretName is dropped."""
    images = [c.get("image", "") for pod in _items(pods) for c in (pod.get("spec") or {}).get("containers") or []]
    if not images:
        return ["no KubeRay operator pod found (label app.kubernetes.io/component=kuberay-operator); install "
                f"KubeRay >= {'.'.join(map(str, MIN_KUBERAY))}"]
    problems = []
    for image in images:
        match = re.search(r":v?(\d+)\.(\d+)(?:\.\d+)?(?:[-+][\w.]*)?$", image.split("@")[0])
        if not match:
            problems.append(f"KubeRay operator image {image}: no version in its tag; cannot tell whether it "
                            f"supports authOptions.secretName (>= {'.'.join(map(str, MIN_KUBERAY))})")
        elif (int(match.group(1)), int(match.group(2))) < MIN_KUBERAY:
            problems.append(f"KubeRay operator {image}: older than {'.'.join(map(str, MIN_KUBERAY))}, which drops "
                            "authOptions.secretName: the cluster's token would not be ours")
    return problems


def pruned_fields(value, schema: dict, path: str) -> list[str]:
    """Fields of value that a structural CRD schema would silently drop (pruning)."""
    if not isinstance(schema, dict) or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in pruned_fields(v, schema.get("items") or {}, f"{path}[{i}]")]
    if not isinstance(value, dict):
        return []
    properties, additional = schema.get("properties") or {}, schema.get("additionalProperties")
    out = []
    for key, child in value.items():
        if key in properties:
            out += pruned_fields(child, properties[key], f"{path}.{key}")
        elif isinstance(additional, dict):
            out += pruned_fields(child, additional, f"{path}.{key}")
        elif additional is not True and not schema.get("x-kubernetes-int-or-string"):
            out.append(f"{path}.{key}")
    return out


def crd_problems(crds: list, manifests: list) -> list[str]:
    """Every RayCluster/RayJob field survives the installed CRDs (an older operator's CRD prunes new ones)."""
    schemas = {}
    for crd in _items(crds):
        kind = ((crd.get("spec") or {}).get("names") or {}).get("kind")
        for version in (crd.get("spec") or {}).get("versions") or []:
            root = ((version.get("schema") or {}).get("openAPIV3Schema") or {}).get("properties") or {}
            schemas[(kind, f"{(crd.get('spec') or {}).get('group')}/{version.get('name')}")] = root.get("spec") or {}
    problems = []
    for doc in manifests:
        if not isinstance(doc, dict) or doc.get("kind") not in ("RayCluster", "RayJob", "RayService"):
            continue
        where = f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}"
        schema = schemas.get((doc["kind"], doc.get("apiVersion")))
        if schema is None:
            problems.append(f"{where}: no CRD for {doc['kind']} {doc.get('apiVersion')} installed")
            continue
        problems += [f"{where}: the installed CRD drops {field}; upgrade KubeRay (>= "
                     f"{'.'.join(map(str, MIN_KUBERAY))})" for field in pruned_fields(doc.get("spec"), schema, "spec")]
    return problems


# ---- files ----------------------------------------------------------------------------------------------


def is_launcher_config(doc) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def config_problems(docs: list) -> list[str]:
    """Problems of one file's YAML documents, whichever kind of config it is."""
    if len(docs) == 1 and is_launcher_config(docs[0]):
        return launcher_problems(docs[0])
    return kuberay_problems(docs)


def load_docs(path) -> list:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def file_problems(path) -> list[str]:
    """Problems of one file: a launcher config or manifests (YAML), an IAM policy (JSON), a Dockerfile."""
    path = Path(path)
    if path.name.startswith("Dockerfile"):
        found = dockerfile_problems(path.read_text())
    elif path.suffix == ".json":
        found = iam_policy_problems(json.loads(path.read_text()))
    else:
        found = config_problems(load_docs(path))
    return [f"{path}: {p}" for p in found]


def paths_problems(paths: list, operator_pods=None, crds=None) -> list[str]:
    """Each file's problems, then those across files: the NetworkPolicy, the operator and its CRDs."""
    problems = [p for path in paths for p in file_problems(path)]
    manifests = [d for path in paths if Path(path).suffix in (".yaml", ".yml") for d in load_docs(path)]
    problems += network_policy_problems(manifests)
    if operator_pods is not None:
        problems += operator_version_problems(load_docs(operator_pods))
    if crds is not None:
        problems += crd_problems(load_docs(crds), manifests)
    return problems


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="launcher configs, KubeRay manifests, IAM policies, Dockerfiles")
    p.add_argument("--kuberay-operator", metavar="PODS.yaml",
                   help="kubectl get pods -A -l app.kubernetes.io/component=kuberay-operator -o yaml")
    p.add_argument("--crds", metavar="CRDS.yaml", help="kubectl get crd rayclusters.ray.io rayjobs.ray.io -o yaml")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    problems = paths_problems(args.paths, args.kuberay_operator, args.crds)
    for problem in problems:
        print(f"refused: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.paths)} file(s): no public Ray port, token auth everywhere, least privilege, "
              "commit-tagged image, settings for a long grid")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
