"""`--dry-run`: the trials a grid will run and the device-hours they will take, before Ray starts.

The rate of a trial is measured, never assumed: images/s per device from earlier results on the same model
and device kind (every experiment under --results), else from `bench/step_ratio.py --json bench/results`
(its one-process figures: synthetic batches, no data loading, so an upper bound), else the table says it
has no measurement. A variant without
its own measurement takes one of a variant with as many passes per step (gnp, sam, fgr, bgr, asam: two).
"""

import glob
import json
from pathlib import Path

import pyarrow.parquet as pq
from pyarrow import fs as pafs

from gnp import variants
from gnp.config import TrainConfig, trial_key, value_text, varying_fields
from jobs import results as res

BENCH = Path(__file__).resolve().parent.parent / "bench" / "results"


def measured_rates(results: str) -> list[dict]:
    """{model, device, variant, per_device, source} from earlier rows, then from bench/results."""
    rates = []
    filesystem, root = res.resolve(results)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet") or "/_ray" in info.path:
            continue
        columns = ["model", "device", "variant", "images_per_s", "workers", "status"]
        for row in pq.read_table(info.path, filesystem=filesystem, columns=columns).to_pylist():
            if row["status"] == "ok" and row["images_per_s"]:
                rates.append(dict(model=row["model"], device=row["device"], variant=row["variant"],
                                  per_device=row["images_per_s"] / max(row["workers"], 1), source="results"))
    for path in sorted(glob.glob(str(BENCH / "step_ratio-*.json"))):
        bench = json.loads(Path(path).read_text())
        device = "cpu" if bench["device"].startswith("CPU") else bench["device"]
        for scheme, figures in bench["runs"].get("1 process", {}).items():
            rates.append(dict(model=bench["args"]["model"], device=device, variant=scheme,
                              per_device=float(figures["img_s"]), source=Path(path).name))
    return rates


def rate_for(cfg: TrainConfig, on_gpu: bool, rates: list[dict]) -> dict | None:
    """The median measured rate for this model on this kind of device, its variant first."""
    same_device = [r for r in rates if r["model"] == cfg.model and (r["device"] != "cpu") == on_gpu]
    passes = variants.REGISTRY[cfg.variant].passes
    registry = variants.REGISTRY
    for match in (lambda r: r["variant"] == cfg.variant,
                  lambda r: r["variant"] in registry and registry[r["variant"]].passes == passes):
        found = sorted((r for r in same_device if match(r)), key=lambda r: r["per_device"])
        if found:
            return found[len(found) // 2]
    return None


def packing(configs: list[TrainConfig], workers: int, gpus_per_worker: float) -> str:
    """One line on what a trial holds and how many an 8-GPU node runs at once."""
    per_rank = sorted({c.batch_size // workers for c in configs})
    images = f"{'/'.join(map(str, per_rank))} images per rank"
    if gpus_per_worker <= 0:
        return f"each trial: {workers} CPU workers, {images}"
    gpus = workers * gpus_per_worker
    return (f"each trial: {workers} workers × {gpus_per_worker:g} GPU, {images}; an 8-GPU node runs "
            f"{int(8 // gpus)} trial(s) at once")


def print_plan(configs: list[TrainConfig], *, experiment: str, results: str, train_images: int | None,
               workers: int, gpus_per_worker: float) -> None:
    on_gpu = gpus_per_worker > 0
    unit = "GPU-h" if on_gpu else "CPU-worker-h"
    rates = measured_rates(results)
    options = varying_fields(configs)  # every other swept field, a column each
    widths = {name: max(len(name), *(len(value_text(getattr(c, name))) for c in configs)) for name in options}
    print(f"{'trial key':<19} {'scheme':<9} {'α':>6} {'r':>6} " + "".join(f"{n:<{w}} " for n, w in widths.items())
          + f"{'seed':>4}  {'finished':<8} {unit:>12}  measured on")
    total, todo, missing, to_run = 0.0, 0.0, 0, 0
    for cfg in configs:
        done = res.finished_trial(results, experiment, trial_key(cfg), cfg.epochs)
        to_run += not done
        rate = rate_for(cfg, on_gpu, rates)
        hours = None
        if rate and train_images:
            hours = cfg.epochs * train_images / rate["per_device"] / 3600
            total += hours
            todo += 0 if done else hours
        else:
            missing += 1
        source = f"{rate['device']} ({rate['source']})" if rate else "no measurement"
        values = "".join(f"{value_text(getattr(cfg, n)):<{w}} " for n, w in widths.items())
        print(f"{trial_key(cfg):<19} {cfg.variant:<9} {cfg.alpha:>6g} {cfg.r:>6g} {values}{cfg.seed:>4}  "
              f"{'yes' if done else 'no':<8} {'?' if hours is None else f'{hours:.3f}':>12}  {source}")
    print(packing(configs, workers, gpus_per_worker))
    why = "" if train_images else " (the training images were not counted here)"
    print(f"{len(configs)} trials, {to_run} to run: {todo:.2f} {unit} to go, {total:.2f} in all" +
          (f"; {missing} trial(s) without a measurement{why}" if missing else ""))
