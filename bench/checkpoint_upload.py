"""What an epoch's checkpoint costs the training ranks: Ray's upload in the foreground (SYNC, Ray's default)
against in the background while the next epoch trains (ASYNC, what jobs/trial.py does).

    .venv/bin/python bench/checkpoint_upload.py [--mb 1100] [--epochs 3] [--work-s 4] [--storage DIR|s3://...]

One one-worker Ray Train run per mode, SYNC then ASYNC, --repeats times. Each epoch computes for --work-s
(matrix products on one thread, standing in for training), writes a checkpoint of --mb MB (1,100: VGG16-BN's
weights and momentum; ResNet-50's is ~200) with gnp.checkpoint.save_epoch, and reports it with
jobs.trial.report_epoch. Printed per mode: the median seconds rank 0 spends writing and reporting an epoch
(the report is what every rank waits for), and the run's wall time up to its last upload committed. On local
disk the upload is a copy; with --storage s3://bucket/prefix on a cluster it is the real one.
`--json DIR` writes the figures to DIR/checkpoint_upload-<date>.json.
"""

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import ray
import ray.train
import torch
from ray.train import CheckpointConsistencyMode, CheckpointUploadMode, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from gnp import checkpoint
from jobs.trial import report_epoch


def loop(config: dict) -> None:
    """A stand-in training run: compute, write the epoch's checkpoint, report it; the timings at the end."""
    torch.set_num_threads(1)
    upload = CheckpointUploadMode[config["mode"]]
    out = Path(tempfile.mkdtemp(prefix="gnp-bench-upload-"))
    weights = torch.randn(config["mb"] * 2**20 // 4)
    a = torch.randn(512, 512)
    save_s, report_s, start = [], [], time.perf_counter()
    for epoch in range(1, config["epochs"] + 1):
        until = time.perf_counter() + config["work_s"]
        while time.perf_counter() < until:
            a = torch.tanh(a @ a)
        t0 = time.perf_counter()
        folder = checkpoint.save_epoch(dict(epoch=epoch, weights=weights, rows=[{"epoch": epoch}]), out)
        t1 = time.perf_counter()
        report_epoch({"epoch": epoch}, str(folder), upload=upload)
        save_s.append(t1 - t0)
        report_s.append(time.perf_counter() - t1)
    ray.train.get_all_reported_checkpoints(consistency_mode=CheckpointConsistencyMode.COMMITTED)
    wall_s = time.perf_counter() - start
    for name in (checkpoint.FILENAME, checkpoint.ROWS_FILENAME):
        (out / name).unlink()
    (out / "timings").mkdir()  # every epoch folder was deleted by Ray after its upload: only this one is left
    (out / "timings" / "timings.json").write_text(json.dumps(dict(save_s=save_s, report_s=report_s, wall_s=wall_s)))
    report_epoch({"epoch": config["epochs"] + 1}, str(out / "timings"), upload=CheckpointUploadMode.SYNC)
    out.rmdir()


def run(mode: str, args, storage: str, index: int) -> dict:
    trainer = TorchTrainer(
        loop, train_loop_config=dict(mode=mode, mb=args.mb, epochs=args.epochs, work_s=args.work_s),
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name=f"upload-{mode.lower()}-{index}", storage_path=storage),
    )
    last = trainer.fit().checkpoint
    with last.filesystem.open_input_stream(f"{last.path}/timings.json") as stream:
        return dict(mode=mode, **json.loads(stream.read()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mb", type=int, default=1100, help="checkpoint size in MB")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--work-s", type=float, default=4.0, help="seconds of compute per epoch")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--storage", help="Ray Train's storage_path (default: a temporary local folder)")
    p.add_argument("--json", type=Path, help="write the figures to DIR/checkpoint_upload-<date>.json")
    args = p.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="gnp-bench-storage-") as local:
        storage = args.storage or local
        runs = [run(mode, args, storage, i) for i in range(args.repeats) for mode in ("SYNC", "ASYNC")]
    summary = {}
    for mode in ("SYNC", "ASYNC"):
        mine = [r for r in runs if r["mode"] == mode]
        summary[mode] = dict(save_s=statistics.median(s for r in mine for s in r["save_s"]),
                             report_s=statistics.median(s for r in mine for s in r["report_s"]),
                             wall_s=statistics.median(r["wall_s"] for r in mine))
        print(f"{mode:5s}  write {summary[mode]['save_s']:6.2f} s/epoch  report {summary[mode]['report_s']:6.2f} "
              f"s/epoch  run {summary[mode]['wall_s']:6.1f} s ({args.epochs} epochs of {args.work_s:g} s, "
              f"{args.mb} MB checkpoints, median of {args.repeats})")
    if args.json:
        args.json.mkdir(parents=True, exist_ok=True)
        path = args.json / f"checkpoint_upload-{datetime.date.today()}.json"
        path.write_text(json.dumps(dict(args={k: str(v) for k, v in vars(args).items()}, runs=runs,
                                        summary=summary), indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
