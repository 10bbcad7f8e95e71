"""Patient-grouped stratified splits never leak a patient and keep the official test split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mammolab.data.splits import (
    assert_no_overlap,
    assign_splits,
    drop_test_patients,
    patient_overlap,
    stratified_group_subset,
)
from mammolab.errors import MammoLabError


def _table(n_patients: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        official = "test" if p % 5 == 0 else "train"
        for _ in range(rng.integers(1, 5)):
            rows.append({"patient_id": f"P_{p:05d}", "label": rng.choice(["benign", "malignant"]),
                         "official_split": official})
    return pd.DataFrame(rows)


def test_assign_splits_grouped_and_official_test_kept() -> None:
    df = _table()
    out = assign_splits(df, val_fraction=0.2, folds=5, seed=1)
    assert (out.loc[df["official_split"] == "test", "split"] == "test").all()
    assert set(out.loc[df["official_split"] == "train", "split"]) == {"train", "val"}
    assert all(len(v) == 0 for v in patient_overlap(out).values())
    share = (out["split"] == "val").sum() / (df["official_split"] == "train").sum()
    assert 0.1 < share < 0.3
    # folds: every official-training row has one, all images of a patient share it, test has none
    train = out[out["split"] != "test"]
    assert train["fold"].notna().all() and out.loc[out["split"] == "test", "fold"].isna().all()
    assert (train.groupby("patient_id")["fold"].nunique() == 1).all()
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]


def test_assign_splits_deterministic_and_seed_dependent() -> None:
    df = _table()
    a = assign_splits(df, seed=3)
    b = assign_splits(df, seed=3)
    c = assign_splits(df, seed=4)
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()


def test_assign_splits_without_official_split_holds_out_test_by_patient() -> None:
    df = _table().drop(columns="official_split")
    out = assign_splits(df, official_col="none", seed=0)
    assert set(out["split"]) == {"train", "val", "test"}
    assert_no_overlap(out)


def test_overlap_detected_and_cross_split_patients_dropped() -> None:
    df = pd.DataFrame({"patient_id": ["A", "A", "B"], "split": ["train", "test", "train"]})
    assert patient_overlap(df) == {"test/train": ["A"]}
    with pytest.raises(MammoLabError, match="patient overlap"):
        assert_no_overlap(df)
    off = pd.DataFrame({"patient_id": ["A", "A", "B"], "official_split": ["train", "test", "train"],
                        "label": ["benign"] * 3})
    with pytest.raises(MammoLabError, match="both the official training and test"):
        assign_splits(off)
    kept, patients, n = drop_test_patients(off)
    assert patients == ["A"] and n == 1 and kept["official_split"].tolist() == ["test", "train"]


def test_bad_fraction_and_too_few_patients() -> None:
    df = _table()
    with pytest.raises(MammoLabError, match="--val-fraction"):
        assign_splits(df, val_fraction=1.5)
    one = pd.DataFrame({"patient_id": ["A", "A"], "label": ["benign", "malignant"], "official_split": ["train"] * 2})
    with pytest.raises(MammoLabError, match="at least 2 patients"):
        assign_splits(one)


def test_subset_keeps_patients_whole_and_balance() -> None:
    df = _table(200)
    sub = stratified_group_subset(df, 100, seed=0)
    assert 50 < len(sub) < 200
    full_counts = df.groupby("patient_id").size()
    assert (sub.groupby("patient_id").size() == full_counts[sub["patient_id"].unique()]).all()
    assert abs((sub["label"] == "malignant").mean() - (df["label"] == "malignant").mean()) < 0.1
