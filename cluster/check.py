"""Refuse cluster configs that open Ray to strangers.

    python cluster/check.py cluster/aws-gpu.yaml cluster/kuberay-raycluster.yaml cluster/kuberay-rayjob.yaml

Ray's dashboard/Jobs API (8265) and Ray Client (10001) run any code they are sent, so (Ray's security page,
DESIGN §7) a config here must:
  - never open 8265 or 10001 to the internet: no security-group ingress from 0.0.0.0/0 or ::/0 on a port
    range that covers them, no Docker port publishing of them, no LoadBalancer/NodePort Service, Ingress,
    hostPort or hostNetwork in front of them on Kubernetes;
  - keep Ray's token authentication on (RAY_AUTH_MODE=token, Ray >= 2.52) on the head and on every worker:
    in the same shell command as each `ray start` of a cluster-launcher config, and on every Ray container
    of a KubeRay cluster (or through KubeRay's authOptions: {mode: token});
  - bind the dashboard to all interfaces (--dashboard-host=0.0.0.0) only where token auth is on;
  - keep secrets out of the config: no literal RAY_AUTH_TOKEN / AWS secret values, no secret-looking
    runtime_env env_vars (Ray logs runtime_envs).
Exit status 1 and one line per problem if any config breaks a rule. Needs only PyYAML.
"""

import re
import sys
from collections.abc import Iterable
from pathlib import Path

import yaml

PRIVATE_PORTS = {8265: "dashboard/Jobs API", 10001: "Ray Client"}
PORT_NAMES = {"dashboard", "client"}  # KubeRay's names for the container ports 8265 and 10001
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
ALL_INTERFACES = {"0.0.0.0", "::", "[::]", "*"}
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY", re.I)
# A secret written into a command as a literal value (a $VAR or $(...) reference is fine).
INLINE_SECRET = re.compile(r"\b(RAY_AUTH_TOKEN|AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN)=(?![\"']?\$)\S")
TOKEN_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?token\b", re.I)
OTHER_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?(?!token\b)\w+", re.I)
DASHBOARD_HOST = re.compile(r"--dashboard-host[= ]+[\"']?([^\s\"']+)")


# ---- cluster-launcher configs (ray up) ----------------------------------------------------------------


def _port_range(rule: dict) -> tuple[int, int]:
    """The ports an EC2 IpPermission covers; protocol -1 (all traffic) or port -1 means every port."""
    if str(rule.get("IpProtocol", "-1")).lower() in ("-1", "all"):
        return 0, 65535
    low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
    if low in (-1, None) or high in (-1, None):
        return 0, 65535
    return int(low), int(high)


def _open_cidrs(rule: dict) -> set[str]:
    v4 = {r.get("CidrIp") for r in rule.get("IpRanges", []) or []}
    v6 = {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", []) or []}
    return (v4 | v6) & OPEN_CIDRS


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


def launcher_problems(config: dict) -> list[str]:
    """Problems of one Ray cluster-launcher config (the YAML `ray up` takes)."""
    problems = []
    provider = config.get("provider") or {}
    problems += security_group_problems((provider.get("security_group") or {}).get("IpPermissions"),
                                        "provider.security_group.IpPermissions")
    problems += _start_command_problems(config.get("head_start_ray_commands"), "head")
    problems += _start_command_problems(config.get("worker_start_ray_commands"), "worker")

    docker = dict(config.get("docker") or {})
    option_lists = {f"docker.{k}": docker.get(k) for k in ("run_options", "head_run_options", "worker_run_options")}
    for name, node_type in (config.get("available_node_types") or {}).items():
        option_lists[f"available_node_types.{name}.docker.worker_run_options"] = \
            (node_type.get("docker") or {}).get("worker_run_options")
    for where, options in option_lists.items():
        for port in sorted(_published_ports(options)):
            problems.append(f"{where}: publishes port {port} ({PRIVATE_PORTS[port]})")

    command_keys = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                    "head_start_ray_commands", "worker_start_ray_commands"]
    commands = [(k, c) for k in command_keys for c in config.get(k) or []]
    for name, node_type in (config.get("available_node_types") or {}).items():
        for k in ("initialization_commands", "worker_setup_commands"):
            commands += [(f"available_node_types.{name}.{k}", c) for c in node_type.get(k) or []]
    for where, command in commands:
        if INLINE_SECRET.search(command):
            problems.append(f"{where}: a secret written into the config ({INLINE_SECRET.search(command).group(1)})")
    return problems


# ---- Kubernetes manifests (KubeRay) ----------------------------------------------------------------------


def _env(container: dict) -> dict[str, dict]:
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}


def _literal_secret_env(container: dict, where: str) -> list[str]:
    return [f"{where}: env {name} holds a literal value; take it from a Secret (valueFrom.secretKeyRef)"
            for name, e in _env(container).items()
            if name in ("RAY_AUTH_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") and e.get("value")]


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
    for i, container in enumerate(containers + (spec.get("initContainers") or [])):
        name = f"{where}.containers[{container.get('name', i)}]"
        problems += _literal_secret_env(container, name)
        for port in container.get("ports") or []:
            if port.get("hostPort") and (port.get("containerPort") in PRIVATE_PORTS
                                         or port.get("hostPort") in PRIVATE_PORTS):
                problems.append(f"{name}: hostPort {port.get('hostPort')} exposes "
                                f"{port.get('containerPort')} on the node")
    return problems


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
    return problems


def runtime_env_problems(runtime_env: dict, where: str) -> list[str]:
    env_vars = (runtime_env or {}).get("env_vars") or {}
    return [f"{where}: runtime_env env_vars {name!r} looks like a secret (Ray logs runtime_envs); "
            "use a Kubernetes Secret or the node's IAM role instead" for name in env_vars if SECRET_NAME.search(name)]


def _service_exposes(service_spec: dict) -> bool:
    for port in service_spec.get("ports") or []:
        if {port.get("port"), port.get("targetPort")} & (set(PRIVATE_PORTS) | PORT_NAMES):
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
            if "rayClusterSpec" in spec:
                problems += raycluster_spec_problems(spec["rayClusterSpec"], f"{where}.spec.rayClusterSpec")
            text = spec.get("runtimeEnvYAML")
            if text:
                problems += runtime_env_problems(yaml.safe_load(text), f"{where}.spec.runtimeEnvYAML")
            submitter = spec.get("submitterPodTemplate")
            if submitter:
                for container in (submitter.get("spec") or {}).get("containers") or []:
                    problems += _literal_secret_env(container, f"{where}.spec.submitterPodTemplate")
        elif kind == "RayService":
            problems += raycluster_spec_problems(spec.get("rayClusterConfig"), f"{where}.spec.rayClusterConfig")
        elif kind == "Service":
            if spec.get("type") in PUBLIC_SERVICE_TYPES and _service_exposes(spec):
                problems.append(f"{where}: a {spec['type']} Service in front of the dashboard/Ray Client port")
        elif kind == "Ingress":
            for rule in spec.get("rules") or []:
                for path in ((rule.get("http") or {}).get("paths")) or []:
                    port = (((path.get("backend") or {}).get("service") or {}).get("port")) or {}
                    if port.get("number") in PRIVATE_PORTS or port.get("name") in PORT_NAMES:
                        problems.append(f"{where}: an Ingress to the dashboard/Ray Client port")
        elif kind in ("Pod", "Deployment", "Job", "StatefulSet"):
            template = doc if kind == "Pod" else spec.get("template")
            for container in ((template or {}).get("spec") or {}).get("containers") or []:
                problems += _literal_secret_env(container, where)
    return problems


# ---- files ----------------------------------------------------------------------------------------------


def is_launcher_config(doc) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def config_problems(docs: list) -> list[str]:
    """Problems of one file's YAML documents, whichever kind of config it is."""
    if len(docs) == 1 and is_launcher_config(docs[0]):
        return launcher_problems(docs[0])
    return kuberay_problems(docs)


def file_problems(path) -> list[str]:
    text = Path(path).read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    return [f"{path}: {p}" for p in config_problems(docs)]


def main(argv=None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python cluster/check.py CONFIG.yaml ...", file=sys.stderr)
        return 2
    problems = [p for path in paths for p in file_problems(path)]
    for problem in problems:
        print(f"insecure: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(paths)} config(s): no public 8265/10001, token auth on every node, no inline secrets")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
