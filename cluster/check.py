"""Refuse cluster configs that open Ray to strangers: the dashboard/Jobs API (8265) and Ray Client (10001) run
whatever code they are sent (Ray's security page).

    python cluster/check.py cluster/aws-gpu.yaml cluster/aws-head-policy.json cluster/aws-worker-policy.json
    python cluster/check.py cluster/kuberay-prereqs.yaml cluster/kuberay-raycluster.yaml cluster/kuberay-rayjob.yaml

A launcher config must validate against Ray's own cluster-config schema (ray/autoscaler/ray-schema.json of the
installed Ray). KubeRay manifests are validated against the installed CRDs by the API server (`make
kuberay-preflight`: kubectl --dry-run=server --validate=strict). Beyond the schemas, this refuses:
  - 8265 or 10001 reachable from outside: security-group ingress from 0.0.0.0/0 or ::/0, Docker port
    publishing, LoadBalancer/NodePort Services, Ingresses, hostPort, hostNetwork;
  - SSH from anywhere, or node types outside the one group provider.security_group declares (a group that
    `ray up` creates itself lets SSH in from 0.0.0.0/0);
  - a Ray node without token authentication (RAY_AUTH_MODE=token);
  - KubeRay pods without a NetworkPolicy that admits only Ray pods (and the KubeRay operator, to 8265);
  - secrets written into a config; GPU workers with the head's or Ray's default instance profile; IAM policies
    with wildcard actions, Resource "*", S3 beyond one bucket, iam:PassRole beyond one named role.
Exit status 1 and one line per problem.
"""

import argparse
import functools
import importlib.util
import ipaddress
import json
import re
import sys
from pathlib import Path

import jsonschema
import yaml

PRIVATE_PORTS = {8265: "dashboard/Jobs API", 10001: "Ray Client"}
PRIVATE_PORT_NAMES = {"dashboard", "client"}  # KubeRay's names for those container ports
OPEN_CIDRS = {"0.0.0.0/0", "::/0"}
PUBLIC_SERVICE_TYPES = {"LoadBalancer", "NodePort"}
PLACEHOLDER = re.compile(r"^__[A-Z_]+__$")  # a template's, before make fills it
RAY_DEFAULT_PROFILE = "ray-autoscaler-v1"  # Ray's default instance profile: EC2 and S3 full access
OPERATOR_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}  # KubeRay's Helm chart and kustomize set it
SECRET_NAME = re.compile(r"[A-Z0-9_]*(?:TOKEN|SECRET|PASSWORD|CREDENTIAL|API_KEY|ACCESS_KEY|PRIVATE_KEY)[A-Z0-9_]*")
# NAME=value (a command) or NAME: value (a runtime_env in YAML) with a literal value; $VAR and $(...) are fine.
INLINE_SECRET = re.compile(rf"\b({SECRET_NAME.pattern})\s*[=:]\s*(?![\"']?\$)[^\s\"']")
TOKEN_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?token\b")
OTHER_MODE = re.compile(r"\bRAY_AUTH_MODE=[\"']?(?!token\b)\w")
PUBLISH = re.compile(r"(?:-p|--publish)[= ]+(?:[\d.]+:)?(\d+)(?:-(\d+))?")


def one_line(text) -> str:
    return " ".join(str(text).split())


# ---- cluster-launcher configs (ray up) ----------------------------------------------------------------


@functools.cache
def ray_schema() -> dict:
    """The cluster-config schema of the installed Ray (found without importing Ray, which is slow)."""
    ray = importlib.util.find_spec("ray")
    if ray is None:
        sys.exit("error: Ray is not installed in this Python; run make install")
    return json.loads((Path(ray.origin).parent / "autoscaler" / "ray-schema.json").read_text())


def schema_problems(config: dict) -> list[str]:
    errors = jsonschema.Draft7Validator(ray_schema()).iter_errors(config)
    return [f"{'.'.join(map(str, e.absolute_path)) or 'config'}: {one_line(e.message)} (Ray's cluster-config schema)"
            for e in sorted(errors, key=lambda e: list(map(str, e.absolute_path)))]


def _port_range(rule: dict) -> tuple[int, int]:
    """The ports an EC2 IpPermission covers; protocol -1 (all traffic) or port -1 means every port."""
    low, high = rule.get("FromPort", -1), rule.get("ToPort", -1)
    if str(rule.get("IpProtocol", "-1")).lower() in ("-1", "all") or -1 in (low, high) or None in (low, high):
        return 0, 65535
    return int(low), int(high)


def _cidrs(rule: dict) -> set[str]:
    v4 = {r.get("CidrIp") for r in rule.get("IpRanges") or []}
    v6 = {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges") or []}
    return {c for c in v4 | v6 if c}


def _whole_internet(cidr: str) -> bool:
    if PLACEHOLDER.match(cidr):
        return False
    try:
        return ipaddress.ip_network(cidr, strict=False).prefixlen == 0
    except ValueError:
        return True  # not a CIDR: EC2 would refuse it, and so do we


def security_group_problems(config: dict) -> list[str]:
    """No 8265/10001 from the internet; SSH only from the user's CIDR, on every node type's one group."""
    if (config.get("provider") or {}).get("type") != "aws":
        return []
    where = "provider.security_group"
    group = (config.get("provider") or {}).get("security_group") or {}
    rules = group.get("IpPermissions") or []
    problems = []
    for rule in rules:
        (low, high), cidrs = _port_range(rule), _cidrs(rule) & OPEN_CIDRS
        problems += [f"{where}.IpPermissions: ingress from {', '.join(sorted(cidrs))} on ports {low}-{high} opens "
                     f"{port} ({what}) to the internet" for port, what in PRIVATE_PORTS.items()
                     if cidrs and low <= port <= high]
    groups = {name: tuple((t.get("node_config") or {}).get("SecurityGroupIds") or ())
              for name, t in (config.get("available_node_types") or {}).items()}
    if any(len(g) != 1 for g in groups.values()) or len(set(groups.values())) != 1:
        return problems + [f"available_node_types.*.node_config.SecurityGroupIds: {groups}; every node type needs "
                           f"the one group whose rules are {where} (a group `ray up` creates lets SSH in from "
                           "0.0.0.0/0)"]
    ssh = [r for r in rules if _port_range(r)[0] <= 22 <= _port_range(r)[1]]
    if not group.get("GroupName") or not ssh:
        return problems + [f"{where}: no GroupName with an SSH (22) rule from your CIDR, so Ray's own group lets "
                           "SSH in from 0.0.0.0/0"]
    return problems + [f"{where}: SSH (22) open to {cidr}; allow only your own CIDR (SSH_CIDR=...)"
                       for rule in ssh for cidr in sorted(_cidrs(rule)) if _whole_internet(cidr)]


def start_command_problems(config: dict, role: str) -> list[str]:
    """Token auth in the same shell command as every `ray start` (each command runs in a shell of its own)."""
    key = f"{role}_start_ray_commands"
    starts = [c for c in config.get(key) or [] if re.search(r"\bray start\b", c)]
    if not starts:
        return [f"{key}: no `ray start`, so Ray's defaults start {role} nodes without RAY_AUTH_MODE=token"]
    return [f"{key}: `ray start` without RAY_AUTH_MODE=token in the same command (token authentication off "
            f"on the {role})" for c in starts if not TOKEN_MODE.search(c) or OTHER_MODE.search(c)]


def docker_port_problems(config: dict) -> list[str]:
    sections = {"docker": config.get("docker") or {}}
    for name, node_type in (config.get("available_node_types") or {}).items():
        sections[f"available_node_types.{name}.docker"] = node_type.get("docker") or {}
    problems = []
    for where, docker in sections.items():
        for key in ("run_options", "head_run_options", "worker_run_options"):
            for match in PUBLISH.finditer(" ".join(map(str, docker.get(key) or []))):
                low, high = int(match.group(1)), int(match.group(2) or match.group(1))
                problems += [f"{where}.{key}: publishes port {port} ({what})"
                             for port, what in PRIVATE_PORTS.items() if low <= port <= high]
    return problems


def _profile(node_type: dict) -> str:
    profile = (node_type.get("node_config") or {}).get("IamInstanceProfile") or {}
    return str(profile.get("Name") or profile.get("Arn") or "").split("/")[-1]


def profile_problems(config: dict) -> list[str]:
    """GPU workers get their own least-privilege profile: neither the head's nor Ray's EC2+S3-full default."""
    if (config.get("provider") or {}).get("type") != "aws":
        return []
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    head_profile = _profile(types.get(head) or {}) or RAY_DEFAULT_PROFILE  # what Ray gives a head with none
    problems = []
    for name, node_type in ((n, t) for n, t in types.items() if n != head):
        where, profile = f"available_node_types.{name}.node_config.IamInstanceProfile", _profile(node_type)
        if not profile:
            problems.append(f"{where}: none; the GPU workers need their own profile (S3 data read, results write)")
        elif profile in (head_profile, RAY_DEFAULT_PROFILE):
            problems.append(f"{where}: {profile} is the head's / Ray's default profile (EC2 and S3 full access); "
                            "give the workers their own least-privilege one")
    return problems


def launcher_problems(config: dict) -> list[str]:
    """Problems of one Ray cluster-launcher config (the YAML `ray up` takes)."""
    return [*schema_problems(config), *security_group_problems(config), *start_command_problems(config, "head"),
            *start_command_problems(config, "worker"), *docker_port_problems(config), *profile_problems(config),
            *secret_problems(config)]


# ---- Kubernetes manifests (KubeRay) ----------------------------------------------------------------------


def _env(container: dict) -> dict[str, dict]:
    return {e.get("name"): e for e in container.get("env") or [] if isinstance(e, dict)}


def _pod_problems(template: dict, where: str, auth_token: bool) -> list[str]:
    spec = (template or {}).get("spec") or {}
    containers = spec.get("containers") or [{}]
    mode = _env(containers[0]).get("RAY_AUTH_MODE")  # KubeRay runs Ray in the first container
    problems = []
    if mode is not None and str(mode.get("value", "")).lower() != "token":
        problems.append(f"{where}: RAY_AUTH_MODE={mode.get('value')!r} turns token authentication off")
    elif mode is None and not auth_token:
        problems.append(f"{where}: no RAY_AUTH_MODE=token (and no authOptions: {{mode: token}}): "
                        "token authentication is off")
    if spec.get("hostNetwork"):
        problems.append(f"{where}: hostNetwork puts the Ray ports on the node's own addresses")
    for container in containers + (spec.get("initContainers") or []):
        problems += [f"{where}.containers[{container.get('name')}]: hostPort {p['hostPort']} exposes "
                     f"{p.get('containerPort')} on the node" for p in container.get("ports") or []
                     if p.get("hostPort") and {p.get("containerPort"), p["hostPort"]} & set(PRIVATE_PORTS)]
    return problems


def raycluster_problems(spec: dict, where: str) -> list[str]:
    """A RayCluster spec (also a RayJob's rayClusterSpec): token auth on every Ray pod, the head not exposed."""
    auth = spec.get("authOptions") or {}
    auth_token = str(auth.get("mode", "")).lower() == "token"
    problems = [f"{where}.authOptions: mode {auth.get('mode')!r} turns token authentication off"] \
        if auth and not auth_token else []
    head = spec.get("headGroupSpec") or {}
    if head.get("serviceType") in PUBLIC_SERVICE_TYPES:
        problems.append(f"{where}.headGroupSpec.serviceType: {head['serviceType']} exposes the dashboard and Ray "
                        "Client ports outside the cluster")
    head_service = ((head.get("headService") or {}).get("spec") or {}).get("type")
    if head_service in PUBLIC_SERVICE_TYPES:
        problems.append(f"{where}.headGroupSpec.headService: type {head_service} exposes the head")
    if head.get("enableIngress"):
        problems.append(f"{where}.headGroupSpec.enableIngress: an Ingress in front of the dashboard")
    groups = [("headGroupSpec", head)] + [(f"workerGroupSpecs[{g.get('groupName', i)}]", g)
                                          for i, g in enumerate(spec.get("workerGroupSpecs") or [])]
    for name, group in groups:
        problems += _pod_problems(group.get("template"), f"{where}.{name}.template", auth_token)
    return problems


def _exposes(port: dict) -> bool:
    return bool({port.get("port"), port.get("targetPort"), port.get("number"), port.get("name")}
                & (set(PRIVATE_PORTS) | PRIVATE_PORT_NAMES))


def kuberay_problems(docs: list) -> list[str]:
    """Problems of a list of Kubernetes objects (one YAML file's documents)."""
    problems = []
    for doc in (d for d in docs if isinstance(d, dict)):
        kind, spec = doc.get("kind"), doc.get("spec") or {}
        where = f"{kind}/{(doc.get('metadata') or {}).get('name', '?')}"
        if kind == "RayCluster":
            problems += raycluster_problems(spec, f"{where}.spec")
        elif kind == "RayJob" and "rayClusterSpec" in spec:
            problems += raycluster_problems(spec["rayClusterSpec"], f"{where}.spec.rayClusterSpec")
        elif kind == "RayService":
            problems += raycluster_problems(spec.get("rayClusterConfig") or {}, f"{where}.spec.rayClusterConfig")
        elif kind == "Service" and spec.get("type") in PUBLIC_SERVICE_TYPES:
            if any(map(_exposes, spec.get("ports") or [])):
                problems.append(f"{where}: a {spec['type']} Service in front of the dashboard/Ray Client port")
        elif kind == "Ingress":
            paths = [p for r in spec.get("rules") or [] for p in (r.get("http") or {}).get("paths") or []]
            if any(_exposes(((p.get("backend") or {}).get("service") or {}).get("port") or {}) for p in paths):
                problems.append(f"{where}: an Ingress to the dashboard/Ray Client port")
        problems += secret_problems(doc, where)
    return problems


def _ray_pod_labels(spec: dict) -> list[dict]:
    groups = [spec.get("headGroupSpec") or {}] + list(spec.get("workerGroupSpecs") or [])
    return [((g.get("template") or {}).get("metadata") or {}).get("labels") or {} for g in groups]


def _selects(selector: dict | None, labels: dict) -> bool:
    """A label selector (matchLabels; matchExpressions In/Exists) that picks a pod with these labels."""
    if selector is None or any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all((e.get("operator") == "Exists" and e.get("key") in labels)
               or (e.get("operator") == "In" and labels.get(e.get("key")) in (e.get("values") or []))
               for e in selector.get("matchExpressions") or [])


def network_policy_problems(docs: list) -> list[str]:
    """Only Ray pods of the namespace reach Ray pods (GCS, dashboard, client, raylets); the operator the dashboard."""
    clusters, labels = [], []
    for doc in (d for d in docs if isinstance(d, dict) and d.get("kind") in ("RayCluster", "RayJob")):
        spec = doc.get("spec") or {}
        spec = spec.get("rayClusterSpec") if doc["kind"] == "RayJob" else spec
        if spec:
            clusters.append(f"{doc['kind']}/{(doc.get('metadata') or {}).get('name', '?')}")
            labels += _ray_pod_labels(spec)
    if not labels:
        return []
    covering = [p for p in docs if isinstance(p, dict) and p.get("kind") == "NetworkPolicy"
                and all(_selects((p.get("spec") or {}).get("podSelector"), pod) for pod in labels)
                and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])]
    if not covering:
        return [f"{', '.join(clusters)}: no NetworkPolicy selects the Ray pods, so any pod reaches GCS 6379 and the "
                "dashboard 8265; check (and apply) cluster/kuberay-prereqs.yaml with it"]
    problems = []
    for policy in covering:
        for i, rule in enumerate(policy["spec"].get("ingress") or []):
            ports = rule.get("ports") or [{}]  # none: every port
            dashboard_only = all(p.get("port") in (8265, "dashboard") for p in ports)
            for peer in rule.get("from") or [None]:
                selector = (peer or {}).get("podSelector")
                ray_pods = set(peer or {}) == {"podSelector"} and all(_selects(selector, pod) for pod in labels)
                operator = dashboard_only and _selects(selector, OPERATOR_LABELS) and not _selects(selector, {})
                if not (ray_pods or operator):
                    problems.append(f"NetworkPolicy/{policy['metadata']['name']}.spec.ingress[{i}]: "
                                    f"{json.dumps(peer, sort_keys=True) if peer else 'anywhere'} reaches the Ray "
                                    "pods (GCS 6379, dashboard 8265, Ray Client 10001); only Ray pods may (and the "
                                    "KubeRay operator the dashboard)")
    return problems


# ---- secrets and IAM policies --------------------------------------------------------------------------------


def secret_problems(node, where: str = "config") -> list[str]:
    """Secrets written into a config: NAME=value in a command or a runtime_env, a literal env value in a pod."""
    if isinstance(node, dict):
        if SECRET_NAME.fullmatch(str(node.get("name", ""))) and "value" in node:
            return [f"{where}: env {node['name']} holds a literal value; take it from a Secret "
                    "(valueFrom.secretKeyRef)"]
        literal = [f"{where}.{k}: {k} holds a literal secret; use a Secret or the node's IAM role"
                   for k, v in node.items()
                   if SECRET_NAME.fullmatch(str(k)) and isinstance(v, str | int) and not str(v).startswith("$")]
        return literal + [p for k, v in node.items() for p in secret_problems(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [p for i, v in enumerate(node) for p in secret_problems(v, f"{where}[{i}]")]
    match = INLINE_SECRET.search(node) if isinstance(node, str) else None
    return [f"{where}: a secret written into the config ({match.group(1)})"] if match else []


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
                     if r != "*" and (not re.fullmatch(r"arn:aws:iam::[\d*]*:role/[\w+=,.@-]+", r)
                                      or r.endswith(RAY_DEFAULT_PROFILE))]
    return problems


def iam_policy_problems(policy: dict) -> list[str]:
    """Least privilege: no wildcard actions or resources, S3 scoped to the bucket, PassRole for one role."""
    if not isinstance(policy, dict) or "Statement" not in policy:
        return ["not an IAM policy document (no Statement)"]
    return [p for i, s in enumerate(_as_list(policy["Statement"])) if s.get("Effect") == "Allow"
            for p in _statement_problems(s, f"Statement[{s.get('Sid', i)}]")]


# ---- files ----------------------------------------------------------------------------------------------


def is_launcher_config(doc) -> bool:
    return isinstance(doc, dict) and "provider" in doc and "cluster_name" in doc


def load_docs(path) -> list:
    return [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]


def file_problems(path) -> list[str]:
    """Problems of one file: a launcher config or KubeRay manifests (YAML), an IAM policy (JSON)."""
    path = Path(path)
    try:
        if path.suffix == ".json":
            found = iam_policy_problems(json.loads(path.read_text()))
        elif path.suffix in (".yaml", ".yml"):
            docs = load_docs(path)
            found = launcher_problems(docs[0]) if len(docs) == 1 and is_launcher_config(docs[0]) \
                else kuberay_problems(docs)
        else:
            found = ["not a launcher config or KubeRay manifests (.yaml) or an IAM policy (.json)"]
    except (OSError, ValueError, yaml.YAMLError) as err:
        found = [f"cannot read it: {one_line(err)}"]
    return [f"{path}: {p}" for p in found]


def paths_problems(paths: list) -> list[str]:
    """Each file's problems, then the NetworkPolicy across the YAML files."""
    problems = [p for path in paths for p in file_problems(path)]
    try:
        manifests = [d for path in paths if Path(path).suffix in (".yaml", ".yml") for d in load_docs(path)]
    except (OSError, yaml.YAMLError):
        return problems  # file_problems said so
    return problems + network_policy_problems(manifests)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/check.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", help="launcher configs, KubeRay manifests, IAM policies")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    problems = paths_problems(args.paths)
    for problem in problems:
        print(f"refused: {problem}", file=sys.stderr)
    if not problems:
        print(f"ok: {len(args.paths)} file(s): Ray's schema, no public Ray port, token auth everywhere, "
              "least privilege")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
