"""What `make cluster-up` sets up in AWS before `ray up`: the nodes' IAM roles and their security group.

    python cluster/aws_setup.py build/cluster/aws-gpu.yaml build/cluster/aws-head-policy.json \\
        build/cluster/aws-worker-policy.json

- An IAM role + instance profile for each profile the config's node types name (gnp-ray-head, gnp-ray-worker),
  trusted by EC2. The head's gets AmazonEC2FullAccess (its autoscaler launches and terminates the GPU nodes,
  as with Ray's default role) and aws-head-policy.json; the workers' gets aws-worker-policy.json only.
- The security group provider.security_group.GroupName in the VPC of the config's SubnetIds (SUBNET=...), else
  the default VPC, its ingress set to exactly: all
  traffic from the group itself, plus provider.security_group.IpPermissions (SSH from SSH_CIDR). Its id is
  written into the config in place of __SECURITY_GROUP__, so every node type uses it as it is: a group
  that `ray up` creates itself also lets SSH in from 0.0.0.0/0.
Idempotent: run it again and it converges (a new SSH_CIDR replaces the old rule). Needs boto3 and AWS
credentials allowed to manage IAM roles and EC2 security groups.
"""

import json
import sys
import time
from pathlib import Path

import yaml

EC2_TRUST = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
AUTOSCALER_POLICY = "arn:aws:iam::aws:policy/AmazonEC2FullAccess"
INLINE_POLICY = "gnp-ray"
PLACEHOLDER = "__SECURITY_GROUP__"


def profiles(config: dict) -> dict[str, str]:
    """Instance profile name -> 'head' or 'worker', from the node types' IamInstanceProfile."""
    out = {}
    for name, node_type in config["available_node_types"].items():
        profile = ((node_type.get("node_config") or {}).get("IamInstanceProfile") or {}).get("Name")
        if profile:
            out[profile] = "head" if name == config["head_node_type"] else "worker"
    if sorted(set(out.values())) != ["head", "worker"]:
        raise SystemExit("error: the config must name an instance profile for the head and for the GPU workers")
    return out


def _key(permission: dict) -> tuple:
    """An ingress permission without the fields EC2 adds when it describes one (descriptions, user ids)."""
    return (str(permission.get("IpProtocol")), permission.get("FromPort", -1), permission.get("ToPort", -1),
            tuple(sorted(r["CidrIp"] for r in permission.get("IpRanges") or [])),
            tuple(sorted(r["CidrIpv6"] for r in permission.get("Ipv6Ranges") or [])),
            tuple(sorted(p["GroupId"] for p in permission.get("UserIdGroupPairs") or [])))


def desired_ingress(config: dict, group_id: str) -> list[dict]:
    """All traffic between the cluster's nodes, plus the config's rules (SSH from the user's CIDR)."""
    own = {"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group_id, "Description": "between cluster nodes"}]}
    return [own, *(config["provider"].get("security_group") or {}).get("IpPermissions", [])]


def needs_update(current: list[dict], desired: list[dict]) -> bool:
    return sorted(map(_key, current)) != sorted(map(_key, desired))


def ensure_role(iam, name: str, kind: str, policy_text: str) -> bool:
    """The role and its instance profile; True if the profile was just created (EC2 sees it a bit later)."""
    try:
        iam.get_role(RoleName=name)
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(EC2_TRUST),
                        Description=f"gnp-ray {kind} nodes")
    iam.put_role_policy(RoleName=name, PolicyName=INLINE_POLICY, PolicyDocument=policy_text)
    if kind == "head":
        iam.attach_role_policy(RoleName=name, PolicyArn=AUTOSCALER_POLICY)
    created = False
    try:
        profile = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]
        created = True
    if name not in [r["RoleName"] for r in profile.get("Roles", [])]:
        iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
        created = True
    return created


def cluster_vpc(ec2, config: dict) -> str:
    """The VPC of the config's subnets (SUBNET=...: every node type has them), else the region's default."""
    subnets = sorted({s for t in config["available_node_types"].values()
                      for s in (t.get("node_config") or {}).get("SubnetIds") or []})
    if subnets:
        vpcs = {s["VpcId"] for s in ec2.describe_subnets(SubnetIds=subnets)["Subnets"]}
        if len(vpcs) != 1:
            raise SystemExit(f"error: SUBNET={','.join(subnets)} spans VPCs {sorted(vpcs)}; name subnets of one VPC")
        return vpcs.pop()
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise SystemExit("error: the region has no default VPC; create one (aws ec2 create-default-vpc) or set SUBNET=")
    return vpcs[0]["VpcId"]


def ensure_security_group(ec2, config: dict) -> str:
    """The group in the cluster's VPC with exactly the desired ingress; returns its id."""
    name = config["provider"]["security_group"]["GroupName"]
    vpc = cluster_vpc(ec2, config)
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                   {"Name": "group-name", "Values": [name]}])["SecurityGroups"]
    if groups:
        group_id, current = groups[0]["GroupId"], groups[0].get("IpPermissions", [])
    else:
        group_id = ec2.create_security_group(GroupName=name, VpcId=vpc,
                                             Description="gnp-ray: SSH from one CIDR, all traffic between nodes")["GroupId"]
        current = []
    desired = desired_ingress(config, group_id)
    if needs_update(current, desired):
        if current:
            ec2.revoke_security_group_ingress(GroupId=group_id, IpPermissions=current)
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=desired)
    return group_id


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    config_path, head_policy, worker_policy = map(Path, args)
    text = config_path.read_text()
    config = yaml.safe_load(text)
    import boto3

    iam = boto3.client("iam")
    policies = {"head": head_policy.read_text(), "worker": worker_policy.read_text()}
    created = [ensure_role(iam, name, kind, policies[kind]) for name, kind in profiles(config).items()]
    group_id = ensure_security_group(boto3.client("ec2", region_name=config["provider"]["region"]), config)
    config_path.write_text(text.replace(PLACEHOLDER, group_id))
    if any(created):
        time.sleep(15)  # a new instance profile takes a few seconds before EC2 accepts it
    print(f"IAM roles {', '.join(profiles(config))}; security group {group_id} written into {config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
