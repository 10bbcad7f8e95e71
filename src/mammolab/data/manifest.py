"""The manifest: one row per image, the single source of truth every stage reads and writes.

A dataset folder is ``{train,val,test}/<class>/*.png`` for people and other tools, plus
``manifest.csv`` (this schema), ``quality_report.json``/``.md`` and ``mammolab.json`` (which stage
made it, with its resolved config and hash). Code reads the manifest, never the folder layout.

Column names live here and nowhere else. Paths in the manifest are relative to the dataset folder
(POSIX separators), so a dataset can be moved or copied as a whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_text, write_json
from mammolab.io.csvsafe import read_csv as read_safe_csv
from mammolab.io.csvsafe import to_csv_text

MANIFEST_NAME = "manifest.csv"
INFO_NAME = "mammolab.json"
QUALITY_JSON = "quality_report.json"
QUALITY_MD = "quality_report.md"

SPLITS = ("train", "val", "test")
BINARY_CLASSES = ("benign", "malignant")
FOURCLASS_CLASSES = ("benign_calc", "benign_mass", "malignant_calc", "malignant_mass")
BBOX_COLUMNS = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")

#: The contract of issue #2: every manifest has at least these columns, in this order.
MANIFEST_COLUMNS: tuple[str, ...] = (
    "path", "split", "fold", "label", "patient_id", "side", "view", "abnormality", "pathology",
    "assessment", "density", "subtlety", "source", "mask", *BBOX_COLUMNS, "width", "height",
)
#: Extra columns MammoLab adds: a stable id, how many abnormalities the image has, whether their
#: pathologies disagree, every lesion box as JSON (``[[x0, y0, x1, y1], ...]``) and the integer target.
EXTRA_COLUMNS: tuple[str, ...] = ("image_id", "n_abnormalities", "conflict", "boxes", "target")
REQUIRED_COLUMNS: tuple[str, ...] = ("path", "split", "label", "patient_id")

_INT_COLUMNS = ("fold", "width", "height", "n_abnormalities", "target")


def classes_for(labels: str) -> tuple[str, ...]:
    """Class names, in target order, for a label mode (``binary`` or ``4class``)."""
    if labels == "binary":
        return BINARY_CLASSES
    if labels == "4class":
        return FOURCLASS_CLASSES
    raise MammoLabError(f"--labels: expected 'binary' or '4class', got {labels!r}")


def empty_manifest() -> pd.DataFrame:
    """A manifest with every column and no row."""
    return pd.DataFrame(columns=list(MANIFEST_COLUMNS + EXTRA_COLUMNS))


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Return ``df`` with every schema column present (missing ones empty), in schema order.

    Extra columns a user or a later stage added are kept after the schema columns.
    """
    df = df.copy()
    for col in MANIFEST_COLUMNS + EXTRA_COLUMNS:
        if col not in df.columns:
            df[col] = np.nan if col in BBOX_COLUMNS or col in _INT_COLUMNS else ""
    ordered = list(MANIFEST_COLUMNS + EXTRA_COLUMNS)
    rest = [c for c in df.columns if c not in ordered]
    return df[ordered + rest]


def validate(df: pd.DataFrame, source: str = "manifest") -> pd.DataFrame:
    """Check the columns and values downstream stages rely on; raise one clear error if not."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise MammoLabError(f"{source}: missing column(s) {', '.join(missing)} "
                            f"(expected at least {', '.join(REQUIRED_COLUMNS)})")
    bad_split = sorted(set(df["split"].dropna().astype(str)) - set(SPLITS))
    if bad_split:
        raise MammoLabError(f"{source}: column 'split' has {bad_split}, expected one of {list(SPLITS)}")
    if df["path"].isna().any() or (df["path"].astype(str).str.strip() == "").any():
        raise MammoLabError(f"{source}: column 'path' has empty values")
    dup = df["path"][df["path"].duplicated()]
    if len(dup):
        raise MammoLabError(f"{source}: column 'path' repeats {dup.iloc[0]!r}; each image must appear once")
    return df


def write_manifest(df: pd.DataFrame, dataset_dir: str | Path) -> Path:
    """Write ``manifest.csv`` atomically, sorted by split and path so equal input gives equal bytes."""
    df = normalise(df)
    order = {s: i for i, s in enumerate(SPLITS)}
    df = df.assign(_o=df["split"].map(order).fillna(9)).sort_values(["_o", "path"], kind="stable")
    df = df.drop(columns="_o").reset_index(drop=True)
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = pd.array(pd.to_numeric(df[col], errors="coerce").round(), dtype="Int64")
    for col in BBOX_COLUMNS:
        df[col] = pd.to_numeric(df[col], errors="coerce").round(1)
    path = Path(dataset_dir) / MANIFEST_NAME
    # formula-leading ids (=cmd|..., +, -, @) neutralised for spreadsheets; load_manifest gives them back
    atomic_write_text(path, to_csv_text(df))
    return path


def load_manifest(dataset: str | Path) -> pd.DataFrame:
    """Read a dataset's manifest (folder or CSV path), validated, with typed columns."""
    dataset = Path(dataset)
    path = dataset / MANIFEST_NAME if dataset.is_dir() else dataset
    if not path.is_file():
        raise MammoLabError(f"{path}: no manifest found (expected a dataset folder made by "
                            "'mammolab organize' or 'mammolab preprocess')")
    try:
        df = read_safe_csv(path, dtype={"patient_id": str, "path": str, "mask": str, "label": str,
                                      "split": str, "boxes": str},
                         keep_default_na=False, na_values=[""])
    except Exception as exc:
        raise MammoLabError(f"{path}: unreadable CSV ({exc})") from None
    validate(df, str(path))
    for col in ("mask", "boxes", "side", "view", "abnormality", "pathology", "source", "image_id"):
        if col in df:
            df[col] = df[col].fillna("").astype(str)
    for col in _INT_COLUMNS:
        if col in df:
            df[col] = pd.array(pd.to_numeric(df[col], errors="coerce"), dtype="Int64")
    return df


def parse_boxes(value: Any) -> list[list[float]]:
    """Parse the ``boxes`` column (JSON list of ``[x0, y0, x1, y1]``); empty when absent."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return []
    return [list(map(float, b)) for b in json.loads(value)]


def format_boxes(boxes: Sequence[Sequence[float]]) -> str:
    """Serialise lesion boxes for the ``boxes`` column, rounded to 0.1 px."""
    return json.dumps([[round(float(v), 1) for v in b] for b in boxes], separators=(",", ":"))


def union_box(boxes: Sequence[Sequence[float]]) -> tuple[float, float, float, float] | None:
    """The smallest box containing every box, or ``None`` for no box."""
    if not boxes:
        return None
    arr = np.asarray(boxes, dtype=float)
    return (float(arr[:, 0].min()), float(arr[:, 1].min()), float(arr[:, 2].max()), float(arr[:, 3].max()))


def read_info(dataset: str | Path) -> dict[str, Any]:
    """Read a dataset's or run's ``mammolab.json`` (empty dict when absent)."""
    path = Path(dataset) / INFO_NAME
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MammoLabError(f"{path}: corrupt JSON ({exc})") from None


def write_info(dataset: str | Path, info: dict[str, Any]) -> None:
    """Write ``mammolab.json`` atomically."""
    write_json(Path(dataset) / INFO_NAME, info)


def dataset_classes(dataset: str | Path, df: pd.DataFrame | None = None) -> tuple[str, ...]:
    """The class names of a dataset, from its ``mammolab.json`` or else inferred from its labels."""
    info = read_info(dataset)
    if info.get("classes"):
        return tuple(info["classes"])
    labels = set((df if df is not None else load_manifest(dataset))["label"].astype(str))
    if labels <= set(BINARY_CLASSES):
        return BINARY_CLASSES
    if labels <= set(FOURCLASS_CLASSES):
        return FOURCLASS_CLASSES
    return tuple(sorted(labels))


def manifest_hash(dataset: str | Path) -> str:
    """A content hash of a dataset's manifest, used to key caches and to record what a run saw."""
    path = Path(dataset) / MANIFEST_NAME
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
