"""Checkpoints as plain dicts of tensors and numbers: written atomically, read with weights_only=True.

Each epoch's checkpoint is a folder of its own (epoch_0001, ...) that never changes once written, so an
upload can read it while training goes on; <out>/checkpoint.pt and <out>/rows.json are hard links to the
latest one, so the run's folder always holds its last epoch whatever happens to the epoch folders.
"""

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

FILENAME = "checkpoint.pt"
ROWS_FILENAME = "rows.json"


def epoch_folder_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def save_epoch(state: dict, out: Path) -> Path:
    """Write <out>/epoch_NNNN (checkpoint.pt, rows.json) whole or not at all (into a temporary folder, then
    renamed), then point the latest links at it. Returns the folder; whoever takes it (an upload, or nobody)
    deletes it: the links keep the data."""
    folder = out / epoch_folder_name(state["epoch"])
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=out))
    try:
        torch.save(state, tmp / FILENAME)
        (tmp / ROWS_FILENAME).write_text(json.dumps(state["rows"]))
        shutil.rmtree(folder, ignore_errors=True)  # left by an interrupted run that is now redoing this epoch
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for name in (FILENAME, ROWS_FILENAME):
        link = out / f".{name}.link"
        link.unlink(missing_ok=True)
        os.link(folder / name, link)
        os.replace(link, out / name)
    return folder


def remove_epoch_folders(out: Path) -> None:
    """The epoch folders (and half-written ones) an interrupted run left; the latest links stay."""
    for folder in out.glob("*epoch_[0-9][0-9][0-9][0-9]*"):
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def rng_state(device: torch.device) -> dict:
    """Python, NumPy, torch and CUDA generators, as tensors and plain numbers (no pickled objects)."""
    np_state = np.random.get_state(legacy=False)
    return dict(
        python=random.getstate(),
        numpy_key=torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
        numpy_pos=int(np_state["state"]["pos"]),
        numpy_gauss=(int(np_state["has_gauss"]), float(np_state["gauss"])),
        torch=torch.get_rng_state(),
        cuda=torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    )


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(dict(
        bit_generator="MT19937",
        state=dict(key=state["numpy_key"].numpy().astype(np.uint32), pos=state["numpy_pos"]),
        has_gauss=state["numpy_gauss"][0], gauss=state["numpy_gauss"][1],
    ))
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
