"""What a GNP step costs next to a standard step, measured side by side in one run.

    .venv/bin/python bench/step_ratio.py                      # small CNN, 1 CPU process and 2 gloo DDP workers
    PYTHONPATH=. python3 bench/step_ratio.py --model ResNet50 --size 224 --batch 256 --amp bf16 \\
        --channels-last --compile both --no-ddp --json bench/results   # one GPU: img/s, ratio, memory

Schemes: standard (one pass), GNP (α = 0.8), SAM, and amortized GNP (a two-pass step every 4th step,
standard ones between: 1.25 passes per step, as a probability p = 0.25 gives on average). Their steps alternate (ABCD ABCD …) so that
machine noise hits all alike; a scheme's figure is its median step time (and each figure reported the median
over --repeats whole measurements, with the ratio's range), and for the amortized scheme,
which mixes one- and two-pass steps, p·median(two-pass) + (1 − p)·median(one-pass) (a plain median
would hide its cost, a mean would take in the noise of a shared machine); its ratio is that over
standard's. Under DDP the
optimizer counts the gradient all-reduces per step (GNP must do as many as standard training). On CUDA each
scheme's peak memory is measured alone, after the timed run. `--json DIR` writes every figure to
DIR/step_ratio-<device>-<date>.json with the device name and the torch version.
"""

import argparse
import datetime
import platform
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from figures import write_figures
from torch.nn.parallel import DistributedDataParallel as DDP

from gnp.models import build_model
from gnp.optim import GNP

SCHEMES = {
    "standard": dict(variant="standard", alpha=0.0),
    "gnp": dict(variant="gnp", alpha=0.8),
    "sam": dict(variant="sam", alpha=1.0),
    "amortized_1/4": dict(variant="gnp", alpha=0.8, p=0.25),
}


def build(args, device, kw, world):
    """(optimizer, closure, p) for one scheme on its own copy of the model."""
    torch.manual_seed(0)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = build_model(args.model, args.classes, args.size).to(device, memory_format=fmt)
    forward = torch.compile(model) if args.compiled else model
    if world > 1:
        forward = DDP(forward)
    kw = dict(kw)
    p = kw.pop("p", 1.0)
    opt = GNP(forward.parameters(), r=0.05, lr=0.1, momentum=0.9, weight_decay=5e-5, model=forward, **kw)
    x = torch.randn(args.batch // world, 3, args.size, args.size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, args.classes, (args.batch // world,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()

    def closure():
        with autocast:
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        return loss

    return opt, closure, p


def sync(device, world):
    if device.type == "cuda":
        torch.cuda.synchronize()
    if world > 1:
        dist.barrier()


def measure(args, device, world=1) -> dict:
    """Per scheme: mean and median seconds per step, all-reduces per step, and (CUDA) peak memory."""
    runs = {name: (*build(args, device, kw, world), []) for name, kw in SCHEMES.items()}
    for i in range(args.warmup + args.steps):
        for opt, closure, p, times in runs.values():
            regularize = i % round(1 / p) == 0
            sync(device, world)
            start = time.perf_counter()
            opt.step(closure, regularize=regularize)
            sync(device, world)
            if i >= args.warmup:
                times.append((regularize, time.perf_counter() - start))
    result = {}
    for name, (opt, _, p, times) in runs.items():
        two, one = ([t for r, t in times if r == kind] for kind in (True, False))
        step_s = statistics.median(two) if p >= 1 else p * statistics.median(two) + (1 - p) * statistics.median(one)
        result[name] = dict(step_s=step_s, mean_s=statistics.fmean(t for _, t in times), img_s=args.batch / step_s,
                            regularized_share=p, allreduces_per_step=opt.all_reduces / (args.warmup + args.steps))
    del runs
    if device.type == "cuda":
        for name, kw in SCHEMES.items():  # alone: the peak of one model, its optimizer and its passes
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            opt, closure, _ = build(args, device, kw, world)
            for _ in range(3):
                opt.step(closure)
            torch.cuda.synchronize()
            result[name]["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            del opt, closure
    for name in result:
        result[name]["ratio_to_standard"] = result[name]["step_s"] / result["standard"]["step_s"]
    return result


def repeated(args, device, world=1) -> dict:
    """measure() --repeats times: per scheme the median of each figure over the repeats, and the ratio's
    smallest and largest (how much a shared machine's noise moved it)."""
    runs = [measure(args, device, world) for _ in range(args.repeats)]
    result = {}
    for name, first in runs[0].items():
        ratios = [run[name]["ratio_to_standard"] for run in runs]
        result[name] = {**{k: statistics.median(run[name][k] for run in runs) for k in first},
                        "ratio_min": min(ratios), "ratio_max": max(ratios), "repeats": len(runs)}
    return result


def ddp_worker(rank, world, init_file, args, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = repeated(args, torch.device("cpu"), world)
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def report(title, result):
    print(title, flush=True)
    for name, r in result.items():
        memory = f", peak {r['peak_memory_gib']:.2f} GiB" if "peak_memory_gib" in r else ""
        print(f"  {name:16s} {r['step_s'] * 1e3:8.1f} ms/step (mean {r['mean_s'] * 1e3:.1f}), "
              f"{r['img_s']:8.0f} img/s, {r['ratio_to_standard']:.3f}x standard "
              f"({r['ratio_min']:.3f}-{r['ratio_max']:.3f} over {r['repeats']} repeats), "
              f"{r['allreduces_per_step']:.2f} all-reduces/step{memory}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="whole measurements; each figure is their median")
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", choices=["off", "on", "both"], default="off", help="torch.compile the model")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-worker gloo run (CPU)")
    p.add_argument("--json", help="folder to write the figures to as JSON")
    args = p.parse_args()
    if args.steps < 4:
        p.error("--steps must be at least 4: the amortized scheme regularizes every 4th step")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per process, as the 2 DDP workers get
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or 'x86'}), 1 thread"
    shape = f"{args.model} {args.size}px batch {args.batch} amp={args.amp} channels_last={args.channels_last}"
    figures = dict(device=where, torch=torch.__version__, date=datetime.date.today().isoformat(),
                   args=vars(args), runs={})
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        args.compiled = compiled
        key = f"1 process{', compiled' if compiled else ''}"
        figures["runs"][key] = repeated(args, device)
        report(f"{shape}, {key} ({where})", figures["runs"][key])
    if not args.no_ddp and device.type == "cpu":
        args.compiled = False
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/result.pt"
            mp.spawn(ddp_worker, args=(2, f"{tmp}/init", args, out), nprocs=2)
            figures["runs"]["2 gloo DDP workers"] = torch.load(out, weights_only=True)
            report(f"{shape}, 2 gloo DDP workers (CPU, 1 thread each)", figures["runs"]["2 gloo DDP workers"])
    if args.json:
        write_figures(args.json, "step_ratio", where, figures)


if __name__ == "__main__":
    main()
