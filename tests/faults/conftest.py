"""Fixtures of the fault-injection suite (tools in ``fault_tools``): tiny generated data only."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_tools import world_tmp

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "train") not in sys.path:
    sys.path.insert(0, str(TESTS / "train"))  # train_fixtures: the generated lesion-patch datasets


@pytest.fixture(scope="session")
def download(tmp_path_factory: pytest.TempPathFactory):
    """A 12-patient CBIS-DDSM-shaped download with 128 px films (legacy layout)."""
    from mammolab.data.synth import synthesize

    return synthesize(tmp_path_factory.mktemp("faults-synth"), patients=12, image_size=128, layout="legacy",
                      seed=3, workers=1)


@pytest.fixture(scope="session")
def lesions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32 px lesion-patch dataset (24 patients, 48 images) for preprocess, train and predict."""
    from train_fixtures import make_lesion_dataset

    return make_lesion_dataset(tmp_path_factory.mktemp("faults-lesions") / "ds", patients=24, size=32, seed=5)


@pytest.fixture
def shared_tmp(tmp_path: Path) -> Iterator[Path]:
    """A temp folder another user can use (removed afterwards)."""
    import shutil

    folder = world_tmp(tmp_path)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
