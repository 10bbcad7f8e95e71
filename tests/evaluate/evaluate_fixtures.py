"""Fake run folders for the evaluate stage: what training writes, with synthetic predictions.

The report and the evaluation writer need no model; these helpers let them be tested without
training. Importable as ``evaluate_fixtures`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mammolab.evaluate.evaluation import eval_dir, write_evaluation

CLASSES = ["benign", "malignant"]


def synthetic_predictions(n: int, separation: float, seed: int, split: str = "test") -> pd.DataFrame:
    """Two images per patient, labels per patient, probabilities that separate the classes by ``separation``."""
    rng = np.random.default_rng(seed)
    patients = n // 2
    label = np.repeat(np.random.default_rng(0).integers(0, 2, patients), 2)  # same truth for every run
    logit = separation * (label - 0.5) * 2 + rng.normal(0, 1, n)
    prob = 1 / (1 + np.exp(-logit))
    ids = [f"{split}_{i:03d}" for i in range(n)]
    return pd.DataFrame({
        "path": [f"{split}/{CLASSES[t]}/{i}.png" for i, t in zip(ids, label, strict=True)],
        "image_id": ids, "patient_id": [f"P_{i // 2:03d}" for i in range(n)], "split": split,
        "label": [CLASSES[t] for t in label], "target": label, "prob": np.round(prob, 4),
        "view": np.where(np.arange(n) % 2 == 0, "CC", "MLO"), "density": (np.arange(n) // 2 % 4 + 1).astype(str),
        "abnormality": np.where(np.arange(n) // 2 % 3 == 0, "calcification", "mass"),
    })


def make_fake_run(root: Path, name: str, *, model: str, separation: float, seed: int, epochs: int = 4,
                  n_test: int = 80, tune: bool = False) -> Path:
    """A run folder as training leaves it (run.json, metrics.csv) plus a written evaluation."""
    run = root / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "model": model, "regime": "cft", "classes": CLASSES,
        "parameters": {"total": 1_234_567 + seed, "trainable": 1_000_000},
        "epochs": epochs, "train_time_seconds": 42.5 + seed, "throughput": 321.0,
    }))
    rng = np.random.default_rng(seed)
    ep = np.arange(epochs)
    pd.DataFrame({
        "epoch": ep, "train_loss": 0.7 - 0.1 * ep, "train_acc": 0.5 + 0.08 * ep, "train_auc": 0.55 + 0.08 * ep,
        "val_loss": 0.72 - 0.08 * ep + rng.normal(0, 0.01, epochs), "val_acc": 0.5 + 0.06 * ep,
        "val_auc": 0.55 + 0.07 * ep, "lr": 1e-3, "time": 1.0 + ep,
    }).to_csv(run / "metrics.csv", index=False)
    test = synthetic_predictions(n_test, separation, seed)
    val = synthetic_predictions(40, separation, seed + 100, split="val")
    write_evaluation(test, eval_dir(run, "test"), classes=CLASSES, split="test", val_df=val, n_boot=300,
                     extra={"tta": False, "run": name})
    if tune:
        from mammolab.evaluate import plots

        fig = plots.plot_pr([1.0, 0.5], [0.0, 1.0], split="val", n=10)
        (run / "tune").mkdir()
        plots.save_figure(fig, run / "tune" / "optimization_history.png")
    return run


def make_box_dataset(root: Path, *, patients: int = 24, size: int = 48, seed: int = 0) -> Path:
    """A tiny dataset folder of 16-bit lesion images with their lesion boxes in the manifest.

    Malignant lesions are brighter and larger than benign ones, at a random place, on smooth noisy
    tissue; two views per patient; splits by patient (test 6, val 5 patients).
    """
    import cv2

    from mammolab.data.manifest import format_boxes, write_info, write_manifest
    from mammolab.io import write_png

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    order = rng.permutation(patients)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    rows = []
    for p in range(patients):
        malignant = bool(p % 2)
        rank = int(np.flatnonzero(order == p)[0])
        split = "test" if rank < 6 else ("val" if rank < 11 else "train")
        for view in ("CC", "MLO"):
            tissue = cv2.GaussianBlur(rng.normal(0, 1, (size, size)), (0, 0), size / 10)
            img = 16000 + 2500 * tissue / (tissue.std() + 1e-9) + rng.normal(0, 800, (size, size))
            r = size * (0.12 if malignant else 0.08)
            cy, cx = rng.uniform(0.25 * size, 0.75 * size, 2)
            img += (22000 if malignant else 9000) * np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
            label = CLASSES[int(malignant)]
            rel = f"{split}/{label}/P{p:03d}_{view}.png"
            write_png(root / rel, np.clip(img, 0, 65535).astype(np.uint16))
            box = [max(0.0, cx - 2 * r), max(0.0, cy - 2 * r), min(size, cx + 2 * r), min(size, cy + 2 * r)]
            rows.append({"path": rel, "split": split, "label": label, "patient_id": f"P{p:03d}", "side": "LEFT",
                         "view": view, "abnormality": "mass", "pathology": label.upper(), "density": 1 + p % 4,
                         "width": size, "height": size, "image_id": f"P{p:03d}_{view}", "target": int(malignant),
                         "bbox_x0": box[0], "bbox_y0": box[1], "bbox_x1": box[2], "bbox_y1": box[3],
                         "boxes": format_boxes([box]), "n_abnormalities": 1})
    write_manifest(pd.DataFrame(rows), root)
    write_info(root, {"stage": "test-fixture", "config_hash": f"boxes-{seed}-{size}", "classes": CLASSES,
                      "labels": "binary"})
    return root
