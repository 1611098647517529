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

from gnp.errors import UserError
from gnp.folders import IMAGE_EXTENSIONS


def _walk(folder: str, prefix: str, out: list) -> None:
    with os.scandir(folder) as entries:
        for entry in entries:
            relative = f"{prefix}/{entry.name}"
            if entry.is_dir(follow_symlinks=True):
                _walk(entry.path, relative, out)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                try:
                    out.append((relative, entry.stat(follow_symlinks=True).st_size))
                except FileNotFoundError:
                    raise UserError(f"{entry.path} is a link to nothing; remove it or restore its target") from None


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
        names = sorted(e.name for e in entries if e.is_dir(follow_symlinks=True))
    for split in ("train", "val"):  # torchvision's ImageFolder refuses a class without an image, mid-run
        filled = {path.split("/")[1] for path, _ in files if path.startswith(f"{split}/")}
        empty = [name for name in names if name not in filled]
        if empty:
            raise UserError(f"{os.path.join(root, split, empty[0])} holds no image (.JPEG, .jpg, .png)"
                            f"{f' (and {len(empty) - 1} more class folders)' if len(empty) > 1 else ''}; "
                            "remove the class or add its images")
    classes = len(names)
    return dict(
        classes=classes,
        train_images=sum(1 for path, _ in files if path.startswith("train/")),
        val_images=sum(1 for path, _ in files if path.startswith("val/")),
        fingerprint=digest.hexdigest()[:16],
    )
