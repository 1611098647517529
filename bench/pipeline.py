"""Can the input pipeline feed the GPU? ImageNet-sized JPEGs through gnp.data's loaders, then the whole loop.

    PYTHONPATH=. python3 bench/pipeline.py --json bench/results             # a CPU machine: (a) only
    PYTHONPATH=. python3 bench/pipeline.py --workers 1,12 --train --train-workers 12 --json $OUT   # one GPU
    (bench/gpu_steps.py C runs it with the ImageNet recipe's head, 1,000 classes, and its figures one by one)

(a) The loader alone: img/s through `gnp.data.build_loaders` with the ImageNet train transforms (random-
    resized crop to 224 and flip), for each count of loader processes, and per process; for each --decode:
    `loader` (PIL decodes and resizes, uint8 tensors out) and `device` (the processes only read the files
    and draw the crops; the training device decodes: its cost shows in (b), not here). From it, the loader
    processes and CPU cores one GPU needs at the GPU's rates for standard and GNP training: those of the
    newest CUDA `step_ratio-*.json` at 224 px or GPU step A's `A.jsonl` (bench/gpu_steps.py) under --rates,
    else --gpu-img-s (then marked as assumed).
(b) --train: gnp.loop.Run on the generated folder (imagenet-resnet50: ResNet-50, bf16, channels_last, at
    the recipe's 128 images per GPU) for one epoch of --steps steps, end-to-end img/s next to the same Run
    fed one batch already on the device (the steps alone), and the ratio, for each variant and --decode;
    within 10% means the pipeline keeps up. On CUDA; `--device cpu --model smallcnn --size 32` checks the
    logic on a CPU.

The images are smooth (a colour gradient and ellipses, blurred, with a grain; 500×375, JPEG q90), as photos
decode, unlike noise; the grain's default (std 25) makes the files average ImageNet's ~110 KB, since the
entropy decoding's cost follows the bytes (std 8 gives 53 KB, on which PIL gave 18-35% more img/s here).
Rates leave out the first batch of every loader process (the processes starting, cuDNN's search): steady
state only. The model's head has --classes outputs (ImageNet's 1000: `--classes 1000`, one validation image
each).
"""

import argparse
import datetime
import gc
import json
import math
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from figures import cpu_model, write_figures
from grid_step import sync
from PIL import Image, ImageFilter

from gnp.data import build_loaders, uint8_on
from gnp.loop import Run
from gnp.recipes import get_recipe

IMAGENET_MEAN_JPEG_BYTES = 110_000  # ImageNet-1k train JPEGs average about 110 KB


def write_image(task):
    """One smooth 500×375-like JPEG, a pure function of its seed; returns its bytes."""
    path, seed, (width, height), grain = task
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = xx * np.cos(angle) + yy * np.sin(angle)
    ramp = (ramp - ramp.min()) / np.ptp(ramp)
    start, end = rng.uniform(0, 255, (2, 3))
    pixels = start + (end - start) * ramp[..., None]
    for _ in range(rng.integers(3, 8)):
        cx, cy, rx, ry = rng.uniform(0, width), rng.uniform(0, height), *rng.uniform(20, 150, 2)
        pixels[((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1] = rng.uniform(0, 255, 3)
    smooth = Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))
    pixels = np.asarray(smooth, dtype=np.float32) + rng.normal(0, grain, (height, width, 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return path.stat().st_size


def write_dataset(root: Path, images: int, classes: int, grain: float, processes: int) -> dict:
    """train/<class>/*.JPEG (`images` of them) and one val image per class, written in parallel."""
    tasks = []
    for i in range(images + classes):
        split, label = ("train", i % classes) if i < images else ("val", i - images)
        folder = root / split / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        tasks.append((folder / f"{split}_{i:06d}.JPEG", i, (500, 375), grain))
    start = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        sizes = pool.map(write_image, tasks, chunksize=16)
    return dict(train_images=images, classes=classes, size="500x375", quality=90, grain=grain,
                mean_jpeg_bytes=round(float(np.mean(sizes))),
                imagenet_mean_jpeg_bytes=IMAGENET_MEAN_JPEG_BYTES,
                write_s=round(time.perf_counter() - start, 2))


def steady_rate(times: list[float], workers: int, batch: int) -> float:
    """img/s from the last batch of the first wave (one batch per loader process) to the last batch."""
    first = min(workers, len(times) - 1) - 1
    return (len(times) - 1 - first) * batch / (times[-1] - times[first])


def loader_rate(root: Path, workers: int, batch: int, waves: int, decode: str, size: int = 224) -> dict:
    """The loader alone, for (waves + 1) batches per process; the first is left out."""
    loader, _, _ = build_loaders(root, image_size=size, augmentation="rrc+flip", batch_size=batch,
                                 workers=workers, rank=0, world=1, seed=0,
                                 pin_memory=torch.cuda.is_available(), decode=decode)
    wanted = (waves + 1) * workers
    loader.sampler.set_epoch(0)
    times = []
    for _ in loader:
        times.append(time.perf_counter())
        if len(times) == wanted:
            break
    img_s = steady_rate(times, workers, batch)
    return dict(decode=decode, workers=workers, batch=batch, batches_timed=len(times) - workers, img_s=img_s,
                img_s_per_process=img_s / workers)


def step_a_rates(path: Path) -> dict | None:
    """Standard and GNP img/s of the ImageNet ResNet-50 recipe's eager step in GPU step A's records."""
    rates = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        if (r.get("kind") == "step" and r.get("device_type") == "cuda" and r["recipe"] == "imagenet-resnet50"
                and not r["compile"] and r["scheme"] in ("standard", "gnp") and r.get("img_s")):
            rates.setdefault(r["scheme"], r["img_s"])  # the first point: the recipe's own batch
    return rates if len(rates) == 2 else None


def gpu_rates(args) -> tuple[dict, str]:
    """Standard and GNP img/s of one GPU (ResNet-50 at 224 px), and where they come from."""
    found = sorted([*Path(args.rates).glob("step_ratio-*.json"), *Path(args.rates).glob("A.jsonl")],
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        if path.suffix == ".jsonl":
            rates = step_a_rates(path)
            if rates:
                return rates, f"measured: {path} (GPU step A, imagenet-resnet50 at its per-GPU batch)"
            continue
        data = json.loads(path.read_text())
        if data["args"]["size"] == 224 and not data["device"].startswith("CPU"):
            rates = {s: max(run[s]["img_s"] for run in data["runs"].values()) for s in ("standard", "gnp")}
            return rates, (f"measured: {path} ({data['device']}, {data['args']['model']}, batch "
                           f"{data['args']['batch']}, the fastest of its runs)")
    standard, gnp = args.gpu_img_s
    return dict(standard=standard, gnp=gnp), (f"ASSUMED (--gpu-img-s {standard:g},{gnp:g}): no CUDA "
                                              f"step_ratio-*.json at 224 px under {args.rates}")


def cores_per_gpu(rates: dict, per_process: float) -> dict:
    """Loader processes to reach each rate, plus one core for the training process itself."""
    return {scheme: dict(gpu_img_s=rate, loader_processes=math.ceil(rate / per_process),
                         cores=math.ceil(rate / per_process) + 1) for scheme, rate in rates.items()}


class Timed:
    """A loader's batches for the loop; before handing out batch `mark` it waits for the device to finish
    the steps before, and starts the clock."""

    def __init__(self, batches, sampler, mark: int, device: torch.device):
        self.batches, self.sampler, self.mark, self.device, self.start = batches, sampler, mark, device, None

    def set_epoch(self, epoch: int):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        for i, item in enumerate(self.batches):
            if i == self.mark:
                sync(self.device)
                self.start = time.perf_counter()
            yield item

    def __len__(self):
        return len(self.batches)


def timed_epoch(run: Run, batches, workers: int) -> float:
    """img/s of Run.train_one_epoch over `batches`, from the last batch of the loader processes' first wave
    to the end (the epoch ends by reading its sums: a sync)."""
    real = run.train_loader
    mark = max(0, min(workers, len(batches) - 1) - 1)
    run.train_loader = Timed(batches, real.sampler, mark, run.device)
    try:
        run.train_one_epoch()
        end = time.perf_counter()
    finally:
        timed, run.train_loader = run.train_loader, real
    return (len(batches) - mark) * run.cfg.batch_size / (end - timed.start)


def train_rates(root: Path, args, variant: str, alpha: float, decode: str) -> dict:
    """End-to-end img/s of one epoch against the same steps on one batch already on the device."""
    with tempfile.TemporaryDirectory() as out:
        recipe = get_recipe("imagenet-resnet50", data=str(root), device=args.device, out=out,
                            loader_workers=args.train_workers, variant=variant, alpha=alpha, decode=decode,
                            model=args.model, image_size=args.size)
        cfg = recipe.replace(batch_size=args.batch or recipe.perturbation_batch, perturbation_batch=None)  # one rank
        run = Run(cfg)
        images, targets = next(iter(run.train_loader))
        on_device = [(uint8_on(images, run.device), targets.to(run.device))]
        timed_epoch(run, on_device * args.warmup, args.train_workers)  # cuDNN's search, the allocator
        end_to_end = timed_epoch(run, run.train_loader, args.train_workers)
        synthetic = timed_epoch(run, on_device * len(run.train_loader), args.train_workers)
        amp = str(run.amp_dtype).removeprefix("torch.")
        result = dict(variant=variant, alpha=alpha, decode=decode, model=cfg.model, batch=cfg.batch_size, amp=amp,
                      channels_last=cfg.channels_last, loader_workers=cfg.loader_workers,
                      steps=len(run.train_loader), end_to_end_img_s=end_to_end, synthetic_img_s=synthetic,
                      ratio=end_to_end / synthetic, within_10_percent=end_to_end >= 0.9 * synthetic)
        del run, on_device
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return result


def parser() -> argparse.ArgumentParser:
    cpus = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=0, help="training JPEGs to write, if more than the "
                   "measurements take")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--grain", type=float, default=25.0, help="std of the grain on the smooth images")
    p.add_argument("--workers", default=f"1,{max(2, cpus - 2)}", help="loader process counts for (a)")
    p.add_argument("--decode", default="loader,device", help="where images are decoded (gnp.train --decode)")
    p.add_argument("--loader-batch", type=int, default=32, help="batch of (a)'s loader")
    p.add_argument("--waves", type=int, default=20, help="(a): batches timed per loader process")
    p.add_argument("--rates", default="bench/results", help="folder with step_ratio-*.json or A.jsonl (GPU img/s)")
    p.add_argument("--gpu-img-s", type=lambda s: tuple(float(v) for v in s.split(",")),
                   default=(3000.0, 1500.0),
                   help="standard,gnp img/s of one GPU when no step_ratio JSON has them")
    p.add_argument("--train", action="store_true", help="(b): the whole loop")
    p.add_argument("--device", default="cuda", help="(b)'s device: cuda, or cpu to check the logic")
    p.add_argument("--model", default="ResNet50", help="(b)'s network (the recipe's)")
    p.add_argument("--size", type=int, default=224, help="the crops' side in pixels, (a) and (b)")
    p.add_argument("--train-workers", type=int, help="(b)'s loader processes (default: most of --workers)")
    p.add_argument("--batch", type=int, help="(b)'s batch (default: the recipe's 128 per GPU)")
    p.add_argument("--steps", type=int, default=40, help="(b)'s timed steps (one epoch)")
    p.add_argument("--warmup", type=int, default=10, help="(b)'s untimed steps first")
    p.add_argument("--variants", default="standard,gnp", help="(b)'s variants (gnp at α = 0.8)")
    p.add_argument("--note", default="", help="what this machine is, for the JSON")
    p.add_argument("--json", help="folder to write the figures to as JSON")
    return p


def setting(args) -> dict:
    """The machine and the options, for the JSON."""
    args.train_workers = args.train_workers or max(int(w) for w in args.workers.split(","))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return dict(device=device, cpu=cpu_model(), cpus=len(os.sched_getaffinity(0)), load_average_1min=os.getloadavg()[0],
                note=args.note, torch=torch.__version__, torchvision=torchvision.__version__,
                python=platform.python_version(), date=datetime.date.today().isoformat(), args=vars(args))


def measure(args, root: Path):
    """Every figure in turn, as (kind, figure), each as soon as it is measured: the data written under
    `root`, the loader rates (a), the loader processes and cores per GPU, the whole loop (b)."""
    workers = [int(w) for w in args.workers.split(",")]
    batch = args.batch or get_recipe("imagenet-resnet50").perturbation_batch
    images = max(args.images, (args.waves + 1) * max(workers) * args.loader_batch,
                 batch * (args.steps + 1) if args.train else 0)
    data = write_dataset(root, images, args.classes, args.grain, len(os.sched_getaffinity(0)))
    print(f"wrote {images} JPEGs (500x375 q90, mean {data['mean_jpeg_bytes'] / 1e3:.0f} KB; ImageNet's "
          f"~110 KB) in {data['write_s']:.1f}s", flush=True)
    yield "data", data
    decodes = args.decode.split(",")
    per_process = {}
    for d in decodes:
        for w in workers:
            r = loader_rate(root, w, args.loader_batch, args.waves, d, args.size)
            per_process[d] = r["img_s_per_process"]
            print(f"(a) decode={r['decode']:6s} {r['workers']:2d} loader processes: {r['img_s']:7.0f} img/s, "
                  f"{r['img_s_per_process']:5.0f} img/s per process (RRC+flip {args.size})", flush=True)
            yield "loader", r
    rates, source = gpu_rates(args)
    print(f"    GPU rates {source}", flush=True)
    for d in decodes:
        cores = cores_per_gpu(rates, per_process[d])
        for scheme, c in cores.items():
            print(f"    decode={d:6s} {scheme:8s} at {c['gpu_img_s']:6.0f} img/s/GPU: {c['loader_processes']} "
                  f"loader processes at {per_process[d]:.0f} img/s each, {c['cores']} cores per GPU", flush=True)
        yield "cores_per_gpu", dict(decode=d, gpu_rates_source=source, **cores)
    if args.train:
        alphas = {"standard": 0.0, "gnp": 0.8, "sam": 1.0}
        for d in decodes:
            for v in args.variants.split(","):
                r = train_rates(root, args, v, alphas[v], d)
                verdict = "within" if r["within_10_percent"] else "NOT within"
                print(f"(b) {r['variant']:8s} decode={r['decode']:6s} {r['model']} batch {r['batch']} {r['amp']} "
                      f"channels_last={r['channels_last']}, {r['loader_workers']} loader processes: "
                      f"{r['end_to_end_img_s']:6.0f} img/s end to end, {r['synthetic_img_s']:6.0f} on a batch "
                      f"on the device: {r['ratio']:.3f} ({verdict} 10%)", flush=True)
                yield "train", r


def main():
    p = parser()
    args = p.parse_args()
    if args.train and args.device == "cuda" and not torch.cuda.is_available():
        p.error("--train on cuda needs a CUDA GPU (--device cpu checks the logic on a CPU)")
    figures = setting(args)
    print(f"{figures['device']}; {figures['cpu']}, {figures['cpus']} CPUs (load {figures['load_average_1min']:.1f}); "
          f"torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory(prefix="pipeline-") as tmp:
        for kind, figure in measure(args, Path(tmp)):
            if kind in ("data",):
                figures[kind] = figure
            else:
                figures.setdefault(kind, []).append(figure)
    if args.json:
        write_figures(args.json, "pipeline", figures["device"], figures)


if __name__ == "__main__":
    main()
