"""The evaluation writer (files in the run) and the figures (every title names split and n)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from evaluate_fixtures import CLASSES, synthetic_predictions

from mammolab.errors import MammoLabError
from mammolab.evaluate import plots
from mammolab.evaluate.evaluation import checkpoint_stamp, eval_dir, load_evaluation, write_evaluation


def _titles(fig) -> str:
    texts = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        texts.append(fig._suptitle.get_text())
    return " | ".join(texts)


def test_write_evaluation_binary(tmp_path: Path) -> None:
    test = synthetic_predictions(60, 1.0, seed=4)
    val = synthetic_predictions(30, 1.0, seed=5, split="val")
    out = eval_dir(tmp_path / "run", "test")
    metrics = write_evaluation(test, out, classes=CLASSES, val_df=val, n_boot=200, extra={"tta": False})
    for name in ("predictions.csv", "val_predictions.csv", "metrics.json", "roc.png", "pr.png", "confusion.png",
                 "calibration.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["auc"] == metrics["auc"] and on_disk["n"] == 60 and on_disk["split"] == "test"
    assert set(on_disk["subgroups"]) == {"view", "density", "abnormality"}
    preds = pd.read_csv(out / "predictions.csv")
    t = metrics["operating_points"]["youden"]["threshold"]
    assert (preds["pred_label_youden"] == np.where(preds["prob"] >= t, "malignant", "benign")).all()
    m2, p2 = load_evaluation(tmp_path / "run")
    assert m2["auc"]["value"] == metrics["auc"]["value"] and len(p2) == 60
    with pytest.raises(MammoLabError, match="no evaluation found"):
        load_evaluation(tmp_path / "run", "val")


def test_write_evaluation_four_class(tmp_path: Path) -> None:
    classes = ["benign_calc", "benign_mass", "malignant_calc", "malignant_mass"]
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 48)
    probs = rng.dirichlet(np.ones(4), 48) + np.eye(4)[y]
    probs /= probs.sum(1, keepdims=True)
    df = pd.DataFrame({"image_id": [f"i{i}" for i in range(48)], "patient_id": [f"P{i // 2}" for i in range(48)],
                       "target": y, "label": [classes[k] for k in y]})
    for k, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, k]
    m = write_evaluation(df, tmp_path / "e", classes=classes, n_boot=100)
    assert set(m["auc_per_class"]) == set(classes) and m["auc_micro"] is not None
    assert (tmp_path / "e" / "roc.png").is_file() and (tmp_path / "e" / "confusion.png").is_file()
    assert not (tmp_path / "e" / "calibration.png").exists()
    assert (pd.read_csv(tmp_path / "e" / "predictions.csv")["pred_label"].isin(classes)).all()


def test_every_figure_names_split_and_n(tmp_path: Path) -> None:
    tag = "val split (n=37)"
    figs = [
        plots.plot_roc([0, 0.5, 1], [0, 0.8, 1], split="val", n=37, auc=0.8, ci=(0.7, 0.9)),
        plots.plot_pr([1, 0.5], [0, 1], split="val", n=37, average_precision=0.7, prevalence=0.4),
        plots.plot_confusion([[3, 1], [2, 4]], CLASSES, split="val", n=37),
        plots.plot_calibration([{"lo": 0, "hi": 0.5, "count": 3, "mean_predicted": 0.2, "fraction_positive": 0.3}],
                               split="val", n=37, brier=0.2, ece=0.1),
        plots.plot_multiclass_roc({"a": {"fpr": [0, 1], "tpr": [0, 1]}}, {"a": 0.5}, split="val", n=37),
        plots.plot_roc_overlay([{"label": "r", "fpr": [0, 1], "tpr": [0, 1], "auc": 0.5}], split="val", n=37),
    ]
    for fig in figs:
        assert tag in _titles(fig), _titles(fig)
    path = plots.save_figure(figs[0], tmp_path / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_stamp(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="best.ckpt"):
        checkpoint_stamp(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(MammoLabError, match="best.ckpt: not found.*--checkpoint last"):
        checkpoint_stamp(tmp_path)  # no silent fallback to last.ckpt
    a = checkpoint_stamp(tmp_path, "last")
    (tmp_path / "checkpoints" / "best.ckpt").write_bytes(b"yy")
    assert checkpoint_stamp(tmp_path) != a
