"""Trial keys and the per-trial Parquet result files (DESIGN §5).

One file per trial, named by its deterministic key and written atomically (temp file + rename), so a crash
never leaves half a table and a rerun replaces a trial's file instead of adding rows.
"""

import subprocess
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from analysis.schema import RESULT_SCHEMA
from gnp.config import TrainConfig, config_key, trial_key


def code_version() -> str:
    """The git commit the driver runs (with '+dirty' for local edits), else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "gnp-ray " + version("gnp-ray")
        except PackageNotFoundError:
            return "unknown"


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """A local folder (made absolute) or a pyarrow filesystem URI such as s3://bucket/results."""
    if "://" not in location:
        location = str(Path(location).expanduser().resolve())
    return pafs.FileSystem.from_uri(location)


def rows_for_trial(cfg: TrainConfig, rows: list[dict], *, experiment: str, seeds_planned: int, version: str):
    """gnp's per-epoch rows with the trial's identity added, in the schema's column order."""
    identity = dict(
        experiment=experiment, trial_key=trial_key(cfg), config_key=config_key(cfg), recipe=cfg.recipe,
        dataset=cfg.dataset, augmentation=cfg.augmentation, model=cfg.model, variant=cfg.variant,
        alpha=float(cfg.alpha), r=float(cfg.r), seed=cfg.seed, seeds_planned=seeds_planned,
        epochs=cfg.epochs, code_version=version,
    )
    return [{name: {**row, **identity}.get(name) for name in RESULT_SCHEMA.names} for row in rows]


def write_trial(rows: list[dict], results: str, experiment: str) -> str:
    """Write one trial's rows to <results>/<experiment>/<trial_key>.parquet atomically; returns the path."""
    filesystem, root = resolve(results)
    folder = f"{root.rstrip('/')}/{experiment}"
    filesystem.create_dir(folder, recursive=True)
    final = f"{folder}/{rows[0]['trial_key']}.parquet"
    tmp = f"{folder}/.{rows[0]['trial_key']}.{uuid.uuid4().hex}.tmp"
    table = pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)
    try:
        with filesystem.open_output_stream(tmp) as sink:
            pq.write_table(table, sink)
        filesystem.move(tmp, final)
    except BaseException:
        try:
            filesystem.delete_file(tmp)
        except OSError:
            pass
        raise
    return final


def finished_trial(results: str, experiment: str, key: str, epochs: int) -> bool:
    """True when the trial's file holds all its epochs, or ended as diverged: nothing left to run."""
    filesystem, root = resolve(results)
    path = f"{root.rstrip('/')}/{experiment}/{key}.parquet"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return False
    table = pq.read_table(path, filesystem=filesystem, columns=["epoch", "status"]).to_pylist()
    return any(r["status"] == "diverged" for r in table) or (
        len(table) == epochs and all(r["status"] == "ok" for r in table)
    )
