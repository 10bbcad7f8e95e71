"""Figures a reader looks at: training curves (whole epochs, learning rate, best epoch) and heatmap overlays
(a colour bar, captions never cut)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mammolab.evaluate.plots import best_epoch, plot_training_curves
from mammolab.explain.overlay import caption_strip, overlay_panel, wrap_caption


def _history(n: int = 7) -> pd.DataFrame:
    ep = np.arange(1, n + 1)
    return pd.DataFrame({"epoch": ep, "train_loss": 0.7 - 0.05 * ep, "val_loss": 0.7 - 0.04 * ep,
                         "train_acc": 0.5 + 0.05 * ep, "val_acc": 0.5 + 0.04 * ep, "train_auc": 0.5 + 0.06 * ep,
                         "val_auc": [0.6, 0.7, 0.8, 0.85, 0.83, 0.85, 0.82],
                         "lr": 1e-3 * (1 + np.cos(np.pi * (ep - 1) / n)) / 2 + 1e-6, "time": 1.0})


def test_training_curves_have_whole_epochs_lr_panel_and_best_epoch(tmp_path: Path) -> None:
    hist = _history()
    assert best_epoch(hist) == 4  # the first of the two 0.85 epochs, as ModelCheckpoint keeps it
    fig = plot_training_curves(hist, title="t", path=tmp_path / "c.png")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "accuracy", "AUC", "learning rate (log)"]
    assert axes[3].get_yscale() == "log"
    np.testing.assert_allclose(axes[3].lines[0].get_ydata(), hist["lr"])
    fig.canvas.draw()
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)
        marks = [ln for ln in ax.lines if ln.get_label() == "best epoch (4)"]
        assert len(marks) == 1 and list(marks[0].get_xdata()) == [4, 4]
    assert cv2.imread(str(tmp_path / "c.png")) is not None


def test_fit_plot_curves_writes_the_same_figure(tmp_path: Path) -> None:
    from mammolab.train.fit import plot_curves

    plot_curves(_history().drop(columns="lr"), tmp_path / "curves.png", title="no lr column")
    img = cv2.imread(str(tmp_path / "curves.png"))
    assert img is not None and img.shape[1] > img.shape[0]


def test_captions_wrap_instead_of_being_cut() -> None:
    caption = ("Calc-Test_P_00077_LEFT_CC_1  true: malignant  P(malignant)=0.93  pred: malignant  "
               "[gradcam of malignant, test split]")
    lines = wrap_caption(caption, 200, 0.4)
    assert len(lines) > 1 and " ".join(lines).split() == caption.split()
    for line in lines:
        assert cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1)[0][0] <= 200
    # A word wider than the line is split by characters, and nothing is lost.
    assert "".join(wrap_caption("x" * 80, 100, 0.4)) == "x" * 80
    assert caption_strip(caption, 220).shape[0] > caption_strip("short", 220).shape[0]


def test_overlay_has_a_colour_bar_and_the_whole_caption() -> None:
    img = np.full((64, 64), 100, dtype=np.uint8)
    heat = np.zeros((64, 64), dtype=np.float32)
    short = overlay_panel(img, heat, caption="p=0.9")
    long = overlay_panel(img, heat, caption="p=0.9 " + "word " * 60)
    assert long.shape[1] == short.shape[1] and long.shape[0] > short.shape[0] + 20  # more lines, same width
    bar = short[-256:, 2 * 256 + 5:]  # right of both 256-px panels and the gap
    assert bar.shape[1] >= 10
    column = bar[:, 8].astype(int)  # through the bar's colours
    coloured = np.flatnonzero(np.abs(column[:, 0] - column[:, 2]) > 60)
    top, bottom = column[coloured[0]], column[coloured[-1]]
    assert top[0] > top[2] + 60 and bottom[2] > bottom[0] + 60  # hot (red) on top, cold (blue) below
