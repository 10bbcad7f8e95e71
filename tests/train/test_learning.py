"""Does the whole pipeline learn? Generated lesions are learnable; the same run on shuffled labels is not.

Benign and malignant patches overlap in brightness, so the network has to see the spiculated
outline. With the labels permuted between patients (images unchanged) nothing can be learnt, so
validation AUC must hover around chance: a leak between splits, a label/image mix-up in the data
module or augmentation applied to validation would break one of the two.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from train_fixtures import make_lesion_dataset

from mammolab.infer import load_run, predict_split
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train


def _config():
    return resolve_train_config(overrides={
        "model": "mammoresnet", "image_size": 64, "batch_size": 16, "epochs": 12, "patience": 4, "lr": 1e-3,
        "weights": "none", "accelerator": "cpu", "seed": 0,
    })


@pytest.mark.slow
def test_learns_generated_lesions_within_a_minute_of_cpu(lesions: Path, tmp_path: Path) -> None:
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = train(lesions, _config(), tmp_path / "learn")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    assert result.best_val_auc is not None and result.best_val_auc >= 0.9, result.metrics.to_string()
    assert cpu < 60, f"took {cpu:.0f} s of CPU ({wall:.0f} s wall)"
    # the best checkpoint generalises to the untouched test patients too
    from sklearn.metrics import roc_auc_score

    pred = predict_split(load_run(tmp_path / "learn"), "test")
    assert roc_auc_score(pred["target"], pred["prob"]) >= 0.85


@pytest.mark.slow
def test_shuffled_labels_stay_at_chance(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    ds = make_lesion_dataset(tmp_path_factory.mktemp("shuffled") / "ds", patients=80, size=64, seed=1,
                             shuffle_labels=True)
    result = train(ds, _config(), tmp_path / "shuffled")
    val_auc = result.metrics["val_auc"]
    assert 0.3 <= val_auc.mean() <= 0.7, result.metrics.to_string()
    assert val_auc.max() < 0.9
