"""The grid `make cluster-submit` last sent, recorded, so that `make cluster-resume` can send exactly it again.

    python cluster/resubmit.py record build/cluster/last-submit.json [--job ID] -- python -m jobs.grid ...
    python cluster/resubmit.py show build/cluster/last-submit.json
    python cluster/resubmit.py submit build/cluster/last-submit.json --config build/cluster/aws-gpu.yaml \\
        --address http://127.0.0.1:8265 --runtime-env-json '{...}' [--job ID] [--ray .venv/bin/ray]

The same grid command with the same --experiment, --results and --storage resumes that experiment (jobs.grid:
finished trials are skipped, unfinished ones continue from their Train checkpoint on shared storage), so a
cluster that lost its head needs only this command sent to its replacement, under a new submission id. The
Jobs API is reached through the `ray dashboard` SSH tunnel: the one `make cluster-dashboard` keeps if it
answers, else one opened here for the submission and closed after it.
"""

import argparse
import contextlib
import http.client
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from pathlib import Path


def record(path: Path, entrypoint: list[str], job: str = "") -> dict:
    """Write what was submitted: the entrypoint's argv, the submission id, when (UTC)."""
    if entrypoint[:3] != ["python", "-m", "jobs.grid"]:
        raise SystemExit(f"error: {' '.join(entrypoint[:3])!r} is not a grid command (python -m jobs.grid ...)")
    entry = {"entrypoint": entrypoint, "job": job,
             "submitted": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entry, indent=2) + "\n")
    return entry


def load(path: Path) -> dict:
    """The recorded submission; one line naming the fix when there is none."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        entry = None
    if not isinstance(entry, dict) or not isinstance(entry.get("entrypoint"), list):
        raise SystemExit(f"error: no submission recorded in {path}: nothing to resume from here; submit the grid "
                         "again with make cluster-submit BUCKET=... (the same grid resumes its experiment)")
    return entry


def experiment(entrypoint: list[str]) -> str:
    """The experiment the grid writes: --experiment, else the recipe's name (jobs.grid's default)."""
    for flag in ("--experiment", "--recipe"):
        if flag in entrypoint[:-1]:
            return entrypoint[entrypoint.index(flag) + 1]
    return "grid"


def answers(address: str) -> bool:
    """True if a web server answers at address (any HTTP status: without the token the dashboard says 401)."""
    try:
        urllib.request.urlopen(f"{address.rstrip('/')}/api/version", timeout=5).close()
    except urllib.error.HTTPError:
        return True
    except (OSError, http.client.HTTPException):
        return False
    return True


@contextlib.contextmanager
def tunnel(ray: str, config: Path, address: str, wait_s: float):
    """The Jobs API at address for the duration: the tunnel already there, else `ray dashboard` until it
    answers (its process group is stopped after: ray dashboard runs ssh as a child)."""
    if answers(address):
        yield
        return
    port = urllib.parse.urlparse(address).port or 80
    print(f"opening the dashboard tunnel to {address} for the submission (ray dashboard {config})", flush=True)
    proc = subprocess.Popen([ray, "dashboard", "--port", str(port), str(config)], start_new_session=True)
    try:
        deadline = time.monotonic() + wait_s
        while not answers(address):
            if proc.poll() is not None or time.monotonic() > deadline:
                why = "it exited" if proc.poll() is not None else f"nothing after {wait_s:.0f} s"
                raise SystemExit(f"error: no Jobs API at {address} through ray dashboard ({why}); run make "
                                 "cluster-dashboard in another terminal, then make cluster-resubmit")
            time.sleep(1)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()


def submit(path: Path, config: Path, address: str, runtime_env_json: str, ray: str = "ray", job: str = "",
           wait_s: float = 300) -> dict:
    """Send the recorded grid again under a new submission id, and record that."""
    entry = load(path)
    job = job or f"{experiment(entry['entrypoint'])}-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    print(f"resubmitting experiment {experiment(entry['entrypoint'])} as {job}", flush=True)
    with tunnel(ray, config, address, wait_s):
        sent = subprocess.run([ray, "job", "submit", "--address", address, "--no-wait", "--submission-id", job,
                               "--runtime-env-json", runtime_env_json, "--", *entry["entrypoint"]])
    if sent.returncode:
        raise SystemExit("error: ray job submit failed (above); the record is unchanged: make cluster-resubmit "
                         "sends it again")
    entry = record(path, entry["entrypoint"], job)
    print(f"follow it: make cluster-logs JOB={job}")
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/resubmit.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="record a submission: record FILE [--job ID] -- python -m jobs.grid ...")
    rec.add_argument("record", type=Path)
    rec.add_argument("--job", default="")
    show = sub.add_parser("show", help="print the recorded submission (an error in one line if none)")
    show.add_argument("record", type=Path)
    again = sub.add_parser("submit", help="send the recorded grid again")
    again.add_argument("record", type=Path)
    again.add_argument("--config", type=Path, required=True, help="the launcher config (for ray dashboard)")
    again.add_argument("--address", required=True)
    again.add_argument("--runtime-env-json", required=True)
    again.add_argument("--job", default="", help="the new submission id (default: <experiment>-<UTC time>)")
    again.add_argument("--ray", default="ray")
    again.add_argument("--wait", type=float, default=300, help="seconds to wait for the tunnel")
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)  # record: the entrypoint follows --
    args = p.parse_args(argv[:split])
    if args.command == "record":
        record(args.record, argv[split + 1:], args.job)
        print(f"recorded in {args.record}: after losing the head, make cluster-resume sends it again")
    elif args.command == "show":
        entry = load(args.record)
        print(f"last submitted {entry['submitted']}{' as ' + entry['job'] if entry['job'] else ''}: "
              f"{shlex.join(entry['entrypoint'])}")
    else:
        submit(args.record, args.config, args.address, args.runtime_env_json, args.ray, args.job, args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
