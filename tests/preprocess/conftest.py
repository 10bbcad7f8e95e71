"""Fixtures of the preprocessing tests: a six-image organized dataset of generated films (see ``pp_films``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pp_films import Film, make_film, write_dataset

FILMS = [("train", "benign", 0, "left"), ("train", "malignant", 1, "right"), ("val", "benign", 2, "right"),
         ("val", "malignant", 3, "left"), ("test", "benign", 4, "left"), ("test", "malignant", 5, "right")]


@pytest.fixture(scope="session")
def film_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A six-image organized dataset (train/val/test x benign/malignant), shared read-only by tests."""
    root = tmp_path_factory.mktemp("films") / "dataset"
    films = [(split, label, make_film(seed, wall)) for split, label, seed, wall in FILMS]
    return write_dataset(root, films)


@pytest.fixture()
def film() -> Film:
    return make_film(0, "left")
