"""What a Ray cluster on AWS left behind: its EC2 instances in any state but terminated, and how to remove them.

    python cluster/leftovers.py build/cluster/aws-gpu.yaml [--terminate]

`make cluster-leftovers` and `make cluster-resume` run it on the rendered launcher config. Ray's launcher tags
every instance it starts with the config's cluster_name (`ray-cluster-name`), head and GPU nodes alike, so a
lost head's cluster is found by that tag in the config's region. It lists them (id, type, state, head or
worker, node type, launch time) with the commands that remove them, and terminates nothing unless asked
with --terminate (`LEFTOVERS=terminate`). Needs boto3 and AWS credentials allowed to describe instances.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

# The tags of ray/autoscaler/tags.py (TAG_RAY_CLUSTER_NAME, TAG_RAY_NODE_KIND, TAG_RAY_USER_NODE_TYPE).
CLUSTER_TAG = "ray-cluster-name"
KIND_TAG = "ray-node-type"
NODE_TYPE_TAG = "ray-user-node-type"
# Every state but terminated: what still exists and, but for shutting-down, can still bill.
STATES = ("pending", "running", "shutting-down", "stopping", "stopped")
# What Ray's AWS node provider lists (non_terminated_nodes): `ray up`, its autoscaler and `ray down` see only these.
RAY_SEES = ("pending", "running")


@dataclass(frozen=True)
class Instance:
    id: str
    type: str
    state: str
    kind: str  # head or worker (Ray's ray-node-type tag)
    node_type: str  # the config's node type: head, gpu_p5, gpu_p4d
    launched: str


def leftovers(ec2, cluster_name: str) -> list[Instance]:
    """The cluster's instances in any state but terminated, the head first."""
    filters = [{"Name": f"tag:{CLUSTER_TAG}", "Values": [cluster_name]},
               {"Name": "instance-state-name", "Values": list(STATES)}]
    found, token = [], None
    while True:
        page = ec2.describe_instances(Filters=filters, **({"NextToken": token} if token else {}))
        for reservation in page["Reservations"]:
            for i in reservation["Instances"]:
                tags = {t["Key"]: t["Value"] for t in i.get("Tags") or []}
                found.append(Instance(i["InstanceId"], i["InstanceType"], i["State"]["Name"],
                                      tags.get(KIND_TAG, "?"), tags.get(NODE_TYPE_TAG, "?"),
                                      str(i.get("LaunchTime", ""))))
        token = page.get("NextToken")
        if not token:
            return sorted(found, key=lambda x: (x.kind != "head", x.launched, x.id))


def report(instances: list[Instance], cluster_name: str, region: str, config: str) -> list[str]:
    """The listing, what becomes of each instance on `ray up`, and the commands that remove them."""
    if not instances:
        return [f"cluster {cluster_name} left nothing behind in {region}: no instance of it but terminated ones"]
    lines = [f"cluster {cluster_name} left {len(instances)} instance(s) in {region}:"]
    lines += [f"  {i.id:<19}  {i.type:<13} {i.state:<13} {i.kind:<6} {i.node_type:<8} launched {i.launched}"
              for i in instances]
    seen = [i for i in instances if i.state in RAY_SEES]
    unseen = [i for i in instances if i.state not in RAY_SEES and i.state != "shutting-down"]
    if any(i.kind == "head" for i in seen):
        lines.append("  a running head: `ray up` keeps it and restarts Ray on it (ending whatever still runs there)")
    if any(i.kind != "head" for i in seen):
        lines.append("  running GPU nodes: the new head's autoscaler (v2) takes them back (setup and ray start "
                     "again; the staged ImageNet stays) and removes them after 10 idle minutes")
    if unseen:
        lines.append(f"  stopped: {' '.join(i.id for i in unseen)}: Ray sees pending and running instances only "
                     "(neither `ray up` nor `ray down` touches these); their volumes bill until terminated")
    removable = [i.id for i in instances if i.state != "shutting-down"]
    if removable:
        lines.append("remove them (nothing is terminated unless you ask):")
        lines.append(f"  aws ec2 terminate-instances --region {region} --instance-ids {' '.join(removable)}")
        lines.append("  or: make cluster-resume LEFTOVERS=terminate (these, then the new cluster)")
        if seen:
            lines.append(f"  or, for the pending and running ones: make cluster-down (ray down -y {config})")
    return lines


def terminate(ec2, instances: list[Instance]) -> list[str]:
    """Terminate every listed instance not already on its way out; the ids terminated."""
    ids = [i.id for i in instances if i.state != "shutting-down"]
    if ids:
        ec2.terminate_instances(InstanceIds=ids)
    return ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/leftovers.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", type=Path, help="the rendered launcher config (build/cluster/aws-gpu.yaml)")
    p.add_argument("--terminate", action="store_true", help="terminate what is listed")
    args = p.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    name, region = config["cluster_name"], config["provider"]["region"]
    import boto3

    ec2 = boto3.client("ec2", region_name=region)
    instances = leftovers(ec2, name)
    print("\n".join(report(instances, name, region, str(args.config))))
    if args.terminate and (ids := terminate(ec2, instances)):
        print(f"terminating {' '.join(ids)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
