"""What a GNP step costs next to a standard step, measured side by side in one run (issue 2 §5).

    .venv/bin/python bench/step_ratio.py                      # small CNN, 1 CPU process and 2 gloo DDP workers
    .venv/bin/python bench/step_ratio.py --model resnet50 --size 224 --batch 128 --amp bf16 --channels-last
                                                              # on a GPU: img/s of both

Standard and GNP steps alternate (ABAB…) so that machine noise hits both alike; the figure is the ratio of
their medians. Under DDP a comm hook counts the gradient all-reduces per step (the target: GNP does as many
as standard training, not twice as many). The limit for the ratio is 2.0: GNP costs two forward-backward
passes where standard training costs one.
"""

import argparse
import statistics
import tempfile
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel as DDP

from gnp.models import build_model
from gnp.optim import GNP

SCHEMES = {"standard": dict(variant="standard", alpha=0.0), "gnp": dict(variant="gnp", alpha=0.8)}


def counting_allreduce(counter, bucket):
    counter["n"] += 1
    return default_hooks.allreduce_hook(None, bucket)


def measure(args, device, rank=0, world=1) -> dict:
    """Median seconds per step and all-reduces per step for each scheme, interleaved."""
    torch.manual_seed(0)
    x = torch.randn(args.batch // world, 3, args.size, args.size, device=device)
    y = torch.randint(0, args.classes, (args.batch // world,), device=device)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else nullcontext()
    runs = {}
    for name, kw in SCHEMES.items():
        model = build_model(args.model, args.classes).to(device, memory_format=fmt)
        counter = {"n": 0}
        if world > 1:
            model = DDP(model)
            model.register_comm_hook(counter, counting_allreduce)
        opt = GNP(model.parameters(), r=0.05, lr=0.1, momentum=0.9, weight_decay=5e-5, model=model, **kw)

        def closure(model=model):
            with autocast:
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        runs[name] = (opt, closure, counter, [])
    for i in range(args.warmup + args.steps):
        for opt, closure, counter, times in runs.values():
            if device.type == "cuda":
                torch.cuda.synchronize()
            if world > 1:
                dist.barrier()
            counter["n"], start = 0, time.perf_counter()
            opt.step(closure)
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    return {name: dict(step_s=statistics.median(t), allreduces=c["n"]) for name, (_, _, c, t) in runs.items()}


def ddp_worker(rank, world, init_file, args, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    result = measure(args, torch.device("cpu"), rank, world)
    if rank == 0:
        torch.save(result, out)
    dist.barrier()
    dist.destroy_process_group()


def report(title, result, batch):
    std, gnp = result["standard"], result["gnp"]
    print(f"{title}: standard {std['step_s'] * 1e3:.1f} ms/step ({batch / std['step_s']:.0f} img/s, "
          f"{std['allreduces']} all-reduces/step); GNP {gnp['step_s'] * 1e3:.1f} ms/step "
          f"({batch / gnp['step_s']:.0f} img/s, {gnp['allreduces']} all-reduces/step); "
          f"GNP/standard = {gnp['step_s'] / std['step_s']:.3f}x", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smallcnn")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--no-ddp", action="store_true", help="skip the 2-worker gloo run")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cpu":
        torch.set_num_threads(1)  # one core per process, as the 2 DDP workers get
    where = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, 1 thread"
    report(f"{args.model} {args.size}px batch {args.batch}, 1 process ({where})", measure(args, device),
           args.batch)
    if not args.no_ddp:
        with tempfile.TemporaryDirectory() as tmp:
            out = f"{tmp}/result.pt"
            mp.spawn(ddp_worker, args=(2, f"{tmp}/init", args, out), nprocs=2)
            report(f"{args.model} {args.size}px batch {args.batch}, 2 gloo DDP workers (CPU, 1 thread each)",
                   torch.load(out, weights_only=True), args.batch)


if __name__ == "__main__":
    main()
