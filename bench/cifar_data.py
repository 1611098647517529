"""The CIFAR data path against the model's step: does augmenting on the training device ever starve it?

    .venv/bin/python bench/cifar_data.py --json bench/results                 # this CPU, one thread
    .venv/bin/python bench/cifar_data.py --augmentations basic,heavy --steps 5  # heavy against basic
    PYTHONPATH=. python3 bench/cifar_data.py --device cuda --json "$OUT"      # a GPU: the device-side rate

Side by side on one device (one thread on a CPU): images/s through gnp.batches.TrainBatches for each preset
asked for (50,000 random 32×32 images, a global batch of 256, one rank; a resizing preset, `heavy`, out at
--resize, the ViT recipes' 48), and a training step of a small
WRN (WRN-16-4, 2.7M parameters) at the same batch, standard and GNP (two passes), steps alternating so that
machine noise hits both alike. The ratio, data rate over step rate, is how many times faster the data path
is than what consumes it; it must be at least 20 (for `heavy` a bound: a ViT at 48 px, its consumer, is
slower than the WRN at 32).
"""

import argparse
import datetime
import statistics
import time

import torch
import torch.nn.functional as F
from figures import cpu_model, write_figures

from gnp import batches, datasets
from gnp.nets.wrn import wide_resnet
from gnp.optim import GNP

IMAGES, CLASSES = 50_000, 10


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def data_rate(split, augmentation, batch, steps, device, image_size=32) -> float:
    """Images/s of the augmented batches (median over `steps` batches after a warm-up one)."""
    loader = batches.TrainBatches(split, batch_size=batch, rank=0, world=1, seed=0, augmentation=augmentation,
                                  mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), classes=CLASSES,
                                  image_size=image_size)
    times, it = [], iter(loader)
    next(it)
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        images, _ = next(it)
        sync(device)
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times)


def step_rates(batch, steps, device) -> dict:
    """Images/s of a standard and a GNP step of WRN-16-4 on random batches, steps alternating."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, CLASSES, (batch,), device=device)
    runs = {}
    for name, alpha in (("standard", 0.0), ("gnp", 0.8)):
        model = wide_resnet(2, 4, CLASSES).to(device)
        opt = GNP(model, alpha=alpha, r=0.1, lr=0.1, momentum=0.9, weight_decay=1e-3)

        def closure(model=model):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        runs[name] = (opt, closure, [])
    for step in range(steps + 1):
        for opt, closure, times in runs.values():
            sync(device)
            start = time.perf_counter()
            opt.step(closure)
            sync(device)
            if step:  # the first step warms up
                times.append(time.perf_counter() - start)
    return {name: batch / statistics.median(times) for name, (_, _, times) in runs.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--augmentations", default="basic,cutout,mixcut,heavy")
    p.add_argument("--resize", type=int, default=48, help="image_size of the resizing presets (heavy)")
    p.add_argument("--json", help="folder to write the figures to as JSON")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({cpu_model()}), 1 thread"
    images = torch.randint(0, 256, (IMAGES, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    split = batches.Split(images, torch.arange(IMAGES) % CLASSES, device)
    steps = step_rates(args.batch, args.steps, device)
    figures = dict(device=where, torch=torch.__version__, date=datetime.date.today().isoformat(), args=vars(args),
                   model="WRN-16-4", step_img_s=steps, data_img_s={})
    for augmentation in args.augmentations.split(","):
        size = args.resize if augmentation in datasets.RESIZING_AUGMENTATIONS else 32
        rate = data_rate(split, augmentation, args.batch, args.steps, device, size)
        figures["data_img_s"][augmentation] = rate
        print(f"{augmentation:>10}: data {rate:9.0f} img/s ({1000 * args.batch / rate:6.1f} ms a batch, {size} px) "
              f"= {rate / steps['standard']:6.1f}x a standard step "
              f"({steps['standard']:.0f} img/s), {rate / steps['gnp']:6.1f}x a GNP step ({steps['gnp']:.0f} img/s) "
              f"[{where}]", flush=True)
    if args.json:
        write_figures(args.json, "cifar_data", where, figures)


if __name__ == "__main__":
    main()
