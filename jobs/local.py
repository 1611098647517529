"""The local Ray cluster a grid starts when it is given none: loopback only, token auth, the dashboard.

Nothing on this machine's network needs to reach it, so every Ray process and the gloo rendezvous bind to
127.0.0.1 (Ray on Linux would otherwise take the machine's network address). Ray writes the token it
generates world-readable; it is created here first, 0600, and a token others can read is refused.
"""

import os
import secrets
import stat
from pathlib import Path

from gnp.errors import UserError

LOOPBACK = "127.0.0.1"


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
