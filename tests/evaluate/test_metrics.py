"""Metrics checked against scikit-learn, pROC's published DeLong results and a coverage simulation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from mammolab.errors import MammoLabError
from mammolab.evaluate.metrics import (
    auc_score,
    binary_metrics,
    bootstrap_auc_ci,
    brier_score,
    cluster_bootstrap,
    delong_test,
    delong_variance,
    evaluate_predictions,
    multiclass_metrics,
    reliability_bins,
    summary_row,
    youden_threshold,
)

# Fixed inputs with ties, as model outputs rounded to 2 decimals have.
RNG = np.random.default_rng(7)
Y = RNG.integers(0, 2, 300)
P = np.round(np.clip(RNG.normal(0.4 + 0.25 * Y, 0.2), 0, 1), 2)


def test_auc_matches_sklearn_with_ties() -> None:
    assert auc_score(Y, P) == pytest.approx(roc_auc_score(Y, P), abs=1e-12)
    assert np.isnan(auc_score(np.ones(5), np.linspace(0, 1, 5)))


@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.71])
def test_threshold_metrics_match_sklearn(threshold: float) -> None:
    m = binary_metrics(Y, P, threshold)
    pred = np.greater_equal(P, threshold).astype(int)
    assert m["accuracy"] == pytest.approx(accuracy_score(Y, pred))
    assert m["precision"] == pytest.approx(precision_score(Y, pred, zero_division=0))
    assert m["recall"] == m["sensitivity"] == pytest.approx(recall_score(Y, pred))
    assert m["specificity"] == pytest.approx(recall_score(1 - Y, 1 - pred))
    assert m["f1"] == pytest.approx(f1_score(Y, pred))
    assert m["confusion"] == confusion_matrix(Y, pred).tolist()


def test_undefined_ratios_follow_sklearn_zero_division() -> None:
    m = binary_metrics([0, 1, 0], [0.1, 0.2, 0.3], threshold=0.9)  # nothing predicted positive
    assert m["precision"] == 0.0 == precision_score([0, 1, 0], [0, 0, 0], zero_division=0)
    assert m["specificity"] == 1.0 and m["sensitivity"] == 0.0


def test_youden_threshold_maximises_j() -> None:
    t = youden_threshold(Y, P)
    fpr, tpr, thr = roc_curve(Y, P, drop_intermediate=False)
    best = np.max((tpr - fpr)[np.isfinite(thr)])
    m = binary_metrics(Y, P, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(best)
    assert t in set(P.tolist())
    # Perfectly separable: any threshold between the classes; ours is the lowest positive score.
    assert youden_threshold([0, 0, 1, 1], [0.1, 0.2, 0.7, 0.9]) == pytest.approx(0.7)
    assert youden_threshold([1, 1], [0.1, 0.2]) == 0.5


def test_calibration_matches_sklearn() -> None:
    assert brier_score(Y, P) == pytest.approx(brier_score_loss(Y, P))
    rel = reliability_bins(Y, P, n_bins=10)
    frac, mean_pred = calibration_curve(Y, P, n_bins=10, strategy="uniform")
    assert np.allclose([b["fraction_positive"] for b in rel["bins"]], frac)
    assert np.allclose([b["mean_predicted"] for b in rel["bins"]], mean_pred)
    assert sum(b["count"] for b in rel["bins"]) == len(Y)
    perfect = reliability_bins([0, 1] * 50, [0.0, 1.0] * 50)
    assert perfect["ece"] == 0.0


def test_weighted_bootstrap_auc_equals_sklearn_sample_weight() -> None:
    # The vectorised resample AUC must equal sklearn's weighted AUC for the same weights.
    from mammolab.evaluate.metrics import _bootstrap_weights, _WeightedAuc

    fn = _WeightedAuc(Y.astype(np.int8), P)
    w = next(_bootstrap_weights(np.arange(len(Y)) // 3, 5, seed=1, chunk=5))
    assert np.allclose(fn(w), [roc_auc_score(Y, P, sample_weight=wi) for wi in w])


def test_bootstrap_is_reproducible_and_brackets_the_estimate() -> None:
    groups = np.arange(len(Y)) // 2
    a = bootstrap_auc_ci(Y, P, groups, n=500, seed=3)
    b = bootstrap_auc_ci(Y, P, groups, n=500, seed=3)
    assert a == b
    assert a["ci_low"] < a["auc"] < a["ci_high"]
    assert a["n_groups"] == 150 and a["n_valid"] == 500
    c = cluster_bootstrap(Y, P, groups, thresholds=[0.5], n_boot=300)
    lo, hi = c["at"][0.5]["sensitivity"]
    assert lo <= binary_metrics(Y, P, 0.5)["sensitivity"] <= hi


def test_bootstrap_rejects_bad_input() -> None:
    with pytest.raises(MammoLabError, match="equal length"):
        bootstrap_auc_ci([0, 1], [0.2])
    with pytest.raises(MammoLabError, match="0/1"):
        auc_score([0, 2], [0.1, 0.2])
    with pytest.raises(MammoLabError, match="NaN"):
        auc_score([0, 1], [0.1, np.nan])


def test_patient_bootstrap_covers_true_auc_at_nominal_rate() -> None:
    """Simulation: 2 correlated images per patient; the 95% CI must cover the true AUC ~95% of the time."""
    rng = np.random.default_rng(2024)
    d, s_patient, s_image = 1.0, 1.0, 0.7
    true_auc = norm.cdf(d / np.sqrt(2 * (s_patient**2 + s_image**2)))
    n_sim, n_patients, hits = 250, 80, 0
    for i in range(n_sim):
        label = rng.integers(0, 2, n_patients)
        y = np.repeat(label, 2)
        score = d * y + np.repeat(rng.normal(0, s_patient, n_patients), 2) + rng.normal(0, s_image, 2 * n_patients)
        ci = bootstrap_auc_ci(y, score, np.repeat(np.arange(n_patients), 2), n=2000, seed=i)
        hits += ci["ci_low"] <= true_auc <= ci["ci_high"]
    coverage = hits / n_sim
    assert 0.91 <= coverage <= 0.985, coverage


# Ordinal scores rank-equivalent to pROC's aSAH data (41 poor, 72 good outcomes), rebuilt from the
# DeLong placement values pROC publishes in its test suite (tests/testthat/helper-deLongPlacementsCpp-expected.R).
# AUC and DeLong depend on ranks only, so these reproduce roc.test exactly.
ASAH = {
    "ndka": ([42, 26, 32, 40, 4, 10, 20, 48, 52, 48, 48, 16, 36, 44, 6, 8, 34, 2, 56, 44, 18, 20, 24, 34, 46, 29,
              44, 8, 54, 39, 4, 13, 44, 4, 12, 48, 22, 36, 50, 20, 40],
             [1, 9, 7, 19, 5, 39, 5, 43, 33, 43, 41, 51, 11, 5, 25, 5, 5, 55, 27, 15, 15, 43, 3, 7, 5, 13, 31, 7, 37,
              49, 7, 5, 25, 11, 7, 31, 47, 45, 17, 23, 53, 5, 41, 15, 19, 19, 37, 3, 41, 25, 11, 19, 43, 19, 23, 7,
              15, 19, 47, 9, 25, 29, 49, 21, 25, 11, 47, 17, 35, 45, 5, 33]),
    "wfns": ([5, 3, 7, 9, 9, 9, 9, 3, 9, 3, 1, 3, 9, 7, 7, 3, 9, 9, 9, 3, 9, 3, 9, 3, 7, 9, 7, 7, 1, 7, 7, 3, 3, 9, 9,
              3, 3, 9, 9, 9, 9],
             [1, 1, 1, 1, 9, 1, 3, 3, 1, 3, 3, 1, 1, 1, 3, 1, 3, 1, 1, 5, 7, 1, 7, 1, 9, 9, 1, 1, 3, 7, 1, 1, 3, 3, 1,
              3, 1, 3, 3, 1, 1, 1, 1, 3, 1, 3, 1, 1, 5, 3, 7, 3, 1, 7, 1, 1, 9, 7, 3, 3, 1, 1, 1, 5, 1, 3, 3, 7, 7, 1,
              1, 1]),
    "s100b": ([13, 9, 19, 12, 36, 42, 40, 3, 29, 7, 3, 34, 32, 39, 42, 24, 42, 42, 42, 3, 42, 26, 0, 7, 22, 42, 24,
               42, 5, 24, 13, 9, 11, 22, 42, 15, 42, 27, 42, 42, 36],
              [13, 15, 9, 1, 37, 21, 9, 9, 1, 5, 1, 7, 11, 3, 21, 3, 11, 13, 21, 1, 19, 15, 31, 7, 41, 37, 19, 3, 35,
               37, 11, 5, 7, 5, 1, 13, 9, 15, 17, 1, 1, 7, 1, 7, 5, 19, 7, 5, 29, 11, 25, 3, 9, 27, 3, 1, 23, 33, 9,
               17, 5, 15, 9, 3, 1, 21, 17, 37, 21, 17, 41, 39]),
}
ASAH_Y = np.r_[np.ones(41), np.zeros(72)].astype(int)


def _asah(name: str) -> np.ndarray:
    cases, controls = ASAH[name]
    return np.asarray(cases + controls, dtype=float)


@pytest.mark.parametrize(("a", "b", "z", "p", "ci"), [
    # pROC: roc.test(r.wfns, r.s100b), roc.test(r.wfns, r.ndka), roc.test(r.ndka, r.s100b)
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, (0.0104061769564846, 0.174214419249478)),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, (0.0634011709339876, 0.3600405634833566)),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, (-0.2876917446341914, 0.0488706064228094)),
])
def test_delong_reproduces_published_proc_results(a: str, b: str, z: float, p: float, ci: tuple) -> None:
    r = delong_test(ASAH_Y, _asah(a), _asah(b))
    assert r["z"] == pytest.approx(z, abs=1e-9)
    assert r["p"] == pytest.approx(p, abs=1e-10)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(ci, abs=1e-9)
    assert r["auc1"] == pytest.approx(roc_auc_score(ASAH_Y, _asah(a)))
    assert {round(r["auc1"], 4), round(r["auc2"], 4)} <= {0.8237, 0.7314, 0.6120}


def test_delong_variance_equals_bruteforce_structural_components() -> None:
    # DeLong (1988) by definition: psi(x, y) over all positive/negative pairs, O(m*n).
    y, p = Y[:80], P[:80]
    pos, neg = p[y == 1], p[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    expected = v10.var(ddof=1) / len(pos) + v01.var(ddof=1) / len(neg)
    auc, var = delong_variance(y, p)
    assert auc == pytest.approx(psi.mean())
    assert var == pytest.approx(expected, rel=1e-12)


def test_delong_identical_predictions() -> None:
    r = delong_test(Y, P, P)
    assert r["z"] == 0.0 and r["p"] == 1.0 and r["diff"] == 0.0
    with pytest.raises(MammoLabError, match="both classes"):
        delong_test([1, 1], [0.1, 0.2], [0.3, 0.4])


def test_multiclass_auc_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    classes = ["a", "b", "c", "d"]
    y = rng.integers(0, 4, 200)
    logits = rng.normal(size=(200, 4)) + 1.5 * np.eye(4)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    m = multiclass_metrics(y, probs, classes)
    assert m["auc_macro"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    onehot = np.eye(4)[y]
    assert m["auc_micro"] == pytest.approx(roc_auc_score(onehot, probs, average="micro"))
    for k, c in enumerate(classes):
        assert m["auc_per_class"][c] == pytest.approx(roc_auc_score(onehot[:, k], probs[:, k]))
    assert m["confusion"] == confusion_matrix(y, probs.argmax(1)).tolist()
    assert m["f1_macro"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))


def _pred_df(n: int = 120, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    target = rng.integers(0, 2, n)
    return pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)], "patient_id": [f"P{i // 2}" for i in range(n)],
        "target": target, "label": np.where(target == 1, "malignant", "benign"),
        "prob": np.clip(rng.normal(0.35 + 0.3 * target, 0.2), 0, 1),
        "view": np.where(np.arange(n) % 2, "CC", "MLO"), "density": (np.arange(n) % 4 + 1).astype(str),
        "abnormality": "",
    })


def test_evaluate_predictions_binary_is_strict_json_with_val_threshold() -> None:
    test, val = _pred_df(), _pred_df(60, seed=5)
    m = evaluate_predictions(test, val, classes=["benign", "malignant"], split="test", n_boot=200)
    json.dumps(m, allow_nan=False)  # strict JSON: no NaN tokens
    assert m["n"] == 120 and m["n_patients"] == 60
    assert m["auc"]["value"] == pytest.approx(roc_auc_score(test["target"], test["prob"]))
    you = m["operating_points"]["youden"]
    assert you["source"] == "val"
    assert you["threshold"] == pytest.approx(youden_threshold(val["target"], val["prob"]))
    assert set(m["subgroups"]) == {"view", "density"}  # abnormality is empty everywhere
    assert m["subgroups"]["view"]["CC"]["n"] == 60
    assert m["calibration"]["brier"] == pytest.approx(brier_score_loss(test["target"], test["prob"]))
    assert m["pr"]["average_precision"] == pytest.approx(average_precision_score(test["target"], test["prob"]))
    row = summary_row(m)
    assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
    no_val = evaluate_predictions(test, None, n_boot=50)
    assert "optimistic" in no_val["operating_points"]["youden"]["source"]


def test_evaluate_predictions_multiclass_and_errors() -> None:
    classes = ["benign_calc", "benign_mass", "malignant_calc", "malignant_mass"]
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 80)
    probs = rng.dirichlet(np.ones(4), 80) + 0.5 * np.eye(4)[y]
    probs /= probs.sum(1, keepdims=True)
    df = pd.DataFrame({"target": y, "patient_id": [f"P{i // 2}" for i in range(80)]})
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    m = evaluate_predictions(df, classes=classes, n_boot=100)
    assert m["task"] == "multiclass"
    assert m["auc"]["value"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"))
    assert m["auc"]["ci_low"] <= m["auc"]["value"] <= m["auc"]["ci_high"]
    with pytest.raises(MammoLabError, match="prob_malignant_mass"):
        evaluate_predictions(df.drop(columns="prob_malignant_mass"), classes=classes)
