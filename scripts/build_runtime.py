"""Build the light distribution ``mammolab-runtime`` from this source tree: the same ``mammolab`` package,
with the dependencies of ``pyproject.toml``'s ``runtime`` extra only (no torch or the rest of the training
stack), so an exported model folder predicts and serves from a small install::

    python scripts/build_runtime.py                 # -> dist/mammolab_runtime-<version>-py3-none-any.whl
    pip install dist/mammolab_runtime-*.whl           # in the environment that runs exported models
    mammolab predict EXPORT_DIR FILE; mammolab serve EXPORT_DIR

Why a second distribution: an extra can only add dependencies, and ``pip install mammolab`` must keep
meaning everything (train, evaluate, explain, tune). Install one or the other in an environment, never
both: they hold the same files. Commands that need the training stack say so in one line in the runtime.

The wheel is built offline (``pip wheel --no-deps --no-build-isolation``: setuptools from the running
Python), from a temporary copy holding ``src/mammolab`` and a generated ``pyproject.toml``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
NAME = "mammolab-runtime"


def runtime_project(pyproject: Path = REPO / "pyproject.toml") -> dict:
    """Name, version, dependencies... of ``mammolab-runtime``, taken from the full project's pyproject.toml."""
    full = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    project = full["project"]
    deps = project.get("optional-dependencies", {}).get("runtime")
    if not deps:
        raise SystemExit(f"{pyproject}: [project.optional-dependencies] runtime is missing or empty")
    return {"name": NAME, "version": project["version"],
            "description": "MammoLab's light runtime: predict and serve exported models (ONNX) without torch.",
            "requires-python": project.get("requires-python", ">=3.10"), "license": project.get("license"),
            "dependencies": list(deps), "scripts": dict(project.get("scripts", {})),
            "package-data": full.get("tool", {}).get("setuptools", {}).get("package-data", {})}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def pyproject_text(meta: dict) -> str:
    """The generated pyproject.toml of the runtime distribution."""
    lic = meta.get("license") or {}
    lines = ['[build-system]', 'requires = ["setuptools>=68"]', 'build-backend = "setuptools.build_meta"', "",
             "[project]", f'name = "{meta["name"]}"', f'version = "{meta["version"]}"',
             f'description = "{meta["description"]}"', 'readme = "README.md"',
             f'requires-python = "{meta["requires-python"]}"']
    if isinstance(lic, dict) and lic.get("text"):  # an SPDX string (setuptools >= 77), not the deprecated table
        lines.append(f'license = "{lic["text"]}"')
    lines += [f"dependencies = {_toml_list(meta['dependencies'])}", "", "[project.scripts]"]
    lines += [f'{k} = "{v}"' for k, v in meta["scripts"].items()]
    lines += ["", "[tool.setuptools.packages.find]", 'where = ["src"]', "", "[tool.setuptools.package-data]"]
    lines += [f"{k} = {_toml_list(v)}" for k, v in meta["package-data"].items()]
    return "\n".join(lines) + "\n"


README = """# mammolab-runtime

MammoLab's light runtime: `mammolab predict EXPORT_DIR FILE` and `mammolab serve EXPORT_DIR` for folders
made by `mammolab export --format onnx`, without torch. Built from the MammoLab source tree by
`scripts/build_runtime.py`; see docs/guide/export.md ("Light runtime"). Research software, not a medical
device.
"""


def build(out: Path) -> Path:
    """Build the wheel into ``out``; returns its path."""
    meta = runtime_project()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mammolab-runtime-") as tmp:
        root = Path(tmp)
        shutil.copytree(REPO / "src" / "mammolab", root / "src" / "mammolab",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        (root / "pyproject.toml").write_text(pyproject_text(meta), encoding="utf-8")
        (root / "README.md").write_text(README, encoding="utf-8")
        before = set(out.glob("mammolab_runtime-*.whl"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(out), str(root)], check=True)
    wheels = sorted(set(out.glob(f"mammolab_runtime-{meta['version']}-*.whl")) - before) or \
        sorted(out.glob(f"mammolab_runtime-{meta['version']}-*.whl"))
    return wheels[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist", help="folder for the wheel (default dist/)")
    args = parser.parse_args()
    print(build(args.out))


if __name__ == "__main__":
    main()
