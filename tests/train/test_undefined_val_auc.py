"""A validation split without a class: val AUC is NaN (never 0) and model selection follows val loss."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from train_fixtures import make_lesion_dataset
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.data.manifest import load_manifest, write_manifest
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train
from mammolab.train.module import _metrics


def test_auc_metric_is_nan_for_one_class_and_exact_otherwise() -> None:
    m = _metrics(2, "val_")
    m.update(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0, 0, 0]))
    assert torch.isnan(m.compute()["val_auc"])  # torchmetrics alone returns 0.0 here
    m = _metrics(2, "val_")
    p, y = torch.tensor([0.2, 0.9, 0.4, 0.6]), torch.tensor([0, 1, 1, 0])
    m.update(p, y)
    assert float(m.compute()["val_auc"]) == pytest.approx(roc_auc_score(y.numpy(), p.numpy()))
    m4 = _metrics(4, "val_")
    m4.update(torch.softmax(torch.randn(6, 4), 1), torch.tensor([0, 1, 2, 0, 1, 2]))  # class 3 absent
    assert torch.isnan(m4.compute()["val_auc"])


@pytest.fixture(scope="module")
def benign_only_val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 patients at 32 px whose validation split holds benign patients only."""
    ds = make_lesion_dataset(tmp_path_factory.mktemp("degenerate") / "ds", patients=24, size=32, seed=4)
    df = load_manifest(ds)
    df = df[~((df["split"] == "val") & (df["label"] == "malignant"))]
    assert set(df.loc[df["split"] == "val", "label"]) == {"benign"}
    write_manifest(df, ds)
    return ds


def test_val_loss_picks_the_checkpoint_when_val_auc_is_undefined(benign_only_val: Path, tmp_path: Path) -> None:
    cfg = resolve_train_config(overrides={"model": "mammoresnet", "image_size": 32, "batch_size": 8, "epochs": 4,
                                          "patience": 2, "accelerator": "cpu", "weights": "none", "lr": 0.01,
                                          "scheduler": "plateau"})
    out = tmp_path / "run"
    result = train(benign_only_val, cfg, out)
    text = (out / "metrics.csv").read_text().splitlines()
    metrics = pd.read_csv(out / "metrics.csv")
    assert metrics["val_auc"].isna().all() and metrics["val_loss"].notna().all()
    assert all(line.split(",")[6] == "" for line in text[1:])  # logged as an empty cell, never 0
    info = json.loads((out / "run.json").read_text())
    assert info["monitor"] == "val_loss" and "no malignant image" in info["monitor_reason"]
    assert info["best_val_auc"] is None and result.best_val_auc is None
    best = int(metrics.loc[metrics["val_loss"].idxmin(), "epoch"])
    assert info["best_epoch"] == best == result.best_epoch
    ckpt = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] + 1 == best  # the checkpoint kept is the lowest-loss epoch's
    # early stopping followed val loss too: it stopped only after `patience` epochs without a lower loss
    assert len(metrics) == 4 or (len(metrics) - best == 2 and info["stopped_early"])


def test_val_auc_monitored_when_defined_and_cli_says_when_not(benign_only_val: Path, tmp_path: Path) -> None:
    ok = make_lesion_dataset(tmp_path / "ok", patients=12, size=32, seed=11)
    val = load_manifest(ok).query("split == 'val'")
    assert set(val["label"]) == {"benign", "malignant"}  # this seed's validation split has both classes
    base = {"model": "mammoresnet", "image_size": 32, "batch_size": 8, "epochs": 1, "patience": 0,
            "accelerator": "cpu", "weights": "none"}
    result = train(ok, resolve_train_config(overrides=base), tmp_path / "ok-run")
    assert result.info["monitor"] == "val_auc" and result.info["monitor_reason"] is None
    assert np.isfinite(result.best_val_auc)
    res = CliRunner().invoke(app, ["train", str(benign_only_val), "--model", "mammoresnet", "--image-size", "32",
                                   "--batch-size", "8", "--epochs", "1", "--weights", "none", "--accelerator", "cpu",
                                   "--out", str(tmp_path / "cli-run")])
    assert res.exit_code == 0, res.output
    said = " ".join(res.output.split())
    assert "best val AUC n/a" in said
    assert "note: the validation split has no malignant image, so val AUC is undefined (logged as empty): the " \
        "best checkpoint and early stopping follow val loss (best epoch 1 by val loss)" in said
