"""The operating threshold: stored in one place (the run's ``recipe.json``), resolved by one function.

``mammolab evaluate`` writes the Youden threshold it chose on the validation split into the recipe
(:func:`record_threshold`, for single-view and two-view runs alike); ``predict``, ``serve``,
``explain``, heatmaps, the report and the model card read it back through :func:`resolve_threshold`,
so every output calls a case at the same threshold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.infer.runfiles import eval_dir
from mammolab.recipe import RECIPE_NAME, load_recipe, write_recipe

__all__ = ["DEFAULT_THRESHOLD", "record_threshold", "resolve_threshold"]

#: A binary recipe's threshold before any evaluation chose one.
DEFAULT_THRESHOLD = 0.5


def resolve_threshold(path: str | Path, threshold: float | str | None = None) -> float:
    """The threshold to decide at, for a run or exported folder ``path``.

    ``None`` or ``recipe``: the recipe's (the Youden threshold chosen on validation once the run was
    evaluated; 0.5 for a folder without a recipe); a number in [0, 1]; ``youden``: the one the run's
    test evaluation chose on validation (read from its ``eval/test/metrics.json``).
    """
    if threshold is None or str(threshold).strip().lower() == "recipe":
        if not (Path(path) / RECIPE_NAME).is_file():
            return DEFAULT_THRESHOLD
        return float(load_recipe(path).threshold)
    if isinstance(threshold, (int, float)):
        value = float(threshold)
    elif str(threshold).strip().lower() == "youden":
        metrics_path = eval_dir(path, "test") / "metrics.json"
        if not metrics_path.is_file():
            raise MammoLabError(f"--threshold youden: {metrics_path} not found (run 'mammolab evaluate {path}' first)")
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        try:
            value = float(metrics["operating_points"]["youden"]["threshold"])
        except (KeyError, TypeError):
            raise MammoLabError(f"--threshold youden: {metrics_path} has no Youden threshold (4-class run?)") from None
    else:
        try:
            value = float(threshold)
        except ValueError:
            raise MammoLabError(f"--threshold: expected a number in [0, 1], 'youden' or 'recipe', "
                                f"got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise MammoLabError(f"--threshold: expected a number in [0, 1], got {value}")
    return value


def record_threshold(run_dir: str | Path, metrics: dict[str, Any], n_val: int, unit: str = "images") -> bool:
    """Write the Youden threshold an evaluation chose on validation into the run's recipe (the one writer).

    Only a binary evaluation whose threshold was chosen on the validation split counts (a fallback
    0.5 of a one-class split is not a choice). Returns whether the recipe now holds it.
    """
    run_dir = Path(run_dir)
    op = (metrics.get("operating_points") or {}).get("youden") or {}
    if metrics.get("task") != "binary" or op.get("source") != "val" or not (run_dir / RECIPE_NAME).is_file():
        return False
    value = float(op["threshold"])
    if not np.isfinite(value):
        return False
    value = min(1.0, max(0.0, value))
    recipe = load_recipe(run_dir)
    source = f"Youden on the validation split ({n_val} {unit}), chosen by 'mammolab evaluate'"
    if recipe.threshold != value or recipe.threshold_source != source:
        write_recipe(run_dir, recipe.model_copy(update={"threshold": value, "threshold_source": source}))
    return True
