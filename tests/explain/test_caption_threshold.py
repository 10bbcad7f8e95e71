"""Overlay captions call an image malignant at the run's operating point, as the evaluation and report do."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from mammolab.explain.runner import operating_threshold


def test_operating_threshold_is_the_recipes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert operating_threshold(tmp_path) == 0.5  # no recipe (not a run, or an old one): the 0.5 default
    import mammolab.evaluate.predict as predict

    monkeypatch.setattr(predict, "load_recipe", lambda folder: SimpleNamespace(threshold=0.27))
    assert operating_threshold(tmp_path) == 0.27
    # once evaluated, the Youden threshold chosen on validation (what the report's gallery uses)
    folder = tmp_path / "eval" / "test"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps({"operating_points": {"youden": {"threshold": 0.41}}}))
    assert operating_threshold(tmp_path) == 0.41
