"""Where `make imagenet`'s demo spends its time: in epochs, against everything else (Ray's share).

    .venv/bin/python bench/demo.py --json bench/results
    .venv/bin/python bench/demo.py GRID="--recipe digits --seeds 0 --alpha 0,1 --workers 2"   # another grid

Runs `make imagenet` as a user does (a fresh results folder), timed from outside, then reads its result rows.
The union of every epoch's [started_at, ended_at] over all trials (training and evaluation) is the time some
trial was in an epoch; the rest of the wall time is starting the local Ray cluster, each trial's driver and
worker group, checkpoint uploads, teardown and the final table: Ray's share. Per trial, the same overhead is
split into the time before its first epoch and after its last (its trial_wall_s less the span of its epochs)
and the time between its epochs (trials overlap, so these do not add up to the wall time).
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
from figures import cpu_model, write_figures

ROOT = Path(__file__).resolve().parent.parent


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("make_args", nargs="*", help="extra make variables, e.g. GRID=\"...\"")
    p.add_argument("--json", metavar="FOLDER", help="also write the figures as JSON there")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="gnp-demo-") as results:
        start, began = time.monotonic(), time.time()
        done = subprocess.run(["make", "--no-print-directory", "imagenet", f"RESULTS={results}",
                               *args.make_args], cwd=ROOT, capture_output=True, text=True)
        wall = time.monotonic() - start
        if done.returncode != 0:
            sys.exit(f"make imagenet failed ({done.returncode}):\n{done.stderr[-3000:]}")
        rows = [r for f in Path(results).glob("*/*.parquet") for r in pq.read_table(f).to_pylist()]
    if not rows or any(r.get("started_at") is None for r in rows):
        sys.exit("no epoch timestamps in the results (rows without started_at)")
    in_epochs = union_seconds([(r["started_at"], r["ended_at"]) for r in rows])
    trials = {}
    for r in rows:
        trials.setdefault(r["trial_key"], []).append(r)
    between, around, timeline = [], [], []  # per trial: between its epochs; before the first and after the last
    for ts in sorted(trials.values(), key=lambda ts: min(r["started_at"] for r in ts)):
        first, last = min(r["started_at"] for r in ts), max(r["ended_at"] for r in ts)
        between.append(last - first - sum(r["ended_at"] - r["started_at"] for r in ts))
        around.append(ts[0]["trial_wall_s"] - (last - first))
        timeline.append(dict(trial=f"{ts[0]['variant']} α={ts[0]['alpha']:g} seed {ts[0]['seed']}",
                             first_epoch_s=round(first - began, 1), last_epoch_end_s=round(last - began, 1),
                             trial_wall_s=round(ts[0]["trial_wall_s"], 1)))
    figures = dict(
        date=datetime.date.today().isoformat(), machine=f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores",
        make_args=args.make_args, trials=len(trials), epochs=len(rows), wall_s=round(wall, 1),
        in_epochs_s=round(in_epochs, 1), ray_share=round(1 - in_epochs / wall, 3),
        trial_start_and_end_s=[round(x, 1) for x in around], between_epochs_s=[round(x, 1) for x in between],
        timeline=timeline,
    )
    print(f"make imagenet: {wall:.1f} s for {len(trials)} trials, {len(rows)} epochs; some trial in an epoch for "
          f"{in_epochs:.1f} s; Ray's share {100 * figures['ray_share']:.1f}%")
    print("each trial's seconds before its first epoch and after its last: " + ", ".join(f"{x:.1f}" for x in around))
    print("each trial's seconds between its epochs (checkpoints, reports): " + ", ".join(f"{x:.1f}" for x in between))
    for t in timeline:
        print(f"  {t['trial']:<22} epochs from {t['first_epoch_s']:6.1f} s to {t['last_epoch_end_s']:6.1f} s "
              f"after make started; {t['trial_wall_s']:.1f} s in all")
    if args.json:
        write_figures(args.json, "demo", "cpu", figures)


if __name__ == "__main__":
    main()
