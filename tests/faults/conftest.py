"""Fixtures of the fault-injection suite (tools in ``fault_tools``): tiny generated data only."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from fault_tools import TRAIN_ARGS, Result, huge_png, run_in_process, world_tmp

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "train") not in sys.path:
    sys.path.insert(0, str(TESTS / "train"))  # train_fixtures: the generated lesion-patch datasets


@pytest.fixture(scope="session")
def download(world: Path):
    """A 12-patient CBIS-DDSM-shaped download with 128 px films (legacy layout)."""
    from mammolab.data.synth import synthesize

    return synthesize(world_tmp(world), patients=12, image_size=128, layout="legacy",
                      seed=3, workers=1)


@pytest.fixture(scope="session")
def lesions(world: Path) -> Path:
    """A 32 px lesion-patch dataset (24 patients, 48 images) for preprocess, train and predict."""
    from train_fixtures import make_lesion_dataset

    return make_lesion_dataset(world_tmp(world) / "ds", patients=24, size=32, seed=5)


@pytest.fixture(scope="session")
def world() -> Iterator[Path]:
    """One folder under the system temp folder that every user may use, removed at the end."""
    folder = world_tmp()
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def shared_tmp(world: Path) -> Path:
    """A fresh folder another user can use (inside ``world``)."""
    return world_tmp(world)


@dataclass
class BadDataset:
    """A lesion dataset with one zero-byte training PNG and one validation PNG declaring 40000x40000."""

    root: Path
    empty: str
    huge: str


@pytest.fixture(scope="session")
def bad_lesions(lesions: Path, world: Path) -> BadDataset:
    root = world_tmp(world) / "bad"
    shutil.copytree(lesions, root)
    df = pd.read_csv(root / "manifest.csv")
    empty = str(df.loc[df["split"] == "train", "path"].iloc[0])
    huge = str(df.loc[df["split"] == "val", "path"].iloc[0])
    (root / empty).write_bytes(b"")
    (root / huge).write_bytes(huge_png())
    for p in [root, *root.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o666)
    return BadDataset(root, empty, huge)


@dataclass
class TrainedRun:
    """A two-epoch run on ``bad_lesions``, trained in a subprocess under ``umask 002`` (renames counted)."""

    run: Path
    result: Result
    data: BadDataset


@pytest.fixture(scope="session")
def trained(bad_lesions: BadDataset, world: Path) -> TrainedRun:
    work = world_tmp(world)
    run = work / "run"
    # In this process (an interpreter start less), counting the atomic renames as the kill driver does,
    # so this run is also the uninterrupted reference of the train kill-and-resume test.
    r = run_in_process(["train", bad_lesions.root, "--out", run, "--epochs", "2", *TRAIN_ARGS], tmp=work,
                       umask=0o002, count=True)
    assert r.returncode == 0, r.stderr
    return TrainedRun(run, r, bad_lesions)
