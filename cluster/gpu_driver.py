"""Does this node's NVIDIA driver run the image's torch? One line and exit status 1 if not.

    python cluster/gpu_driver.py                 # on a GPU node (the stager runs it before staging ImageNet)
    python cluster/gpu_driver.py --cuda 13.0     # without torch: name the CUDA of the wheel

A torch wheel carries its own CUDA runtime; the one thing it needs from the node is a driver at least as new
as its CUDA major's minimum (NVIDIA's minor-version compatibility: CUDA 13.x needs driver >= 580 on Linux,
12.x >= 525, 11.x >= 450). An older driver fails only when the first trial touches the GPU, after the
node has staged 150 GB; this fails before. The driver version comes from nvidia-smi, or, in a container
that was given no GPU (KubeRay's init container), from /proc/driver/nvidia/version.
Standard library only (torch, when it is installed, names the CUDA).
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

# The oldest Linux driver of each CUDA major (minor-version compatibility; CUDA Toolkit release notes).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
PROC_VERSION = Path("/proc/driver/nvidia/version")


def required_driver(cuda: str) -> int:
    """The oldest driver branch that runs a CUDA `cuda` ("13.0") build."""
    major = int(cuda.split(".")[0])
    if major not in MIN_DRIVER:
        raise ValueError(f"CUDA {cuda}: no known minimum driver (known: CUDA {sorted(MIN_DRIVER)})")
    return MIN_DRIVER[major]


def parse_driver(version: str) -> tuple[int, ...]:
    """'580.65.06' -> (580, 65, 6)."""
    if not re.fullmatch(r"\d+(\.\d+)*", version.strip()):
        raise ValueError(f"not an NVIDIA driver version: {version!r}")
    return tuple(int(part) for part in version.strip().split("."))


def driver_problem(found: str | None, cuda: str, what: str = "torch") -> str | None:
    """None if driver `found` runs a CUDA `cuda` build, else the one line that says what to install."""
    needed = required_driver(cuda)
    if not found:
        return f"no NVIDIA driver on this node; {what} (CUDA {cuda}) needs driver >= {needed}"
    if parse_driver(found)[0] < needed:
        return (f"NVIDIA driver {found} is too old for {what} (CUDA {cuda}): it needs driver >= {needed}; "
                f"use a GPU AMI / node image with a {needed} or newer driver")
    return None


def installed_driver() -> str | None:
    """The driver of this machine: nvidia-smi's first GPU, else the kernel module's version file."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.split()[0]
    if PROC_VERSION.exists():
        match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+(?:\.\d+)+)", PROC_VERSION.read_text())
        if match:
            return match.group(1)
    return None


def torch_cuda() -> tuple[str, str]:
    """(CUDA version, 'torch <version>') of the installed torch; it must be a CUDA build."""
    import torch

    if not torch.version.cuda:
        raise SystemExit(f"error: torch {torch.__version__} is not a CUDA build; pass --cuda X.Y")
    return torch.version.cuda, f"torch {torch.__version__}"


def check(cuda: str | None = None) -> str | None:
    """The problem with this node's driver for `cuda` (default: the installed torch's), or None."""
    cuda, what = (cuda, "the image") if cuda else torch_cuda()
    return driver_problem(installed_driver(), cuda, what)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python cluster/gpu_driver.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cuda", help="the CUDA version the image's torch was built with (default: ask torch)")
    problem = check(p.parse_args(argv).cuda)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
