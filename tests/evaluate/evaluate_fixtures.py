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
