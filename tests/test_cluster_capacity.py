"""The capacity checks `make cluster-up` runs before it creates anything (cluster/capacity.py): GPU_TYPE is
offered where SUBNET/ZONE put the nodes (or somewhere in the region), and RESERVATION exists, is active, and
matches the type, the AZ, Linux/UNIX and MARKET; fewer instances available than NODES is a warning.

Offline: a stand-in EC2 client answering from a small world (and, for the make target, a stand-in boto3).
"""

import inspect
import json
import sys
import types
from datetime import UTC, datetime

import pytest
import yaml
from cluster_files import MAKE_FILL, load, run_make

capacity = load("capacity")
RID = "cr-0123456789abcdef0"
SUBNET_A, SUBNET_B = "subnet-0aaaaaaaaaaaaaaa0", "subnet-0bbbbbbbbbbbbbbb0"


class ClientError(Exception):
    """botocore's: the parsed error response, and its message."""

    def __init__(self, error_response, operation_name):
        error = error_response["Error"]
        super().__init__(f"An error occurred ({error['Code']}) when calling the {operation_name} operation: "
                         f"{error['Message']}")
        self.response = error_response


class FakeEC2:
    """Just enough of boto3's EC2 client for cluster/capacity.py, answering from a world (the AZs that offer
    each type, the subnets' AZs, the capacity reservations) in pages of one; it records every call."""

    class exceptions:
        ClientError = ClientError

    def __init__(self, world, log=None):
        self.world, self.log, self.calls = world, log, []

    def _called(self, *call):
        self.calls.append(call)
        if self.log:
            with open(self.log, "a") as f:
                f.write(json.dumps(call) + "\n")

    def describe_instance_type_offerings(self, LocationType, Filters, NextToken=None):
        self._called("describe_instance_type_offerings", LocationType, Filters)
        (wanted,) = [f["Values"] for f in Filters if f["Name"] == "instance-type"]
        found = [{"InstanceType": t, "LocationType": LocationType, "Location": z}
                 for t in wanted for z in self.world["offerings"].get(t, [])]
        start = int(NextToken or 0)
        page = {"InstanceTypeOfferings": found[start:start + 1]}
        if start + 1 < len(found):
            page["NextToken"] = str(start + 1)
        return page

    def describe_subnets(self, SubnetIds):
        self._called("describe_subnets", SubnetIds)
        if missing := [s for s in SubnetIds if s not in self.world["subnets"]]:
            raise ClientError({"Error": {"Code": "InvalidSubnetID.NotFound",
                                         "Message": f"The subnet ID '{missing[0]}' does not exist"}}, "DescribeSubnets")
        return {"Subnets": [{"SubnetId": s, "AvailabilityZone": self.world["subnets"][s]} for s in SubnetIds]}

    def describe_capacity_reservations(self, CapacityReservationIds):
        self._called("describe_capacity_reservations", CapacityReservationIds)
        found = [r for r in self.world["reservations"] if r["CapacityReservationId"] in CapacityReservationIds]
        if not found:
            raise ClientError({"Error": {"Code": "InvalidCapacityReservationId.NotFound",
                                         "Message": "The capacity reservation does not exist"}},
                              "DescribeCapacityReservations")
        return {"CapacityReservations": found}


def reservation(**changes) -> dict:
    """A 4-instance p5 Capacity Block in us-west-2b, running, as describe_capacity_reservations describes it."""
    return {"CapacityReservationId": RID, "InstanceType": "p5.48xlarge", "InstancePlatform": "Linux/UNIX",
            "AvailabilityZone": "us-west-2b", "State": "active", "ReservationType": "capacity-block",
            "TotalInstanceCount": 4, "AvailableInstanceCount": 4,
            "StartDate": datetime(2026, 12, 10, 11, 30, tzinfo=UTC), **changes}


def world(*reservations: dict, offerings: dict | None = None) -> dict:
    return {"offerings": {"p5.48xlarge": ["us-west-2a", "us-west-2b"], "p4d.24xlarge": ["us-west-2b", "us-west-2c"]}
            if offerings is None else offerings,
            "subnets": {SUBNET_A: "us-west-2a", SUBNET_B: "us-west-2b"},
            "reservations": list(reservations)}


def choice(**changes) -> "capacity.Choice":
    """MARKET=capacity-block RESERVATION=cr-... ZONE=us-west-2b, 4 p5 nodes, unless changed."""
    return capacity.Choice(**{"region": "us-west-2", "gpu_type": "p5.48xlarge", "nodes": 4,
                              "market": "capacity-block", "reservation": RID, "subnets": (),
                              "zones": ("us-west-2b",), **changes})


def refused(ec2, c) -> str:
    with pytest.raises(SystemExit) as err:
        capacity.check(ec2, c)
    line = str(err.value)
    assert line.startswith("error: ") and "\n" not in line
    return line


def test_the_choice_is_what_render_wrote(tmp_path):
    run_make("cluster-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL, "GPU_TYPE=p4d.24xlarge", "NODES=3",
             "MARKET=capacity-block", f"RESERVATION={RID}", f"SUBNET={SUBNET_A},{SUBNET_B}")
    config = yaml.safe_load((tmp_path / "aws-gpu.yaml").read_text())
    assert capacity.choice(config) == capacity.Choice("us-west-2", "p4d.24xlarge", 3, "capacity-block", RID,
                                                      (SUBNET_A, SUBNET_B), ())
    config["provider"]["availability_zone"] = "us-west-2b,us-west-2c"
    assert capacity.choice(config).zones == ("us-west-2b", "us-west-2c")


@pytest.mark.parametrize("market, kind", [("capacity-block", "capacity-block"), ("on-demand", "default"),
                                          ("on-demand", None)])  # an older answer has no ReservationType
def test_a_reservation_that_can_take_the_nodes_passes(market, kind):
    r = reservation(ReservationType=kind) if kind else {k: v for k, v in reservation().items() if k != "ReservationType"}
    ec2 = FakeEC2(world(r))
    assert capacity.check(ec2, choice(market=market)) == [
        "p5.48xlarge is offered in us-west-2b", f"RESERVATION={RID}: active, 4 of its 4 instances available"]
    offerings = [c for c in ec2.calls if c[0] == "describe_instance_type_offerings"]
    assert len(offerings) == 2  # every page
    assert offerings[0][1:] == ("availability-zone", [{"Name": "instance-type", "Values": ["p5.48xlarge"]}])
    assert ec2.calls[-1] == ("describe_capacity_reservations", [RID])


def test_without_a_place_the_region_must_offer_the_type():
    ec2 = FakeEC2(world())
    assert capacity.check(ec2, choice(market="on-demand", reservation="", zones=())) == [
        "p5.48xlarge is offered in us-west-2a, us-west-2b"]
    assert {c[0] for c in ec2.calls} == {"describe_instance_type_offerings"}
    line = refused(FakeEC2(world(offerings={})), choice(market="on-demand", reservation="", zones=()))
    assert line == ("error: p5.48xlarge is offered in no availability zone of us-west-2: choose another "
                    "CLUSTER_REGION (or GPU_TYPE)")


def test_the_type_must_be_offered_where_subnet_or_zone_put_the_nodes():
    line = refused(FakeEC2(world()), choice(market="on-demand", reservation="", zones=("us-west-2b", "us-west-2c")))
    assert line == ("error: p5.48xlarge is not offered in ZONE us-west-2c; it is in us-west-2a, us-west-2b: set ZONE= "
                    "(or SUBNET= a subnet) to one of those")
    ec2 = FakeEC2(world())
    line = refused(ec2, choice(gpu_type="p4d.24xlarge", market="on-demand", reservation="", zones=(),
                               subnets=(SUBNET_A, SUBNET_B)))
    assert f"not offered in {SUBNET_A} (us-west-2a); it is in us-west-2b, us-west-2c" in line
    assert ec2.calls[0] == ("describe_subnets", [SUBNET_A, SUBNET_B])
    assert capacity.check(FakeEC2(world()), choice(market="on-demand", reservation="", zones=(),
                                                   subnets=(SUBNET_B,))) == ["p5.48xlarge is offered in us-west-2b"]
    line = refused(FakeEC2(world()), choice(zones=(), subnets=("subnet-0ccccccccccccccc0",)))
    assert "SUBNET=subnet-0ccccccccccccccc0: The subnet ID 'subnet-0ccccccccccccccc0' does not exist in us-west-2" in line


@pytest.mark.parametrize("changes, chosen, expected", [
    ({"CapacityReservationId": "cr-0ffffffffffffffff"}, {},
     f"RESERVATION={RID}: no such capacity reservation in us-west-2 (aws ec2 describe-capacity-reservations "
     "--region us-west-2 lists yours)"),
    ({"State": "scheduled", "AvailableInstanceCount": 0}, {},
     f"RESERVATION={RID} starts at 2026-12-10 11:30:00+00:00 (it is scheduled): run make cluster-up once it is active"),
    ({"State": "expired"}, {}, f"RESERVATION={RID} is expired, not active: wait until it is, or choose another"),
    ({"InstanceType": "p4d.24xlarge"}, {},
     f"RESERVATION={RID} reserves p4d.24xlarge, not GPU_TYPE=p5.48xlarge: set GPU_TYPE=p4d.24xlarge"),
    ({"AvailabilityZone": "us-west-2a"}, {},
     f"RESERVATION={RID} is in us-west-2a, but the nodes may go to ZONE us-west-2b: set ZONE=us-west-2a"),
    ({}, {"zones": (), "subnets": (SUBNET_A, SUBNET_B)},
     f"RESERVATION={RID} is in us-west-2b, but the nodes may go to {SUBNET_A} (us-west-2a): set ZONE=us-west-2b"),
    ({"InstancePlatform": "Windows"}, {},
     f"RESERVATION={RID} reserves Windows instances; the nodes run Linux/UNIX: use a Linux/UNIX reservation"),
    ({}, {"market": "on-demand"}, f"RESERVATION={RID} is a Capacity Block: set MARKET=capacity-block"),
    ({"ReservationType": "default"}, {},
     f"RESERVATION={RID} is an On-Demand Capacity Reservation, not a Capacity Block: drop MARKET=capacity-block"),
])
def test_a_reservation_that_cannot_take_the_nodes_is_refused_in_one_line(changes, chosen, expected):
    line = refused(FakeEC2(world(reservation(**changes))), choice(**chosen))
    assert line.startswith(f"error: {expected}"), line


def test_fewer_instances_available_than_nodes_is_a_warning():
    lines = capacity.check(FakeEC2(world(reservation(AvailableInstanceCount=2))), choice(nodes=3))
    assert lines[1] == f"RESERVATION={RID}: active, 2 of its 4 instances available"
    assert lines[2] == (f"warning: RESERVATION={RID} has 2 instances available for NODES=3: GPU nodes beyond 2 "
                        "fail to launch until its instances are freed")
    assert len(capacity.check(FakeEC2(world(reservation(AvailableInstanceCount=3))), choice(nodes=3))) == 2


def test_an_ec2_error_is_one_line(tmp_path, monkeypatch, capsys):
    """No credentials or no permission: one line, not botocore's traceback."""
    run_make("cluster-render", f"CLUSTER_BUILD={tmp_path}", *MAKE_FILL)

    class Denied(FakeEC2):
        def describe_instance_type_offerings(self, **kwargs):
            raise ClientError({"Error": {"Code": "UnauthorizedOperation", "Message": "You are not authorized"}},
                              "DescribeInstanceTypeOfferings")

    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda name, region_name: Denied(world())))
    monkeypatch.setitem(sys.modules, "botocore", types.ModuleType("botocore"))
    monkeypatch.setitem(sys.modules, "botocore.exceptions",
                        types.SimpleNamespace(ClientError=ClientError, BotoCoreError=type("BotoCoreError", (Exception,), {})))
    with pytest.raises(SystemExit) as err:
        capacity.main([str(tmp_path / "aws-gpu.yaml")])
    assert str(err.value).startswith("error: checking capacity with EC2: An error occurred (UnauthorizedOperation) "
                                     "when calling the DescribeInstanceTypeOfferings operation")
    assert "\n" not in str(err.value)


# ---- make cluster-up, with stand-ins for boto3 and ray ----------------------------------------------------

FAKE_BOTO3 = '''import json, os
from botocore.exceptions import ClientError

{fake}

def client(name, region_name=None):
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps(["client", name, region_name]) + "\\n")
    if name != "ec2":
        raise SystemExit("the stand-in boto3 has no " + name)
    return FakeEC2(json.load(open(os.environ["FAKE_EC2"])), os.environ["FAKE_LOG"])
'''

FAKE_RAY = """#!{python}
import json, os, sys
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(["ray", *sys.argv[1:]]) + "\\n")
"""


def cluster_up(tmp_path, answer: dict, *choices: str, ok: bool) -> tuple:
    """make cluster-up CHOICES against a stand-in EC2 answering from `answer`: the output and the logged calls."""
    lib, venv = tmp_path / "lib", tmp_path / "venv"
    (lib / "boto3").mkdir(parents=True)
    (lib / "botocore").mkdir()
    (lib / "botocore" / "__init__.py").write_text("")
    (lib / "botocore" / "exceptions.py").write_text(inspect.getsource(ClientError)
                                                     + "\n\nclass BotoCoreError(Exception):\n    pass\n")
    (lib / "boto3" / "__init__.py").write_text(FAKE_BOTO3.format(fake=inspect.getsource(FakeEC2)))
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    (venv / "bin" / "ray").write_text(FAKE_RAY.format(python=sys.executable))
    (venv / "bin" / "ray").chmod(0o755)
    (tmp_path / "home").mkdir()
    (tmp_path / "ec2.json").write_text(json.dumps(answer, default=str))
    env = {"FAKE_LOG": str(tmp_path / "log"), "FAKE_EC2": str(tmp_path / "ec2.json"), "PYTHONPATH": str(lib),
           "HOME": str(tmp_path / "home")}
    out = run_make("cluster-up", f"CLUSTER_BUILD={tmp_path / 'build'}", f"VENV={venv}", *MAKE_FILL, *choices,
                   env=env, ok=ok, timeout=120)
    log = tmp_path / "log"
    return out, [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []


def test_make_cluster_up_refuses_a_reservation_elsewhere_before_creating_anything(tmp_path):
    out, calls = cluster_up(tmp_path, world(reservation(AvailabilityZone="us-west-2a")), "MARKET=capacity-block",
                            f"RESERVATION={RID}", "ZONE=us-west-2b", ok=False)
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert line.startswith(f"error: RESERVATION={RID} is in us-west-2a")
    assert calls[0] == ["client", "ec2", "us-west-2"]
    assert {c[0] for c in calls[1:]} == {"describe_instance_type_offerings", "describe_capacity_reservations"}
    # and nothing after them: no IAM role, no security group, no ray


def test_make_cluster_up_warns_of_a_short_reservation_and_goes_on(tmp_path):
    out, calls = cluster_up(tmp_path, world(reservation(AvailableInstanceCount=1)), "MARKET=capacity-block",
                            f"RESERVATION={RID}", "ZONE=us-west-2b", ok=False)
    assert f"warning: RESERVATION={RID} has 1 instances available for NODES=4" in out.stderr
    assert f"RESERVATION={RID}: active, 1 of its 4 instances available" in out.stdout
    # then cluster/aws_setup.py starts on the IAM roles (where the stand-in stops it), never before the checks
    assert [c[:2] for c in calls if c[0] == "client"] == [["client", "ec2"], ["client", "iam"]]
    assert calls.index(["client", "iam", None]) > max(i for i, c in enumerate(calls) if c[0].startswith("describe"))
    assert "the stand-in boto3 has no iam" in out.stderr
