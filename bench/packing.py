"""How many CIFAR trials one GPU should hold: the summed training rate of 1, 2 and 4 trials sharing it.

    PYTHONPATH=. python3 bench/packing.py --trials 1,2,4 --json bench/results    # WRN-28-10, one GPU
    .venv/bin/python bench/packing.py --recipe digits-cifar --device cpu --trials 1,2 --steps 4   # the logic

Each trial is its own process running the grid's step (bench/grid_step.py: gnp.loop.Run as the recipe builds
it, GNP at α = 0.8, the recipe's amp, channels_last and cuDNN autotuning, on one synthetic batch on the
device), with the whole --batch, as Ray runs packed one-worker trials (--gpus-per-worker 0.5 or 0.25: one
rank, no DDP). All start together behind a barrier. A packing pays when the summed images/s beats one trial's
by more than the trials' slowdown costs a grid: the figures are the summed rate, each trial's rate, and the
ratio to one trial alone. `--json DIR` writes them to DIR/packing-<device>-<date>.json after every point.
"""

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp
from grid_step import LAYOUTS, Steps, build_run, point_config, synthetic_batch


def trial(rank, args, barrier, out):
    torch.manual_seed(rank)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the trials share the cores as they share a GPU
    cfg = point_config(args.recipe, args.batch, device, variant="gnp", alpha=0.8)
    run = build_run(cfg, device, ddp=False, steps_per_epoch=args.steps)
    batch = synthetic_batch(cfg, LAYOUTS[cfg.dataset], cfg.batch_size, run.num_classes, device)
    run.train_loader = Steps(batch, args.warmup, device)
    run.train_one_epoch()
    barrier.wait()
    run.train_loader = feed = Steps(batch, args.steps, device)
    run.train_one_epoch()
    out[rank] = args.steps * cfg.batch_size / (feed.marks[-1] - feed.marks[0])


def measure(args, trials: int) -> dict:
    """The summed and per-trial img/s of `trials` processes started together."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(trials), ctx.Manager().dict()
    procs = [ctx.Process(target=trial, args=(r, args, barrier, out), daemon=True) for r in range(trials)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise RuntimeError(f"a trial process failed with {trials} at once (out of memory?)")
    rates = [out[r] for r in range(trials)]
    return dict(trials=trials, recipe=args.recipe, batch=args.batch, summed_img_s=sum(rates),
                per_trial_img_s=rates, wall_s=time.perf_counter() - start)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="cifar10-wrn28-10")
    p.add_argument("--batch", type=int, default=256, help="each trial's batch (one worker holds it all)")
    p.add_argument("--trials", default="1,2,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="folder to write the figures to")
    return p


def main():
    args = parser().parse_args()
    runs = []
    for n in (int(t) for t in args.trials.split(",")):
        runs.append(measure(args, n))
        one = runs[0]["summed_img_s"]
        print(f"{n} trial(s) on one {args.device}: {runs[-1]['summed_img_s']:.0f} img/s summed "
              f"({runs[-1]['summed_img_s'] / one:.2f}x one trial), per trial "
              + ", ".join(f"{r:.0f}" for r in runs[-1]["per_trial_img_s"]), flush=True)
        if args.json:  # after every point: a run cut short still leaves its figures
            device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
            figures = dict(device=device, torch=torch.__version__, date=datetime.date.today().isoformat(),
                           args=vars(args), runs=runs)
            name = f"packing-{device.replace(' ', '_')}-{figures['date']}.json"
            Path(args.json).mkdir(parents=True, exist_ok=True)
            (Path(args.json) / name).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
