"""jobs.ray_private against the installed Ray: every private name it wraps exists, and another Ray version
is refused in one line before anything starts."""

import inspect

import pytest
import ray

from gnp.errors import UserError
from jobs import ray_private


def test_the_installed_ray_is_the_tested_one_and_has_every_private_name():
    ray_private.check_version()  # the installed (pinned) Ray passes
    assert ray.__version__.startswith(ray_private.TESTED)
    assert inspect.isclass(ray_private.TorchBackend) and hasattr(ray_private.TorchBackend, "on_start")
    assert list(inspect.signature(ray_private.set_torch_distributed_env_vars).parameters) == []
    assert callable(ray_private.state.get_cluster_config)
    check = ray_private.WorkerGroup._check_cluster_resources_and_raise_if_insufficient
    assert list(inspect.signature(check).parameters)[-2:] == ["resources_per_worker", "num_workers"]


@pytest.mark.parametrize("version", ["2.61.0", "3.0.0", "2.6.0"])
def test_another_ray_is_refused_in_one_line(version):
    with pytest.raises(UserError) as err:
        ray_private.check_version(version)
    assert "\n" not in str(err.value) and version in str(err.value) and "constraints.txt" in str(err.value)
