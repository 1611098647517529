"""The grid's training step, timed: gnp.loop.Run as a recipe builds it, fed one synthetic batch on the device.

Everything but the data is the grid's own code: the recipe's network and head (1,000 classes for ImageNet),
its per-GPU batch, amp, channels_last and clipping, cuDNN autotuning (Run sets it), GNP over the recipe's
base optimizer, `Run.train_one_epoch`'s closure, schedule and sums, and DDP (`gnp.loop.data_parallel` and
GNP's comm hook) over a one-rank process group: NCCL on CUDA, gloo on a CPU. So on one GPU the first pass
runs under no_sync, the second backward adds onto the pre-loaded gradients and the bucket all-reduces go
through NCCL, as on every rank of a grid trial. Only the data differs: Run is handed loaders of one batch
already on the device (`Run(loaders=...)`), and asked for DDP at one rank (`Run(ddp=True)`).

A scheme's figure is the median seconds per step over the timed steps (each step timed between device
syncs, as the loop hands out the next batch); the amortized scheme (a two-pass step every 4th) is
p·median(two-pass) + (1 − p)·median(one-pass), p = 1/4.
"""

import gc
import statistics
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist

import gnp.loop
from gnp.data import Loaders
from gnp.loop import Run, regularizes
from gnp.recipes import get_recipe

SCHEMES = {  # name: the recipe's fields it changes
    "standard": dict(variant="standard", alpha=0.0),
    "gnp": dict(variant="gnp", alpha=0.8),
    "sam": dict(variant="sam", alpha=1.0),
    "amortized_1/4": dict(variant="gnp", alpha=0.8, regularize_every=4),
}
CLASSES = {"imagenet": 1000, "cifar10": 10, "cifar100": 100, "digits": 10, "digits-cifar": 10}
LAYOUTS = {name: "folders" if name in ("imagenet", "digits") else "cifar" for name in CLASSES}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def one_rank_group(device: torch.device, init_file: str):
    """A process group of this process alone (NCCL on CUDA, gloo on a CPU), ended on the way out."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{init_file}",
                            rank=0, world_size=1)
    try:
        yield dist.get_backend()
    finally:
        gnp.loop.close_distributed()


class Steps:
    """`count` steps of one batch already on the device, as Run's train loader; syncs the device and notes
    the time before every step and after the last."""

    def __init__(self, batch, count: int, device: torch.device):
        self.batch, self.count, self.device, self.marks = batch, count, device, []

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self):
        return self.count

    def __iter__(self):
        for _ in range(self.count):
            sync(self.device)
            self.marks.append(time.perf_counter())
            yield self.batch
        sync(self.device)
        self.marks.append(time.perf_counter())

    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:], strict=False)]


def synthetic_batch(cfg, layout: str, batch: int, classes: int, device: torch.device):
    """What the recipe's loader hands the loop: uint8 images (a folder dataset: the loop normalizes them) or
    normalized floats (CIFAR's on-device batches), and labels."""
    generator = torch.Generator(device).manual_seed(0)
    shape = (batch, 3, cfg.image_size, cfg.image_size)
    if layout == "folders":
        images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    else:
        images = torch.randn(shape, device=device, generator=generator)
    return images, torch.randint(0, classes, (batch,), device=device, generator=generator)


def point_config(recipe: str, batch: int | None, device: torch.device, **changes):
    """The recipe on one rank at its per-GPU batch (or `batch`), with no loader processes and no heartbeat."""
    cfg = get_recipe(recipe, device=device.type, out="unused")
    batch = batch or cfg.perturbation_batch or cfg.batch_size
    return cfg.replace(batch_size=batch, perturbation_batch=None, loader_workers=0, heartbeat_s=0.0, **changes)


def build_run(cfg, device: torch.device, ddp: bool, steps_per_epoch: int) -> Run:
    """Run for `cfg` on synthetic data (time_scheme hands it its batches), `steps_per_epoch` a loader long."""
    loaders = Loaders(Steps(None, steps_per_epoch, device), [], CLASSES[cfg.dataset], None)
    return Run(cfg, device, loaders=loaders, ddp=ddp)


def time_scheme(cfg, device: torch.device, *, ddp: bool, warmup: int, steps: int, chunk: int,
                deadline: float, report) -> None:
    """One scheme's run: `warmup` untimed steps, then up to `steps` timed ones in epochs of `chunk` steps,
    stopping early (the figure then says `cut`) when the next epoch would end after `deadline`. Hands its
    figures to `report`, also when an exception (a signal) ends it, with what was timed so far."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    run = build_run(cfg, device, ddp, chunk)
    batch = synthetic_batch(cfg, LAYOUTS[cfg.dataset], cfg.batch_size, run.num_classes, device)
    total = cfg.epochs * chunk
    timed, epoch_s, reduces = [], None, 0
    result = dict(cut=None)
    try:  # a figure from the steps timed so far even when a signal cuts the run short
        for epoch in range(-(-warmup // chunk) + -(-steps // chunk)):
            if epoch_s and time.perf_counter() + epoch_s > deadline:
                result["cut"] = "deadline"
                break
            run.epoch = epoch
            feed = Steps(batch, chunk, device)
            run.train_loader = feed
            before = run.optimizer.all_reduces
            try:
                run.train_one_epoch()
            finally:
                seconds = feed.seconds()
                if epoch * chunk >= warmup:
                    kinds = [regularizes(cfg, epoch, epoch * chunk + i, total) for i in range(len(seconds))]
                    timed += zip(kinds, seconds, strict=True)
                    reduces += run.optimizer.all_reduces - before
            epoch_s = sum(seconds)
    except BaseException as err:
        result["cut"] = f"{type(err).__name__}: {err}"
        raise
    finally:
        result.update(step_figures(cfg, timed, reduces))
        result.update(build_and_time_s=time.perf_counter() - start, ddp=ddp,
                      process_group=dist.get_backend() if dist.is_initialized() else None,
                      amp=str(run.amp_dtype).removeprefix("torch.") if run.amp_dtype else "none", channels_last=run.memory_format ==
                      torch.channels_last, cudnn_benchmark=torch.backends.cudnn.benchmark, compile=cfg.compile,
                      classes=run.num_classes, parameters=sum(p.numel() for p in run.model.parameters()))
        if device.type == "cuda":
            result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        report(result)


def step_figures(cfg, timed: list[tuple[bool, float]], reduces: int) -> dict:
    """step_s, img_s and all-reduces per step from (two-pass?, seconds) of the timed steps."""
    if not timed:
        return dict(timed_steps=0)
    two = [s for regularized, s in timed if regularized]
    one = [s for regularized, s in timed if not regularized]
    p = 1 / cfg.regularize_every if cfg.variant != "standard" and cfg.alpha else 0.0
    if two and one:
        step_s = p * statistics.median(two) + (1 - p) * statistics.median(one)
    else:
        step_s = statistics.median(two or one)
    return dict(timed_steps=len(timed), two_pass_steps=len(two), step_s=step_s, mean_s=statistics.fmean(
        s for _, s in timed), img_s=cfg.batch_size / step_s, allreduces_per_step=reduces / len(timed))
