"""How fast a node stages ImageNet from tar shards, next to copying loose files, on this machine.

    .venv/bin/python bench/staging.py            # 3,000 files, 0.33 GB; under 2 minutes, ~1 GB of disk

No ImageNet and no cloud here, so: a few thousand ImageNet-like JPEGs (500x375, blurred shapes plus
sensor-like noise, ~110 KB each, ImageNet's mean), packed into tar shards with cluster/imagenet_shards.py:
  (a) the shards unpacked into a local folder by `imagenet_shards.stage` (the code the nodes run) with 1 and
      2 processes, and by GNU tar for reference;
  (b) the loose files copied: `cp -r`, and 8 threads copying file by file (as `aws s3 sync` does);
  (c) the restage: `imagenet_shards.stage` again into a folder that already holds the same manifest (a RayJob
      retry whose pod lands on a node that staged before: the NVMe cache), which must copy nothing.
The figures are the work of unpacking/copying into the page cache: the median of --repeats rounds, the
methods interleaved; the source is read from the page cache, as a network stream would be. One more run of
the 2-process staging includes `os.sync()`: this VM's disk, not a GPU node's NVMe.

From the slowest and fastest staging rates measured and stated ASSUMPTIONS (S3 rate, NVMe rate, boot, image
pull), it derives an ESTIMATE of a GPU node's time from launch to training with the full 150 GB (no credit
for the node's 96-192 vCPUs), and the autoscaler timeout from it (cluster/README.md). Writes
bench/results/staging-<date>.json.
"""

import argparse
import datetime
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cluster"))
import imagenet_shards  # noqa: E402  (cluster/ is a folder of tools, not a package)

W, H = 500, 375
IMAGENET_FILES = 1_281_167 + 50_000  # train + val
IMAGENET_BYTES = 150e9
# ASSUMPTIONS, not measured here (no cloud account): each is stated in the JSON and in cluster/README.md.
ASSUMED = {
    "s3_to_node_MBps": 1000,  # 16 parallel shard streams of ~60 MB/s, in-region S3 to one p5/p4d node
    "nvme_write_MBps": 2000,  # the instance-store NVMe RAID0 of a p5/p4d node (this VM's disk is no guide)
    "boot_s": 300,            # EC2 p5 launch to SSH / Karpenter node to schedulable pod with GPUs
    "image_pull_s": 300,      # ~10 GB compressed image (Ray GPU + torch CUDA wheels) from ECR, unpacked
    "ray_start_s": 60,        # container start, `ray start`, the first trial's workers scheduled
}
TIMEOUT_MARGIN = 3  # a node that never becomes a Ray node costs one idle node-hour; a too-short timeout
                    # restarts the staging from nothing, possibly forever: err on the long side
TIMEOUT_STEP_S = 1800


def jpegs(folder: Path, n: int, classes: int, seed: int = 0) -> int:
    """n JPEGs in train/<class>/ and val/<class>/ (9:1), smooth blurred shapes plus noise; returns bytes."""
    rng = np.random.default_rng(seed)
    bases = []
    for _ in range(16):
        small = rng.uniform(0, 255, (2 * H // 32, 2 * W // 32, 3)).astype(np.uint8)
        big = Image.fromarray(small).resize((2 * W, 2 * H), Image.BICUBIC).filter(ImageFilter.GaussianBlur(4))
        bases.append(np.asarray(big).astype(np.int16))
    noise = rng.normal(0, 11, (2 * H, 2 * W, 3)).astype(np.int16)
    total = 0
    for i in range(n):
        split = "val" if i % 10 == 9 else "train"
        wnid = f"n{i % classes:08d}"
        base = bases[i % len(bases)]
        y, x, ny, nx = rng.integers(0, H), rng.integers(0, W), rng.integers(0, H), rng.integers(0, W)
        pixels = (base[y:y + H, x:x + W] + noise[ny:ny + H, nx:nx + W]).clip(0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
        path = folder / split / wnid / f"{wnid}_{i}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        total += path.write_bytes(buffer.getvalue())
    return total


def timed(run, dst: Path, sync: bool = False) -> float:
    """Seconds of run(dst) into an empty dst (removed afterwards); with sync, + os.sync()."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    os.sync()  # untimed: no earlier run's dirty pages flushed inside this one
    start = time.perf_counter()
    run(dst)
    if sync:
        os.sync()
    seconds = time.perf_counter() - start
    shutil.rmtree(dst, ignore_errors=True)
    return seconds


def restaged(shards: Path, dst: Path, repeats: int) -> list[float]:
    """Seconds of staging the same manifest again into a folder that holds it (staged once, untimed)."""
    shutil.rmtree(dst, ignore_errors=True)
    quiet = dict(log=lambda *_: None)
    imagenet_shards.stage(str(shards), dst, processes=2, **quiet)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        stats = imagenet_shards.stage(str(shards), dst, processes=2, **quiet)
        seconds.append(time.perf_counter() - start)
        assert stats["shards"] == 0 and stats["bytes"] == 0, stats  # the cache copied nothing
    shutil.rmtree(dst, ignore_errors=True)
    return seconds


def interleaved(runs: dict, dst: Path, repeats: int) -> dict[str, list[float]]:
    """Each method once per round (ABCAB...), so that the shared machine's noise hits all of them alike."""
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            seconds[name].append(timed(run, dst))
    return seconds


def copy_threads(src: Path, dst: Path, threads: int = 8) -> None:
    files = [p for p in src.rglob("*") if p.is_file()]
    for folder in {p.parent for p in files}:
        (dst / folder.relative_to(src)).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: shutil.copyfile(p, dst / p.relative_to(src)), files))


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def figures(seconds: list[float], files: int, total: int) -> dict:
    median = statistics.median(seconds)
    return {"seconds": [round(s, 2) for s in seconds], "median_s": round(median, 3),
            "files_per_s": round(files / median), "MB_per_s": round(total / 1e6 / median)}


def methods(loose: Path, shards: Path) -> dict:
    names = sorted(p.name for p in shards.glob("*.tar"))
    quiet = dict(log=lambda *_: None)
    return {
        "shards_stage_1_process": lambda d: imagenet_shards.stage(str(shards), d, processes=1, **quiet),
        "shards_stage_2_processes": lambda d: imagenet_shards.stage(str(shards), d, processes=2, **quiet),
        "shards_gnu_tar_1_process": lambda d: [subprocess.run(["tar", "-xf", str(shards / n), "-C", str(d)],
                                                              check=True) for n in names],
        "loose_cp_r": lambda d: subprocess.run(["cp", "-r", f"{loose}/.", str(d)], check=True),
        "loose_8_threads": lambda d: copy_threads(loose, d),
    }


def node_time(stage_MBps: float) -> dict:
    """Launch to training for 150 GB; staging streams and unpacks at once, so the slowest rate counts."""
    rate = min(ASSUMED["s3_to_node_MBps"], ASSUMED["nvme_write_MBps"], stage_MBps)
    staging_s = IMAGENET_BYTES / 1e6 / rate
    total_s = ASSUMED["boot_s"] + ASSUMED["image_pull_s"] + staging_s + ASSUMED["ray_start_s"]
    return {"staging_MBps": round(rate), "bound_by": "unpacking (measured)" if rate == stage_MBps else "assumed",
            "staging_s": round(staging_s), "launch_to_training_s": round(total_s)}


def estimate(stage_MBps: list[float]) -> dict:
    """ESTIMATE at the best and the worst staging rate measured; the timeout follows from the worst."""
    fast, slow = node_time(max(stage_MBps)), node_time(min(stage_MBps))
    timeout_s = -(-TIMEOUT_MARGIN * slow["launch_to_training_s"] // TIMEOUT_STEP_S) * TIMEOUT_STEP_S
    return {
        "label": "ESTIMATE from the unpacking rates measured here and the stated assumptions; not measured on a node",
        "assumed": ASSUMED,
        "fast": fast,
        "slow": slow,
        "timeout_margin": TIMEOUT_MARGIN,
        "node_ready_timeout_s": int(timeout_s),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=3000)
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--shard-mb", type=int, default=32, help="small shards so that 2 processes have work")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="gnp-staging-"))
    try:
        start = time.perf_counter()
        total = jpegs(work / "loose", args.files, args.classes)
        index = imagenet_shards.pack(work / "loose", work / "shards", args.shard_mb << 20)
        print(f"{args.files} JPEGs, {total / 1e6:.0f} MB ({total / args.files / 1e3:.0f} KB each) in "
              f"{len(index['shards'])} shards; made in {time.perf_counter() - start:.0f} s", flush=True)
        runs = methods(work / "loose", work / "shards")
        results = {name: figures(seconds, args.files, total)
                   for name, seconds in interleaved(runs, work / "dst", args.repeats).items()}
        disk = [timed(runs["shards_stage_2_processes"], work / "dst", sync=True)]
        results["shards_stage_2_processes_with_sync"] = figures(disk, args.files, total)
        for name, r in results.items():
            print(f"  {name:36s} {r['files_per_s']:7d} files/s  {r['MB_per_s']:5d} MB/s  (median of {r['seconds']} s)")
        seconds = restaged(work / "shards", work / "dst", args.repeats)  # copies nothing: no rate to give
        results["shards_restage_same_manifest"] = {"seconds": [round(s, 4) for s in seconds], "bytes_copied": 0,
                                                   "median_s": round(statistics.median(seconds), 4)}
        print(f"  {'shards_restage_same_manifest':36s} {results['shards_restage_same_manifest']['median_s']} s, "
              f"0 bytes copied  (median of {results['shards_restage_same_manifest']['seconds']} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    guess = estimate([results[k]["MB_per_s"] for k in ("shards_stage_1_process", "shards_stage_2_processes")])
    # A RayJob retry on a node that staged before: image cached, no boot; the restage reads index.json and
    # the markers only, whatever the dataset's size.
    guess["retry_on_a_staged_node"] = {
        "restage_s": results["shards_restage_same_manifest"]["median_s"],
        "launch_to_training_s": round(results["shards_restage_same_manifest"]["median_s"] + ASSUMED["ray_start_s"]),
        "instead_of_s": guess["slow"]["staging_s"] + ASSUMED["ray_start_s"]}
    report = {
        "what": "ImageNet-like JPEGs staged from tar shards vs copied loose into a local folder (page cache), "
                "median of repeats; *_with_sync: one run including os.sync() (this VM's disk)",
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(),
                    "python": platform.python_version(), "load_average_1min": round(os.getloadavg()[0], 1),
                    "note": "a shared 2-core VM (other engineers' tests running), not a GPU node"},
        "data": {"files": args.files, "bytes": total, "mean_file_bytes": round(total / args.files),
                 "size": f"{W}x{H}", "shards": len(index["shards"]), "shard_mb": args.shard_mb},
        "results": results,
        "estimate": guess,
        "command": "python bench/staging.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.date.today().isoformat(),
    }
    out = Path(args.out) / f"staging-{report['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    fast, slow = guess["fast"], guess["slow"]
    print(f"ESTIMATE (not measured on a node): staging 150 GB at {slow['staging_MBps']}-{fast['staging_MBps']} MB/s "
          f"takes {fast['staging_s'] / 60:.0f}-{slow['staging_s'] / 60:.0f} min; launch to training "
          f"{fast['launch_to_training_s'] / 60:.0f}-{slow['launch_to_training_s'] / 60:.0f} min with the assumed "
          f"boot {ASSUMED['boot_s']} s, image pull {ASSUMED['image_pull_s']} s, Ray start {ASSUMED['ray_start_s']} s; "
          f"timeout {TIMEOUT_MARGIN} x the slow end, rounded up to {TIMEOUT_STEP_S} s: {guess['node_ready_timeout_s']} s")
    retry = guess["retry_on_a_staged_node"]
    print(f"a retry on a node that staged the same manifest: restage {retry['restage_s']} s (measured), "
          f"{retry['launch_to_training_s']} s to training instead of up to {retry['instead_of_s']} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
