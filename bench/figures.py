"""Where the benchmarks put their figures: one JSON file per run, named by benchmark, device and date."""

import json
import platform
import re
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name, for the JSON."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else platform.processor() or "unknown"


def write_figures(folder: str, benchmark: str, device: str, figures: dict) -> Path:
    name = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-").lower()
    path = Path(folder) / f"{benchmark}-{name}-{figures['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(figures, indent=1))
    print(f"wrote {path}", flush=True)
    return path
