"""Benchmark: installed size of the light runtime (``mammolab-runtime``) against the full install.

Both sets are resolved from the requirement lists themselves (``pyproject.toml``: the ``runtime`` extra,
and the base dependencies plus the extras ``make install`` names less the dev/docs tools, i.e.
``.[postgres,export,tracking]``), transitively through the installed distributions' own metadata
(``Requires-Dist`` with its environment markers evaluated here), and each distribution counts the bytes
of the files its ``RECORD`` lists as installed. So the figure is what ``pip install`` puts into
site-packages on this platform for the versions in this environment, measured offline: the full set
must be installed here (``make install``), and the runtime set is a subset of it. ``--venv`` instead
builds the runtime wheel, installs it into a fresh virtual environment from PyPI (network) and adds up
that site-packages folder, for a check of the offline figure.

Prints both sizes in MiB, the number of distributions, the biggest ones, and the ratio full / runtime.
Run: ``python benchmarks/runtime_size.py [--top 8] [--venv]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
#: The extras ``make install`` adds to the base for a full working install (dev and docs are tools).
FULL_EXTRAS = ("postgres", "export", "tracking")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lists(pyproject: Path = REPO / "pyproject.toml") -> tuple[list[str], list[str]]:
    """``(runtime, full)`` top-level requirement strings."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    extras = project.get("optional-dependencies", {})
    full = list(project["dependencies"]) + [r for e in FULL_EXTRAS for r in extras.get(e, [])]
    return list(extras["runtime"]), full


def closure(requirements: list[str]) -> tuple[dict[str, metadata.Distribution], list[str]]:
    """Installed distributions reached from ``requirements`` (extras and markers followed), and the names
    that are not installed here (their size is unknown, so the script names them)."""
    seen: dict[str, metadata.Distribution] = {}
    missing: list[str] = []
    followed: set[tuple[str, str]] = set()  # (distribution, extra) whose requirements were queued
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name not in seen:
            try:
                seen[name] = metadata.distribution(req.name)
            except metadata.PackageNotFoundError:
                missing.append(req.name)
                continue
        for extra in ("", *req.extras):
            if (name, extra) in followed:
                continue
            followed.add((name, extra))
            for sub in seen[name].requires or []:
                r = Requirement(sub)
                if r.marker is None and extra == "" or r.marker is not None and r.marker.evaluate({"extra": extra}):
                    todo.append(r)
    return seen, sorted(set(missing))


def installed_bytes(dist: metadata.Distribution) -> int:
    """Bytes of the files the distribution's RECORD lists (what its install wrote)."""
    total = 0
    for f in dist.files or []:
        with contextlib.suppress(OSError):  # a file the RECORD lists but something removed
            total += os.path.getsize(dist.locate_file(f))
    return total


def measure(requirements: list[str]) -> tuple[int, dict[str, int], list[str]]:
    dists, missing = closure(requirements)
    sizes = {name: installed_bytes(d) for name, d in dists.items() if name != "mammolab"}
    return sum(sizes.values()), sizes, missing


def venv_size() -> int:
    """Build the runtime wheel, install it with its dependencies into a fresh venv (PyPI), sum site-packages."""
    sys.path.insert(0, str(REPO / "scripts"))
    from build_runtime import build

    with tempfile.TemporaryDirectory(prefix="mammolab-runtime-size-") as tmp:
        wheel = build(Path(tmp) / "dist")
        venv = Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        before = _tree_bytes(site)  # pip itself, which the venv brings
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], check=True)
        return _tree_bytes(site) - before


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--top", type=int, default=8, help="list the N biggest distributions of each set")
    parser.add_argument("--venv", action="store_true", help="also install the runtime into a fresh venv (network)")
    args = parser.parse_args()
    runtime_reqs, full_reqs = requirement_lists()
    mib = 1024 ** 2
    results = {}
    for label, reqs in (("runtime", runtime_reqs), ("full", full_reqs)):
        total, sizes, missing = measure(reqs)
        results[label] = total
        top = sorted(sizes.items(), key=lambda kv: -kv[1])[:args.top]
        print(f"{label:8s} {total / mib:9.1f} MiB installed, {len(sizes)} distributions; biggest: "
              + ", ".join(f"{n} {s / mib:.0f}" for n, s in top))
        if missing:
            print(f"         not installed here (not counted): {', '.join(missing)}")
    print(f"ratio full / runtime: {results['full'] / results['runtime']:.1f}x "
          f"(runtime = {100 * results['runtime'] / results['full']:.1f}% of the full install)")
    if args.venv:
        print(f"runtime in a fresh venv (site-packages growth, from PyPI, the wheel included): "
              f"{venv_size() / mib:.1f} MiB")


if __name__ == "__main__":
    main()
