"""Evaluation metrics: pure numpy / scikit-learn functions on labels and predicted probabilities.

Everything here works on plain arrays so it can be checked against scikit-learn on fixed inputs
and reused by notebooks. Two things need more than a library call:

* **Patient-level bootstrap.** Every lesion is imaged in CC and MLO, and patients contribute
  several images, so images are not independent. Confidence intervals resample *patients* (a
  cluster bootstrap): each resample draws patients with replacement and weights each image by
  how often its patient was drawn. The weighted Mann-Whitney AUC is computed for all resamples
  at once from one sort of the scores, so 2000 resamples of a few thousand images take well under
  a second. Threshold metrics (accuracy, sensitivity, ...) get their intervals from the same
  resamples.
* **DeLong's test** for two correlated AUCs (same images, two models), using the fast
  midrank algorithm of Sun & Xu (2014); it reproduces pROC's published ``roc.test`` results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, rankdata
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from mammolab.errors import MammoLabError

__all__ = [
    "THRESHOLD_METRICS",
    "auc_score",
    "binary_metrics",
    "bootstrap_auc_ci",
    "brier_score",
    "cluster_bootstrap",
    "delong_test",
    "delong_variance",
    "evaluate_predictions",
    "fixed_rate_operating_points",
    "json_safe",
    "multiclass_metrics",
    "pr_curve_points",
    "reliability_bins",
    "roc_curve_points",
    "subgroup_metrics",
    "summary_row",
    "youden_threshold",
]

#: Metrics reported at each operating point, in display order.
THRESHOLD_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "f1")
#: Manifest columns that define subgroups, when present and not empty.
SUBGROUP_COLUMNS = ("view", "density", "abnormality")


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------
def _binary_inputs(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = np.asarray(y)
    p_arr = np.asarray(p, dtype=float)
    if y_arr.ndim != 1 or p_arr.ndim != 1 or len(y_arr) != len(p_arr):
        raise MammoLabError(f"labels and probabilities must be 1-D and of equal length, "
                            f"got shapes {y_arr.shape} and {p_arr.shape}")
    if len(y_arr) == 0:
        raise MammoLabError("no predictions to evaluate (empty split?)")
    if not np.isfinite(p_arr).all():
        raise MammoLabError("predicted probabilities contain NaN or infinity")
    values = set(np.unique(y_arr).tolist())
    if not values <= {0, 1}:
        raise MammoLabError(f"binary labels must be 0/1, got values {sorted(values)[:5]}")
    return y_arr.astype(np.int8), p_arr


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < len(y)


# --------------------------------------------------------------------------------------------
# point metrics
# --------------------------------------------------------------------------------------------
def auc_score(y: Any, p: Any) -> float:
    """ROC AUC (Mann-Whitney, ties count one half); NaN when only one class is present."""
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        return float("nan")
    ranks = rankdata(p_arr)
    n_pos = int(y_arr.sum())
    n_neg = len(y_arr) - n_pos
    return float((ranks[y_arr == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _ratio(num: float, den: float) -> float:
    # scikit-learn's zero_division=0 convention: an undefined ratio is reported as 0.
    return float(num / den) if den > 0 else 0.0


def binary_metrics(y: Any, p: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, recall (= sensitivity), specificity, F1 and the confusion matrix.

    An image is called positive when ``p >= threshold``. The confusion matrix is
    ``[[TN, FP], [FN, TP]]`` (rows = truth, columns = prediction), as scikit-learn orders it.
    """
    y_arr, p_arr = _binary_inputs(y, p)
    pred = p_arr >= threshold
    pos = y_arr == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    return {
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y_arr)),
        "precision": precision,
        "recall": recall,
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "confusion": [[tn, fp], [fn, tp]],
    }


def youden_threshold(y: Any, p: Any) -> float:
    """The threshold maximising Youden's J (sensitivity + specificity - 1).

    Chosen among the observed scores (``p >= t`` is positive); ties go to the highest threshold.
    Falls back to 0.5 when only one class is present, where J is undefined.
    """
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        return 0.5
    fpr, tpr, thr = roc_curve(y_arr, p_arr, drop_intermediate=False)
    finite = np.isfinite(thr)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thr[int(np.argmax(j))])


def roc_curve_points(y: Any, p: Any) -> dict[str, list[float]]:
    """False- and true-positive rates (and thresholds) of the ROC curve, for plots and JSON."""
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thr = roc_curve(y_arr, p_arr)
    thr = np.where(np.isfinite(thr), thr, 1.0)
    return {"fpr": _round_list(fpr), "tpr": _round_list(tpr), "thresholds": _round_list(thr)}


def pr_curve_points(y: Any, p: Any) -> dict[str, Any]:
    """Precision-recall curve points plus average precision (scikit-learn's step-wise area)."""
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        return {"precision": [], "recall": [], "average_precision": float("nan"), "prevalence": float(y_arr.mean())}
    prec, rec, _ = precision_recall_curve(y_arr, p_arr)
    return {"precision": _round_list(prec), "recall": _round_list(rec),
            "average_precision": float(average_precision_score(y_arr, p_arr)),
            "prevalence": float(y_arr.mean())}


def brier_score(y: Any, p: Any) -> float:
    """Mean squared difference between probability and outcome (lower is better; 0.25 = coin)."""
    y_arr, p_arr = _binary_inputs(y, p)
    return float(np.mean((p_arr - y_arr) ** 2))


def reliability_bins(y: Any, p: Any, n_bins: int = 10) -> dict[str, Any]:
    """Reliability-diagram data on ``n_bins`` equal-width probability bins, plus the ECE.

    Each non-empty bin reports its count, mean predicted probability and observed positive rate
    (the same values as ``sklearn.calibration.calibration_curve(strategy='uniform')``). The
    expected calibration error is the count-weighted mean gap between the two.
    """
    y_arr, p_arr = _binary_inputs(y, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Same binning as scikit-learn's calibration_curve: a value on an edge belongs to the lower bin.
    idx = np.clip(np.searchsorted(edges[1:-1], p_arr, side="left"), 0, n_bins - 1)
    bins = []
    ece = 0.0
    for b in range(n_bins):
        sel = idx == b
        count = int(sel.sum())
        if count == 0:
            continue
        mean_p = float(p_arr[sel].mean())
        frac = float(y_arr[sel].mean())
        ece += count / len(y_arr) * abs(mean_p - frac)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count,
                     "mean_predicted": mean_p, "fraction_positive": frac})
    return {"n_bins": n_bins, "bins": bins, "ece": float(ece)}


def _round_list(arr: np.ndarray, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in arr]


# --------------------------------------------------------------------------------------------
# patient-level (cluster) bootstrap
# --------------------------------------------------------------------------------------------
def _group_index(groups: Any, n: int) -> np.ndarray:
    if groups is None:
        return np.arange(n)
    g = pd.Series(np.asarray(groups)).astype(str)
    if len(g) != n:
        raise MammoLabError(f"patient ids ({len(g)}) and predictions ({n}) differ in length")
    return pd.factorize(g)[0]


def _bootstrap_weights(group_idx: np.ndarray, n_boot: int, seed: int, chunk: int) -> Iterator[np.ndarray]:
    """Yield (b, N) image-weight matrices: how many times each image's patient was drawn."""
    rng = np.random.default_rng(seed)
    n_groups = int(group_idx.max()) + 1
    done = 0
    while done < n_boot:
        b = min(chunk, n_boot - done)
        counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=b)
        yield counts[:, group_idx].astype(np.float64)
        done += b


class _WeightedAuc:
    """Weighted Mann-Whitney AUC of fixed scores for many weight vectors at once.

    Sorting happens once; each call then costs O(B x N): weights of positives and negatives are
    summed per tie group, negatives are accumulated below each group, and ties count one half.
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.order = np.argsort(p, kind="mergesort")
        sorted_p = p[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
        self.pos = (y[self.order] == 1).astype(np.float64)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        ws = w[:, self.order]
        wp = np.add.reduceat(ws * self.pos, self.starts, axis=1)
        wn = np.add.reduceat(ws * (1.0 - self.pos), self.starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn
        num = np.sum(wp * (below + 0.5 * wn), axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _percentile_ci(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def cluster_bootstrap(y: Any, p: Any, groups: Any = None, *, thresholds: Sequence[float] = (),
                      n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                      chunk: int = 256) -> dict[str, Any]:
    """Percentile confidence intervals for AUC, Brier score and threshold metrics by patient.

    Patients (``groups``; images when ``None``) are drawn with replacement ``n_boot`` times.
    Resamples that contain only one class give no AUC and are left out of the AUC interval
    (``n_valid`` says how many were used). Returns ``{"auc": (lo, hi), "brier": (lo, hi),
    "at": {threshold: {metric: (lo, hi)}}, "n_boot", "n_valid", "alpha", "n_groups"}``.
    """
    y_arr, p_arr = _binary_inputs(y, p)
    if n_boot < 1:
        raise MammoLabError(f"n_boot: expected at least 1 resample, got {n_boot}")
    if not 0 < alpha < 1:
        raise MammoLabError(f"alpha: expected a number between 0 and 1, got {alpha}")
    gidx = _group_index(groups, len(y_arr))
    auc_fn = _WeightedAuc(y_arr, p_arr)
    pos = (y_arr == 1).astype(np.float64)
    neg = 1.0 - pos
    sq_err = (p_arr - y_arr) ** 2
    preds = [(p_arr >= t).astype(np.float64) for t in thresholds]
    aucs: list[np.ndarray] = []
    briers: list[np.ndarray] = []
    thr_vals: list[dict[str, list[np.ndarray]]] = [{m: [] for m in THRESHOLD_METRICS} for _ in thresholds]
    for w in _bootstrap_weights(gidx, n_boot, seed, chunk):
        total = w.sum(axis=1)
        aucs.append(auc_fn(w))
        briers.append(w @ sq_err / total)
        for k, pred in enumerate(preds):
            tp = w @ (pred * pos)
            fp = w @ (pred * neg)
            fn = w @ ((1 - pred) * pos)
            tn = w @ ((1 - pred) * neg)
            with np.errstate(invalid="ignore", divide="ignore"):
                vals = {
                    "accuracy": (tp + tn) / total,
                    "sensitivity": np.where(tp + fn > 0, tp / (tp + fn), np.nan),
                    "specificity": np.where(tn + fp > 0, tn / (tn + fp), np.nan),
                    "precision": np.where(tp + fp > 0, tp / (tp + fp), 0.0),
                    "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0),
                }
            for m in THRESHOLD_METRICS:
                thr_vals[k][m].append(vals[m])
    auc_all = np.concatenate(aucs)
    return {
        "auc": _percentile_ci(auc_all, alpha),
        "brier": _percentile_ci(np.concatenate(briers), alpha),
        "at": {float(t): {m: _percentile_ci(np.concatenate(thr_vals[k][m]), alpha) for m in THRESHOLD_METRICS}
               for k, t in enumerate(thresholds)},
        "n_boot": int(n_boot),
        "n_valid": int(np.isfinite(auc_all).sum()),
        "alpha": float(alpha),
        "n_groups": int(gidx.max()) + 1,
    }


def bootstrap_auc_ci(y: Any, p: Any, groups: Any = None, n: int = 2000, alpha: float = 0.05,
                     seed: int = 0) -> dict[str, Any]:
    """AUC with a percentile bootstrap CI that resamples patients (``groups``) rather than images."""
    res = cluster_bootstrap(y, p, groups, n_boot=n, alpha=alpha, seed=seed)
    lo, hi = res["auc"]
    return {"auc": auc_score(y, p), "ci_low": lo, "ci_high": hi, "n_boot": res["n_boot"],
            "n_valid": res["n_valid"], "alpha": alpha, "n_groups": res["n_groups"]}


class _WeightedRoc:
    """Weighted ROC points of fixed scores for many weight vectors at once (same sort as ``_WeightedAuc``).

    Column ``g`` of the returned matrices is the threshold "score >= the g-th distinct score from the
    top"; column 0 is the empty threshold (nothing called positive), so every row has a point at (0, 0).
    """

    def __init__(self, y: np.ndarray, p: np.ndarray) -> None:
        self.order = np.argsort(-p, kind="mergesort")
        sorted_p = p[self.order]
        self.starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
        self.thresholds = np.r_[np.inf, sorted_p[self.starts]]
        self.pos = (y[self.order] == 1).astype(np.float64)

    def __call__(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ws = w[:, self.order]
        tp = np.cumsum(np.add.reduceat(ws * self.pos, self.starts, axis=1), axis=1)
        fp = np.cumsum(np.add.reduceat(ws * (1.0 - self.pos), self.starts, axis=1), axis=1)
        zero = np.zeros((w.shape[0], 1))
        tp, fp = np.hstack([zero, tp]), np.hstack([zero, fp])
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = tp / tp[:, -1:]
            fpr = fp / fp[:, -1:]
        return tpr, fpr


def _rate_at(tpr: np.ndarray, fpr: np.ndarray, kind: str, target: float) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the best sensitivity with specificity >= target (or the reverse) and the column it is at.

    ``kind`` is ``sensitivity`` (read at a specificity) or ``specificity`` (read at a sensitivity).
    Rows whose resample lacks a class give NaN.
    """
    eps = 1e-12
    if kind == "sensitivity":
        ok = (1.0 - fpr) >= target - eps
        vals = np.where(ok, tpr, -np.inf)
    else:
        ok = tpr >= target - eps
        vals = np.where(ok, 1.0 - fpr, -np.inf)
    # Highest value; among equal values the strictest threshold (lowest column), as a reader would choose.
    col = np.argmax(vals, axis=1)
    best = vals[np.arange(len(vals)), col]
    valid = np.isfinite(tpr[:, -1]) & np.isfinite(fpr[:, -1]) & np.isfinite(best)
    return np.where(valid, best, np.nan), col


def fixed_rate_operating_points(y: Any, p: Any, groups: Any = None, *,
                                specificities: Sequence[float] = (0.90, 0.95),
                                sensitivities: Sequence[float] = (0.90, 0.95), n_boot: int = 2000,
                                alpha: float = 0.05, seed: int = 0, chunk: int = 256) -> list[dict[str, Any]]:
    """Sensitivity at fixed specificities and specificity at fixed sensitivities, with patient-bootstrap CIs.

    A radiologist reads a classifier at a working point, not by its AUC: "sensitivity at 90%
    specificity" is the highest sensitivity among the thresholds (``p >= t`` positive) whose
    specificity is at least 90% on these images; "specificity at 90% sensitivity" the reverse. The
    interval re-reads the same quantity on each patient resample of :func:`cluster_bootstrap`'s
    kind (same seed, same draws), so it includes the uncertainty of where the threshold falls.
    Each entry: ``{"metric", "at", "target", "value", "threshold", "other", "ci_low", "ci_high"}``
    where ``other`` is the rate actually reached on the fixed side.
    """
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        raise MammoLabError("operating points need both classes among the labels")
    for t in (*specificities, *sensitivities):
        if not 0 < t < 1:
            raise MammoLabError(f"target rate: expected a number between 0 and 1, got {t}")
    roc = _WeightedRoc(y_arr, p_arr)
    specs = [("sensitivity", "specificity", float(t)) for t in specificities]
    specs += [("specificity", "sensitivity", float(t)) for t in sensitivities]
    tpr, fpr = roc(np.ones((1, len(y_arr))))
    out: list[dict[str, Any]] = []
    for kind, at, target in specs:
        val, col = _rate_at(tpr, fpr, kind, target)
        c = int(col[0])
        other = float(1.0 - fpr[0, c]) if kind == "sensitivity" else float(tpr[0, c])
        thr = float(roc.thresholds[c])
        out.append({"metric": kind, "at": at, "target": target, "value": float(val[0]),
                    "threshold": thr if math.isfinite(thr) else None, "other": other})
    samples: list[list[np.ndarray]] = [[] for _ in specs]
    for w in _bootstrap_weights(_group_index(groups, len(y_arr)), n_boot, seed, chunk):
        btpr, bfpr = roc(w)
        for k, (kind, _, target) in enumerate(specs):
            samples[k].append(_rate_at(btpr, bfpr, kind, target)[0])
    for entry, vals in zip(out, samples, strict=True):
        entry["ci_low"], entry["ci_high"] = _percentile_ci(np.concatenate(vals), alpha)
        entry["n_boot"] = int(n_boot)
    return out


# --------------------------------------------------------------------------------------------
# DeLong
# --------------------------------------------------------------------------------------------
def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs and structural components V10 (per positive), V01 (per negative) for k predictors.

    ``scores`` is (k, N). Sun & Xu's algorithm: midranks within positives, within negatives and
    overall give every placement value without the O(m*n) pairwise comparison.
    """
    pos = scores[:, y == 1]
    neg = scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tx = rankdata(pos, axis=1)
    ty = rankdata(neg, axis=1)
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    aucs = (tz[:, :m].sum(axis=1) / m - (m + 1) / 2) / n
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return aucs, v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10)) if m > 1 else np.zeros((v10.shape[0],) * 2)
    s01 = np.atleast_2d(np.cov(v01)) if n > 1 else np.zeros((v01.shape[0],) * 2)
    return s10 / m + s01 / n


def delong_variance(y: Any, p: Any) -> tuple[float, float]:
    """AUC and its DeLong variance estimate (DeLong, DeLong & Clarke-Pearson 1988)."""
    y_arr, p_arr = _binary_inputs(y, p)
    if not _both_classes(y_arr):
        return float("nan"), float("nan")
    aucs, v10, v01 = _delong_components(y_arr, p_arr[None, :])
    return float(aucs[0]), float(_delong_cov(v10, v01)[0, 0])


def delong_test(y: Any, p1: Any, p2: Any, alpha: float = 0.05) -> dict[str, float]:
    """DeLong's test of ``AUC(p1) == AUC(p2)`` for two models scored on the same images.

    Returns both AUCs, their difference (``auc1 - auc2``) with a ``1 - alpha`` confidence
    interval, the z statistic and the two-sided p-value. Identical predictions give z = 0, p = 1.
    """
    y_arr, p1_arr = _binary_inputs(y, p1)
    _, p2_arr = _binary_inputs(y, p2)
    if not _both_classes(y_arr):
        raise MammoLabError("DeLong's test needs both classes among the labels")
    aucs, v10, v01 = _delong_components(y_arr, np.vstack([p1_arr, p2_arr]))
    cov = _delong_cov(v10, v01)
    diff = float(aucs[0] - aucs[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:
        z, pval, half = 0.0, 1.0, 0.0
    else:
        sd = math.sqrt(var)
        z = diff / sd
        pval = float(2 * norm.sf(abs(z)))
        half = float(norm.ppf(1 - alpha / 2) * sd)
    return {"auc1": float(aucs[0]), "auc2": float(aucs[1]), "diff": diff, "var": max(var, 0.0),
            "z": float(z), "p": pval, "ci_low": diff - half, "ci_high": diff + half}


# --------------------------------------------------------------------------------------------
# multi-class
# --------------------------------------------------------------------------------------------
def multiclass_metrics(y: Any, probs: Any, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class one-vs-rest AUC, micro and macro AUC, accuracy, confusion and per-class F1.

    ``y`` holds class indices, ``probs`` is (N, C). Macro AUC is the mean of the per-class AUCs
    (classes absent from ``y`` are left out); micro AUC pools every (image, class) decision.
    """
    y_arr = np.asarray(y).astype(int)
    pr = np.asarray(probs, dtype=float)
    c = len(classes)
    if pr.ndim != 2 or pr.shape != (len(y_arr), c):
        raise MammoLabError(f"expected probabilities of shape ({len(y_arr)}, {c}), got {pr.shape}")
    if len(y_arr) == 0:
        raise MammoLabError("no predictions to evaluate (empty split?)")
    if y_arr.min() < 0 or y_arr.max() >= c:
        raise MammoLabError(f"class indices must lie in 0..{c - 1}")
    onehot = np.eye(c, dtype=int)[y_arr]
    per_class = {}
    for k, name in enumerate(classes):
        per_class[name] = auc_score(onehot[:, k], pr[:, k]) if 0 < onehot[:, k].sum() < len(y_arr) else float("nan")
    finite = [v for v in per_class.values() if np.isfinite(v)]
    macro = float(np.mean(finite)) if finite else float("nan")
    micro = float(roc_auc_score(onehot.ravel(), pr.ravel())) if 0 < onehot.sum() < onehot.size else float("nan")
    pred = pr.argmax(axis=1)
    cm = np.zeros((c, c), dtype=int)
    np.add.at(cm, (y_arr, pred), 1)
    report = {}
    for k, name in enumerate(classes):
        tp = int(cm[k, k])
        fp = int(cm[:, k].sum() - tp)
        fn = int(cm[k, :].sum() - tp)
        tn = int(cm.sum() - tp - fp - fn)
        report[name] = {"precision": _ratio(tp, tp + fp), "recall": _ratio(tp, tp + fn),
                        "specificity": _ratio(tn, tn + fp), "f1": _ratio(2 * tp, 2 * tp + fp + fn),
                        "support": int(cm[k, :].sum())}
    return {
        "auc_per_class": per_class,
        "auc_macro": macro,
        "auc_micro": micro,
        "accuracy": float(np.mean(pred == y_arr)),
        "f1_macro": float(np.mean([r["f1"] for r in report.values()])),
        "per_class": report,
        "confusion": cm.tolist(),
    }


def _macro_auc_bootstrap(y: np.ndarray, probs: np.ndarray, groups: Any, n_boot: int, alpha: float,
                         seed: int, chunk: int = 256) -> dict[str, Any]:
    """Patient-bootstrap CI of the macro one-vs-rest AUC (same resampling as the binary case)."""
    c = probs.shape[1]
    present = [k for k in range(c) if 0 < np.sum(y == k) < len(y)]
    fns = [_WeightedAuc((y == k).astype(np.int8), probs[:, k]) for k in present]
    gidx = _group_index(groups, len(y))
    vals = []
    for w in _bootstrap_weights(gidx, n_boot, seed, chunk):
        if not fns:
            vals.append(np.full(w.shape[0], np.nan))
            continue
        per = np.vstack([fn(w) for fn in fns])
        n_ok = np.isfinite(per).sum(axis=0)
        total = np.where(np.isfinite(per), per, 0.0).sum(axis=0)
        vals.append(np.where(n_ok > 0, total / np.maximum(n_ok, 1), np.nan))
    allv = np.concatenate(vals)
    lo, hi = _percentile_ci(allv, alpha)
    return {"ci_low": lo, "ci_high": hi, "n_boot": n_boot, "n_valid": int(np.isfinite(allv).sum()),
            "alpha": alpha, "n_groups": int(gidx.max()) + 1}


# --------------------------------------------------------------------------------------------
# whole evaluation
# --------------------------------------------------------------------------------------------
def _binary_block(y: np.ndarray, p: np.ndarray, groups: Any, thresholds: dict[str, float],
                  n_boot: int, alpha: float, seed: int) -> dict[str, Any]:
    boot = cluster_bootstrap(y, p, groups, thresholds=list(thresholds.values()), n_boot=n_boot,
                             alpha=alpha, seed=seed)
    out: dict[str, Any] = {
        "auc": {"value": auc_score(y, p), "ci_low": boot["auc"][0], "ci_high": boot["auc"][1],
                "n_boot": boot["n_boot"], "n_valid": boot["n_valid"], "alpha": alpha,
                "method": "percentile bootstrap resampling patients"},
        "brier": {"value": brier_score(y, p), "ci_low": boot["brier"][0], "ci_high": boot["brier"][1]},
        "operating_points": {},
    }
    for name, t in thresholds.items():
        point = binary_metrics(y, p, t)
        point["ci"] = {m: list(boot["at"][float(t)][m]) for m in THRESHOLD_METRICS}
        out["operating_points"][name] = point
    return out


def subgroup_metrics(df: pd.DataFrame, *, task: str, classes: Sequence[str], thresholds: dict[str, float],
                     columns: Sequence[str] = SUBGROUP_COLUMNS, min_size: int = 1) -> dict[str, Any]:
    """Metrics per value of each subgroup column (view, density, abnormality) present in ``df``.

    Columns that are missing or empty everywhere are skipped; so are values with fewer than
    ``min_size`` images. AUC is NaN for a subgroup with one class only.
    """
    out: dict[str, Any] = {}
    for col in columns:
        if col not in df.columns:
            continue
        values = df[col].astype(str).str.strip()
        values = values.where(~values.isin(["", "nan", "<NA>", "None"]), "")
        if (values == "").all():
            continue
        groups: dict[str, Any] = {}
        for value in sorted(set(values) - {""}):
            sub = df[values == value]
            if len(sub) < min_size:
                continue
            entry: dict[str, Any] = {"n": len(sub), "n_patients": int(sub["patient_id"].nunique())
                                     if "patient_id" in sub else len(sub)}
            if task == "binary":
                y = sub["target"].to_numpy().astype(int)
                p = sub["prob"].to_numpy(dtype=float)
                entry["n_positive"] = int(y.sum())
                entry["auc"] = auc_score(y, p)
                for name, t in thresholds.items():
                    m = binary_metrics(y, p, t)
                    entry[name] = {k: m[k] for k in THRESHOLD_METRICS}
            else:
                probs = sub[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
                mm = multiclass_metrics(sub["target"].to_numpy().astype(int), probs, classes)
                entry.update(auc_macro=mm["auc_macro"], accuracy=mm["accuracy"], f1_macro=mm["f1_macro"])
            groups[value] = entry
        if groups:
            out[col] = groups
    return out


def _task_for(classes: Sequence[str]) -> str:
    return "binary" if len(classes) == 2 else "multiclass"


def _check_pred_df(df: pd.DataFrame, classes: Sequence[str], source: str) -> None:
    need = ["target"] + (["prob"] if len(classes) == 2 else [f"prob_{c}" for c in classes])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise MammoLabError(f"{source}: missing column(s) {', '.join(missing)}")
    if df["target"].isna().any():
        raise MammoLabError(f"{source}: column 'target' has empty values (unlabelled images cannot be scored)")


def evaluate_predictions(pred_df: pd.DataFrame, val_df: pd.DataFrame | None = None, *,
                         classes: Sequence[str] = ("benign", "malignant"), split: str = "test",
                         n_boot: int = 2000, alpha: float = 0.05, seed: int = 0,
                         n_bins: int = 10) -> dict[str, Any]:
    """Every metric of one split's predictions, as a JSON-ready dict.

    ``pred_df`` has one row per image with ``target`` (class index), ``patient_id`` and ``prob``
    (binary: P(positive)) or ``prob_<class>`` columns. The operating point besides 0.5 is the
    Youden threshold chosen on ``val_df`` (the validation split's predictions); without it the
    threshold is chosen on this split itself and flagged as optimistic.
    """
    classes = list(classes)
    _check_pred_df(pred_df, classes, f"{split} predictions")
    task = _task_for(classes)
    groups = pred_df["patient_id"].astype(str).to_numpy() if "patient_id" in pred_df else None
    y = pred_df["target"].to_numpy().astype(int)
    result: dict[str, Any] = {
        "task": task, "split": split, "classes": classes, "n": len(pred_df),
        "n_patients": int(len(np.unique(groups))) if groups is not None else len(pred_df),
        "class_counts": {c: int(np.sum(y == k)) for k, c in enumerate(classes)},
    }
    if task == "binary":
        p = pred_df["prob"].to_numpy(dtype=float)
        if val_df is not None and len(val_df):
            _check_pred_df(val_df, classes, "val predictions")
            y_chosen, where = val_df["target"].to_numpy().astype(int), "val"
            t_youden = youden_threshold(y_chosen, val_df["prob"].to_numpy(dtype=float))
            source = "val"
        else:
            y_chosen, where = y, split
            t_youden = youden_threshold(y, p)
            source = f"{split} (no validation predictions: optimistic)"
        # youden_threshold falls back to 0.5 when its split has one class; say so instead of "chosen on val"
        fallback = not _both_classes(y_chosen)
        if fallback:
            source = f"fallback 0.5: the {where} split has one class, so no Youden threshold can be chosen"
        thresholds = {"0.5": 0.5, "youden": t_youden}
        result.update(_binary_block(y, p, groups, thresholds, n_boot, alpha, seed))
        result["operating_points"]["youden"]["source"] = source
        result["operating_points"]["youden"]["fallback"] = fallback
        result["roc"] = roc_curve_points(y, p)
        result["pr"] = pr_curve_points(y, p)
        result["calibration"] = reliability_bins(y, p, n_bins)
        result["calibration"]["brier"] = result["brier"]["value"]
    else:
        probs = pred_df[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
        mm = multiclass_metrics(y, probs, classes)
        boot = _macro_auc_bootstrap(y, probs, groups, n_boot, alpha, seed)
        result.update(mm)
        result["auc"] = {"value": mm["auc_macro"], "ci_low": boot["ci_low"], "ci_high": boot["ci_high"],
                         "n_boot": n_boot, "n_valid": boot["n_valid"], "alpha": alpha,
                         "method": "macro one-vs-rest AUC, percentile bootstrap resampling patients"}
        result["roc_per_class"] = {c: roc_curve_points((y == k).astype(int), probs[:, k])
                                   for k, c in enumerate(classes)}
        thresholds = {}
    result["subgroups"] = subgroup_metrics(pred_df, task=task, classes=classes, thresholds=thresholds)
    return json_safe(result)


def summary_row(metrics: dict[str, Any], operating_point: str = "youden") -> dict[str, Any]:
    """Flatten an evaluation dict into one table row (used by the comparison report)."""
    auc = metrics.get("auc", {})
    row: dict[str, Any] = {
        "task": metrics.get("task"), "split": metrics.get("split"), "n": metrics.get("n"),
        "auc": auc.get("value"), "auc_ci_low": auc.get("ci_low"), "auc_ci_high": auc.get("ci_high"),
    }
    if metrics.get("task") == "binary":
        op = metrics["operating_points"][operating_point]
        row["threshold"] = op["threshold"]
        for m in THRESHOLD_METRICS:
            row[m] = op[m]
            lo, hi = op["ci"][m]
            row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
        row["brier"] = metrics["brier"]["value"]
        row["brier_ci_low"], row["brier_ci_high"] = metrics["brier"]["ci_low"], metrics["brier"]["ci_high"]
    else:
        row["accuracy"] = metrics.get("accuracy")
        row["f1"] = metrics.get("f1_macro")
        row["auc_micro"] = metrics.get("auc_micro")
    return row


def json_safe(obj: Any) -> Any:
    """Replace NaN/inf with ``None`` and numpy scalars with Python ones, so the JSON is strict."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj
