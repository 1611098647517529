"""The per-trial Parquet result files, and the record of the grid an experiment ran (`_grid.json`).

One file per trial, named by its deterministic key and written atomically (temp file + rename), so a crash
never leaves half a table and a rerun replaces a trial's file instead of adding rows.
"""

import json
import os
import subprocess
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from gnp.config import TrainConfig, config_key, maths_fields, trial_key
from gnp.rows import RESULT_SCHEMA
from gnp.storage import resolve


def code_version() -> str:
    """The version of the code, computed where the command was typed and handed on in GNP_CODE_VERSION
    (a cluster has no .git): the git commit with '+dirty' for local edits, else the package version."""
    if os.environ.get("GNP_CODE_VERSION"):
        return os.environ["GNP_CODE_VERSION"]
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


def rows_for_trial(cfg: TrainConfig, rows: list[dict], *, experiment: str, seeds_planned: int, version: str,
                   dataset_id: str | None, trial_wall_s: float | None) -> list[dict]:
    """gnp's per-epoch rows with the trial's identity added: the schema's columns first, in its order,
    then any other key gnp reports, unchanged (the writer keeps the columns the schema knows).

    `dataset_id` is the data's fingerprint (gnp.dataset_id); `trial_wall_s` the seconds its trial drivers
    ran, summed over a resumed trial's runs, the same on every row (less the epochs' wall_s: what Ray added).
    """
    identity = dict(
        experiment=experiment, trial_key=trial_key(cfg), config_key=config_key(cfg), recipe=cfg.recipe,
        dataset=cfg.dataset, augmentation=cfg.augmentation, model=cfg.model, variant=cfg.variant,
        alpha=float(cfg.alpha), r=float(cfg.r), seed=cfg.seed, seeds_planned=seeds_planned,
        epochs=cfg.epochs, code_version=version, dataset_id=dataset_id, trial_wall_s=trial_wall_s,
        config=json.dumps(maths_fields(cfg), sort_keys=True),
    )
    out = []
    for row in rows:
        merged = {**row, **identity}
        out.append({**{name: merged.get(name) for name in RESULT_SCHEMA.names}, **merged})
    return out


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


def finished_trial(results: str, experiment: str, key: str, epochs: int, *, stopped_is_done: bool = False) -> bool:
    """True when the trial's file holds all its epochs, or ended as diverged: nothing left to run.

    A trial ASHA stopped early is done only for a grid that stops early (`stopped_is_done`); any other grid
    continues it from its last checkpoint to its last epoch."""
    filesystem, root = resolve(results)
    path = f"{root.rstrip('/')}/{experiment}/{key}.parquet"
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return False
    table = pq.read_table(path, filesystem=filesystem, columns=["epoch", "status"]).to_pylist()
    ended = {"diverged", "stopped"} if stopped_is_done else {"diverged"}
    return any(r["status"] in ended for r in table) or (
        len(table) == epochs and all(r["status"] == "ok" for r in table)
    )


def grid_path(results: str, experiment: str) -> tuple[pafs.FileSystem, str]:
    filesystem, root = resolve(results)
    return filesystem, f"{root.rstrip('/')}/{experiment}/_grid.json"  # "_": not read by pd.read_parquet


def read_json(filesystem: pafs.FileSystem, path: str) -> dict | None:
    """A small JSON file on a local or remote filesystem, or None where there is none."""
    if filesystem.get_file_info(path).type != pafs.FileType.File:
        return None
    with filesystem.open_input_stream(path) as f:
        return json.loads(f.read())


def write_json(filesystem: pafs.FileSystem, path: str, data: dict) -> None:
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(json.dumps(data, sort_keys=True, indent=1).encode())


def read_grid(results: str, experiment: str) -> dict | None:
    """The grid an experiment ran (see jobs.options.grid_record), or None for a new experiment."""
    return read_json(*grid_path(results, experiment))


def write_grid(results: str, experiment: str, grid: dict) -> None:
    write_json(*grid_path(results, experiment), grid)
