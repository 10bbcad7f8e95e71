"""The stamp every figure file carries: which machine, when, and which MammoLab (version and commit).

Figures differ across CPUs (thread scheduling, BLAS kernels) while a re-run on the same machine gives
the same numbers, so a number in the docs is only meaningful with the machine that produced it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
FIGURES = ROOT / "docs" / "figures"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform``)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def gpu_name() -> str | None:
    """The first NVIDIA GPU's name, or None (no torch import: ``nvidia-smi`` when present)."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0] if out else None


def git_commit() -> str:
    """HEAD's hash, with ``+local`` when ``src/`` has uncommitted changes (the figures then came from those)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+local" if git("status", "--porcelain", "--", "src") else "")


def stamp() -> dict[str, Any]:
    """Machine, date and code version for a figure file."""
    import mammolab

    return {
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "gpu": gpu_name(),
                    "python": platform.python_version(), "system": f"{platform.system()} {platform.release()}"},
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "mammolab_version": mammolab.__version__,
        "git_commit": git_commit(),
    }


def write_figure(name: str, data: dict[str, Any], folder: Path = FIGURES) -> Path:
    """Write ``folder/name.json`` atomically (the docs build may be reading it)."""
    from mammolab.io import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    return path
