"""Overlay captions call an image malignant at the run's operating point: the recipe's threshold, the
one :func:`mammolab.infer.threshold.resolve_threshold` reads and ``evaluate`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mammolab.errors import MammoLabError
from mammolab.infer.threshold import record_threshold, resolve_threshold
from mammolab.recipe import Recipe, SourceSpec, TransformSpec, load_recipe, write_recipe


def _recipe() -> Recipe:
    return Recipe(mammolab_version="0", name="r", model="m", classes=["benign", "malignant"], num_outputs=1,
                  source=SourceSpec(stage="organize", kind="image"), preprocess=[],
                  transform=TransformSpec(image_size=32, resize="stretch", mean=0.5, std=0.25))


def test_operating_threshold_is_the_recipes(tmp_path: Path) -> None:
    assert resolve_threshold(tmp_path) == 0.5  # no recipe (not a run, or an old one): the 0.5 default
    write_recipe(tmp_path, _recipe().model_copy(update={"threshold": 0.27}))
    assert resolve_threshold(tmp_path) == 0.27 and resolve_threshold(tmp_path, "recipe") == 0.27
    # once evaluated, the Youden threshold chosen on validation is written into the recipe: one home
    metrics = {"task": "binary", "operating_points": {"youden": {"threshold": 0.41, "source": "val"}}}
    assert record_threshold(tmp_path, metrics, 12) is True
    assert resolve_threshold(tmp_path) == 0.41 and "12 images" in load_recipe(tmp_path).threshold_source
    folder = tmp_path / "eval" / "test"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(metrics))
    assert resolve_threshold(tmp_path, "youden") == 0.41 and resolve_threshold(tmp_path, 0.3) == 0.3
    # a fallback (one-class val split) is not a choice: the recipe keeps its threshold
    fallback = {"task": "binary", "operating_points": {"youden": {"threshold": 0.5, "source": "fallback 0.5"}}}
    assert record_threshold(tmp_path, fallback, 12) is False and resolve_threshold(tmp_path) == 0.41
    with pytest.raises(MammoLabError, match=r"--threshold: expected a number in \[0, 1\]"):
        resolve_threshold(tmp_path, "often")
    with pytest.raises(MammoLabError, match="got 1.5"):
        resolve_threshold(tmp_path, 1.5)
