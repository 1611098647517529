"""How many CIFAR trials one GPU should hold: the summed training rate of 1, 2 and 4 trials sharing it.

    PYTHONPATH=. python3 bench/packing.py --model WideResNet_28_10 --batch 256 --trials 1,2,4 --json bench/results
    .venv/bin/python bench/packing.py --model smallcnn --device cpu --trials 1,2 --steps 5   # the logic, on a CPU

Each trial is its own process (as Ray runs packed trials: --gpus-per-worker 0.5 or 0.25 with one worker),
running GNP steps (α = 0.8, the recipes' bf16 on CUDA) on a synthetic CIFAR batch of the recipe's size, all
started together behind a barrier. A packing pays when the summed images/s beats one trial's by more than
the trials' slowdown costs a grid: the figures are the summed rate, each trial's rate, and the ratio to one
trial alone. `--json DIR` writes them to DIR/packing-<device>-<date>.json with the device and torch version.
"""

import argparse
import datetime
import json
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from gnp.models import build_model
from gnp.optim import GNP


def trial(rank, args, barrier, out):
    torch.manual_seed(rank)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)  # the trials share the cores as they share a GPU
    torch.backends.cudnn.benchmark = device.type == "cuda"  # as training sets it
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    model = build_model(args.model, 10, 32).to(device, memory_format=fmt)
    opt = GNP(model, alpha=0.8, r=0.1, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    x = torch.randn(args.batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (args.batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()

    def closure():
        with autocast:
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    for _ in range(args.warmup):
        opt.step(closure)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    barrier.wait()
    start = time.perf_counter()
    for _ in range(args.steps):
        opt.step(closure)
    sync()
    out[rank] = args.steps * args.batch / (time.perf_counter() - start)


def measure(args, trials: int) -> dict:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(trials), ctx.Manager().dict()
    procs = [ctx.Process(target=trial, args=(r, args, barrier, out)) for r in range(trials)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    if any(p.exitcode for p in procs):
        raise SystemExit(f"a trial process failed with {trials} at once (out of memory?)")
    rates = [out[r] for r in range(trials)]
    return dict(trials=trials, summed_img_s=sum(rates), per_trial_img_s=rates)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="WideResNet_28_10")
    p.add_argument("--batch", type=int, default=256, help="each trial's batch (one worker holds it all)")
    p.add_argument("--trials", default="1,2,4")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="folder to write the figures to")
    args = p.parse_args()
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
