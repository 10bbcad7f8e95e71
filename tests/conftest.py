"""Shared test fixtures: quiet progress bars and the optional ../shared real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MAMMOLAB_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the checkout (real CBIS-DDSM samples); skips the test when absent."""
    if not (SHARED / "data" / "cbis-ddsm").is_dir():
        pytest.skip("../shared/data/cbis-ddsm is not present (only in the developers' checkout and CI)")
    return SHARED / "data" / "cbis-ddsm"


@pytest.fixture(scope="session")
def synth_legacy(tmp_path_factory: pytest.TempPathFactory):
    """A small generated CBIS-DDSM download in the legacy layout (shared by the whole session)."""
    from mammolab.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth-legacy"), patients=12, image_size=256, layout="legacy",
                      seed=0, workers=1)


@pytest.fixture(scope="session")
def synth_nbia(tmp_path_factory: pytest.TempPathFactory):
    """The same generated download in the current NBIA layout, with metadata.csv."""
    from mammolab.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("synth-nbia"), patients=12, image_size=256, layout="nbia",
                      seed=0, workers=1)


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script of ``benchmarks/`` as a module (they are scripts, not a package): ``load_benchmark(name)``."""
    import importlib.util
    import sys

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod

    return load
