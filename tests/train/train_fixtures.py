"""Generated datasets of learnable lesion patches for the train-stage tests (importable as ``train_fixtures``).

Benign = a smooth round blob, malignant = a brighter spiculated blob, both on smooth random
"tissue" with noise, as 16-bit PNG patches. Two views per patient (so splits must be by patient),
written with the real manifest writer, so the datamodule reads exactly what organize/preprocess
produce.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from mammolab.data.manifest import write_info, write_manifest
from mammolab.io import write_png


def lesion_patch(size: int, malignant: bool, rng: np.random.Generator) -> np.ndarray:
    """One 16-bit patch: tissue + lesion (round and soft, or spiculated and brighter) + noise."""
    tissue = cv2.GaussianBlur(rng.normal(0, 1, (size, size)), (0, 0), size / 10)
    tissue = (tissue - tissue.mean()) / (tissue.std() + 1e-9)
    img = 18000 + 2500 * tissue
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.uniform(-size / 10, size / 10, 2)
    r0 = size * rng.uniform(0.12, 0.2)
    dist, ang = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    if malignant:
        spikes = rng.integers(7, 13)
        phase = rng.uniform(0, 2 * np.pi)
        radius = r0 * (1 + 0.55 * np.maximum(0, np.cos(spikes * ang + phase)) ** 4)
        lesion = 1 / (1 + np.exp((dist - radius) / 0.8))
        amp = rng.uniform(12000, 17000)
    else:
        lesion = np.exp(-0.5 * (dist / r0) ** 2)
        amp = rng.uniform(11000, 16000)
    img = img + amp * lesion + rng.normal(0, 1200, (size, size))
    return np.clip(img, 0, 65535).astype(np.uint16)


def make_lesion_dataset(root: Path, *, patients: int = 80, size: int = 64, seed: int = 0,
                        shuffle_labels: bool = False, val: bool = True, folds: int = 0) -> Path:
    """A dataset folder (PNGs + manifest.csv + mammolab.json) of ``2 * patients`` lesion patches."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    order = rng.permutation(patients)
    n_test = max(2, patients // 8)
    n_val = max(2, patients // 5) if val else 0
    rows = []
    for p in range(patients):
        malignant = bool(p % 2)
        rank = int(np.flatnonzero(order == p)[0])
        split = "test" if rank < n_test else ("val" if rank < n_test + n_val else "train")
        for view in ("CC", "MLO"):
            label = "malignant" if malignant else "benign"
            rel = f"{split}/{label}/P{p:04d}_{view}.png"
            write_png(root / rel, lesion_patch(size, malignant, rng))
            rows.append({"path": rel, "split": split, "label": label, "patient_id": f"P{p:04d}", "side": "LEFT",
                         "view": view, "abnormality": "mass", "pathology": label.upper(), "density": 1 + p % 4,
                         "width": size, "height": size, "image_id": f"P{p:04d}_{view}",
                         "target": int(malignant)})
    df = pd.DataFrame(rows)
    if folds:
        official = df["split"] != "test"
        patients_tv = sorted(df.loc[official, "patient_id"].unique())
        fold_of = {pid: i % folds for i, pid in enumerate(patients_tv)}
        df.loc[official, "fold"] = df.loc[official, "patient_id"].map(fold_of)
    if shuffle_labels:
        # Labels drawn independently of the images, per patient (the files keep their content).
        pids = df["patient_id"].unique()
        fake = dict(zip(pids, rng.permutation([p % 2 for p in range(len(pids))]), strict=True))
        df["target"] = df["patient_id"].map(fake).astype(int)
        df["label"] = np.where(df["target"] == 1, "malignant", "benign")
    write_manifest(df, root)
    write_info(root, {"stage": "test-fixture", "config_hash": f"lesions-{seed}-{size}-{int(shuffle_labels)}",
                      "classes": ["benign", "malignant"], "labels": "binary"})
    return root
