"""Fixtures for the train stage: generated lesion datasets (see train_fixtures.py), an isolated image cache."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from train_fixtures import make_lesion_dataset


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread: these models are tiny, and on a shared 2-core CI machine two spinning
    OpenMP threads per process run up to 10x slower than one. Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Image caches go to a per-session temp folder, never to the user's ~/.cache."""
    monkeypatch.setenv("MAMMOLAB_CACHE", str(tmp_path_factory.getbasetemp() / "mammolab-cache"))


@pytest.fixture(scope="session")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """160 learnable 64 px lesion patches (80 patients), train/val/test by patient."""
    return make_lesion_dataset(tmp_path_factory.mktemp("lesions") / "ds", patients=80, size=64, seed=1)


@pytest.fixture(scope="session")
def small_lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 patches at 32 px (24 patients) with 3 folds: for quick mechanics tests."""
    return make_lesion_dataset(tmp_path_factory.mktemp("small") / "ds", patients=24, size=32, seed=2, folds=3)
