"""Ray Tune: a seed × α × r (× variant) grid, one trial = one multi-worker Ray Train run.

    python -m jobs.grid --recipe digits --seeds 0,1 --alpha 0,0.8,1 --workers 2      # the CPU demo
    python -m jobs.grid --recipe imagenet-resnet50 --data /mnt/imagenet --seeds 0,1,2 \\
        --alpha 0,0.2,0.3,1 --r 0.05 --workers 8 --gpus-per-worker 1 --cpus-per-worker 10 \\
        --experiment resnet50-paper --results s3://bucket/gnp-results                # the paper's grid

The three schemes of the paper are one grid: α = 0 runs as `standard`, α = 1 as `sam`, 0 < α < 1 as
`gnp`. Each trial writes <results>/<experiment>/<trial_key>.parquet when it ends (ok or diverged).
Running the same command again resumes the experiment: finished trials are not rerun, unfinished ones
continue from their last checkpoint. The mean ± std table is printed at the end.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

from gnp import variants
from gnp.config import TrainConfig
from gnp.errors import UserError
from gnp.recipes import RECIPES, get_recipe
from jobs import results as res

TRIAL_DRIVER_CPU = 0.01  # a sliver: a full CPU per trial driver deadlocks small nodes (DESIGN §9)


def floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jobs.grid", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="digits", help=f"one of: {', '.join(RECIPES)}")
    p.add_argument("--data", help="dataset root with train/ and val/ on every worker node (default: embedded digits)")
    p.add_argument("--seeds", type=ints, default=[0, 1, 2], help="comma-separated (default 0,1,2)")
    p.add_argument("--alpha", type=floats, default=[0.0, 0.2, 0.3, 1.0], help="comma-separated (default 0,0.2,0.3,1)")
    p.add_argument("--r", type=floats, default=[0.05], help="comma-separated radii (default 0.05)")
    p.add_argument("--variant", default="gnp", help="comma-separated: gnp (default), fgr, bgr, db")
    p.add_argument("--epochs", type=int, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, help="override the recipe's global batch")
    p.add_argument("--lr", type=float, help="override the recipe's learning rate")
    p.add_argument("--amp", help="none, bf16 or fp16 (GPU)")
    p.add_argument("--channels-last", action="store_true", default=None)
    p.add_argument("--loader-workers", type=int, help="DataLoader processes per Train worker")
    p.add_argument("--workers", type=int, default=2, help="Train workers (DDP ranks) per trial (default 2)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="0 trains on CPU with gloo (default)")
    p.add_argument("--cpus-per-worker", type=float,
                   help="CPUs reserved per worker (default: 1 less the trial driver's 0.01 share)")
    p.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the cluster fits)")
    p.add_argument("--max-failures", type=int, default=3, help="worker-group restarts per trial (default 3)")
    p.add_argument("--experiment", help="name; the same name resumes (default <recipe>-grid)")
    p.add_argument("--results", default="results", help="folder or URI for the Parquet tables (default results)")
    p.add_argument("--storage", help="Ray storage folder or URI (default <results>/_ray); shared by all nodes")
    p.add_argument("--no-resource-check", action="store_true",
                   help="skip the up-front check against the cluster's resources (autoscaling clusters)")
    return p


# ---- the grid ------------------------------------------------------------------------------------------


def scheme(variant: str, alpha: float) -> str:
    """α = 0 is standard training whatever the variant; gnp with α = 1 is SAM."""
    if alpha == 0:
        return "standard"
    if variant == "gnp" and alpha == 1:
        return "sam"
    return variant


def grid_configs(args) -> list[TrainConfig]:
    """Every distinct configuration × seed, validated; standard runs ignore r, so they run once."""
    names = [v.strip() for v in args.variant.split(",") if v.strip()]
    for v in names:
        if v not in variants.sweepable():
            raise UserError(f"--variant takes gnp, fgr, bgr or db (α=0 and α=1 make standard and SAM); got {v!r}")
    if not args.seeds or not args.alpha or not args.r:
        raise UserError("--seeds, --alpha and --r each need at least one value")
    overrides = dict(data=args.data, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, amp=args.amp,
                     channels_last=args.channels_last, loader_workers=args.loader_workers)
    configs, seen = [], set()
    for variant in names:
        for alpha in args.alpha:
            for r in args.r:
                for seed in args.seeds:
                    name = scheme(variant, alpha)
                    cfg = get_recipe(args.recipe, variant=name, alpha=alpha, r=0.0 if name == "standard" else r,
                                     seed=seed, **overrides)
                    if cfg.variant != "standard" and cfg.r == 0:
                        raise UserError(f"r must be > 0 for α={alpha}; got r={r}")
                    key = res.trial_key(cfg)
                    if key not in seen:
                        seen.add(key)
                        configs.append(cfg)
    return configs


# ---- one trial (runs inside Tune, in the trial's own driver) ----------------------------------------------


def run_trial(config: dict) -> None:
    """Tune's function trainable: fit one TorchTrainer, then write the trial's Parquet file."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from jobs.trial import Placement, fit_trial, rows_of

    cfg = TrainConfig(**config["train"])
    key = res.trial_key(cfg)
    if res.finished_trial(config["results"], config["experiment"], key, cfg.epochs):
        return  # already in the results (e.g. the experiment state was lost): never run twice
    identity = dict(experiment=config["experiment"], seeds_planned=config["seeds_planned"],
                    version=config["code_version"])
    try:
        result = fit_trial(cfg, Placement(**config["placement"]), storage=config["train_storage"], name=key,
                           max_failures=config["max_failures"], callbacks=[TuneReportCallback()])
        rows = rows_of(result)
    except Exception:
        failed = dict(epoch=0, workers=config["placement"]["workers"], device="unknown", status="failed")
        res.write_trial(res.rows_for_trial(cfg, [failed], **identity), config["results"], config["experiment"])
        raise
    res.write_trial(res.rows_for_trial(cfg, rows, **identity), config["results"], config["experiment"])


# ---- the driver ----------------------------------------------------------------------------------------


def check_cluster(placement, n_trials: int, max_concurrent: int | None) -> int:
    """Trials that fit at once; a trial larger than the cluster is an error now, not a silent wait."""
    import ray

    have = ray.cluster_resources()
    need = placement.per_trial()
    for kind, flag in (("GPU", "--gpus-per-worker"), ("CPU", "--cpus-per-worker")):
        if need[kind] + (TRIAL_DRIVER_CPU if kind == "CPU" else 0) > have.get(kind, 0) + 1e-9:
            raise UserError(
                f"each trial needs {need[kind]:g} {kind}s ({placement.workers} workers × "
                f"{need[kind] / placement.workers:g}) but the cluster has {have.get(kind, 0):g}; "
                f"lower --workers or {flag}"
            )
    fits = [math.floor(have.get(k, 0) / (need[k] + (TRIAL_DRIVER_CPU if k == "CPU" else 0))) for k in need if need[k]]
    return max(1, min([n_trials, *fits] + ([max_concurrent] if max_concurrent else [])))


def check_data_on_a_worker(data: str | None, placement) -> None:
    """Check the dataset layout where the workers run (a cluster's data sits on worker nodes)."""
    if data is None:
        return
    import ray

    from gnp.data import check_layout

    def check(root):
        try:
            check_layout(root)
            return None
        except UserError as err:
            return str(err)

    task = ray.remote(check).options(num_cpus=min(1.0, placement.cpus_per_worker),
                                     num_gpus=placement.gpus_per_worker)
    problem = ray.get(task.remote(data))
    if problem:
        raise UserError(problem)


def remember_grid(results: str, experiment: str, grid: dict) -> None:
    """The same experiment name must mean the same grid, or resuming would silently run the old one."""
    filesystem, root = res.resolve(results)
    folder = f"{root.rstrip('/')}/{experiment}"
    path = f"{folder}/_grid.json"  # "_" keeps it out of pd.read_parquet(folder)
    text = json.dumps(grid, sort_keys=True, indent=1)
    from pyarrow import fs as pafs

    if filesystem.get_file_info(path).type == pafs.FileType.File:
        with filesystem.open_input_stream(path) as f:
            before = json.loads(f.read())
        if before != json.loads(text):
            raise UserError(f"experiment {experiment!r} in {results} already ran another grid; "
                            "choose a new --experiment (or the same arguments to resume it)")
        return
    filesystem.create_dir(folder, recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode())


def ray_init():
    import ray

    if ray.is_initialized():  # the caller (a test, a notebook) connected already
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if os.environ.get("RAY_ADDRESS"):  # inside `ray job submit`, or a cluster named by the user
        ray.init(log_to_driver=False)
    else:  # a local cluster of this machine, its dashboard on 127.0.0.1 only
        ray.init(include_dashboard=False, log_to_driver=False)


def run_grid(args) -> int:
    from ray import tune

    from jobs.trial import Placement

    configs = grid_configs(args)
    experiment = args.experiment or f"{args.recipe}-grid"
    cpus = args.cpus_per_worker or round(1 - TRIAL_DRIVER_CPU / max(args.workers, 1), 4)
    placement = Placement(args.workers, args.gpus_per_worker, cpus)
    if placement.workers < 1 or placement.cpus_per_worker <= 0 or placement.gpus_per_worker < 0:
        raise UserError("--workers must be >= 1, --cpus-per-worker > 0 and --gpus-per-worker >= 0")
    for cfg in configs:
        if cfg.batch_size % placement.workers:
            raise UserError(f"batch size {cfg.batch_size} does not split over {placement.workers} workers; "
                            f"use a multiple of {placement.workers}")
    results = args.results if "://" in args.results else str(Path(args.results).expanduser().resolve())
    storage = args.storage or f"{results.rstrip('/')}/_ray"
    if "://" not in storage:
        storage = str(Path(storage).expanduser().resolve())
    try:
        res.resolve(results)[0].create_dir(res.resolve(results)[1], recursive=True)
    except OSError as err:
        raise UserError(f"results folder {results} is not writable ({err}); choose another --results") from None
    grid = dict(recipe=args.recipe, seeds=args.seeds, alpha=args.alpha, r=args.r, variant=args.variant,
                trials=sorted(res.trial_key(c) for c in configs))
    remember_grid(results, experiment, grid)
    dataset = args.data or "the embedded digits (no --data given)"
    print(f"experiment {experiment}: {len(configs)} trials of {args.recipe} on {dataset}, "
          f"{placement.workers} workers each; results in {results}/{experiment}", flush=True)

    ray_init()
    concurrent = len(configs)
    if not args.no_resource_check:
        concurrent = check_cluster(placement, len(configs), args.max_concurrent)
    check_data_on_a_worker(args.data, placement)
    if args.data is None:
        from gnp.data import ensure_digits

        ensure_digits()  # once here, not raced by every worker

    trainable = tune.with_resources(run_trial, {"cpu": TRIAL_DRIVER_CPU})
    experiment_path = f"{storage.rstrip('/')}/{experiment}"
    if tune.Tuner.can_restore(experiment_path):
        print(f"resuming {experiment_path}", flush=True)
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        per_trial = dict(
            experiment=experiment, results=results, train_storage=f"{storage.rstrip('/')}/{experiment}-train",
            placement=dataclasses.asdict(placement), max_failures=args.max_failures,
            seeds_planned=len(args.seeds), code_version=res.code_version(),
        )
        tuner = tune.Tuner(
            trainable,
            param_space={**per_trial, "train": tune.grid_search([dataclasses.asdict(c) for c in configs])},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrent,
                trial_name_creator=lambda t: res.trial_key(TrainConfig(**t.config["train"])),
                trial_dirname_creator=lambda t: res.trial_key(TrainConfig(**t.config["train"])),
            ),
            run_config=tune.RunConfig(name=experiment, storage_path=storage, verbose=1),
        )
    grid_result = tuner.fit()
    errors = grid_result.num_errors
    print_table(results, experiment)
    if errors:
        print(f"{errors} trial(s) failed; rerun the same command to retry them", file=sys.stderr)
    return 1 if errors else 0


def print_table(results: str, experiment: str) -> None:
    import analysis

    frame = analysis.load_results(f"{results.rstrip('/')}/{experiment}")
    print(analysis.format_table(frame), flush=True)


def negative_lists_joined(argv: list[str]) -> list[str]:
    """`--alpha -0.5,0`: argparse takes "-0.5,0" for an option; join it as `--alpha=-0.5,0`, as meant."""
    out = []
    for arg in argv:
        if out and out[-1] in ("--alpha", "--r") and re.fullmatch(r"-[\d.][\d.,eE+-]*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(negative_lists_joined(sys.argv[1:] if argv is None else list(argv)))
    try:
        return run_grid(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
