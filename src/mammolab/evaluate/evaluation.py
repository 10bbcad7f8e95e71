"""Evaluate a trained run on a split: predictions CSV, metrics JSON and figures inside the run.

``evaluate_run`` predicts the split (and the validation split, whose predictions choose the
Youden operating point) through the training stage's inference API, then ``write_evaluation``
does everything that needs no model: metrics, figures, files. Tests and notebooks call
``write_evaluation`` directly on any predictions table.

Output: ``RUN/eval/<split>/`` (``<split>-tta`` with flip test-time augmentation) holding
``predictions.csv``, ``val_predictions.csv``, ``metrics.json``, ``roc.png``, ``pr.png``,
``confusion.png`` and ``calibration.png``. ``metrics.json`` records the checkpoint it scored and
the settings; a re-run with the same checkpoint and settings is skipped.
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
from mammolab.evaluate import plots
from mammolab.evaluate.metrics import evaluate_predictions
from mammolab.io.atomic import atomic_write_text, read_json, write_json

__all__ = [
    "EVAL_DIRNAME",
    "checkpoint_stamp",
    "eval_dir",
    "evaluate_run",
    "load_evaluation",
    "write_evaluation",
]

EVAL_DIRNAME = "eval"
METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
VAL_PREDICTIONS_NAME = "val_predictions.csv"
FIGURES_BINARY = ("roc.png", "pr.png", "confusion.png", "calibration.png")
FIGURES_MULTICLASS = ("roc.png", "confusion.png")


def eval_dir(run_dir: str | Path, split: str = "test", tta: bool = False) -> Path:
    """Where a run's evaluation on ``split`` lives."""
    return Path(run_dir) / EVAL_DIRNAME / (f"{split}-tta" if tta else split)


def checkpoint_stamp(run_dir: str | Path, checkpoint: str = "best") -> str:
    """A short fingerprint (name, size, mtime) of the checkpoint that scores are computed from.

    Cheap to compute even for large checkpoints, and it changes whenever training writes a new
    one, which is what decides whether an evaluation is stale.
    """
    ckpt_dir = Path(run_dir) / "checkpoints"
    for name in (checkpoint, "last"):
        path = ckpt_dir / f"{name}.ckpt"
        if path.is_file():
            st = path.stat()
            return hashlib.sha256(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    raise MammoLabError(f"{ckpt_dir}: no {checkpoint}.ckpt or last.ckpt (is this a finished 'mammolab train' run?)")


def _confusion_figure(metrics: dict[str, Any], classes: Sequence[str], path: Path) -> None:
    split, n = metrics["split"], metrics["n"]
    if metrics["task"] == "binary":
        fig = plots._new_figure((8.4, 4.0))
        axes = fig.subplots(1, 2)
        for ax, name in zip(axes, ("0.5", "youden"), strict=True):
            op = metrics["operating_points"][name]
            what = "threshold 0.5" if name == "0.5" else f"Youden threshold {op['threshold']:.3f} (chosen on val)"
            if name == "youden" and op.get("source") != "val":
                what = f"Youden threshold {op['threshold']:.3f} (chosen on {split})"
            plots.plot_confusion(op["confusion"], classes, split=split, n=n, subtitle=what, ax=ax)
        plots.save_figure(fig, path)
    else:
        plots.plot_confusion(metrics["confusion"], classes, split=split, n=n, subtitle="argmax", path=path)


def write_figures(metrics: dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Draw the evaluation figures of one metrics dict into ``out_dir``."""
    out_dir = Path(out_dir)
    split, n, classes = metrics["split"], metrics["n"], metrics["classes"]
    if metrics["task"] == "binary":
        auc = metrics["auc"]
        ops = {}
        for name, label in (("0.5", "threshold 0.5"), ("youden", "Youden threshold")):
            op = metrics["operating_points"][name]
            ops[f"{label} ({op['threshold']:.2f})"] = (1 - op["specificity"], op["sensitivity"])
        plots.plot_roc(metrics["roc"]["fpr"], metrics["roc"]["tpr"], split=split, n=n, auc=auc["value"],
                       ci=(auc["ci_low"], auc["ci_high"]), operating_points=ops, path=out_dir / "roc.png")
        pr = metrics["pr"]
        plots.plot_pr(pr["precision"], pr["recall"], split=split, n=n, average_precision=pr["average_precision"],
                      prevalence=pr["prevalence"], path=out_dir / "pr.png")
        cal = metrics["calibration"]
        plots.plot_calibration(cal["bins"], split=split, n=n, brier=cal["brier"], ece=cal["ece"],
                               path=out_dir / "calibration.png")
        names = FIGURES_BINARY
    else:
        plots.plot_multiclass_roc(metrics["roc_per_class"], metrics["auc_per_class"], split=split, n=n,
                                  path=out_dir / "roc.png")
        names = FIGURES_MULTICLASS
    _confusion_figure(metrics, classes, out_dir / "confusion.png")
    return [out_dir / f for f in names]


def _with_predicted_labels(df: pd.DataFrame, metrics: dict[str, Any], classes: Sequence[str]) -> pd.DataFrame:
    df = df.copy()
    if metrics["task"] == "binary":
        p = df["prob"].to_numpy(dtype=float)
        t = metrics["operating_points"]["youden"]["threshold"]
        df["pred_label"] = np.where(p >= 0.5, classes[1], classes[0])
        df["pred_label_youden"] = np.where(p >= t, classes[1], classes[0])
    else:
        probs = df[[f"prob_{c}" for c in classes]].to_numpy(dtype=float)
        df["pred_label"] = [classes[i] for i in probs.argmax(axis=1)]
    return df


def write_evaluation(pred_df: pd.DataFrame, out_dir: str | Path, *, classes: Sequence[str], split: str = "test",
                     val_df: pd.DataFrame | None = None, n_boot: int = 2000, seed: int = 0,
                     extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compute metrics of ``pred_df``, then write predictions, ``metrics.json`` and figures to ``out_dir``.

    ``metrics.json`` is written last, so its presence means the folder is complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = evaluate_predictions(pred_df, val_df, classes=classes, split=split, n_boot=n_boot, seed=seed)
    metrics.update(extra or {})
    csv = _with_predicted_labels(pred_df, metrics, list(classes)).to_csv(index=False, lineterminator="\n")
    atomic_write_text(out_dir / PREDICTIONS_NAME, csv)
    if val_df is not None:
        atomic_write_text(out_dir / VAL_PREDICTIONS_NAME, val_df.to_csv(index=False, lineterminator="\n"))
    metrics["figures"] = [p.name for p in write_figures(metrics, out_dir)]
    write_json(out_dir / METRICS_NAME, metrics)
    return metrics


def load_evaluation(run_dir: str | Path, split: str = "test", tta: bool = False) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read a finished evaluation (metrics dict and predictions table) of a run."""
    folder = eval_dir(run_dir, split, tta)
    mpath, ppath = folder / METRICS_NAME, folder / PREDICTIONS_NAME
    if not mpath.is_file() or not ppath.is_file():
        raise MammoLabError(f"{folder}: no evaluation found (run 'mammolab evaluate {run_dir} --split {split}' first)")
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MammoLabError(f"{mpath}: corrupt JSON ({exc})") from None
    preds = pd.read_csv(ppath, dtype={"patient_id": str, "image_id": str, "path": str}, keep_default_na=False,
                        na_values=[""])
    return metrics, preds


def _is_current(folder: Path, key: dict[str, Any]) -> bool:
    old = read_json(folder / METRICS_NAME)
    return (isinstance(old, dict) and old.get("key") == key
            and all((folder / f).is_file() for f in old.get("figures", [])))


def evaluate_run(run_dir: str | Path, split: str = "test", tta: bool = False, *, n_boot: int = 2000, seed: int = 0,
                 batch_size: int | None = None, checkpoint: str = "best", force: bool = False) -> Path:
    """Predict ``split`` with a run's checkpoint and write the evaluation into the run; return its folder.

    The validation split is predicted too (unless ``split`` is ``val`` itself) so the second
    operating point is chosen on data the test metrics never saw. Skipped when the folder already
    holds an evaluation of the same checkpoint with the same settings (``force`` redoes it).
    """
    from mammolab.train.inference import load_run, predict_split

    run_dir = Path(run_dir)
    if split not in ("train", "val", "test"):
        raise MammoLabError(f"--split: expected train, val or test, got {split!r}")
    if not run_dir.is_dir():
        raise MammoLabError(f"{run_dir}: run folder not found")
    folder = eval_dir(run_dir, split, tta)
    key = {"checkpoint": checkpoint_stamp(run_dir, checkpoint), "split": split, "tta": bool(tta),
           "n_boot": int(n_boot), "seed": int(seed)}
    if not force and _is_current(folder, key):
        return folder
    run = load_run(run_dir, checkpoint=checkpoint)
    kwargs: dict[str, Any] = {"tta": tta}
    if batch_size:
        kwargs["batch_size"] = batch_size
    pred_df = predict_split(run, split=split, **kwargs)
    if len(pred_df) == 0:
        raise MammoLabError(f"{run_dir}: the {split} split of the run's dataset has no images")
    val_df = None
    if split != "val":
        val_df = predict_split(run, split="val", **kwargs)
        val_df = val_df if len(val_df) else None
    else:
        val_df = pred_df
    write_evaluation(pred_df, folder, classes=list(run.classes), split=split, val_df=val_df, n_boot=n_boot,
                     seed=seed, extra={"key": key, "tta": bool(tta), "run": run_dir.name})
    return folder
