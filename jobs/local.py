"""The local Ray clusters: loopback only, token auth, the dashboard.

Two of them: the one a grid starts when it is given none (start(), inside the grid's process, gone with it),
and the persistent one `make submit` can be tried on (`python -m jobs.local start|stop`, which `make
local-cluster` and `make local-cluster-stop` run). Nothing on this machine's network needs to reach either,
so every Ray process and the gloo rendezvous bind to 127.0.0.1 (Ray on Linux would otherwise take the
machine's network address, even for `ray start --node-ip-address=127.0.0.1`). Ray writes the token it
generates world-readable; it is created here first, 0600, and a token others can read is refused.
"""

import argparse
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from gnp.errors import UserError
from gnp.folders import cache_dir

LOOPBACK = "127.0.0.1"
DASHBOARD_PORT = 8265  # `make submit`'s default ADDRESS
SOCKET_PATH_MAX = 107  # bytes of an AF_UNIX path on Linux


def token_path() -> Path:
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def private_token() -> Path:
    """The auth token file, made 0600 if missing; one readable by the group or others is an error."""
    path = token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise UserError(f"Ray's token {path} is readable by other users (mode {mode:o}); run "
                            f"`chmod 600 {path}`, or delete it to have a new one made") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def loopback_env() -> None:
    """Before `import ray`: this process, and the cluster it starts, use 127.0.0.1 (read once, at import)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def start() -> str:
    """Start a Ray cluster of this machine; returns the dashboard's address."""
    import ray

    os.environ["RAY_AUTH_TOKEN_PATH"] = str(private_token())
    # Train's controller (a process of this cluster, which inherits this environment) notices a finished
    # worker group within half a second rather than Ray's 2 s: local trials are short.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    context = ray.init(_node_ip_address=LOOPBACK, include_dashboard=True, dashboard_host=LOOPBACK,
                       log_to_driver=True)
    return f"http://{context.dashboard_url}" if context.dashboard_url else "none (it did not start)"


# ---- the processes of a cluster, found by what their command lines hold -----------------------------------


def processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process, from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/cmdline").read_bytes()
                cmd = raw.replace(b"\0", b" ").decode("utf-8", "replace")
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found[int(entry)] = (ppid, cmd)
    return found


def tree(roots) -> set[int]:
    """The processes `roots` and all their descendants."""
    table, found = processes(), set(roots)
    while True:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        if not more:
            return found
        found |= more


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def matching(*markers: str) -> set[int]:
    """The processes whose command line holds one of `markers`, and their descendants; never this process
    nor those that started it (a shell whose command named a marker)."""
    table = processes()
    mine, pid = set(), os.getpid()
    while pid in table and pid not in mine:
        mine.add(pid)
        pid = table[pid][0]
    return tree(pid for pid, (_, cmd) in table.items() if any(m in cmd for m in markers) and pid not in mine)


def stop(*markers: str, sig=signal.SIGTERM, grace_s: float = 5) -> None:
    """Stop the processes whose command line holds one of `markers` (a temp dir, a port) and their
    descendants: only what was started with them, never every Ray process of the user (`ray stop`)."""
    terminate(matching(*markers), sig=sig, grace_s=grace_s)


def terminate(pids: set[int], sig=signal.SIGTERM, grace_s: float = 5) -> None:
    """Send `sig` to `pids`, wait up to grace_s for them to end, and kill those left."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if alive(pid)}
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ---- the persistent local cluster (`make local-cluster`) ---------------------------------------------------


def cluster_dir() -> Path:
    """Its --temp-dir, under the cache: every process of it names this folder in its command line (the Ray
    client server excepted: markers()), which is how it is found and stopped without touching others. A
    short name: Ray's socket paths under it have a limit (socket_suffix())."""
    return cache_dir() / "cluster"


def socket_suffix() -> int:
    """The length of Ray's longest socket path under --temp-dir, session_<time>_<pid>/sockets/plasma_store."""
    try:
        pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        pid_max = 4194304
    return len(f"/session_2026-01-01_00-00-00_000000_{pid_max}/sockets/plasma_store")


def markers(temp: Path) -> list[str]:
    """What the command lines of the cluster under `temp` hold: its folder as an option's value (Ray's
    --temp-dir, --log_dir, --session-dir...; not, say, a `tail -f` of its logs); the Ray client server,
    started beside the GCS, names only the GCS's address (while that GCS runs, no other cluster has it)."""
    own = [f"={temp}/"]
    gcs = temp / "ray_current_cluster"
    if gcs.exists() and any(own[0] in cmd for _, cmd in processes().values()):
        own.append(f"--address={gcs.read_text().strip()} ")
    return own


def cluster_processes(temp: Path) -> set[int]:
    return matching(*markers(temp))


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:port (SO_REUSEADDR: a closed connection's TIME_WAIT does not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def jobs_api_ready(address: str, token: Path, timeout_s: float = 90) -> bool:
    """The Jobs API answers with this token (its module starts a little after the dashboard's port opens)."""
    request = urllib.request.Request(f"{address}/api/jobs/",
                                     headers={"Authorization": f"Bearer {token.read_text().strip()}"})
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    return False


def start_persistent(temp: Path | None = None, dashboard_port: int = DASHBOARD_PORT) -> str:
    """Start the persistent local cluster with `ray start` (it outlives this process); returns the address
    of its dashboard and Jobs API. Refused if it runs already, or if the dashboard's port is taken: `make
    submit` would reach that other cluster."""
    temp = Path(temp or cluster_dir()).expanduser().resolve()
    if cluster_processes(temp):
        raise UserError(f"the local cluster already runs ({temp}); stop it first with `make local-cluster-stop`")
    if len(str(temp).encode()) + socket_suffix() > SOCKET_PATH_MAX:
        raise UserError(f"{temp} is too long a path for Ray's sockets (at most {SOCKET_PATH_MAX - socket_suffix()} "
                        "bytes); choose a shorter folder: GNP_CACHE (or --temp-dir)")
    if not port_free(dashboard_port):
        raise UserError(f"{LOOPBACK}:{dashboard_port} is taken (another Ray cluster's dashboard?); stop that, "
                        "or give this one another --dashboard-port")
    token = private_token()
    temp.mkdir(parents=True, exist_ok=True)
    for old in temp.glob("session_*"):  # an earlier cluster's logs (session_latest: a link)
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    bin_dir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        # the jobs' `python` (the entrypoint `make submit` sends) is this project's interpreter
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        # --node-ip-address=127.0.0.1 is otherwise replaced by the machine's address; with 127.0.0.1 as the
        # node's address, every Ray process of the node (GCS, raylet, workers, agents, client server,
        # metrics) binds there and nowhere else
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),  # this project's 0600 token, not Ray's own
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")  # as start(): local trials are short
    command = [str(bin_dir / "ray"), "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={free_port()}",
               "--include-dashboard=true", f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}",
               # Ray's fixed defaults (52365, 10001) would collide with another cluster of this machine (the
               # tests'); the client server cannot be left out (ray[client] is installed; port 0 is refused)
               f"--dashboard-agent-listen-port={free_port()}", f"--ray-client-server-port={free_port()}",
               f"--temp-dir={temp}", "--disable-usage-stats"]
    started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    address = f"http://{LOOPBACK}:{dashboard_port}"
    if started.returncode != 0 or not jobs_api_ready(address, token):
        stop_persistent(temp)
        said = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
                for line in (started.stderr + started.stdout).splitlines() if line.strip()]
        why = said[-1] if started.returncode != 0 and said else "its Jobs API did not answer"
        raise UserError(f"the local cluster did not start ({why}); its logs: {temp}/session_latest/logs")
    # Ray makes its folder world-writable (for a /tmp/ray shared by users) only when the node starts: this
    # one's sockets, logs and uploaded code are this user's alone
    temp.chmod(0o700)
    return address


def stop_persistent(temp: Path | None = None) -> bool:
    """Stop the persistent local cluster's processes, only those; False if none ran."""
    temp = Path(temp or cluster_dir()).expanduser().resolve()
    own = markers(temp)
    pids = matching(*own)
    if not pids:
        return False
    table = processes()

    def program(name: str) -> set[int]:
        return {pid for pid in pids if pid in table and table[pid][1].split(" ", 1)[0].endswith(f"/{name}")}

    # `ray stop`'s order: the raylet with its workers and agents, then the rest, the GCS last (all at once,
    # the raylet and the GCS wait out their grace periods)
    raylet, gcs = tree(program("raylet")) & pids, program("gcs_server")
    for group in (raylet, pids - raylet - gcs, gcs):
        terminate(group)
    terminate(matching(*own), sig=signal.SIGKILL)  # any worker started meanwhile
    return True


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.local",
                                description="Start or stop the local Ray cluster `make submit` reaches by default "
                                            "(127.0.0.1 only, token auth).")
    p.add_argument("command", choices=["start", "stop"])
    p.add_argument("--dashboard-port", type=int, default=DASHBOARD_PORT,
                   help=f"the dashboard and Jobs API port on 127.0.0.1 (default {DASHBOARD_PORT}, make submit's)")
    p.add_argument("--temp-dir", type=Path, default=None,
                   help="the cluster's folder (default: $GNP_CACHE or ~/.cache/gnp-ray, then /cluster)")
    args = p.parse_args(argv)
    temp = Path(args.temp_dir or cluster_dir()).expanduser().resolve()
    which = "" if args.temp_dir is None else f" --temp-dir {temp}"
    if args.command == "stop":
        if not stop_persistent(temp):
            print(f"no local cluster runs ({temp}); nothing to stop")
        else:
            print(f"stopped the local cluster ({temp})")
        return 0
    try:
        address = start_persistent(temp, args.dashboard_port)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    submit = "make submit" if args.dashboard_port == DASHBOARD_PORT else f"make submit ADDRESS={address}"
    print(f"a local Ray cluster runs on {LOOPBACK} only (its files: {temp}); dashboard and Jobs API: {address}")
    print(f"submit the demo grid to it: {submit} (another grid: GRID=\"...\"); the token: {token_path()}")
    print(f"stop it: {'make local-cluster-stop' if not which else 'python -m jobs.local stop' + which} "
          "(not `ray stop`, which stops every Ray cluster of this user)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
