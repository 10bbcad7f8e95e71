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
