"""Every private Ray API this project uses, in one place, for the Ray it was tested with.

Ray 2.60 has no public way to (1) give torch's rendezvous store an address (the local cluster's loopback),
(2) read the autoscaler's node types, (3) run Train's own check that a worker group fits the largest
cluster the autoscaler can make, or (4) name the variable that bounds a worker group's start. Each is a thin wrapper here; `check_version` refuses another Ray in one line
before anything starts, and tests/test_ray_private.py imports every name against the installed Ray.
"""

import ray
from ray._private.state import state
from ray.train.torch.config import _set_torch_distributed_env_vars, _TorchBackend
from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR
from ray.train.v2._internal.exceptions import InsufficientClusterResourcesError
from ray.train.v2._internal.execution.worker_group.worker_group import WorkerGroup

from gnp.errors import UserError

TESTED = "2.60."  # the minor version of constraints.txt's ray pin

TorchBackend = _TorchBackend  # Ray Train's torch set-up, subclassed for the loopback rendezvous
set_torch_distributed_env_vars = _set_torch_distributed_env_vars
WORKER_GROUP_START_TIMEOUT_ENV = WORKER_GROUP_START_TIMEOUT_S_ENV_VAR  # read by Train's controller


def check_version(version: str = ray.__version__) -> None:
    if not version.startswith(TESTED):
        raise UserError(f"Ray {version} is installed; jobs/ray_private.py uses Ray internals tested with Ray "
                        f"{TESTED}x only: install the pinned versions (pip install -c constraints.txt .)")


def autoscaler_node_types() -> list[tuple[dict, int | None]]:
    """The resources of each node type the autoscaler may start and at most how many (None: no limit);
    none without an autoscaler."""
    config = state.get_cluster_config()
    return [(dict(g.resources), None if g.max_count == -1 else g.max_count)
            for g in config.node_group_configs if g.max_count != 0] if config else []


def worker_group_misfit(per_worker: dict, workers: int) -> str | None:
    """Train's own reason a worker group can never fit the cluster at its largest, or None if it can."""
    try:
        WorkerGroup._check_cluster_resources_and_raise_if_insufficient(per_worker, workers)
    except InsufficientClusterResourcesError as err:
        return str(err).splitlines()[1]
    return None
