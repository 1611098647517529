"""How many trials a grid runs at once, and that a worker group that cannot start is not retried forever
(without a cluster: the arithmetic, and Train's failure policy with the limits the trials set)."""

import os

import pytest
from ray.train import FailureConfig
from ray.train.v2._internal.exceptions import WorkerGroupStartupTimeoutError
from ray.train.v2._internal.execution.failure_handling.default import DefaultFailurePolicy
from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
from ray.train.v2.api.exceptions import ControllerError

from gnp.recipes import get_recipe
from jobs import trial
from jobs.driver import trials_at_once
from jobs.options import Placement
from jobs.ray_private import WORKER_GROUP_START_TIMEOUT_ENV

P4D = {"CPU": 96, "GPU": 8, "memory": 1e12}
HEAD = {"CPU": 0, "trial_driver": 8}


@pytest.mark.parametrize("gpus_per_worker,workers,max_concurrent,drivers,expected", [
    (1, 4, None, None, 2 * 4),      # 4 p4d nodes, 2 four-GPU trials each
    (1, 4, 3, None, 3),             # --max-concurrent
    (1, 4, None, 5, 5),             # the head's trial drivers
    (0.5, 1, None, None, 12),       # packed 2 per GPU: 64 on the nodes, but only 12 trials
    (1, 8, None, None, 4),          # one trial per node
])
def test_the_trials_at_once_are_what_the_largest_cluster_holds(gpus_per_worker, workers, max_concurrent,
                                                               drivers, expected):
    need = {k: v * workers for k, v in Placement(workers, gpus_per_worker, 10 * gpus_per_worker).resources().items()}
    nodes = [(HEAD, 1), (P4D, 4)]
    assert trials_at_once(need, nodes, 12, max_concurrent, drivers) == expected


def test_an_unlimited_node_type_holds_every_trial_and_a_cluster_that_fits_none_runs_one():
    need = {"CPU": 40, "GPU": 4}
    assert trials_at_once(need, [(P4D, None)], 12, None) == 12
    assert trials_at_once({"CPU": 1, "GPU": 16}, [(P4D, 4)], 12, None) == 1  # --no-resource-check: one at a time


def test_a_worker_group_that_cannot_start_is_tried_a_bounded_number_of_times(monkeypatch):
    made = {}

    class Trainer:
        def __init__(self, *args, **kwargs):
            made.update(kwargs)

        def fit(self):
            return None

    monkeypatch.setattr(trial, "TorchTrainer", Trainer)
    monkeypatch.delenv(WORKER_GROUP_START_TIMEOUT_ENV, raising=False)
    trial.fit_trial(get_recipe("digits"), Placement(2, 0, 1), storage="/tmp/unused", name="t")
    config = made["run_config"].failure_config
    assert config.controller_failure_limit == trial.WORKER_GROUP_START_RETRIES
    assert os.environ[WORKER_GROUP_START_TIMEOUT_ENV] == str(trial.WORKER_GROUP_START_TIMEOUT_S)
    policy = DefaultFailurePolicy(config)
    timeout = ControllerError(WorkerGroupStartupTimeoutError(num_workers=2))
    decisions = [policy.make_decision(timeout) for _ in range(trial.WORKER_GROUP_START_RETRIES + 1)]
    assert decisions == [FailureDecision.RETRY] * trial.WORKER_GROUP_START_RETRIES + [FailureDecision.RAISE]
    # Train's default: retried forever
    forever = DefaultFailurePolicy(FailureConfig(max_failures=3))
    assert all(forever.make_decision(timeout) == FailureDecision.RETRY for _ in range(50))


def test_the_data_is_identified_on_an_up_gpu_node_without_holding_a_gpu():
    from jobs.grid import identify_options

    gpu = dict(NodeID="a" * 56, Alive=True, Resources={"CPU": 96, "GPU": 8})
    head = dict(NodeID="b" * 56, Alive=True, Resources={"CPU": 8})
    options = identify_options(Placement(4, 1, 10), [head, gpu])
    assert "num_gpus" not in options and options["num_cpus"] == 1.0
    assert options["scheduling_strategy"].node_id == gpu["NodeID"] and not options["scheduling_strategy"].soft
    assert identify_options(Placement(4, 1, 10), [head]) == {"num_cpus": 1.0, "num_gpus": 1}  # none up: bring one
    assert identify_options(Placement(2, 0, 0.49), [head]) == {"num_cpus": 0.49}
