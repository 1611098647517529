"""Can EC2 give the GPU nodes what the rendered config asks for? Checked by `make cluster-up` before it creates
anything, since `ray up` would only find out when the autoscaler's launches fail, node after node.

    python cluster/capacity.py build/cluster/aws-gpu.yaml

It reads the choices cluster/render.py wrote (GPU_TYPE and NODES, MARKET, RESERVATION, SUBNET, ZONE) and
refuses in one line, with the fix:
- GPU_TYPE not offered in an AZ of SUBNET (each subnet's AZ) or ZONE, or, with neither, in no AZ of the region
  (describe_instance_type_offerings);
- a RESERVATION that does not exist, is not active (a Capacity Block that has not started is scheduled: it
  says when it starts), reserves another instance type, another AZ than SUBNET/ZONE or another platform than
  Linux/UNIX, or whose kind does not match MARKET (a Capacity Block needs MARKET=capacity-block, and only a
  Capacity Block takes it) (describe_capacity_reservations).
Fewer instances available in the reservation than NODES is a warning, not a refusal: the reservation's
running instances may be freed. Needs boto3 and AWS credentials allowed to describe instance type offerings,
subnets and capacity reservations.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

LINUX = "Linux/UNIX"


@dataclass(frozen=True)
class Choice:
    """The GPU nodes as the rendered config has them."""
    region: str
    gpu_type: str
    nodes: int
    market: str  # on-demand, spot or capacity-block
    reservation: str  # cr-..., or ""
    subnets: tuple[str, ...]
    zones: tuple[str, ...]


def choice(config: dict) -> Choice:
    """What cluster/render.py chose: the GPU node type with workers (the others have max_workers 0)."""
    (gpu,) = [t for t in config["available_node_types"].values()
              if t.get("resources", {}).get("GPU") and t["max_workers"] > 0]
    node = gpu["node_config"]
    target = (node.get("CapacityReservationSpecification") or {}).get("CapacityReservationTarget") or {}
    zones = config["provider"].get("availability_zone") or ""
    return Choice(region=config["provider"]["region"], gpu_type=node["InstanceType"], nodes=gpu["max_workers"],
                  market=(node.get("InstanceMarketOptions") or {}).get("MarketType", "on-demand"),
                  reservation=target.get("CapacityReservationId", ""), subnets=tuple(node.get("SubnetIds") or ()),
                  zones=tuple(z for z in zones.split(",") if z))


def placements(ec2, c: Choice) -> dict[str, str]:
    """Where the nodes go: ZONE's AZs, or each SUBNET's AZ, as {AZ: how the user named it}; {} for anywhere."""
    if c.zones:
        return {z: f"ZONE {z}" for z in c.zones}
    if not c.subnets:
        return {}
    try:
        subnets = ec2.describe_subnets(SubnetIds=list(c.subnets))["Subnets"]
    except ec2.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "InvalidSubnetID.NotFound":
            raise
        raise SystemExit(f"error: SUBNET={','.join(c.subnets)}: {e.response['Error']['Message']} in {c.region} "
                         f"(aws ec2 describe-subnets --region {c.region} lists its subnets)") from None
    return {s["AvailabilityZone"]: f"{s['SubnetId']} ({s['AvailabilityZone']})" for s in subnets}


def offered_zones(ec2, gpu_type: str) -> set[str]:
    """The AZs of the client's region that offer the instance type."""
    zones, token = set(), None
    while True:
        page = ec2.describe_instance_type_offerings(
            LocationType="availability-zone", Filters=[{"Name": "instance-type", "Values": [gpu_type]}],
            **({"NextToken": token} if token else {}))
        zones |= {o["Location"] for o in page["InstanceTypeOfferings"]}
        token = page.get("NextToken")
        if not token:
            return zones


def reservation_problem(r: dict, c: Choice, where: dict[str, str]) -> str | None:
    """Why the reservation cannot take the GPU nodes, as the one line to print; None if it can."""
    name, block = f"RESERVATION={c.reservation}", r.get("ReservationType", "default") == "capacity-block"
    if block and c.market != "capacity-block":
        return f"{name} is a Capacity Block: set MARKET=capacity-block"
    if c.market == "capacity-block" and not block:
        return f"{name} is an On-Demand Capacity Reservation, not a Capacity Block: drop MARKET=capacity-block"
    if r["InstanceType"] != c.gpu_type:
        return f"{name} reserves {r['InstanceType']}, not GPU_TYPE={c.gpu_type}: set GPU_TYPE={r['InstanceType']}"
    if r["InstancePlatform"] != LINUX:
        return f"{name} reserves {r['InstancePlatform']} instances; the nodes run {LINUX}: use a {LINUX} reservation"
    if elsewhere := sorted(v for z, v in where.items() if z != r["AvailabilityZone"]):
        return (f"{name} is in {r['AvailabilityZone']}, but the nodes may go to {', '.join(elsewhere)}: "
                f"set ZONE={r['AvailabilityZone']} (or SUBNET= a subnet there)")
    if r["State"] == "scheduled":
        return f"{name} starts at {r['StartDate']} (it is scheduled): run make cluster-up once it is active"
    if r["State"] != "active":
        return (f"{name} is {r['State']}, not active: wait until it is, or choose another "
                f"(aws ec2 describe-capacity-reservations --region {c.region})")
    return None


def check(ec2, c: Choice) -> list[str]:
    """The lines to print (a summary, and a warning if the reservation is short); SystemExit with one line
    on a choice EC2 cannot serve."""
    where = placements(ec2, c)
    offered = offered_zones(ec2, c.gpu_type)
    if not offered:
        raise SystemExit(f"error: {c.gpu_type} is offered in no availability zone of {c.region}: choose another "
                         "CLUSTER_REGION (or GPU_TYPE)")
    if missing := sorted(v for z, v in where.items() if z not in offered):
        raise SystemExit(f"error: {c.gpu_type} is not offered in {', '.join(missing)}; it is in "
                         f"{', '.join(sorted(offered))}: set ZONE= (or SUBNET= a subnet) to one of those")
    lines = [f"{c.gpu_type} is offered in {', '.join(sorted(where) if where else sorted(offered))}"]
    if not c.reservation:
        return lines
    try:
        found = ec2.describe_capacity_reservations(CapacityReservationIds=[c.reservation])["CapacityReservations"]
    except ec2.exceptions.ClientError as e:
        if e.response["Error"]["Code"] != "InvalidCapacityReservationId.NotFound":
            raise
        found = []
    if not found:
        raise SystemExit(f"error: RESERVATION={c.reservation}: no such capacity reservation in {c.region} "
                         f"(aws ec2 describe-capacity-reservations --region {c.region} lists yours)")
    (r,) = found
    if problem := reservation_problem(r, c, where):
        raise SystemExit(f"error: {problem}")
    available, total = r["AvailableInstanceCount"], r["TotalInstanceCount"]
    lines.append(f"RESERVATION={c.reservation}: active, {available} of its {total} instances available")
    if available < c.nodes:
        lines.append(f"warning: RESERVATION={c.reservation} has {available} instances available for NODES={c.nodes}: "
                     f"GPU nodes beyond {available} fail to launch until its instances are freed")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/capacity.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the rendered launcher config (build/cluster/aws-gpu.yaml)")
    args = p.parse_args(argv)
    c = choice(yaml.safe_load(args.config.read_text()))
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        lines = check(boto3.client("ec2", region_name=c.region), c)
    except (BotoCoreError, ClientError) as e:
        raise SystemExit(f"error: checking capacity with EC2: {e} (AWS credentials allowed to describe instance "
                         "type offerings, subnets and capacity reservations?)") from None
    for line in lines:
        print(line, file=sys.stderr if line.startswith("warning:") else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
