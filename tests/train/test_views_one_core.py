"""One inference core for two-view runs (#24): the recipe carries the threshold evaluation chose on
validation, and predict, explain and the Python API give each breast the evaluation's probability and
class at it."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_views import two_view_ds  # noqa: F401  (the module-scoped dataset fixture)
from test_views_predict import two_view_run  # noqa: F401  (a tiny attention-fusion run, evaluated on test)

import mammolab as ml
from mammolab.evaluate.breast import predict_breast_files
from mammolab.evaluate.evaluation import load_evaluation
from mammolab.recipe import load_recipe


def test_two_view_threshold_and_probabilities_agree(two_view_run: tuple[Path, Path], tmp_path: Path) -> None:  # noqa: F811
    run, ds = two_view_run
    metrics, preds = load_evaluation(run, "test")
    threshold = load_recipe(run).threshold
    assert threshold == pytest.approx(metrics["operating_points"]["youden"]["threshold"])
    both = preds[preds["views"] == "cc+mlo"]
    files = [ds / p for _, r in both.iterrows() for p in (r["cc_path"], r["mlo_path"])]
    results = predict_breast_files(run, files, "cc+mlo")
    predictor = ml.load_run(run)
    assert predictor.threshold == threshold
    summary = ml.explain(run, split="test", method="occlusion", out=tmp_path / "ex", target="predicted", grid=2)
    explained = summary.records.drop_duplicates("breast_id").set_index("breast_id")
    for res, (_, row) in zip(results, both.iterrows(), strict=True):
        cls = "malignant" if row["prob"] >= threshold else "benign"
        assert res["prob"] == pytest.approx(row["prob"], abs=1e-5) and res["class"] == cls
        assert res["threshold"] == threshold
        assert explained.loc[row["image_id"], "prob_malignant"] == pytest.approx(row["prob"], abs=1e-5)
        assert explained.loc[row["image_id"], "predicted"] == explained.loc[row["image_id"], "explained"] == cls
