"""`--dry-run`: the trials a grid will run and the device-hours they will take, before Ray starts.

A trial's rate (images/s per device) comes, in this order, from earlier results on the same model and
device kind (every experiment under --results: end to end, the real loader included), from
`bench/step_ratio.py --json bench/results` (its one-process figures) and from the GPU step A committed
under bench/results (`bench/gpu_steps.py A`: the grid's eager step on a one-rank group), both synthetic
batches without data loading, so the hours are a lower bound; for a GPU grid with none of these, from an
assumption said as one: the throughput target of 3,000 images/s per GPU for ResNet-50's standard step,
scaled by the network's forward multiply-adds, half that for a two-pass step. A variant without its own
measurement takes one of a variant with as many passes per step (gnp, sam, fgr, bgr, asam: two). Every
trial line says which rate it took and from where; the total says how long the grid takes with the trials
that run at once.
"""

import glob
import json
from pathlib import Path

from pyarrow import fs as pafs

from analysis.load import read_trial
from gnp import storage, variants
from gnp.config import TrainConfig, trial_key, value_text, varying_fields
from jobs import results as res

BENCH = Path(__file__).resolve().parent.parent / "bench" / "results"


def measured_rates(results: str) -> list[dict]:
    """{model, device, variant, per_device, source} from earlier rows, then from bench/results."""
    rates = []
    filesystem, root = storage.resolve(results)
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    for info in filesystem.get_file_info(selector):
        if info.type != pafs.FileType.File or not info.path.endswith(".parquet") or "/_ray" in info.path:
            continue
        table = read_trial(filesystem, info.path)  # a corrupt or foreign file prices nothing
        if table is None:
            continue
        columns = ["model", "device", "variant", "images_per_s", "workers", "status"]
        for row in table.select(columns).to_pylist():
            if row["status"] == "ok" and row["images_per_s"]:
                rates.append(dict(model=row["model"], device=row["device"], variant=row["variant"],
                                  per_device=row["images_per_s"] / max(row["workers"], 1), source="results"))
    for path in sorted(glob.glob(str(BENCH / "step_ratio-*.json"))):
        bench = json.loads(Path(path).read_text())
        device = "cpu" if bench["device"].startswith("CPU") else bench["device"]
        for scheme, figures in bench["runs"].get("1 process", {}).items():
            rates.append(dict(model=bench["args"]["model"], device=device, variant=scheme,
                              per_device=float(figures["img_s"]), source=Path(path).name))
    for path in sorted(glob.glob(str(BENCH / "**" / "A.jsonl"), recursive=True)):
        rates += gpu_step_rates(Path(path))
    return rates


def gpu_step_rates(path: Path) -> list[dict]:
    """The grid's eager step as `bench/gpu_steps.py A` timed it on a GPU, per scheme. The amortized scheme is
    left out: it is a regularize_every the rate lookup does not tell apart."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    device = next((line.get("gpu") for line in lines if line["kind"] == "preflight"), None) or "GPU"
    return [dict(model=line["model"], device=device, variant=line["scheme"], per_device=float(line["img_s"]),
                 source=f"{path.parent.name}/{path.name}")
            for line in lines if line["kind"] == "step" and line.get("img_s") and line.get("device_type") == "cuda"
            and line["scheme"] in variants.REGISTRY]


# Forward multiply-adds per image (GMACs) at the image size, measured with torch.utils.flop_counter.
GMACS = {
    ("ResNet50", 224): 4.089, ("ResNet101", 224): 7.801, ("VGG16BN", 224): 15.47, ("resnet50", 224): 4.089,
    ("resnet101", 224): 7.801, ("vgg16_bn", 224): 15.47, ("resnet18", 224): 1.814, ("VGG16", 32): 0.3321,
    ("VGG16BN", 32): 0.3321, ("WideResNet_28_10", 32): 5.214, ("WideResNet_2_96_ShakeShake", 32): 3.777,
    ("PyramidNet_272_200_ShakeDrop", 32): 4.489, ("smallcnn", 32): 0.01032, ("ViT_TI16", 32): 0.3456,
    ("ViT_S16", 32): 1.381, ("ViT_TI16", 48): 0.7710, ("ViT_S16", 48): 3.082, ("vit-digits", 32): 0.003535,  # its 8-px patches
}
TARGET = 3000.0  # images/s per GPU, ResNet-50 standard step at 224 px: a target, not a measurement
TARGET_GMACS = GMACS[("ResNet50", 224)]


def assumed_rate(cfg: TrainConfig) -> dict | None:
    """The target rate scaled by the network's forward multiply-adds (None for a network not in GMACS)."""
    gmacs = GMACS.get((cfg.model, cfg.image_size))
    if gmacs is None:
        return None
    passes = 2 if variants.REGISTRY[cfg.variant].passes == 2 else 1
    return dict(model=cfg.model, device="GPU", variant=cfg.variant, per_device=TARGET * TARGET_GMACS / gmacs / passes,
                source="assumed")


def rate_for(cfg: TrainConfig, on_gpu: bool, rates: list[dict]) -> dict | None:
    """The median measured rate for this model on this kind of device: results before benchmarks, and
    within each its variant first."""
    same_device = [r for r in rates if r["model"] == cfg.model and (r["device"] != "cpu") == on_gpu]
    passes = variants.REGISTRY[cfg.variant].passes
    registry = variants.REGISTRY
    for from_results in (True, False):
        for match in (lambda r: r["variant"] == cfg.variant,
                      lambda r: r["variant"] in registry and registry[r["variant"]].passes == passes):
            found = sorted((r for r in same_device if match(r) and (r["source"] == "results") == from_results),
                           key=lambda r: r["per_device"])
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
    shared = f" ({int(1 // gpus_per_worker)} trials share a GPU)" if gpus_per_worker < 1 else ""
    return (f"each trial: {workers} workers × {gpus_per_worker:g} GPU{shared}, {images}; an 8-GPU node runs "
            f"{int(8 // gpus)} trial(s) at once")


def wall_hours(hours: list[float], at_once: int) -> float:
    """The grid's wall time with `at_once` trials running side by side, started in the grid's order."""
    slots = [0.0] * max(1, at_once)
    for h in hours:
        slots[slots.index(min(slots))] += h
    return max(slots)


def print_plan(configs: list[TrainConfig], *, experiment: str, results: str, train_images: int | None,
               workers: int, gpus_per_worker: float, at_once: int | None = None) -> dict[str, float]:
    """Print the trials, their cost and the grid's; returns the device-hours of each trial still to run that
    has a rate, by trial key."""
    on_gpu = gpus_per_worker > 0
    rates = measured_rates(results)
    options = varying_fields(configs)  # every other swept field, a column each
    widths = {name: max(len(name), *(len(value_text(getattr(c, name))) for c in configs)) for name in options}
    print(f"{'trial key':<19} {'scheme':<9} {'α':>6} {'r':>6} " + "".join(f"{n:<{w}} " for n, w in widths.items())
          + f"{'seed':>4}  {'finished':<8} {'images':>9} {'img/s/dev':>10} {'device-h':>9}  rate from")
    total, todo, missing, to_run, sources, wall, hours_to_go = 0.0, 0.0, 0, 0, {}, [], {}
    for cfg in configs:
        done = res.finished_trial(results, experiment, trial_key(cfg), cfg.epochs)
        to_run += not done
        rate = rate_for(cfg, on_gpu, rates) or (assumed_rate(cfg) if on_gpu else None)
        images = cfg.epochs * (train_images - cfg.holdout_images) if train_images else None  # held out: not trained
        hours = images / rate["per_device"] / 3600 if rate and images else None
        if hours is None:
            missing += 1
        else:
            total += hours
            todo += 0 if done else hours
            wall += [] if done else [hours / workers]
            hours_to_go.update({} if done else {trial_key(cfg): hours})
        if rate:
            sources[rate["source"]] = sources.get(rate["source"], set()) | {rate["device"]}
        values = "".join(f"{value_text(getattr(cfg, n)):<{w}} " for n, w in widths.items())
        print(f"{trial_key(cfg):<19} {cfg.variant:<9} {cfg.alpha:>6g} {cfg.r:>6g} {values}{cfg.seed:>4}  "
              f"{'yes' if done else 'no':<8} {_count(images):>9} {_count(rate and rate['per_device']):>10} "
              f"{'?' if hours is None else f'{hours:.3g}':>9}  {_source(rate)}")
    print(packing(configs, workers, gpus_per_worker))
    where = "(--max-concurrent, or what the cluster holds)" if at_once else (
        "(on one 8-GPU node; on a cluster, as many as it holds at its largest)" if on_gpu else "(--max-concurrent)")
    at_once = at_once or (max(1, int(8 // (workers * gpus_per_worker))) if on_gpu else 1)
    without = f"; {missing} trial(s) without a rate" if missing else ""
    print(f"{len(configs)} trials, {to_run} to run: {todo:.3g} device-hours to go, {total:.3g} in all; "
          f"about {wall_hours(wall, at_once):.3g} h of wall time with {at_once} trial(s) at once "
          f"{where}{without}")
    for source, devices in sources.items():
        print(_caveat(source, devices))
    return hours_to_go


def _count(value) -> str:
    if not value:
        return "?"
    return f"{value / 1e6:.3g}M" if value >= 1e6 else f"{value:,.0f}"


def _source(rate: dict | None) -> str:
    if rate is None:
        return "no measurement"
    if rate["source"] == "assumed":
        return "assumed (a target scaled by FLOPs)"
    return f"{rate['device']} ({rate['source']})"


def _caveat(source: str, devices: set) -> str:
    if source == "assumed":
        return (f"assumed rates: {TARGET:,.0f} img/s per GPU for ResNet-50's standard step at 224 px (a target, not "
                "a measurement), scaled by forward multiply-adds, half for two passes; measure with bench/step_ratio.py")
    several = f" (measured on {len(devices)} device models: {', '.join(sorted(devices))}; the grid runs on one)" \
        if len(devices) > 1 else ""
    if source == "results":
        return f"measured rates from earlier results on {', '.join(sorted(devices))}, loader included{several}"
    return (f"benchmark rates ({source}, {', '.join(sorted(devices))}): synthetic batches without loading or "
            f"evaluation, so these hours are a lower bound{several}")
