"""Training curves: loss, accuracy, AUC and learning rate per epoch, the best epoch marked.

Drawn by ``mammolab train`` into each run (``curves.png``) and by the comparison report for every
run it compares (:mod:`mammolab.evaluate.plots` re-exports both names), so it lives with training,
below evaluation in the layers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.figures import maybe_save, new_figure

__all__ = ["best_epoch", "plot_training_curves"]


_CURVE_PANELS: tuple[tuple[str, str, str], ...] = (
    ("loss", "train_loss", "val_loss"),
    ("accuracy", "train_acc", "val_acc"),
    ("AUC", "train_auc", "val_auc"),
)


def best_epoch(history: pd.DataFrame, column: str = "val_auc") -> int | None:
    """The epoch with the highest ``column`` (the one ``best.ckpt`` holds); first of equals; None when unknown."""
    if column not in history or not history[column].notna().any():
        return None
    x = history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1), index=history.index)
    return int(x.loc[history[column].idxmax()])


def plot_training_curves(history: pd.DataFrame, *, title: str = "", path: str | Path | None = None,
                         axes: Sequence[Any] | None = None,
                         label_fn: Callable[[str], str] | None = None) -> Any:
    """Loss, accuracy, AUC and learning rate per epoch from a run's ``metrics.csv``.

    Epochs are whole numbers on the axis; the epoch with the best validation AUC (the one
    ``best.ckpt`` holds) is marked on every panel; the learning rate is on a log axis, so a
    cosine or step schedule reads at a glance. ``axes`` (three or four) draws into existing axes.
    """
    from matplotlib.ticker import MaxNLocator

    has_lr = "lr" in history and (pd.to_numeric(history["lr"], errors="coerce") > 0).any()
    fig = None
    if axes is None:
        panels = 4 if has_lr else 3
        fig = new_figure((3.7 * panels, 3.4))
        axes = fig.subplots(1, panels)
    x = history["epoch"] if "epoch" in history else pd.Series(np.arange(1, len(history) + 1))
    best = best_epoch(history)
    for ax, (name, tr, va) in zip(axes, _CURVE_PANELS, strict=False):
        for col, style in ((tr, "-"), (va, "--")):
            if col in history and history[col].notna().any():
                lab = col.split("_")[0]
                ax.plot(x, history[col], ls=style, marker="o", ms=3, label=label_fn(lab) if label_fn else lab)
        ax.set(xlabel="epoch", title=name)
    if has_lr and len(axes) > 3:
        lr = pd.to_numeric(history["lr"], errors="coerce")
        ax = axes[3]
        ax.plot(x[lr > 0], lr[lr > 0], color="C2", marker="o", ms=3, label="lr")
        ax.set_yscale("log")
        ax.set(xlabel="epoch", title="learning rate (log)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if best is not None:
            ax.axvline(best, color="0.35", ls=":", lw=1.2, label=f"best epoch ({best})")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if fig is not None:
        fig.suptitle(title or "Training curves", fontsize=10)
        return maybe_save(fig, path)
    return axes
