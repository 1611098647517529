"""The GPU nodes of a rendered launcher config: which type, how many, on what capacity, in which subnet or AZ.

    python cluster/render.py build/cluster/aws-gpu.yaml --gpu-type p4d.24xlarge --nodes 4 \\
        [--market on-demand|spot|capacity-block] [--reservation cr-...] [--subnet subnet-...] [--zone us-east-1a]

`make cluster-render GPU_TYPE=... NODES=... MARKET=... RESERVATION=... SUBNET=... ZONE=...` runs it on the
file it has filled in. The template (cluster/aws-gpu.yaml) has one node type per 8-GPU instance type with its
vCPUs; the chosen one gets max_workers NODES, the others 0. Capacity: spot, an On-Demand Capacity
Reservation (RESERVATION alone), or an EC2 Capacity Block for ML (MARKET=capacity-block RESERVATION=cr-...),
on the GPU nodes only (the head stays on-demand). A reservation or block lives in one AZ, and p4d/p5 exist
only in some AZs: SUBNET (every node, so they share one VPC) or ZONE (Ray picks subnets there) says where.
The file is edited line by line, so its comments stay; the defaults (p5.48xlarge, 4, on-demand) change nothing.

    python cluster/render.py build/cluster/kuberay-rayjob.yaml --nodes 4

On a KubeRay RayCluster or RayJob (`make kuberay-render NODES=...`) NODES is the GPU worker group's maxReplicas,
and a group that starts at full size (the RayJob's: replicas = maxReplicas) starts at NODES; the GPU type there
is the group's nodeSelector, which make fills in, so --nodes is the only choice it takes.
"""

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

MARKETS = ("on-demand", "spot", "capacity-block")
KUBERAY_KINDS = ("RayCluster", "RayJob")
RESERVATION = re.compile(r"cr-[0-9a-f]{8,17}")
SUBNET = re.compile(r"subnet-[0-9a-f]{8,17}")
ZONE = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d[a-z]")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def set_key(text: str, path: tuple[str | int, ...], value) -> str:
    """text with path (mapping keys and block-list indexes from the top) set to value, written as one line of
    JSON (valid YAML); every other line, comments included, as it was. A missing last key is added first in
    its mapping (in a list item it must exist: the item's first line is its "- ")."""
    data = yaml.safe_load(text)
    node = data
    for key in path[:-1]:
        node = node[key]
    if node.get(path[-1]) == value:
        return text
    lines = text.splitlines(keepends=True)
    view = list(lines)  # the lines as their indentation reads: the "- " of a list item entered is two spaces
    lo, hi, indent = 0, len(lines), 0
    for depth, key in enumerate(path):
        if isinstance(key, int):
            items = [i for i in range(lo, hi) if view[i].startswith(" " * indent + "- ")]
            assert key < len(items), path  # a block list (safe_load found the item)
            found = items[key]
            view[found] = " " * (indent + 2) + view[found][indent + 2:]
            end = next((i for i in range(found + 1, hi) if _content(view[i]) and _indent(view[i]) <= indent), hi)
            lo, hi, indent = found, end, indent + 2
            continue
        pattern = re.compile(rf"^ {{{indent}}}{re.escape(key)}:(?:\s|$)")
        found = next((i for i in range(lo, hi) if pattern.match(view[i])), None)
        if depth == len(path) - 1:
            if found is None:
                assert not (depth and isinstance(path[depth - 1], int)), path
                lines.insert(lo, f"{' ' * indent}{key}: {json.dumps(value)}\n")
            else:
                lines[found] = f"{lines[found][:indent]}{key}: {json.dumps(value)}\n"
            break
        assert found is not None, path  # the keys above the last one exist: safe_load found them
        end = next((i for i in range(found + 1, hi) if _content(view[i]) and _indent(view[i]) <= indent), hi)
        lo, hi = found + 1, end
        indent = next(_indent(view[i]) for i in range(lo, hi) if _content(view[i]))
    out = "".join(lines)
    check = yaml.safe_load(out)
    for key in path:
        check = check[key]
    assert check == value, (path, value)
    return out


def gpu_types(config: dict) -> dict[str, str]:
    """Instance type -> node type name, for the node types with GPUs."""
    return {t["node_config"]["InstanceType"]: name for name, t in config["available_node_types"].items()
            if t.get("resources", {}).get("GPU")}


def node_count(nodes: str) -> int:
    """NODES as a number; SystemExit with one line unless it is a whole number, at least 1."""
    if not re.fullmatch(r"[0-9]+", nodes) or int(nodes) < 1:
        raise SystemExit(f"error: NODES={nodes}: a whole number of GPU nodes, at least 1")
    return int(nodes)


def choose(text: str, gpu_type: str, nodes: str, market: str = "on-demand", reservation: str = "",
           subnet: str = "", zone: str = "") -> str:
    """The config text with the GPU nodes chosen; SystemExit with one line on a choice that cannot work."""
    config = yaml.safe_load(text)
    types = gpu_types(config)
    if gpu_type not in types:
        raise SystemExit(f"error: GPU_TYPE={gpu_type}: choose one of {', '.join(sorted(types))} "
                         "(the 8-GPU node types of cluster/aws-gpu.yaml)")
    nodes = node_count(nodes)
    if market not in MARKETS:
        raise SystemExit(f"error: MARKET={market}: one of {', '.join(MARKETS)}")
    if reservation and not RESERVATION.fullmatch(reservation):
        raise SystemExit(f"error: RESERVATION={reservation}: a capacity reservation id, cr-0123456789abcdef0")
    if market == "capacity-block" and not reservation:
        raise SystemExit("error: MARKET=capacity-block needs RESERVATION=cr-... (the block's reservation id)")
    if market == "spot" and reservation:
        raise SystemExit("error: MARKET=spot cannot use RESERVATION: drop one of them")
    subnets = [s for s in subnet.split(",") if s]
    if bad := [s for s in subnets if not SUBNET.fullmatch(s)]:
        raise SystemExit(f"error: SUBNET={','.join(bad)}: subnet ids, subnet-0123456789abcdef0 (comma-separated)")
    region = config["provider"]["region"]
    zones = [z for z in zone.split(",") if z]
    if bad := [z for z in zones if not (ZONE.fullmatch(z) and z.startswith(region))]:
        raise SystemExit(f"error: ZONE={','.join(bad)}: availability zones of {region}, e.g. {region}a")
    if reservation and not (subnets or zones):
        raise SystemExit(f"error: RESERVATION={reservation} lives in one AZ: set ZONE= to it (or SUBNET= to a "
                         "subnet there); aws ec2 describe-capacity-reservations shows it")

    text = set_key(text, ("max_workers",), nodes)
    for instance_type, name in types.items():
        text = set_key(text, ("available_node_types", name, "max_workers"), nodes if instance_type == gpu_type else 0)
    chosen = ("available_node_types", types[gpu_type], "node_config")
    if market != "on-demand":
        text = set_key(text, (*chosen, "InstanceMarketOptions"), {"MarketType": market})
    if reservation:
        text = set_key(text, (*chosen, "CapacityReservationSpecification"),
                       {"CapacityReservationTarget": {"CapacityReservationId": reservation}})
    if subnets:
        for name in config["available_node_types"]:
            text = set_key(text, ("available_node_types", name, "node_config", "SubnetIds"), subnets)
    if zones:
        text = set_key(text, ("provider", "availability_zone"), ",".join(zones))
    return text


def _has_gpus(group: dict) -> bool:
    return any((c.get("resources") or {}).get("limits", {}).get("nvidia.com/gpu")
               for c in group["template"]["spec"]["containers"])


def kuberay_nodes(text: str, nodes: str) -> str:
    """A KubeRay RayCluster's or RayJob's text with NODES as its GPU worker groups' maxReplicas, and as the
    replicas of a group that starts at full size; SystemExit with one line on a bad NODES."""
    count = node_count(nodes)
    manifest = yaml.safe_load(text)
    spec = ("spec", "rayClusterSpec") if manifest["kind"] == "RayJob" else ("spec",)
    groups = manifest["spec"].get("rayClusterSpec", manifest["spec"])["workerGroupSpecs"]
    gpu = [i for i, group in enumerate(groups) if _has_gpus(group)]
    if not gpu:
        raise SystemExit("error: the manifest has no GPU worker group (nvidia.com/gpu limits) for NODES to size")
    for i in gpu:
        group = (*spec, "workerGroupSpecs", i)
        if groups[i].get("replicas") == groups[i]["maxReplicas"]:
            text = set_key(text, (*group, "replicas"), count)
        text = set_key(text, (*group, "maxReplicas"), count)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/render.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="a filled-in launcher config or KubeRay manifest, edited in place")
    p.add_argument("--gpu-type", default="")
    p.add_argument("--nodes", required=True)
    p.add_argument("--market", default="on-demand")
    p.add_argument("--reservation", default="")
    p.add_argument("--subnet", default="")
    p.add_argument("--zone", default="")
    args = p.parse_args(argv)
    text = args.config.read_text()
    if yaml.safe_load(text).get("kind") in KUBERAY_KINDS:
        if (args.gpu_type, args.market, args.reservation, args.subnet, args.zone) != ("", "on-demand", "", "", ""):
            raise SystemExit("error: a KubeRay manifest takes --nodes only (its GPU type is the nodeSelector that "
                             "make fills in; capacity and AZ are its node pool's)")
        args.config.write_text(kuberay_nodes(text, args.nodes))
        return 0
    args.config.write_text(choose(text, args.gpu_type, args.nodes, args.market, args.reservation, args.subnet,
                                  args.zone))
    return 0


if __name__ == "__main__":
    sys.exit(main())
