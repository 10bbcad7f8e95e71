"""Fixtures of the evaluate tests: three fake runs of different quality."""

from __future__ import annotations

from pathlib import Path

import pytest
from evaluate_fixtures import make_fake_run


@pytest.fixture(scope="module")
def fake_runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    return [
        make_fake_run(root, "weak", model="mammo_cnn", separation=0.4, seed=1),
        make_fake_run(root, "strong", model="resnet18", separation=1.6, seed=2, tune=True),
        make_fake_run(root, "medium", model="efficientnet_b0", separation=0.9, seed=3),
    ]
