"""Two-view (CC + MLO) breast-level models: pairing, the dataset, training, breast-level evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from train_fixtures import make_lesion_dataset

from mammolab.data.manifest import FOURCLASS_CLASSES, load_manifest, write_manifest
from mammolab.errors import MammoLabError
from mammolab.evaluate.evaluation import evaluate_run, load_evaluation
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train
from mammolab.train.views import TwoViewDataModule, breast_target, pair_views

BINARY = ("benign", "malignant")


def _row(pid: str, side: str, view: str, target: int, path: str) -> dict[str, object]:
    return {"patient_id": pid, "side": side, "view": view, "target": target, "path": path, "abnormality": "mass",
            "density": 2}


def test_pairing_several_lesions_missing_views_and_other_views() -> None:
    frame = pd.DataFrame([
        _row("P1", "LEFT", "CC", 0, "b_cc_lesion1.png"),  # two lesions in one breast: the malignant one is used
        _row("P1", "LEFT", "CC", 1, "c_cc_lesion2.png"),
        _row("P1", "LEFT", "MLO", 1, "a_mlo.png"),
        _row("P1", "RIGHT", "mlo", 0, "r_mlo.png"),  # MLO only (lower-case view)
        _row("P2", "LEFT", "CC", 0, "p2_cc.png"),  # CC only; the ML view is not used
        _row("P2", "LEFT", "ML", 0, "p2_ml.png"),
    ])
    breasts, counts = pair_views(frame, BINARY)
    assert counts == {"breasts": 3, "both_views": 1, "cc_only": 1, "mlo_only": 1, "images_unused": 1,
                      "other_views": 1}
    b = breasts.set_index("breast_id")
    assert list(b.index) == ["P1_LEFT", "P1_RIGHT", "P2_LEFT"]
    assert b.loc["P1_LEFT", "label"] == "malignant" and b.loc["P1_LEFT", "cc_path"] == "c_cc_lesion2.png"
    assert b.loc["P1_LEFT", "mlo_path"] == "a_mlo.png" and b.loc["P1_LEFT", "n_images"] == 3
    assert b.loc["P1_RIGHT", "views"] == "mlo" and b.loc["P1_RIGHT", "cc_path"] == ""
    assert b.loc["P2_LEFT", "views"] == "cc" and b.loc["P2_LEFT", "target"] == 0
    with pytest.raises(MammoLabError, match="needs a side"):
        pair_views(frame.assign(side=""), BINARY)
    with pytest.raises(MammoLabError, match="needs a 'view' column"):
        pair_views(frame.drop(columns="view"), BINARY)


def test_breast_label_for_four_classes() -> None:
    c = FOURCLASS_CLASSES  # benign_calc, benign_mass, malignant_calc, malignant_mass
    assert breast_target([0, 1, 1, 3], c) == 3  # malignant wins
    assert breast_target([2, 3, 3], c) == 3  # then the most frequent
    assert breast_target([0, 1, 1], c) == 1
    assert breast_target([1, 0], c) == 0  # then class order


@pytest.fixture(scope="module")
def two_view_ds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Lesion patches in CC + MLO; in test, pairs of patients merged into one with two breasts, one MLO dropped."""
    root = make_lesion_dataset(tmp_path_factory.mktemp("views") / "ds", patients=30, size=32, seed=4)
    df = load_manifest(root)
    test_pids = sorted(df.loc[df["split"] == "test", "patient_id"].unique())
    for a, b in zip(test_pids[0::2], test_pids[1::2], strict=False):
        sel = df["patient_id"] == b
        df.loc[sel, "side"] = "RIGHT"
        df.loc[sel, "patient_id"] = a
    drop = df.index[(df["split"] == "test") & (df["view"] == "MLO")][0]
    write_manifest(df.drop(index=drop), root)
    return root


def test_two_view_training_and_breast_level_evaluation(two_view_ds: Path, tmp_path: Path) -> None:
    cfg = resolve_train_config(overrides={
        "model": "mammoresnet", "views": "cc+mlo", "fusion": "attention", "image_size": 32, "batch_size": 8,
        "epochs": 2, "patience": 0, "accelerator": "cpu", "weights": "none"})
    assert cfg.display_name == "mammoresnet_cft_ccmlo"
    dm = TwoViewDataModule(two_view_ds, cfg, mean=0.5, std=0.5)
    x, y, present = dm.dataset("train", augment=True)[0]
    assert x.shape == (2, 1, 32, 32) and present.tolist() == [True, True] and int(y) in (0, 1)
    test = dm.breasts["test"]
    assert (test["views"] == "cc").sum() == 1 and dm.pairing["test"]["cc_only"] == 1
    assert test["patient_id"].nunique() < len(test)  # some test patients have two breasts

    result = train(two_view_ds, cfg, tmp_path / "run")
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["n_breasts"]["train"] == len(dm.breasts["train"]) and info["pairing"]["test"]["cc_only"] == 1
    assert result.metrics["val_auc"].between(0, 1).all()

    evaluate_run(result.run_dir, "test", n_boot=200)
    metrics, preds = load_evaluation(result.run_dir, "test")
    assert len(preds) == len(test) == metrics["n"]  # one row per breast
    assert metrics["n_patients"] == test["patient_id"].nunique() < metrics["n"]  # bootstrap resamples patients
    assert {"patient_id", "side", "prob", "views", "cc_path", "mlo_path"} <= set(preds.columns)
    assert sorted(preds["image_id"]) == sorted(test["breast_id"])
    assert preds["prob"].between(0, 1).all() and np.isfinite(metrics["auc"]["ci_low"])
    assert preds.loc[preds["views"] == "cc", "mlo_path"].isna().all()
