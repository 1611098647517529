"""Ray Tune runs the grid: one function trial per (config, seed), each driving one Ray Train run.

Every invocation is a fresh Tune run over the whole grid; what makes a rerun a resume is the storage, not
Tune's state: a trial whose Parquet file is complete returns at once, and an unfinished one continues from
the last checkpoint of its Train run (named by its trial key). So runtime options (loader workers, CPUs per
worker, failures allowed) always apply, the rows carry the version that produced them, and an experiment
can grow by new seeds or α values.
"""

import dataclasses
import math
import os
import time

from gnp.config import TrainConfig, trial_key, varying_fields
from gnp.errors import UserError
from jobs import results as res

TRIAL_DRIVER_CPU = 0.01  # without a trial_driver resource: a sliver (a CPU per driver starves small nodes)
TRIAL_DRIVER = "trial_driver"  # the head's custom resource: drivers off the (preemptible) GPU nodes
TABLE_PARAMETERS = {"train/variant": "scheme", "train/alpha": "α", "train/r": "r", "train/seed": "seed"}
TABLE_METRICS = {"epoch": "epoch", "test_top1_err": "top-1 err %", "images_per_s": "img/s"}


def run_trial(config: dict, run: dict) -> None:
    """Tune's function trainable: fit one TorchTrainer, then write the trial's Parquet file.

    An exception goes back to Tune, which retries the trial from its Train checkpoint; the grid driver
    records a trial as failed only once those retries are spent, never one that was interrupted.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.options import Placement
    from jobs.trial import TrialClock, fit_trial, rows_of

    cfg = TrainConfig(**config["train"])
    key = trial_key(cfg)
    if res.finished_trial(run["results"], run["experiment"], key, cfg.epochs, stopped_is_done=run["asha"]):
        return  # already in the results: never run twice
    clock = TrialClock(run["train_storage"], key)
    result = fit_trial(cfg, Placement(**run["placement"]), storage=run["train_storage"], name=key,
                       max_failures=run["max_failures"], callbacks=[TuneReportCallback(), clock])
    rows = res.rows_for_trial(cfg, rows_of(result), **run["identity"], trial_wall_s=clock.elapsed())
    res.write_trial(rows, run["results"], run["experiment"])


def table_parameters(configs: list[TrainConfig]) -> dict:
    """The progress table's parameter columns: scheme, α, r, seed and every other field the grid sweeps."""
    swept = {f"train/{name}": name for name in varying_fields(configs)}
    return {**TABLE_PARAMETERS, **swept}


def driver_resources(cluster: dict) -> dict:
    """A trial driver on the head's trial_driver resource where the cluster has one, else a CPU sliver."""
    return {TRIAL_DRIVER: 1, "cpu": 0} if cluster.get(TRIAL_DRIVER) else {"cpu": TRIAL_DRIVER_CPU}


def node_limits() -> list[tuple[dict, int | None]]:
    """Each kind of node the cluster can have and at most how many (None: no limit): the autoscaler's node
    types, else today's nodes, one each."""
    import ray

    from jobs import ray_private

    return ray_private.autoscaler_node_types() or [(n["Resources"], 1) for n in ray.nodes() if n["Alive"]]


def trials_at_once(need: dict, nodes: list[tuple[dict, int | None]], n_trials: int, max_concurrent: int | None,
                   drivers: float | None = None) -> int:
    """Trials the cluster holds side by side at its largest: per kind of node, the trials one node holds
    (a trial's workers share a node; packed trials share its GPUs) times how many such nodes, and no more
    than the head's trial drivers, --max-concurrent or the trials. Never more: a trial beyond it would only
    wait for a worker group, its driver and Train controller sitting on the head meanwhile."""
    fits = 0
    for node, count in nodes:
        per_node = min(math.floor((node.get(k, 0) + 1e-9) / v) for k, v in need.items() if v)
        fits += per_node * (n_trials if count is None else count)
    limits = [n_trials, fits, *([max_concurrent] if max_concurrent else []), *([int(drivers)] if drivers else [])]
    return max(1, min(limits))


def check_one_node(placement, need: dict, nodes: list[tuple[dict, int | None]]) -> None:
    """A trial no node can hold is a one-line error now, not a silent wait: Train's own check against the
    largest cluster, then one node for all of a trial's workers (STRICT_PACK)."""
    from jobs import ray_private

    per_worker = placement.resources()
    misfit = ray_private.worker_group_misfit(per_worker, placement.workers)
    if misfit:
        raise UserError(f"{misfit} lower --workers or the resources per worker")
    best = max((n for n, _ in nodes), key=lambda n: min(n.get(k, 0) / v for k, v in need.items()), default={})
    for kind, amount in need.items():
        if amount > best.get(kind, 0) + 1e-9:
            flag = {"GPU": "--gpus-per-worker", "CPU": "--cpus-per-worker"}.get(kind, "the resources")
            raise UserError(f"each trial needs {amount:g} {kind} on one node ({placement.workers} workers × "
                            f"{per_worker[kind]:g}) but the largest node has {best.get(kind, 0):g}; lower "
                            f"--workers or {flag}")


def check_fits(placement, n_trials: int, max_concurrent: int | None, strict: bool = True) -> int:
    """Trials that fit at once (trials_at_once); with `strict`, first check_one_node."""
    import ray

    need = {k: v * placement.workers for k, v in placement.resources().items()}
    nodes = node_limits()
    if strict:
        check_one_node(placement, need, nodes)
    cluster = ray.cluster_resources()
    need["CPU"] = need.get("CPU", 0) + driver_resources(cluster).get("cpu", 0)  # a CPU driver beside its workers
    return trials_at_once(need, nodes, n_trials, max_concurrent, drivers=cluster.get(TRIAL_DRIVER))


def logger_callbacks(names: list[str], experiment: str) -> list:
    """Ray's own MLflow / W&B logger callbacks (TensorBoard files are written by Tune anyway)."""
    callbacks = []
    try:
        if "mlflow" in names:
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            callbacks.append(MLflowLoggerCallback(experiment_name=experiment))
        if "wandb" in names:
            from ray.air.integrations.wandb import WandbLoggerCallback

            callbacks.append(WandbLoggerCallback(project=experiment))
    except ImportError as err:
        raise UserError(f"--logger needs {err.name}: pip install 'gnp-ray[tracking]'") from None
    return callbacks


def fit_grid(configs: list[TrainConfig], *, run: dict, storage: str, concurrent: int, callbacks: list,
             scheduler=None) -> tuple[dict, dict]:
    """Run every trial under Tune (stopping some early where `scheduler` is ASHA); returns {trial key:
    error} for the trials that failed for good and {trial key: its last checkpoint's path} for every trial."""
    import ray
    from ray import tune
    from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # the classic reporter: it shows the columns asked for below
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C raises here, so it is never taken for a failure
    trainable = tune.with_resources(tune.with_parameters(run_trial, run=run),
                                    driver_resources(ray.cluster_resources()))
    name_of = lambda t: trial_key(TrainConfig(**t.config["train"]))  # noqa: E731
    tuner = tune.Tuner(
        trainable,
        param_space={"train": tune.grid_search([dataclasses.asdict(c) for c in configs])},
        # reuse_actors: a trial's driver process (torch, Ray Train and Tune imported) drives the next trial
        # A trial ASHA stops ends with its actor, and its Train run with it (an actor reused for the next trial
        # would keep the stopped trial's thread training): no reuse under a scheduler.
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent, trial_name_creator=name_of,
                                    trial_dirname_creator=name_of, reuse_actors=scheduler is None,
                                    scheduler=scheduler),
        run_config=tune.RunConfig(
            name=f"{run['experiment']}-{time.strftime('%Y%m%d-%H%M%S')}", storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=run["max_failures"]), callbacks=callbacks,
            progress_reporter=tune.CLIReporter(parameter_columns=table_parameters(configs),
                                               metric_columns=TABLE_METRICS, max_report_frequency=60),
        ),
    )
    grid = [(trial_key(TrainConfig(**r.config["train"])), r) for r in tuner.fit()]
    return ({key: r.error for key, r in grid if r.error is not None},
            {key: r.metrics.get(CHECKPOINT_PATH_KEY) for key, r in grid if r.metrics})


def record_stopped(checkpoints: dict, errors: dict, configs: list[TrainConfig], run: dict) -> list[str]:
    """The trials a scheduler stopped (neither failed nor written): their rows up to the epoch it stopped
    them at, read from that epoch's checkpoint, each labelled `stopped`. Returns their keys.

    ASHA also stops a trial at its last epoch, and Tune may end it before its driver has written it: such a
    trial (or one that diverged) had ended, and is written as it ended."""
    from jobs.trial import TrialClock, rows_at

    stopped = []
    for cfg in configs:
        key = trial_key(cfg)
        if key in errors or checkpoints.get(key) is None or res.finished_trial(
                run["results"], run["experiment"], key, cfg.epochs, stopped_is_done=True):
            continue
        rows = rows_at(checkpoints[key])
        if rows[-1]["epoch"] < cfg.epochs and rows[-1]["status"] == "ok":
            rows = [{**row, "status": "stopped"} for row in rows]
            stopped.append(key)
        wall = TrialClock(run["train_storage"], key).earlier
        res.write_trial(res.rows_for_trial(cfg, rows, **run["identity"], trial_wall_s=wall),
                        run["results"], run["experiment"])
    return stopped


def record_failures(errors: dict, configs: list[TrainConfig], run: dict) -> None:
    """One `failed` row for each trial whose retries are spent: the table counts it beside the others."""
    for cfg in configs:
        if trial_key(cfg) in errors:
            failed = dict(epoch=0, workers=run["placement"]["workers"], device="unknown", status="failed")
            res.write_trial(res.rows_for_trial(cfg, [failed], **run["identity"], trial_wall_s=None),
                            run["results"], run["experiment"])
