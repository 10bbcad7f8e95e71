"""Patient-grouped, label-stratified splits: the one thing a mammography split must get right.

Every lesion is seen in CC and MLO views and many patients have lesions in both breasts, so any
split that is not by patient leaks. These functions wrap scikit-learn's ``StratifiedGroupKFold``
(the reference implementation) and check the result, so a leak is an error, not a footnote.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from mammolab.errors import MammoLabError


def _n_splits_for(groups: pd.Series, wanted: int, labels: pd.Series | None = None) -> int:
    """``wanted`` folds, fewer when there are fewer patients or fewer rows of the most common label.

    scikit-learn refuses more folds than the largest class has members; a handful of patients
    (a first try on a small collection) gets fewer, larger folds instead of a ValueError.
    """
    n = max(2, min(wanted, groups.nunique()))
    if labels is not None and len(labels):
        n = max(2, min(n, int(labels.value_counts().max())))
    return n


def grouped_holdout(labels: pd.Series, groups: pd.Series, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows to hold out (about ``fraction`` of them), whole patients at a time.

    Implemented as one fold of a ``StratifiedGroupKFold`` with ``round(1/fraction)`` folds, which
    keeps the label balance of the held-out part close to the whole. The first fold that leaves
    every label on both sides is taken: with few patients a fold can miss a class, and a validation
    split without one has no AUC (when no fold manages it, the first fold is taken as before).
    """
    if not 0.0 < fraction < 1.0:
        raise MammoLabError(f"--val-fraction: expected a number between 0 and 1, got {fraction}")
    n_groups = groups.nunique()
    if n_groups < 2:
        raise MammoLabError(f"cannot carve a validation split from {n_groups} patient(s); "
                            "need at least 2 patients in the training split")
    n_splits = _n_splits_for(groups, int(round(1.0 / fraction)), labels)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = labels.to_numpy()
    try:
        folds = [held for _, held in sgkf.split(np.zeros(len(labels)), y, groups.to_numpy())]
    except ValueError as exc:
        raise MammoLabError(f"cannot split {n_groups} patients ({len(labels)} images) by patient: {exc}") from None
    everywhere = set(y)

    def both_sides(held: np.ndarray) -> bool:
        inside = np.zeros(len(y), dtype=bool)
        inside[held] = True
        return set(y[inside]) == everywhere and set(y[~inside]) == everywhere

    held = next((f for f in folds if both_sides(f)), folds[0])
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def grouped_folds(labels: pd.Series, groups: pd.Series, folds: int, seed: int) -> np.ndarray:
    """Fold number (0..k-1) per row; all images of a patient share a fold; label-stratified."""
    if folds < 2:
        raise MammoLabError(f"--folds: expected at least 2, got {folds}")
    out = np.full(len(labels), -1, dtype=int)
    n_splits = _n_splits_for(groups, folds, labels)
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    try:
        for k, (_, idx) in enumerate(sgkf.split(np.zeros(len(labels)), labels.to_numpy(), groups.to_numpy())):
            out[idx] = k
    except ValueError as exc:
        raise MammoLabError(f"--folds: cannot make {n_splits} folds of {groups.nunique()} patients: {exc}") from None
    return out


def patient_overlap(df: pd.DataFrame, split_col: str = "split", group_col: str = "patient_id") -> dict[str, list[str]]:
    """Patients that appear in more than one split, per pair of splits (empty lists = no leak)."""
    sets = {s: set(g[group_col].astype(str)) for s, g in df.groupby(split_col)}
    names = sorted(sets)
    out: dict[str, list[str]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            out[f"{a}/{b}"] = sorted(sets[a] & sets[b])
    return out


def assert_no_overlap(df: pd.DataFrame) -> None:
    """Raise when any patient is in two splits; cheap enough to run on every write."""
    leaks = {k: v for k, v in patient_overlap(df).items() if v}
    if leaks:
        detail = "; ".join(f"{k}: {', '.join(v[:5])}{' ...' if len(v) > 5 else ''}" for k, v in leaks.items())
        raise MammoLabError(f"patient overlap between splits ({detail}); splits must be by patient")


def assign_splits(df: pd.DataFrame, *, official_col: str = "official_split", val_fraction: float = 0.2,
                  folds: int = 5, seed: int = 0, label_col: str = "label",
                  group_col: str = "patient_id") -> pd.DataFrame:
    """Add ``split`` (train/val/test) and ``fold`` columns.

    Rows whose ``official_col`` is ``test`` stay test, untouched. Validation is carved from the
    official training rows by patient; every official training row (train and val) gets a grouped
    fold for cross-validation; test rows get no fold. When ``official_col`` is absent, the whole
    set is first split into train+val and test by patient (20%, the CBIS-DDSM proportion).
    """
    df = df.copy()
    groups = df[group_col].astype(str)
    if official_col in df.columns and df[official_col].notna().all():
        official = df[official_col].astype(str).str.lower()
    else:
        test = grouped_holdout(df[label_col].astype(str), groups, 0.2, seed + 1)
        official = pd.Series(np.where(test, "test", "train"), index=df.index)
    is_train = official.to_numpy() != "test"
    cross = set(groups[is_train]) & set(groups[~is_train])
    if cross:
        raise MammoLabError(
            f"{len(cross)} patient(s) are in both the official training and test rows "
            f"(e.g. {sorted(cross)[0]}); drop their training rows first (see drop_test_patients)")
    split = np.where(is_train, "train", "test").astype(object)
    fold = np.full(len(df), -1, dtype=int)
    idx = np.flatnonzero(is_train)
    if len(idx):
        lab = df[label_col].astype(str).iloc[idx].reset_index(drop=True)
        grp = groups.iloc[idx].reset_index(drop=True)
        if val_fraction > 0:
            held = grouped_holdout(lab, grp, val_fraction, seed)
            split[idx[held]] = "val"
        if folds and folds >= 2 and grp.nunique() >= 2:
            fold[idx] = grouped_folds(lab, grp, folds, seed)
    df["split"] = split
    df["fold"] = pd.array(np.where(fold >= 0, fold, -1), dtype="Int64")
    df.loc[df["fold"] < 0, "fold"] = pd.NA
    assert_no_overlap(df)
    return df


def drop_test_patients(df: pd.DataFrame, official_col: str = "official_split",
                       group_col: str = "patient_id") -> tuple[pd.DataFrame, list[str], int]:
    """Drop official-training rows of patients who also have official-test rows.

    CBIS-DDSM's official split is by patient within one abnormality type, but 18 patients are in
    Mass-Test and Calc-Training. Mixing both types would leak them; the test split must stay as
    published, so their *training* rows go. Returns ``(kept, patients, n_rows_dropped)``.
    """
    official = df[official_col].astype(str).str.lower()
    test_patients = set(df.loc[official == "test", group_col].astype(str))
    drop = (official != "test") & df[group_col].astype(str).isin(test_patients)
    patients = sorted(set(df.loc[drop, group_col].astype(str)))
    return df.loc[~drop].copy(), patients, int(drop.sum())


def stratified_group_subset(df: pd.DataFrame, n: int, *, seed: int = 0, label_col: str = "label",
                            group_col: str = "patient_id") -> pd.DataFrame:
    """About ``n`` rows sampled by whole patients, keeping the label balance (for quick runs)."""
    if n <= 0 or n >= len(df):
        return df
    groups = df[group_col].astype(str)
    n_splits = max(2, min(int(round(len(df) / n)), groups.nunique()))
    sgkf = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    _, idx = next(sgkf.split(np.zeros(len(df)), df[label_col].astype(str).to_numpy(), groups.to_numpy()))
    return df.iloc[np.sort(idx)]


def split_class_check(df: pd.DataFrame, classes: Sequence[str], *, split_col: str = "split",
                      label_col: str = "label", group_col: str = "patient_id",
                      min_patients: int = 2) -> tuple[list[str], list[str]]:
    """``(warnings, problems)`` about how many patients of each class each split holds.

    A warning for a split with fewer than ``min_patients`` patients of a class (its per-class metrics
    rest on one patient); a problem for a validation or test split without a class at all, where AUC
    and the Youden threshold are undefined and model selection on val AUC silently degrades.
    """
    warnings_: list[str] = []
    problems: list[str] = []
    for s in ("train", "val", "test"):
        part = df[df[split_col].astype(str) == s]
        counts = {c: int(part.loc[part[label_col].astype(str) == c, group_col].nunique()) for c in classes}
        desc = ", ".join(f"{c}={n}" for c, n in counts.items())
        absent = [c for c, n in counts.items() if n == 0]
        few = [c for c, n in counts.items() if n < min_patients]
        if absent and s in ("val", "test"):
            problems.append(f"the {s} split has no {' or '.join(absent)} patient (patients per class: {desc})")
        elif few:
            warnings_.append(f"{s} split: fewer than {min_patients} patients of {', '.join(few)} "
                             f"(patients per class: {desc})")
    return warnings_, problems


def check_split_classes(df: pd.DataFrame, classes: Sequence[str], *, allow: bool = False,
                        **columns: Any) -> list[str]:
    """Raise when val or test lacks a class (unless ``allow``); return every warning, problems included."""
    warnings_, problems = split_class_check(df, classes, **columns)
    if problems and not allow:
        raise MammoLabError(f"organize: {problems[0]}: its AUC and Youden threshold would be undefined; add "
                            "patients (for a carved split: try another --seed or --val-fraction), or pass "
                            "--allow-degenerate (allow_degenerate: true in a config) to go on")
    return problems + warnings_
