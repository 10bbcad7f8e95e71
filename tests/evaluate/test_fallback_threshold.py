"""A Youden threshold that cannot be chosen (its split has one class) is called a fallback, never 'chosen on val'."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.evaluate import evaluation
from mammolab.evaluate.metrics import evaluate_predictions


def _preds(targets: list[int], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = np.array(targets)
    return pd.DataFrame({"target": y, "patient_id": [f"P{i}" for i in range(len(y))],
                         "prob": np.clip(0.3 + 0.4 * y + rng.normal(0, 0.15, len(y)), 0, 1)})


TEST = _preds([0, 1] * 10, 0)


def test_one_class_val_gives_a_named_fallback() -> None:
    m = evaluate_predictions(TEST, _preds([0] * 6, 1), n_boot=20)
    op = m["operating_points"]["youden"]
    assert op["fallback"] is True and op["threshold"] == 0.5
    assert op["source"] == "fallback 0.5: the val split has one class, so no Youden threshold can be chosen"
    good = evaluate_predictions(TEST, _preds([0, 1, 0, 1, 1, 0], 2), n_boot=20)["operating_points"]["youden"]
    assert good["fallback"] is False and good["source"] == "val" and good["threshold"] != 0.5


def test_without_val_a_one_class_split_is_a_fallback_too() -> None:
    op = evaluate_predictions(_preds([1] * 8, 3), None, split="test", n_boot=20)["operating_points"]["youden"]
    assert op["fallback"] and "the test split has one class" in op["source"]
    op = evaluate_predictions(TEST, None, split="test", n_boot=20)["operating_points"]["youden"]
    assert not op["fallback"] and op["source"] == "test (no validation predictions: optimistic)"


@pytest.mark.parametrize(("val", "says", "never"), [
    ([0] * 6, "at fallback threshold 0.500 (the val split has one class, so no Youden threshold can be chosen)",
     "chosen on val"),
    ([0, 1, 0, 1, 1, 0], "at Youden threshold", "fallback threshold"),
])
def test_evaluate_prints_fallback_wording(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, val: list[int],
                                          says: str, never: str) -> None:
    metrics = evaluate_predictions(TEST, _preds(val, 4), n_boot=20)
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: tmp_path)
    monkeypatch.setattr(evaluation, "load_evaluation", lambda *a, **k: (metrics, None))
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert says in said and never not in said
    titles: list[str] = []

    def capture(*args: Any, subtitle: str = "", **kwargs: Any) -> None:
        titles.append(subtitle)

    monkeypatch.setattr(evaluation.plots, "plot_confusion", capture)
    monkeypatch.setattr(evaluation.plots, "save_figure", lambda *a, **k: None)
    evaluation._confusion_figure(metrics, ["benign", "malignant"], tmp_path / "c.png")
    assert titles[0] == "threshold 0.5"
    assert titles[1].startswith("fallback threshold 0.500 (no Youden") if val == [0] * 6 else \
        titles[1].endswith("(chosen on val)")
