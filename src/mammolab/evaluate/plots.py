"""Evaluation figures: ROC, precision-recall, confusion matrix, reliability diagram, training curves.

Every figure's title carries the split and the sample size, so a figure that ends up in a slide
or a paper on its own still says what it shows. Figures are built on matplotlib's object API
(``Figure`` + Agg canvas, no pyplot global state), rendered to PNG bytes and written atomically;
``render_png`` is also what the HTML report uses to embed figures without touching the disk.
The figure basics live in :mod:`mammolab.figures` and the training curves in
:mod:`mammolab.train.curves` (both re-exported here), so training draws its curves without
importing evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.figures import maybe_save as _maybe_save
from mammolab.figures import new_figure as _new_figure
from mammolab.figures import render_png, save_figure
from mammolab.train.curves import best_epoch, plot_training_curves

__all__ = [
    "best_epoch",
    "plot_calibration",
    "plot_confusion",
    "plot_multiclass_roc",
    "plot_pr",
    "plot_pr_overlay",
    "plot_reliability_overlay",
    "plot_roc",
    "plot_roc_overlay",
    "plot_training_curves",
    "render_png",
    "save_figure",
]

def _title(what: str, split: str, n: int, extra: str = "") -> str:
    text = f"{what} - {split} split (n={n})"
    return f"{text}\n{extra}" if extra else text


def _fmt_ci(value: float | None, lo: float | None, hi: float | None) -> str:
    if value is None:
        return "n/a"
    if lo is None or hi is None:
        return f"{value:.3f}"
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def plot_roc(fpr: Sequence[float], tpr: Sequence[float], *, split: str, n: int, auc: float | None = None,
             ci: tuple[float | None, float | None] | None = None, label: str = "model",
             operating_points: dict[str, tuple[float, float]] | None = None,
             path: str | Path | None = None) -> Any:
    """ROC curve with the chance diagonal, AUC (with its CI) in the legend and marked operating points."""
    fig = _new_figure()
    ax = fig.add_subplot()
    lo, hi = ci if ci else (None, None)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    ax.plot(fpr, tpr, color="C0", lw=2, label=f"{label}: AUC {_fmt_ci(auc, lo, hi)}")
    for k, (name, (x, y)) in enumerate((operating_points or {}).items()):
        ax.plot([x], [y], marker="o", ms=7, color=f"C{k + 1}", ls="none", label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false-positive rate)",
           ylabel="sensitivity (true-positive rate)", title=_title("ROC", split, n))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _maybe_save(fig, path)


def plot_pr(precision: Sequence[float], recall: Sequence[float], *, split: str, n: int,
            average_precision: float | None = None, prevalence: float | None = None,
            path: str | Path | None = None) -> Any:
    """Precision-recall curve with the prevalence baseline (a random classifier's precision)."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ap = "n/a" if average_precision is None else f"{average_precision:.3f}"
    ax.step(recall, precision, where="post", color="C0", lw=2, label=f"AP {ap}")
    if prevalence is not None:
        ax.axhline(prevalence, ls="--", color="0.6", lw=1, label=f"prevalence {prevalence:.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision",
           title=_title("Precision-recall", split, n))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _maybe_save(fig, path)


def plot_confusion(cm: Sequence[Sequence[int]], classes: Sequence[str], *, split: str, n: int,
                   subtitle: str = "", path: str | Path | None = None, ax: Any = None) -> Any:
    """Confusion matrix (rows = truth, columns = prediction) with counts and row percentages."""
    arr = np.asarray(cm, dtype=int)
    fig = None
    if ax is None:
        size = 3.2 + 0.7 * len(classes)
        fig = _new_figure((size, size * 0.92))
        ax = fig.add_subplot()
    row = arr.sum(axis=1, keepdims=True)
    frac = np.divide(arr, row, out=np.zeros(arr.shape, dtype=float), where=row > 0)
    ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(j, i, f"{arr[i, j]}\n{100 * frac[i, j]:.0f}%", ha="center", va="center", fontsize=9,
                    color="white" if frac[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(classes)), labels=list(classes), rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), labels=list(classes), fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=_title("Confusion matrix", split, n, subtitle))
    ax.title.set_fontsize(9)
    return _maybe_save(fig, path) if fig is not None else ax


def plot_calibration(bins: Sequence[dict[str, Any]], *, split: str, n: int, brier: float | None = None,
                     ece: float | None = None, path: str | Path | None = None) -> Any:
    """Reliability diagram (observed vs predicted per bin, marker size ~ count) and a histogram."""
    fig = _new_figure((5.0, 5.6))
    gs = fig.add_gridspec(2, 1, height_ratios=(3, 1))
    ax = fig.add_subplot(gs[0])
    hist = fig.add_subplot(gs[1], sharex=ax)
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    if bins:
        x = [b["mean_predicted"] for b in bins]
        y = [b["fraction_positive"] for b in bins]
        counts = np.array([b["count"] for b in bins], dtype=float)
        ax.plot(x, y, color="C0", lw=1.5)
        ax.scatter(x, y, s=20 + 180 * counts / counts.max(), color="C0", zorder=3, label="observed")
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        widths = [b["hi"] - b["lo"] for b in bins]
        hist.bar(centres, counts, width=widths, color="C0", alpha=0.6, edgecolor="white")
    extra = []
    if brier is not None:
        extra.append(f"Brier {brier:.3f}")
    if ece is not None:
        extra.append(f"ECE {ece:.3f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed fraction positive",
           title=_title("Calibration", split, n, "  ".join(extra)))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    hist.set(xlabel="predicted probability", ylabel="images")
    return _maybe_save(fig, path)


def plot_multiclass_roc(curves: dict[str, dict[str, Any]], aucs: dict[str, float | None], *, split: str, n: int,
                        path: str | Path | None = None) -> Any:
    """One-vs-rest ROC curve per class on one axis."""
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1)
    for k, (name, c) in enumerate(curves.items()):
        if c["fpr"]:
            auc = aucs.get(name)
            ax.plot(c["fpr"], c["tpr"], lw=2, color=f"C{k}",
                    label=f"{name}: {'n/a' if auc is None else f'{auc:.3f}'}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
           title=_title("ROC one-vs-rest", split, n))
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _maybe_save(fig, path)


def plot_roc_overlay(curves: Sequence[dict[str, Any]], *, split: str, n: int | str,
                     path: str | Path | None = None) -> Any:
    """ROC curves of several runs on one axis; each entry has ``label``, ``fpr``, ``tpr``, ``auc``, ``ci``."""
    fig = _new_figure((6.4, 5.8))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="chance")
    for k, c in enumerate(curves):
        lo, hi = c.get("ci") or (None, None)
        ax.plot(c["fpr"], c["tpr"], lw=2, color=f"C{k % 10}", ls="-" if k < 10 else ":",
                label=f"{c['label']}: {_fmt_ci(c.get('auc'), lo, hi)}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title=_title("ROC of all runs", split, n))  # type: ignore[arg-type]
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    return _maybe_save(fig, path)


def plot_pr_overlay(curves: Sequence[dict[str, Any]], *, split: str, n: int | str,
                    path: str | Path | None = None) -> Any:
    """Precision-recall curves of several runs (``label``, ``precision``, ``recall``, ``ap``, ``prevalence``)."""
    fig = _new_figure((6.0, 5.4))
    ax = fig.add_subplot()
    prevalences = {round(float(c["prevalence"]), 3) for c in curves if c.get("prevalence") is not None}
    if len(prevalences) == 1:
        prev = prevalences.pop()
        ax.axhline(prev, ls="--", color="0.6", lw=1, label=f"no skill (prevalence {prev:.2f})")
    for k, c in enumerate(curves):
        ap = c.get("ap")
        ax.step(c["recall"], c["precision"], where="post", lw=2, color=f"C{k % 10}", ls="-" if k < 10 else ":",
                label=f"{c['label']}: AP {'n/a' if ap is None else f'{ap:.3f}'}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision",
           title=_title("Precision-recall of all runs", split, n))  # type: ignore[arg-type]
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=7)
    return _maybe_save(fig, path)


def plot_reliability_overlay(curves: Sequence[dict[str, Any]], *, split: str, n: int | str,
                             path: str | Path | None = None) -> Any:
    """Reliability diagrams of several runs on one axis; entries have ``label``, ``bins``, ``brier``, ``ece``.

    Marker area follows each bin's share of the images, so a point resting on two images does not
    look as solid as one resting on fifty.
    """
    fig = _new_figure((6.0, 5.4))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", color="0.6", lw=1, label="perfect calibration")
    for k, c in enumerate(curves):
        bins = c.get("bins") or []
        if not bins:
            continue
        x = [b["mean_predicted"] for b in bins]
        y = [b["fraction_positive"] for b in bins]
        counts = np.array([b["count"] for b in bins], dtype=float)
        colour = f"C{k % 10}"
        brier, ece = c.get("brier"), c.get("ece")
        stats = ", ".join(t for t in (None if brier is None else f"Brier {brier:.3f}",
                                      None if ece is None else f"ECE {ece:.3f}") if t)
        ax.plot(x, y, color=colour, lw=1.5, ls="-" if k < 10 else ":", label=f"{c['label']}: {stats}")
        ax.scatter(x, y, s=15 + 150 * counts / counts.sum(), color=colour, zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="predicted probability (bin mean)",
           ylabel="observed fraction positive", title=_title("Calibration of all runs", split, n))  # type: ignore[arg-type]
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    return _maybe_save(fig, path)
