"""Predictions of many images at once through the :class:`~mammolab.infer.predictor.Predictor`:
manifest rows of any dataset (:func:`predict_frame`), a split of a run's own dataset
(:func:`predict_split`) and a split's breasts of a two-view run (:func:`predict_breasts`)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.infer.apply import Prepared
from mammolab.infer.core import positive_probability
from mammolab.io import read_image
from mammolab.io.memory import retain_freed_memory
from mammolab.train.inference import SUBGROUP_COLUMNS, run_datamodule
from mammolab.train.views import TwoViewDataModule

__all__ = ["predict_breasts", "predict_frame", "predict_split"]

SPLITS = ("train", "val", "test")


def _empty(predictor: Any) -> np.ndarray:
    return np.zeros((0,) if predictor.binary else (0, len(predictor.classes)), dtype=np.float32)



def _add_probabilities(out: pd.DataFrame, probs: np.ndarray, predictor: Any) -> None:
    """The probability columns every prediction table has: ``prob`` (P(malignant)) and, for a multi-class
    run, one ``prob_<class>`` per class."""
    out["prob"] = positive_probability(probs, predictor.classes).astype(np.float64)
    if not predictor.binary:
        for i, c in enumerate(predictor.classes):
            out[f"prob_{c}"] = probs[:, i].astype(np.float64)

def predict_frame(predictor: Any, dataset: str | Path, frame: pd.DataFrame, *, start: str = "source",
                  tta: bool = False, batch_size: int = 64, workers: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Probabilities for the manifest rows ``frame`` of ``dataset`` through the recipe, and the warnings.

    Images are read and prepared in a thread pool (OpenCV releases the GIL), then batched through
    the model in order. An image that cannot be read is an error naming it: a score over a split
    with silent holes would not be the split's.
    """
    retain_freed_memory()  # full-size temporaries reused from image to image (see mammolab.io.memory)
    dataset = Path(dataset)
    paths = [dataset / str(p) for p in frame["path"]]

    def prep(path: Path) -> Prepared:
        try:
            return predictor.prepare(read_image(path), start=start)
        except MammoLabError as exc:
            msg = str(exc)
            raise MammoLabError(msg if str(path) in msg else f"{path}: {msg}") from None

    n_workers = workers or min(8, os.cpu_count() or 1)
    probs: list[np.ndarray] = []
    warnings: list[str] = []
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        for i in range(0, len(paths), batch_size):
            chunk = list(pool.map(prep, paths[i:i + batch_size]))
            warnings += [w for pr in chunk for w in pr.warnings]
            probs.append(predictor.probabilities([pr.tensor for pr in chunk], tta=tta, batch_size=batch_size))
    if not probs:
        return _empty(predictor), warnings
    return np.concatenate(probs), warnings


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise MammoLabError(f"--split: expected train, val or test, got {split!r}")


def predict_split(predictor: Any, split: str = "test", tta: bool = False, batch_size: int = 64) -> pd.DataFrame:
    """Predict every image of a split of the run's dataset (the run's own fold/subset roles), from its
    image cache, through the predictor.

    Columns: path, image_id, patient_id, split, label, target, prob (P(malignant); for multi-class
    runs the summed probability of the malignant classes) and ``prob_<class>`` for multi-class,
    plus the manifest's subgroup columns (view, density, abnormality, ...).
    """
    _check_split(split)
    dm = run_datamodule(predictor)
    frame = dm.frames[split]
    probs = _empty(predictor)
    if len(frame):
        ds = dm.dataset(split)
        probs = predictor.probabilities([ds[j][0].numpy() for j in range(len(ds))], tta=tta, batch_size=batch_size)
    out = pd.DataFrame({
        "path": frame["path"].astype(str).to_numpy(),
        "image_id": frame["image_id"].astype(str).to_numpy() if "image_id" in frame else "",
        "patient_id": frame["patient_id"].astype(str).to_numpy(),
        "split": split,
        "label": frame["label"].astype(str).to_numpy(),
        "target": frame["target"].to_numpy(dtype=np.int64),
    })
    _add_probabilities(out, probs, predictor)
    for col in SUBGROUP_COLUMNS:
        if col in frame:
            out[col] = frame[col].to_numpy()
    return out


def predict_breasts(predictor: Any, split: str = "test", tta: bool = False, batch_size: int = 16) -> pd.DataFrame:
    """Predict every breast of a split with a two-view run's predictor (breasts paired as in training).

    Columns: image_id (the breast id), patient_id, side, split, label, target, prob (P(malignant))
    and ``prob_<class>`` for multi-class, views (``cc+mlo``, ``cc`` or ``mlo``), cc_path, mlo_path,
    n_images, abnormality, density.
    """
    _check_split(split)
    dm = run_datamodule(predictor, TwoViewDataModule)
    breasts = dm.breasts[split]
    probs = _empty(predictor)
    if len(breasts):
        ds = dm.dataset(split)
        chunks = []
        for i in range(0, len(ds), batch_size):
            items = [ds[j] for j in range(i, min(len(ds), i + batch_size))]
            x = np.stack([it[0].numpy() for it in items])
            present = np.stack([it[2].numpy() for it in items])
            chunks.append(predictor.breast_probabilities(x, present, tta=tta))
        probs = np.concatenate(chunks)
    out = pd.DataFrame({
        "image_id": breasts["breast_id"].astype(str).to_numpy(),
        "patient_id": breasts["patient_id"].astype(str).to_numpy(),
        "side": breasts["side"].astype(str).to_numpy(),
        "split": split,
        "label": breasts["label"].astype(str).to_numpy(),
        "target": breasts["target"].to_numpy(dtype=np.int64),
    })
    _add_probabilities(out, probs, predictor)
    for col in ("views", "cc_path", "mlo_path", "n_images", "abnormality", "density"):
        if col in breasts:
            out[col] = breasts[col].to_numpy()
    return out
