"""Ray Tune: a grid over any training options, one trial = one multi-worker Ray Train run.

    python -m jobs.grid --recipe digits --seeds 0,1 --alpha 0,0.8,1                   # the CPU demo
    python -m jobs.grid --recipe imagenet-resnet50 --data /mnt/imagenet --seeds 0,1,2 \\
        --alpha 0,0.2,0.3,1 --r 0.05 --cpus-per-worker 10 --results s3://bucket/gnp-results  # the paper's grid
    python -m jobs.grid --recipe cifar10-wrn28-10 --data /data/cifar --seeds 0,1,2,3,4 \\
        --alpha 0,0.8,1 --augmentation basic,cutout                                   # Table 1's WRN-28-10 row
    python -m jobs.grid --recipe digits --mix paper,official --clip-grad-norm none,5 --dry-run

The paper's three schemes are one grid: α = 0 runs as `standard`, α = 1 as `sam`, 0 < α < 1 as `gnp`.
The paper's recipes take 4 workers of one GPU each by default (their per-GPU batch), the embedded ones 2
CPU workers; the experiment is named after the recipe unless --experiment names it.
Each trial writes <results>/<experiment>/<trial_key>.parquet when it ends (ok or diverged). Running the same
command again resumes the experiment: finished trials are not rerun, unfinished ones continue from their
last checkpoint; more seeds, α values or values of any option extend it. Another recipe, --workers or
dataset under the same name is refused. --dry-run prints the trials and their cost without starting Ray.
The mean ± std table is printed at the end.
"""

import dataclasses
import os
import sys
from pathlib import Path

from gnp import datasets, storage
from gnp.errors import UserError
from jobs import local, options
from jobs import results as res
from jobs.driver import (
    check_fits,
    driver_resources,
    fit_grid,
    logger_callbacks,
    record_failures,
    record_stopped,
)
from jobs.options import Placement

INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def check_writable(results: str) -> None:
    """A local results folder must be creatable; checked without creating anything."""
    if storage.is_uri(results):
        return
    folder = Path(results)
    while not folder.exists():
        folder = folder.parent
    if not (folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)):
        raise UserError(f"results folder {results} is not writable; choose another --results")


def local_dataset(dataset: str, data: str | None, recipe: str = "") -> dict:
    """Check the root and take the identity of the data on this machine (the embedded copy if None)."""
    spec = datasets.get(dataset)
    return spec.identify(spec.root(data, recipe))


def identify_options(placement: Placement, nodes: list[dict]) -> dict:
    """Where the data's identity is taken: on a node of the workers' kind that is up (`nodes`: ray.nodes()),
    holding none of its GPUs, so that it never waits for a GPU that trials (of this grid or another) hold;
    only where no GPU node is up yet does it ask for a GPU, which brings one up as a trial would."""
    options = dict(num_cpus=min(1.0, placement.cpus_per_worker))
    if not placement.use_gpu:
        return options
    gpu_nodes = [n["NodeID"] for n in nodes if n["Alive"] and n["Resources"].get("GPU", 0) > 0]
    if not gpu_nodes:
        return {**options, "num_gpus": placement.gpus_per_worker}
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return {**options, "scheduling_strategy": NodeAffinitySchedulingStrategy(gpu_nodes[0], soft=False)}


def remote_dataset(dataset: str, data: str, placement) -> dict:
    """The same, on a node where the workers run (a cluster's data sits on its worker nodes)."""
    import ray

    def identify(name, root):
        try:
            return local_dataset(name, root)
        except UserError as err:
            return str(err)

    task = ray.remote(identify).options(**identify_options(placement, ray.nodes()))
    found = ray.get(task.remote(dataset, data))
    if isinstance(found, str):
        raise UserError(found)
    return found


def check_batch(configs, dataset: dict) -> None:
    """A global batch larger than the training set would give no step at all: refused before any trial."""
    largest = max(c.batch_size for c in configs)
    if largest > dataset["train_images"]:
        raise UserError(f"--batch-size {largest} is larger than the {dataset['train_images']} training images; "
                        "lower --batch-size")


def check_record(args, configs, experiment: str, results: str, dataset: dict) -> dict:
    record = options.grid_record(args, configs, dataset)
    before = res.read_grid(results, experiment)
    if before and getattr(args, "stage", None):  # a protocol's stages each run a part of one experiment
        record = options.with_earlier_axes(before, record)
    problem = before and options.grid_conflict(before, record)
    if problem:
        raise UserError(f"experiment {experiment!r} in {results}: {problem}; choose a new --experiment")
    return record


@dataclasses.dataclass
class Grid:
    """A grid checked before Ray starts: its trials, where they go, and its data where this machine has it."""

    configs: list
    experiment: str
    results: str
    ray_storage: str
    asha: dict | None  # ASHAScheduler's arguments on a protocol's search stage with --asha
    dataset: dict | None  # None: a cluster's data, identified on a worker node once Ray is up
    on_cluster: bool


def run(args) -> int:
    """Check all that needs no Ray, then print the plan (--dry-run) or start Ray and run the grid."""
    if args.protocol and not getattr(args, "stage", None):
        from jobs import protocol

        return protocol.run(args, run)
    grid = prepare(args)
    real = grid
    if args.smoke:
        from jobs import smoke

        grid = dataclasses.replace(grid, configs=smoke.smoke_configs(grid.configs, args.smoke),
                                   experiment=smoke.experiment_name(grid.experiment))
    if args.dry_run:
        return dry_run(args, grid)
    callbacks = logger_callbacks(args.logger, grid.experiment)
    start_ray(grid.on_cluster)
    placement = placement_of(args)
    if grid.dataset is None:
        grid.dataset = remote_dataset(grid.configs[0].dataset, args.data, placement)
        check_batch(grid.configs, grid.dataset)
    code = launch(args, grid, placement, callbacks)
    if args.smoke and code != INTERRUPTED:
        go = smoke.report(grid.results, grid.experiment, grid.configs)
        print("== the grid at the rates measured:", flush=True)
        dry_run(args, real)
        return 0 if go and code == 0 else 1
    return code


def prepare(args) -> Grid:
    """The options, the results folder, ASHA's settings and (here) the data and the experiment's record."""
    configs = options.grid_configs(args)
    options.check_run_options(args)
    results = storage.absolute(args.results)
    check_writable(results)
    grid = Grid(configs, experiment=args.experiment or args.recipe, results=results,
                ray_storage=storage.absolute(args.storage or f"{results.rstrip('/')}/_ray"),
                asha=asha_options(args, configs), dataset=None, on_cluster=bool(os.environ.get("RAY_ADDRESS")))
    if not grid.on_cluster or args.data is None or (args.dry_run and Path(args.data).exists()):
        grid.dataset = local_dataset(configs[0].dataset, args.data, args.recipe)
        check_batch(configs, grid.dataset)
        check_record(args, configs, grid.experiment, results, grid.dataset)
    return grid


def dry_run(args, grid: Grid) -> int:
    """The plan; on a cluster (RAY_ADDRESS), with the trials it holds at once, read from it (nothing starts)."""
    from jobs.estimate import print_plan

    at_once = args.max_concurrent
    if grid.on_cluster:
        start_ray(on_cluster=True)
        at_once = check_fits(placement_of(args), len(grid.configs), args.max_concurrent, strict=False)
    train_images = (grid.dataset or {}).get("train_images") or datasets.get(grid.configs[0].dataset).train_images
    args.planned_hours = print_plan(grid.configs, experiment=grid.experiment, results=grid.results,
                                    workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                                    at_once=at_once, train_images=train_images)
    return 0


def start_ray(on_cluster: bool) -> None:
    """Join the cluster of RAY_ADDRESS, or start a local one; refuse a Ray this project was not tested with."""
    import ray

    from jobs import ray_private

    ray_private.check_version()
    if not ray.is_initialized():
        if on_cluster:
            ray.init(log_to_driver=True)
        else:
            print(f"started a local Ray cluster on 127.0.0.1; dashboard {local.start()}", flush=True)


def placement_of(args) -> Placement:
    """Each trial's workers; a CPU driver's sliver comes off the workers' CPUs, so that a trial fits a node's
    CPUs exactly."""
    import ray

    driver_cpu = driver_resources(ray.cluster_resources()).get("cpu", 0)
    cpus = args.cpus_per_worker or round(1 - driver_cpu / args.workers, 4)
    return Placement(args.workers, args.gpus_per_worker, cpus)


def launch(args, grid: Grid, placement: Placement, callbacks: list) -> int:
    """Record the grid, run its unfinished trials under Tune, write the failed and stopped ones, print the
    table; the exit code is 1 if a trial failed for good."""
    experiment, results = grid.experiment, grid.results
    record = check_record(args, grid.configs, experiment, results, grid.dataset)
    scheduler = None
    if grid.asha:
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(**grid.asha)
    todo = [c for c in grid.configs if not res.finished_trial(results, experiment, res.trial_key(c), c.epochs,
                                                              stopped_is_done=scheduler is not None)]
    concurrent = check_fits(placement, len(todo), args.max_concurrent, strict=not args.no_resource_check)
    res.write_grid(results, experiment, record)  # only now: a refused grid reserves no name
    where = args.data or "the embedded digits (no --data given)"
    print(f"experiment {experiment}: {len(grid.configs)} trials of {args.recipe} on {where} "
          f"({options.describe(grid.dataset)}), {len(grid.configs) - len(todo)} finished, {placement.workers} "
          f"workers each, {concurrent} at once; results in {results}/{experiment}", flush=True)
    run_context = dict(
        experiment=experiment, results=results, train_storage=f"{grid.ray_storage.rstrip('/')}/{experiment}-train",
        placement=dataclasses.asdict(placement), max_failures=args.max_failures, asha=scheduler is not None,
        identity=dict(experiment=experiment, seeds_planned=len(record["axes"]["seed"]),
                      version=res.code_version(), dataset_id=grid.dataset["fingerprint"]),
    )
    errors = {}
    if todo:
        try:
            errors, checkpoints = fit_grid(todo, run=run_context, storage=grid.ray_storage, concurrent=concurrent,
                                           callbacks=callbacks, scheduler=scheduler)
        except KeyboardInterrupt:
            print(f"interrupted; rerun the same command to resume {experiment} (finished trials are kept)",
                  file=sys.stderr, flush=True)
            return INTERRUPTED
        record_failures(errors, todo, run_context)
        if scheduler is not None:
            stopped = record_stopped(checkpoints, errors, todo, run_context)
            print(f"ASHA stopped {len(stopped)} of {len(todo)} trials early: {', '.join(stopped) or 'none'}",
                  flush=True)
    print_table(results, experiment)
    if errors:
        print(f"{len(errors)} trial(s) failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if errors else 0


def asha_options(args, configs) -> dict | None:
    """Tune's ASHAScheduler's arguments for a protocol's search stage when --asha asks (None elsewhere:
    never the reported seeds), checked before Ray starts.

    Its metric is the error the protocol selects by, each epoch; a trial runs --asha-grace-epochs (default
    a tenth of its epochs) before it can be stopped, and each rung keeps the best 1/η of the trials there."""
    if not (args.asha and getattr(args, "stage", None) in ("r", "alpha")):
        return None
    epochs = max(c.epochs for c in configs)
    grace = args.asha_grace_epochs or max(1, epochs // 10)
    if grace >= epochs:
        raise UserError(f"--asha-grace-epochs {grace} leaves ASHA nothing to stop in {epochs} epochs; lower it "
                        "or drop --asha")
    return dict(time_attr="epoch", metric="holdout_top1_err" if args.select == "holdout" else "test_top1_err",
                mode="min", max_t=epochs, grace_period=grace, reduction_factor=args.asha_reduction)


def print_table(results: str, experiment: str) -> None:
    """The experiment's table; a problem in it (a foreign file in the folder, say) is one line, never an
    exception after the grid's training: the results are written either way."""
    import analysis

    folder = f"{results.rstrip('/')}/{experiment}"
    try:
        print(analysis.format_table(analysis.load_results(folder)), flush=True)
    except analysis.AnalysisError as err:
        print(f"the results are in {folder}, but no table could be made of them: {err}", file=sys.stderr,
              flush=True)


def main(argv=None) -> int:
    if not os.environ.get("RAY_ADDRESS"):
        local.loopback_env()
    args = options.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return run(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
