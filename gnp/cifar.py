"""CIFAR-10 and CIFAR-100 as users have them: the official python-version archives, read without torch.

A root (`--data`) is the folder the archive unpacks to (`cifar-10-batches-py/`: data_batch_1..5,
test_batch, batches.meta; `cifar-100-python/`: train, test, meta with fine labels), a folder holding that
folder or the `.tar.gz`, or the `.tar.gz` itself. The pickles are read by an unpickler that builds only
NumPy arrays, lists and dicts (a pickle can run code; these cannot). A truncated, corrupt or wrong-shaped
file is one line naming it. The data's identity is a hash of the images and labels themselves, so the
folder and the archive are the same data.

The embedded default (`digits-cifar`): scikit-learn's 8×8 digits written once as 32×32 RGB in CIFAR-10's
format (5 training batches, a test batch, batches.meta; the digits' fixed split), so a fresh machine runs
the real CIFAR reader and augmentation path.
"""

import codecs
import hashlib
import io
import os
import pickle
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gnp.errors import UserError
from gnp.folders import cache_dir, digits_split

SOURCE = "https://www.cs.toronto.edu/~kriz/cifar.html"
DIGITS_VERSION = "digits-cifar-v1"  # bump when the written files change


@dataclass(frozen=True)
class Format:
    name: str
    folder: str
    archive: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    labels: bytes  # the label key in a batch
    names: bytes  # the class names' key in the meta file
    classes: int

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train, *self.test, self.meta)

    def describe(self) -> str:
        return f"{self.folder}/ ({', '.join(self.files)}) or {self.archive}"


CIFAR10 = Format("CIFAR-10", "cifar-10-batches-py", "cifar-10-python.tar.gz",
                 tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), "batches.meta",
                 b"labels", b"label_names", 10)
CIFAR100 = Format("CIFAR-100", "cifar-100-python", "cifar-100-python.tar.gz", ("train",), ("test",), "meta",
                  b"fine_labels", b"fine_label_names", 100)


class _ArraysOnly(pickle.Unpickler):
    """Builds NumPy arrays and plain containers; refuses any other global a pickle names."""

    ALLOWED = {("_codecs", "encode"), ("numpy", "ndarray"), ("numpy", "dtype"),
               ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR file never does")
        if name == "_reconstruct":
            return np.ndarray((0,)).__reduce__()[0]  # NumPy's own, under whichever module this NumPy has it
        return getattr(np, name) if module == "numpy" else codecs.encode


def locate(root: str | Path, fmt: Format) -> Path:
    """The folder of the batches or the archive under `root`; one line naming what is missing otherwise."""
    root = Path(root).expanduser()
    if not root.exists():
        raise UserError(f"{fmt.name} root {root} does not exist; pass the folder holding {fmt.describe()} "
                        f"(from {SOURCE})")
    if root.is_file():
        if root.name.endswith((".tar.gz", ".tgz")):
            return root
        raise UserError(f"{root} is a file, not {fmt.archive} or a folder holding {fmt.folder}/")
    for candidate in (root, root / fmt.folder):
        if candidate.is_dir() and any((candidate / name).exists() for name in fmt.files):
            missing = [name for name in fmt.files if not (candidate / name).is_file()]
            if missing:
                raise UserError(f"{candidate} lacks {', '.join(missing)} of {fmt.name}; unpack {fmt.archive} again")
            return candidate
    if (root / fmt.archive).is_file():
        return root / fmt.archive
    other = CIFAR100 if fmt is CIFAR10 else CIFAR10
    if (root / other.folder).exists() or (root / other.archive).exists():
        raise UserError(f"{root} holds {other.name}, not {fmt.name}; choose the matching --dataset or recipe")
    raise UserError(f"{root} holds no {fmt.name}: expected {fmt.describe()} (from {SOURCE})")


def _load(name: str, raw: bytes, where: str) -> dict:
    try:
        return _ArraysOnly(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # a truncated or foreign file fails in many ways; all mean the same to a user
        raise UserError(f"{where}/{name} is not a readable {name} pickle ({err}); unpack the archive again") from None


def _read_members(location: Path, fmt: Format) -> dict[str, bytes]:
    if location.is_dir():
        return {name: (location / name).read_bytes() for name in fmt.files}
    try:
        with tarfile.open(location, "r:gz") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}
            missing = [name for name in fmt.files if name not in members]
            if missing:
                raise UserError(f"{location} lacks {', '.join(missing)}: it is not {fmt.archive}")
            return {name: archive.extractfile(members[name]).read() for name in fmt.files}
    except (tarfile.TarError, EOFError, OSError) as err:
        raise UserError(f"{location} is not a readable .tar.gz ({err}); download {fmt.archive} again") from None


def _split(batches: list[tuple[str, dict]], fmt: Format, where: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for name, batch in batches:
        data, found = batch.get(b"data"), batch.get(fmt.labels)
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
            shape = getattr(data, "shape", None)
            raise UserError(f"{where}/{name}: its data is not N×3072 uint8 (got {shape}); it is not a {fmt.name} batch")
        found = np.asarray(found if found is not None else [], dtype=np.int64)
        if len(found) != len(data) or (len(found) and not (0 <= found.min() and found.max() < fmt.classes)):
            raise UserError(f"{where}/{name}: {len(found)} labels in 0..{fmt.classes - 1} expected for "
                            f"{len(data)} images; it is not a {fmt.name} batch")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(found)
    return np.concatenate(images), np.concatenate(labels)


def read(location: Path, fmt: Format) -> dict:
    """{train: (images N×3×32×32 uint8, labels), test: (...), classes: [names]} from `locate`'s result."""
    raw = _read_members(location, fmt)
    where = str(location)
    loaded = {name: _load(name, raw[name], where) for name in fmt.files}
    names = loaded[fmt.meta].get(fmt.names) if isinstance(loaded[fmt.meta], dict) else None
    if not names or len(names) != fmt.classes:
        raise UserError(f"{where}/{fmt.meta} does not name {fmt.classes} classes; it is not {fmt.name}'s")
    return dict(train=_split([(n, loaded[n]) for n in fmt.train], fmt, where),
                test=_split([(n, loaded[n]) for n in fmt.test], fmt, where),
                classes=[n.decode() if isinstance(n, bytes) else str(n) for n in names])


def identity(location: Path, fmt: Format) -> dict:
    """{classes, train_images, val_images, fingerprint}: a hash of the images and labels themselves."""
    data = read(location, fmt)
    digest = hashlib.sha256()
    for split in ("train", "test"):
        for array in data[split]:
            digest.update(np.ascontiguousarray(array).tobytes())
    return dict(classes=fmt.classes, train_images=len(data["train"][1]), val_images=len(data["test"][1]),
                fingerprint=digest.hexdigest()[:16])


def ensure_digits(root: Path | None = None) -> Path:
    """The digits in CIFAR-10's format under the cache, written once (a temp folder renamed into place)."""
    root = root or cache_dir() / DIGITS_VERSION
    if all((root / CIFAR10.folder / name).is_file() for name in CIFAR10.files):
        return root
    from PIL import Image

    images, targets, train_idx, test_idx = digits_split()
    rgb = np.stack([np.asarray(Image.fromarray(image, mode="L").resize((32, 32), Image.BICUBIC))
                    for image in images])
    rgb = np.repeat(rgb[:, None], 3, axis=1).reshape(len(images), 3072)  # grey as R = G = B, CIFAR's order
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".digits-cifar-", dir=root))
    chunks = np.array_split(np.asarray(train_idx), len(CIFAR10.train))
    for name, indices in [*zip(CIFAR10.train, chunks, strict=True), ("test_batch", np.asarray(test_idx))]:
        batch = {b"batch_label": name.encode(), b"labels": [int(targets[i]) for i in indices],
                 b"data": rgb[indices], b"filenames": [f"digit_{i:04d}.png".encode() for i in indices]}
        (tmp / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"digit_{d}".encode() for d in range(10)], b"num_vis": 3072}
    (tmp / CIFAR10.meta).write_bytes(pickle.dumps(meta, protocol=2))
    try:
        os.rename(tmp, root / CIFAR10.folder)
    except OSError:  # another worker finished first: keep its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return root
