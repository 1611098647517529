"""A dataset's identity, independent of where it sits: the same files under another path are the same data.

Results are only comparable on the same data, and a path says nothing about what is under it (each machine
mounts ImageNet elsewhere; two folders may hold different copies). The identity is the class count, the
train and val image counts and a fingerprint of every relative file path with its size. It reads
directories only (one os.scandir walk, no file contents), so ImageNet's 1.33M files take seconds.
Torch-free and stdlib-only: the grid driver computes it before Ray or torch is loaded.
"""

import hashlib
import os
from pathlib import Path

from gnp.folders import IMAGE_EXTENSIONS


def _walk(folder: str, prefix: str, out: list) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            relative = f"{prefix}/{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                _walk(entry.path, relative, out)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                out.append((relative, entry.stat(follow_symlinks=True).st_size))


def dataset_identity(root: str | Path) -> dict:
    """{classes, train_images, val_images, fingerprint} of a root holding train/<class>/ and val/<class>/."""
    root = str(Path(root).expanduser())
    files: list[tuple[str, int]] = []
    for split in ("train", "val"):
        _walk(os.path.join(root, split), split, files)
    files.sort()
    digest = hashlib.sha256()
    for path, size in files:
        digest.update(f"{path}\0{size}\n".encode())
    with os.scandir(os.path.join(root, "train")) as entries:
        classes = sum(1 for e in entries if e.is_dir(follow_symlinks=True))
    return dict(
        classes=classes,
        train_images=sum(1 for path, _ in files if path.startswith("train/")),
        val_images=sum(1 for path, _ in files if path.startswith("val/")),
        fingerprint=digest.hexdigest()[:16],
    )
