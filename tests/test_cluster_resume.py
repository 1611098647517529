"""Losing the head on AWS: `make cluster-resume` lists what the old cluster left (cluster/leftovers.py), brings
the cluster up again on the same rendered config and sends the grid `make cluster-submit` recorded again
(cluster/resubmit.py), so the same experiment resumes from shared storage.

Offline: a stand-in EC2 client (and a stand-in boto3 for the make targets), a stand-in `ray` that logs its
calls and serves the dashboard's port when asked for a tunnel.
"""

import ast
import importlib.util
import inspect
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cluster_files import CLUSTER, MAKE_FILL, load, run_make

leftovers = load("leftovers")
resubmit = load("resubmit")


def instance(id_, state, kind="worker", node_type="gpu_p5", type_="p5.48xlarge", cluster="gnp-ray-gpu",
             launched="2026-12-01 08:00:00+00:00") -> dict:
    """An instance as describe_instances returns it, tagged as Ray's AWS node provider tags it."""
    return {"InstanceId": id_, "InstanceType": type_, "State": {"Name": state}, "LaunchTime": launched,
            "Tags": [{"Key": "ray-cluster-name", "Value": cluster}, {"Key": "ray-node-type", "Value": kind},
                     {"Key": "ray-user-node-type", "Value": node_type}]}


WORLD = [instance("i-head", "terminated", "head", "head", "m7i.2xlarge", launched="2026-12-01 07:00:00+00:00"),
         instance("i-gpu1", "running"), instance("i-gpu2", "stopped"), instance("i-gpu3", "shutting-down"),
         instance("i-other", "running", cluster="someone-else")]


def matching(world: list[dict], filters: list[dict]) -> list[dict]:
    """What EC2 answers to describe_instances(Filters=...): tag and state filters."""
    def keep(i):
        tags = {t["Key"]: t["Value"] for t in i["Tags"]}
        for f in filters:
            if f["Name"] == "instance-state-name" and i["State"]["Name"] not in f["Values"]:
                return False
            if f["Name"].startswith("tag:") and tags.get(f["Name"][4:]) not in f["Values"]:
                return False
        return True
    return [i for i in world if keep(i)]


class FakeEC2:
    """Just enough of boto3's EC2 client for cluster/leftovers.py; answers in pages of two."""

    def __init__(self, world):
        self.world, self.terminated, self.filters = world, [], []

    def describe_instances(self, Filters, NextToken=None):
        self.filters.append(Filters)
        found = matching(self.world, Filters)
        start = int(NextToken or 0)
        page = {"Reservations": [{"Instances": found[start:start + 2]}]}
        if start + 2 < len(found):
            page["NextToken"] = str(start + 2)
        return page

    def terminate_instances(self, InstanceIds):
        self.terminated.append(InstanceIds)


# ---- cluster/leftovers.py --------------------------------------------------------------------------------


def test_leftovers_are_the_clusters_instances_in_any_state_but_terminated():
    ec2 = FakeEC2(WORLD + [instance("i-head2", "stopped", "head", "head", "m7i.2xlarge")])
    found = leftovers.leftovers(ec2, "gnp-ray-gpu")
    assert [i.id for i in found] == ["i-head2", "i-gpu1", "i-gpu2", "i-gpu3"]  # the head first; all pages read
    assert {"Name": "tag:ray-cluster-name", "Values": ["gnp-ray-gpu"]} in ec2.filters[0]
    (states,) = [f["Values"] for f in ec2.filters[0] if f["Name"] == "instance-state-name"]
    assert "terminated" not in states and {"pending", "running", "stopping", "stopped", "shutting-down"} <= set(states)
    assert found[1] == leftovers.Instance("i-gpu1", "p5.48xlarge", "running", "worker", "gpu_p5",
                                          "2026-12-01 08:00:00+00:00")
    assert ec2.terminated == []  # listing terminates nothing


def test_the_report_says_what_ray_sees_and_which_command_removes_the_rest():
    found = leftovers.leftovers(FakeEC2(WORLD), "gnp-ray-gpu")
    lines = leftovers.report(found, "gnp-ray-gpu", "us-west-2", "build/cluster/aws-gpu.yaml")
    text = "\n".join(lines)
    assert lines[0] == "cluster gnp-ray-gpu left 3 instance(s) in us-west-2:"
    for id_, state in (("i-gpu1", "running"), ("i-gpu2", "stopped"), ("i-gpu3", "shutting-down")):
        (row,) = [x for x in lines if x.startswith(f"  {id_} ")]
        assert "p5.48xlarge" in row and state in row and "gpu_p5" in row
    # shutting-down is on its way out: not in the command; stopped: invisible to ray up and ray down
    assert "  aws ec2 terminate-instances --region us-west-2 --instance-ids i-gpu1 i-gpu2" in lines
    assert "  stopped: i-gpu2: Ray sees pending and running instances only" in text
    assert "make cluster-down (ray down -y build/cluster/aws-gpu.yaml)" in text
    assert "make cluster-resume LEFTOVERS=terminate" in text
    assert leftovers.report([], "gnp-ray-gpu", "us-west-2", "c.yaml") == [
        "cluster gnp-ray-gpu left nothing behind in us-west-2: no instance of it but terminated ones"]


def test_terminate_takes_exactly_the_listed_instances_not_already_going():
    ec2 = FakeEC2(WORLD)
    assert leftovers.terminate(ec2, leftovers.leftovers(ec2, "gnp-ray-gpu")) == ["i-gpu1", "i-gpu2"]
    assert ec2.terminated == [["i-gpu1", "i-gpu2"]]
    assert leftovers.terminate(ec2, []) == [] and len(ec2.terminated) == 1  # nothing left: no call


def test_leftovers_use_rays_own_tags_and_its_view_of_live_instances():
    """The tags Ray's launcher writes (ray/autoscaler/tags.py), and the states its AWS node provider lists
    (non_terminated_nodes: what `ray up`, the autoscaler and `ray down` see), read from the installed Ray."""
    from ray.autoscaler import tags

    assert (leftovers.CLUSTER_TAG, leftovers.KIND_TAG, leftovers.NODE_TYPE_TAG) == (
        tags.TAG_RAY_CLUSTER_NAME, tags.TAG_RAY_NODE_KIND, tags.TAG_RAY_USER_NODE_TYPE)
    assert tags.NODE_KIND_HEAD == "head"
    source = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler/_private/aws/node_provider.py"
    method = next(n for n in ast.walk(ast.parse(source.read_text()))
                  if isinstance(n, ast.FunctionDef) and n.name == "non_terminated_nodes")
    (states,) = [ast.literal_eval(d.values[1]) for d in ast.walk(method) if isinstance(d, ast.Dict)
                 and isinstance(d.values[0], ast.Constant) and d.values[0].value == "instance-state-name"]
    assert tuple(states) == leftovers.RAY_SEES
    # the shipped template names its cluster: that name is the tag the leftovers are found by
    assert yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())["cluster_name"] == "gnp-ray-gpu"


# ---- cluster/resubmit.py ---------------------------------------------------------------------------------


def test_a_record_is_a_grid_command_and_a_missing_one_is_one_line(tmp_path):
    grid = ["python", "-m", "jobs.grid", "--recipe", "digits", "--experiment", "e1"]
    entry = resubmit.record(tmp_path / "r" / "last-submit.json", grid, "job-1")
    assert resubmit.load(tmp_path / "r" / "last-submit.json") == entry
    assert entry["entrypoint"] == grid and entry["job"] == "job-1" and entry["submitted"].endswith("Z")
    with pytest.raises(SystemExit, match="not a grid command"):
        resubmit.record(tmp_path / "x.json", ["python", "-m", "jobs.submit"])
    for bad in ("", "{", '{"job": "j"}', "[]"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(SystemExit) as err:
            resubmit.load(tmp_path / "bad.json")
        assert "\n" not in str(err.value) and "make cluster-submit" in str(err.value)
    with pytest.raises(SystemExit, match="no submission recorded in"):
        resubmit.load(tmp_path / "none.json")
    assert resubmit.experiment(grid) == "e1" and resubmit.experiment(grid[:5]) == "digits"


def test_the_shipped_grid_names_what_resumes_it():
    """make cluster-submit's grid names its experiment and shared storage: sent again as recorded, it resumes
    the same experiment (jobs.grid skips finished trials, continues the others from their checkpoints)."""
    from jobs import options

    argv = shlex.split(make("cluster-args", "BUCKET=test-bucket").stdout.strip())
    args = options.parse_args(argv[3:])
    assert args.experiment == resubmit.experiment(argv) == "imagenet-resnet50"
    assert args.results == "s3://test-bucket/gnp-results" and args.storage == "s3://test-bucket/gnp-ray-storage"


# ---- the make targets, with stand-ins for ray and boto3 --------------------------------------------------

FAKE_RAY = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps({{"ray": args, "auth": os.environ.get("RAY_AUTH_MODE"),
                          "v2": os.environ.get("RAY_UP_enable_autoscaler_v2")}}) + "\\n")
if args[:1] == ["get-auth-token"]:
    os.makedirs(os.path.expanduser("~/.ray"), exist_ok=True)
    open(os.path.expanduser("~/.ray/auth_token"), "w").write("token")
elif args[:1] == ["dashboard"]:  # the tunnel: the dashboard's port answers until the tunnel is stopped
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Unauthorized(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()
    open(os.environ["FAKE_LOG"] + ".tunnel", "w").write(str(os.getpid()))
    HTTPServer(("127.0.0.1", int(args[args.index("--port") + 1])), Unauthorized).serve_forever()
elif args[:2] == ["job", "submit"]:
    sys.exit(int(os.environ.get("FAKE_SUBMIT_RC", "0")))
"""

FAKE_BOTO3 = """import json, os


class _EC2:
    def describe_instances(self, Filters, NextToken=None):
        _log("describe_instances", Filters)
        world = json.load(open(os.environ["FAKE_EC2"]))
        return {"Reservations": [{"Instances": matching(world, Filters)}]}

    def terminate_instances(self, InstanceIds):
        _log("terminate_instances", InstanceIds)

    def describe_instance_type_offerings(self, LocationType, Filters):  # cluster/capacity.py: offered everywhere
        _log("describe_instance_type_offerings", Filters)
        return {"InstanceTypeOfferings": [{"Location": "us-west-2a"}]}


def _log(call, arg):
    with open(os.environ["FAKE_LOG"], "a") as log:
        log.write(json.dumps({"ec2": call, "arg": arg}) + "\\n")


def client(name, region_name=None):
    assert name == "ec2", name
    _log("client", region_name)
    return _EC2()
"""


class Dashboard(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(401)  # the Jobs API without the token
        self.end_headers()

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tunnel:
    """A Jobs API on localhost while the block runs: the `make cluster-dashboard` tunnel of a live cluster."""

    def __init__(self, port: int):
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Dashboard)

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def make(*args: str, env: dict | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    return run_make(*args, env=env, ok=ok, timeout=120)


@pytest.fixture
def site(tmp_path):
    """A cluster brought up from here (the rendered config, its security group written in by aws_setup.py), a
    venv whose `ray` is the stand-in, a stand-in boto3, a HOME of its own; and the make variables for them."""
    build, venv, lib, home = (tmp_path / d for d in ("build", "venv", "lib", "home"))
    make("cluster-render", f"CLUSTER_BUILD={build}", *MAKE_FILL)
    config = build / "aws-gpu.yaml"
    config.write_text(config.read_text().replace("__SECURITY_GROUP__", "sg-0123456789abcdef0"))
    (venv / "bin").mkdir(parents=True)
    (venv / ".installed").touch()
    (venv / "bin" / "ray").write_text(FAKE_RAY.format(python=sys.executable))
    (venv / "bin" / "ray").chmod(0o755)
    (lib / "boto3").mkdir(parents=True)
    (lib / "boto3" / "__init__.py").write_text(FAKE_BOTO3 + "\n\n" + inspect.getsource(matching))
    (lib / "botocore").mkdir()
    (lib / "botocore" / "__init__.py").write_text("")
    (lib / "botocore" / "exceptions.py").write_text("class BotoCoreError(Exception): ...\nclass ClientError(Exception): ...\n")
    home.mkdir()
    (tmp_path / "ec2.json").write_text(json.dumps(WORLD))
    port = free_port()
    env = {"FAKE_LOG": str(tmp_path / "log"), "FAKE_EC2": str(tmp_path / "ec2.json"), "HOME": str(home),
           "PYTHONPATH": str(lib)}
    variables = [f"CLUSTER_BUILD={build}", f"VENV={venv}", f"PY={sys.executable}",
                 f"CLUSTER_ADDRESS=http://127.0.0.1:{port}"]
    return {"build": build, "config": config, "port": port, "env": env, "vars": variables,
            "log": tmp_path / "log"}


def calls(site) -> list[dict]:
    return [json.loads(x) for x in site["log"].read_text().splitlines()] if site["log"].exists() else []


def submitted(site, **env) -> list[str]:
    """make cluster-submit BUCKET=test-bucket JOB=imagenet-resnet50-1 through a live tunnel: its argv."""
    with Tunnel(site["port"]):
        make("cluster-submit", "BUCKET=test-bucket", "JOB=imagenet-resnet50-1", *site["vars"],
             env={**site["env"], **env})
    (submit,) = [c["ray"] for c in calls(site) if c.get("ray", [None])[:2] == ["job", "submit"]]
    site["log"].unlink()
    return submit


def test_resume_lists_leftovers_brings_the_cluster_up_and_sends_the_same_grid_again(site):
    first = submitted(site)
    grid = first[first.index("--") + 1:]
    assert grid == shlex.split(make("cluster-args", "BUCKET=test-bucket").stdout.strip())
    record = json.loads((site["build"] / "last-submit.json").read_text())
    assert record["entrypoint"] == grid and record["job"] == "imagenet-resnet50-1"

    # the head is lost, and the tunnel with it; no BUCKET, GPU_TYPE, ...: the rendered config and the record hold them
    out = make("cluster-resume", *site["vars"], env=site["env"])
    log = calls(site)
    # the leftovers listed (none terminated), then the GPU type's capacity checked before ray up
    assert [c["ec2"] for c in log if "ec2" in c] == ["client", "describe_instances", "client",
                                                     "describe_instance_type_offerings"]
    assert log[0]["arg"] == "us-west-2"
    assert "cluster gnp-ray-gpu left 3 instance(s) in us-west-2:" in out.stdout
    assert "aws ec2 terminate-instances --region us-west-2 --instance-ids i-gpu1 i-gpu2" in out.stdout
    assert "i-other" not in out.stdout and "i-head" not in out.stdout
    ray = [c for c in log if "ray" in c]
    assert [c["ray"][:2] for c in ray] == [["get-auth-token", "--generate"], ["up", "-y"],
                                            ["dashboard", "--port"], ["job", "submit"]]
    up, tunnel, again = ray[1], ray[2], ray[3]
    assert log.index(up) > [c.get("ec2") for c in log].index("describe_instance_type_offerings")
    assert up["ray"] == ["up", "-y", str(site["config"])] and up["v2"] == "1" and up["auth"] == "token"
    assert tunnel["ray"] == ["dashboard", "--port", str(site["port"]), str(site["config"])]
    assert again["auth"] == "token" and again["ray"][again["ray"].index("--") + 1:] == grid
    job = again["ray"][again["ray"].index("--submission-id") + 1]
    assert job.startswith("imagenet-resnet50-") and job != "imagenet-resnet50-1"
    datetime.strptime(job.removeprefix("imagenet-resnet50-"), "%Y%m%d-%H%M%S")
    # the same runtime env as the first submission: this tree, its version
    assert again["ray"][again["ray"].index("--runtime-env-json") + 1] == first[first.index("--runtime-env-json") + 1]
    assert f"make cluster-logs JOB={job}" in out.stdout
    assert json.loads((site["build"] / "last-submit.json").read_text())["job"] == job
    # the tunnel opened for the submission is closed after it
    pid = int(Path(str(site["log"]) + ".tunnel").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not resubmit.answers(f"http://127.0.0.1:{site['port']}")


def recorded(site) -> list[str]:
    """What make cluster-submit records (the test above shows it), written directly."""
    grid = shlex.split(make("cluster-args", "BUCKET=test-bucket").stdout.strip())
    resubmit.record(site["build"] / "last-submit.json", grid, "imagenet-resnet50-1")
    return grid


def test_resume_terminates_the_leftovers_only_when_asked_and_uses_a_live_tunnel(site):
    recorded(site)
    with Tunnel(site["port"]):  # make cluster-dashboard restarted by hand: used, no second tunnel
        out = make("cluster-resume", "LEFTOVERS=terminate", "JOB=again-1", *site["vars"], env=site["env"])
    log = calls(site)
    order = [c.get("ec2") or " ".join(c["ray"][:2]) for c in log]
    assert order.index("terminate_instances") < order.index("up -y")
    (terminated,) = [c["arg"] for c in log if c.get("ec2") == "terminate_instances"]
    assert terminated == ["i-gpu1", "i-gpu2"] and "terminating i-gpu1 i-gpu2" in out.stdout
    assert "dashboard --port" not in order
    (again,) = [c["ray"] for c in log if c.get("ray", [None])[:2] == ["job", "submit"]]
    assert again[again.index("--submission-id") + 1] == "again-1"


def test_make_cluster_leftovers_lists_and_terminates_nothing(site):
    out = make("cluster-leftovers", *site["vars"], env=site["env"])
    assert re.search(r"^  i-gpu1 +p5.48xlarge +running +worker +gpu_p5 ", out.stdout, re.M)
    assert [c.get("ec2") for c in calls(site)] == ["client", "describe_instances"]


@pytest.mark.parametrize("case, words", [
    ("no record", "no submission recorded in"),
    ("never brought up", "no cluster was brought up from here"),
    ("bad LEFTOVERS", "LEFTOVERS=yes: terminate, or leave it unset"),
])
def test_resume_refuses_in_one_line_before_touching_anything(site, case, words):
    if case == "bad LEFTOVERS":
        recorded(site)
    extra = ["LEFTOVERS=yes"] if case == "bad LEFTOVERS" else []
    if case == "never brought up":
        make("cluster-render", *site["vars"], *MAKE_FILL)  # rendered, but cluster-up never wrote the group in
    err = make("cluster-resume", *site["vars"], *extra, env=site["env"], ok=False).stderr
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert words in line
    assert calls(site) == []  # no EC2 call, no ray


def test_a_failed_resubmission_keeps_the_record_and_says_so(site):
    recorded(site)
    before = (site["build"] / "last-submit.json").read_text()
    with Tunnel(site["port"]):
        err = make("cluster-resubmit", *site["vars"], env={**site["env"], "FAKE_SUBMIT_RC": "1"}, ok=False).stderr
    assert "error: ray job submit failed (above); the record is unchanged" in err
    assert (site["build"] / "last-submit.json").read_text() == before


def test_a_tunnel_that_cannot_open_is_one_line(site, tmp_path):
    """ray dashboard that exits (no head, port taken): refused at once, not after the whole wait."""
    resubmit.record(tmp_path / "r.json", ["python", "-m", "jobs.grid", "--recipe", "digits"])
    quits = tmp_path / "ray"
    quits.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(1)\n")
    quits.chmod(0o755)
    with pytest.raises(SystemExit, match="no Jobs API at .* through ray dashboard"):
        resubmit.submit(tmp_path / "r.json", site["config"], f"http://127.0.0.1:{site['port']}", "{}", str(quits))
