"""Submit the grid to a Ray cluster through the Jobs API (what `make submit` runs).

    python -m jobs.submit --address http://127.0.0.1:8265 -- --recipe imagenet-resnet50 --data /mnt/imagenet

The working tree is uploaded without the environments, .git, build outputs, results, runs and data, with
the code's version (computed here, where the command is typed: the cluster has no .git) for the rows. The
job runs `--python` on the cluster, which must have this project's environment: the cluster images
(cluster/) do; so does the local one `make local-cluster` starts (jobs.local: 127.0.0.1 only, this project's
token, .venv/bin first on its PATH), whose Jobs API is --address's default. Reach a remote dashboard through
`make cluster-dashboard` or `kubectl port-forward`, never an open port. With token auth on (Ray's default for
`ray start`), the token is read from ~/.ray/auth_token (RAY_AUTH_MODE=token).
"""

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from gnp.errors import UserError
from jobs import local

# gitignore patterns (Ray's): environments, version control, outputs and data stay behind
EXCLUDES = [".venv*", ".git", "build", "results", "runs", "data", "out", "**/__pycache__", "*.pt", ".pytest_cache"]
PROJECT = Path(__file__).resolve().parent.parent


def runtime_env() -> dict:
    """The job's code: this working tree, less EXCLUDES, and its version (computed here: the upload has no
    .git), which the rows record. `make cluster-submit` uses it too (--print-runtime-env)."""
    from jobs.results import code_version

    return {"working_dir": str(PROJECT), "excludes": EXCLUDES, "env_vars": {"GNP_CODE_VERSION": code_version()}}


def submit(address: str, grid_args: list[str], *, python: str = "python", wait: bool = True,
           timeout_s: float = 7 * 24 * 3600) -> tuple[str, str]:
    """Submit `python -m jobs.grid <grid_args>`; returns (job id, final status or 'SUBMITTED')."""
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = client.submit_job(
        entrypoint=" ".join([python, "-m", "jobs.grid", *map(shlex.quote, grid_args)]), runtime_env=runtime_env(),
    )
    print(f"submitted {job_id} to {address}; follow it with: ray job logs --follow {job_id}", flush=True)
    if not wait:
        return job_id, "SUBMITTED"
    deadline = time.monotonic() + timeout_s
    while (status := client.get_job_status(job_id)) not in {JobStatus.SUCCEEDED, JobStatus.FAILED,
                                                             JobStatus.STOPPED}:
        if time.monotonic() > deadline:
            client.stop_job(job_id)
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f}s; stopped it")
        time.sleep(2)
    logs = client.get_job_logs(job_id)
    print(logs[-4000:], flush=True)
    print(f"job {job_id}: {status.value}", flush=True)
    if status != JobStatus.SUCCEEDED and "No module named" in logs:
        print(f"error: `{python}` on the cluster lacks this project's environment; start the cluster from it "
              "(a local one: `make local-cluster`) or pass --python", file=sys.stderr)
    return job_id, str(status.value)


def check_address(address: str) -> None:
    """The Jobs API is an http(s) URL with a host: anything else is one line, not a client traceback."""
    from urllib.parse import urlparse

    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"--address {address!r} is not the Jobs API's URL; give one like http://127.0.0.1:8265")


def checked_here(grid_args: list[str]) -> None:
    """The grid's arguments, checked on this machine before anything is uploaded: every value, the
    recipe, the product and the split over the workers (the data is checked on the cluster, where it is)."""
    from jobs import options

    try:
        args = options.parse_args(grid_args)
    except SystemExit as stop:  # argparse has printed its one line
        raise UserError("the grid's arguments above are wrong; nothing was submitted") from stop
    options.grid_configs(args)
    options.check_run_options(args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jobs.submit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default="http://127.0.0.1:8265", help="the Jobs API (dashboard) address")
    p.add_argument("--python", default="python", help="the interpreter on the cluster (default python)")
    p.add_argument("--no-wait", action="store_true", help="return once submitted")
    p.add_argument("--print-runtime-env", action="store_true", help="print the job's runtime env as JSON and exit")
    p.add_argument("grid_args", nargs=argparse.REMAINDER, help="-- then the arguments of python -m jobs.grid")
    args = p.parse_args(argv)
    if args.print_runtime_env:
        print(json.dumps(runtime_env()))
        return 0
    grid_args = args.grid_args[1:] if args.grid_args[:1] == ["--"] else args.grid_args
    try:
        check_address(args.address)
        checked_here(grid_args)
        if local.token_path().exists():
            local.private_token()
        _, status = submit(args.address, grid_args, python=args.python, wait=not args.no_wait)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ConnectionError as err:
        print(f"error: cannot reach the Ray Jobs API at {args.address} ({err}); start port forwarding with "
              "`make cluster-dashboard` (or kubectl port-forward), start the local cluster with `make "
              "local-cluster`, or check --address", file=sys.stderr)
        return 2
    return 0 if status in ("SUCCEEDED", "SUBMITTED") else 1


if __name__ == "__main__":
    sys.exit(main())
