"""Startup cost of ``import mammolab`` and of the CLI (``mammolab --help``), as a ratio to importing torch
in the same run: the layers keep torch (and timm, matplotlib, pydicom) out of both.

    python benchmarks/import_time.py [--repeat 9] [--baseline-src OTHER/src]

Each figure is the median, over ``--repeat`` fresh interpreters, of the cumulative time that
``python -X importtime`` reports for the module. ``--baseline-src`` times another source tree (for
example ``git archive OLD src | tar -x -C /tmp/old``) in the same run, interleaved with this one,
and prints after/before ratios. See docs/architecture.md, "Imports left inside functions".
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

MODULES = ("mammolab", "mammolab.cli", "mammolab.data.organize", "mammolab.models")
SRC = Path(__file__).resolve().parents[1] / "src"


def import_ms(module: str, src: Path | None) -> float:
    """Cumulative import time of ``module`` in a fresh interpreter, in ms (``src`` first on the path)."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], env=env,
                         capture_output=True, text=True, check=True, cwd="/").stderr
    for line in err.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip() == module:
            return int(parts[1]) / 1000
    raise RuntimeError(f"no importtime line for {module}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another tree's src/ to time in the same run")
    args = ap.parse_args()
    trees = {"this": SRC, **({"baseline": args.baseline_src.resolve()} if args.baseline_src else {})}
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeat):
        times.setdefault(("torch", "this"), []).append(import_ms("torch", None))
        for module in MODULES:
            for tree, src in trees.items():
                times.setdefault((module, tree), []).append(import_ms(module, src))
    torch_ms = statistics.median(times[("torch", "this")])
    print(f"import torch: {torch_ms:.0f} ms (median of {args.repeat})")
    for module in MODULES:
        now = statistics.median(times[(module, "this")])
        line = f"import {module}: {now:.0f} ms = {now / torch_ms:.2f} x torch"
        if "baseline" in trees:
            before = statistics.median(times[(module, "baseline")])
            line += f"; baseline {before:.0f} ms, ratio this/baseline {now / before:.2f}"
        print(line)


if __name__ == "__main__":
    main()
