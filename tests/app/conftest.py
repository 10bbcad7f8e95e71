"""Fixtures for the app tests: a tiny experiment (YAML mapping) and one finished run of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers_app import tiny_experiment


@pytest.fixture(scope="session")
def finished_experiment(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Any]:
    """One finished tiny experiment (shared: the serve tests use its run)."""
    from mammolab.app.run import run_experiment

    root = tmp_path_factory.mktemp("tiny-exp")
    cfg = tiny_experiment(root / "out")
    return cfg, run_experiment(cfg)


@pytest.fixture(scope="session")
def trained_run(finished_experiment: tuple[dict[str, Any], Any]) -> Path:
    cfg, _ = finished_experiment
    return Path(cfg["out"]) / "runs" / "cnn"
