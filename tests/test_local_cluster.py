"""The persistent local cluster `make submit` can be tried on (`python -m jobs.local start|stop`): every
listener of every process of it on 127.0.0.1, the project's 0600 token, a job through the Jobs API, and a
stop that ends its processes and no other Ray process."""

import ipaddress
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ray._raylet import AuthenticationTokenLoader
from ray.job_submission import JobStatus, JobSubmissionClient

from jobs import local
from jobs.submit import submit

pytestmark = pytest.mark.ray
CLI = [sys.executable, "-m", "jobs.local"]


def decode(hex_address: str) -> str:
    """An address of /proc/net/tcp or tcp6 (32-bit words in host order); an IPv4-mapped IPv6 address (a
    dual-stack socket gRPC bound to 127.0.0.1) as its IPv4 form."""
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    ip = ipaddress.IPv6Address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
    return str(ip.ipv4_mapped or ip)


def listeners(pids) -> set[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket of `pids`: their descriptors' socket inodes
    looked up in /proc/net/tcp and tcp6."""
    owner = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owner[target[8:-1]] = pid
        except OSError:  # it ended meanwhile
            continue
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owner:  # 0A: LISTEN
                address, port = fields[1].rsplit(":", 1)
                found.add((owner[fields[9]], decode(address), int(port, 16)))
    return found


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode("utf-8", "replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def test_the_local_cluster_listens_on_loopback_only_runs_a_job_and_stops_only_itself(
        tmp_path_factory, tmp_path, digits_root, monkeypatch):
    temp = tmp_path_factory.mktemp("lc")  # short: Ray's socket paths have a limit
    where = ["--temp-dir", str(temp)]
    token = tmp_path / "ray" / "auth_token"  # not this user's ~/.ray/auth_token
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    AuthenticationTokenLoader.instance().reset_cache()  # this process's Jobs client reads it anew
    # the start command switches Ray to loopback by itself (conftest does it for the other tests)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS")}
    dashboard = local.free_port()
    address = f"http://127.0.0.1:{dashboard}"
    # a Ray process it did not start: its command line looks like Ray's, names another cluster's folder
    # beside this one's, and this one's logs as a `tail -f` would
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "ray::IDLE", "raylet",
                              f"--temp-dir={temp}-other", f"--log-dir={temp}-other/session_latest/logs",
                              f"{temp}/session_latest/logs/raylet.out"])
    seen_pids, seen = set(), set()
    try:
        started = subprocess.run([*CLI, "start", *where, f"--dashboard-port={dashboard}"], env=env,
                                 capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"dashboard and Jobs API: {address}" in started.stdout
        assert f"python -m jobs.local stop --temp-dir {temp}" in started.stdout
        again = subprocess.run([*CLI, "start", *where, f"--dashboard-port={local.free_port()}"], env=env,
                               capture_output=True, text=True, timeout=60)
        assert again.returncode == 2
        assert again.stderr.strip().splitlines() == [
            f"error: the local cluster already runs ({temp}); stop it first with `make local-cluster-stop`"]

        pids = local.cluster_processes(temp)
        table = local.processes()
        programs = {pid: table[pid][1].split(" ", 1)[0].rsplit("/", 1)[-1] for pid in pids if pid in table}
        assert {"gcs_server", "raylet", "python"} <= set(programs.values()), programs
        assert other.pid not in pids
        gcs = next(pid for pid, name in programs.items() if name == "gcs_server")
        # the project's token, 0600, which Ray used rather than making its own; the jobs' `python` is ours
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
        made = environ(gcs)
        assert made["RAY_AUTH_MODE"] == "token" and made["RAY_AUTH_TOKEN_PATH"] == str(token)
        assert made["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
        with pytest.raises(urllib.error.HTTPError) as refused:  # and nothing answers without it
            urllib.request.urlopen(f"{address}/api/jobs/", timeout=10)
        assert refused.value.code == 401
        assert stat.S_IMODE(temp.stat().st_mode) == 0o700  # its sockets and logs: this user's

        job_id, _ = submit(address, ["--recipe", "digits", "--seeds", "0", "--alpha", "0", "--epochs", "1",
                                     "--batch-size", "32", "--loader-workers", "0", "--workers", "2",
                                     "--results", str(tmp_path / "results")],
                           python=sys.executable, wait=False)
        client = JobSubmissionClient(address)
        deadline = time.monotonic() + 240
        done = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        names, looks = {}, 0  # pid -> the command lines it had (a worker's changes with its actor)
        while (status := client.get_job_status(job_id)) not in done and time.monotonic() < deadline:
            now = local.cluster_processes(temp)  # the job's driver and Train workers among them
            seen_pids |= now
            seen |= listeners(now)
            for pid, (_, cmd) in local.processes().items():
                if pid in now:
                    names.setdefault(pid, set()).add(cmd[:60])
            looks += 1
            time.sleep(0.3)
        assert status == JobStatus.SUCCEEDED, client.get_job_logs(job_id)[-3000:]
        seen |= listeners(local.cluster_processes(temp))
        # every listener of every process of it, the gloo rendezvous included, on 127.0.0.1 only
        assert {host for _, host, _ in seen} == {"127.0.0.1"}, sorted(seen)
        gcs_port = int((temp / "ray_current_cluster").read_text().strip().rsplit(":", 1)[1])
        assert {dashboard, gcs_port} <= {port for _, _, port in seen}
        owners = {cmd for pid, _, _ in seen for cmd in names.get(pid, ())}
        assert any("RayTrainWorker" in cmd for cmd in owners), f"no Train worker in {looks} looks: {owners}"

        stopped = subprocess.run([*CLI, "stop", *where], env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0 and stopped.stdout.strip() == f"stopped the local cluster ({temp})"
        assert not local.cluster_processes(temp)
        assert not [pid for pid in seen_pids | pids if local.alive(pid)]
        assert other.poll() is None, "a Ray process it did not start was stopped"
        none = subprocess.run([*CLI, "stop", *where], env=env, capture_output=True, text=True, timeout=60)
        assert none.returncode == 0
        assert none.stdout.strip() == f"no local cluster runs ({temp}); nothing to stop"
    finally:
        local.stop_persistent(temp)
        other.kill()
        other.wait()
        AuthenticationTokenLoader.instance().reset_cache()
