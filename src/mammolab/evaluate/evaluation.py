"""Evaluate a trained run on a split: predictions CSV, metrics JSON and figures inside the run.

``evaluate_run`` predicts the split (and the validation split, whose predictions choose the
Youden operating point) through the run's recipe, the one inference path ``predict`` and ``serve``
take (:class:`mammolab.infer.predictor.Predictor`), then ``write_evaluation`` does everything
that needs no model: metrics, figures, files. Tests and notebooks call ``write_evaluation``
directly on any predictions table. With ``dataset=OTHER`` (external validation) the recipe is
applied to another organized dataset's images; the result goes to ``RUN/eval/<OTHER>-<split>/``
and its ``metrics.json`` says ``external: true`` with the dataset's name, path and hashes.

Output: ``RUN/eval/<split>/`` (``<split>-tta`` with flip test-time augmentation) holding
``predictions.csv``, ``val_predictions.csv``, ``metrics.json``, ``roc.png``, ``pr.png``,
``confusion.png`` and ``calibration.png``. ``metrics.json`` records the checkpoint it scored and
the settings; a re-run with the same checkpoint and settings is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.evaluate import plots
from mammolab.evaluate.metrics import evaluate_predictions
from mammolab.infer.core import positive_probability
from mammolab.infer.predictor import Predictor
from mammolab.infer.runfiles import EVAL_DIRNAME, checkpoint_stamp, eval_dir
from mammolab.infer.tables import predict_breasts, predict_frame
from mammolab.infer.threshold import record_threshold
from mammolab.io.atomic import atomic_write_text, read_json, write_json
from mammolab.io.csvsafe import read_csv as read_safe_csv
from mammolab.io.csvsafe import to_csv_text
from mammolab.io.lock import locks_output
from mammolab.train.inference import SUBGROUP_COLUMNS, run_datamodule

__all__ = [
    "EVAL_DIRNAME",
    "checkpoint_stamp",
    "eval_dir",
    "evaluate_run",
    "load_evaluation",
    "write_evaluation",
]

METRICS_NAME = "metrics.json"
PREDICTIONS_NAME = "predictions.csv"
VAL_PREDICTIONS_NAME = "val_predictions.csv"
FIGURES_BINARY = ("roc.png", "pr.png", "confusion.png", "calibration.png")
FIGURES_MULTICLASS = ("roc.png", "confusion.png")


def _confusion_figure(metrics: dict[str, Any], classes: Sequence[str], path: Path) -> None:
    split, n = metrics["split"], metrics["n"]
    if metrics["task"] == "binary":
        fig = plots._new_figure((8.4, 4.0))
        axes = fig.subplots(1, 2)
        for ax, name in zip(axes, ("0.5", "youden"), strict=True):
            op = metrics["operating_points"][name]
            what = "threshold 0.5" if name == "0.5" else f"Youden threshold {op['threshold']:.3f} (chosen on val)"
            if name == "youden" and op.get("fallback"):
                what = f"fallback threshold {op['threshold']:.3f} (no Youden: one class)"
            elif name == "youden" and op.get("source") != "val":
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
    csv = to_csv_text(_with_predicted_labels(pred_df, metrics, list(classes)))
    atomic_write_text(out_dir / PREDICTIONS_NAME, csv)
    if val_df is not None:
        atomic_write_text(out_dir / VAL_PREDICTIONS_NAME, to_csv_text(val_df))
    metrics["figures"] = [p.name for p in write_figures(metrics, out_dir)]
    write_json(out_dir / METRICS_NAME, metrics)
    return metrics


def load_evaluation(run_dir: str | Path, split: str = "test", tta: bool = False, *,
                    dataset: str | Path | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """Read a finished evaluation (metrics dict and predictions table) of a run; ``dataset``: an external one."""
    folder = eval_dir(run_dir, split, tta) if dataset is None else external_dir(run_dir, dataset, split, tta)
    mpath, ppath = folder / METRICS_NAME, folder / PREDICTIONS_NAME
    if not mpath.is_file() or not ppath.is_file():
        raise MammoLabError(f"{folder}: no evaluation found (run 'mammolab evaluate {run_dir} --split {split}' first)")
    try:
        metrics = json.loads(mpath.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MammoLabError(f"{mpath}: corrupt JSON ({exc})") from None
    preds = read_safe_csv(ppath, dtype={"patient_id": str, "image_id": str, "path": str}, keep_default_na=False,
                        na_values=[""])
    return metrics, preds


def _is_current(folder: Path, key: dict[str, Any]) -> bool:
    old = read_json(folder / METRICS_NAME)
    return (isinstance(old, dict) and old.get("key") == key
            and all((folder / f).is_file() for f in old.get("figures", [])))


def _table(frame: pd.DataFrame, probs: np.ndarray, classes: Sequence[str], split: str | None) -> pd.DataFrame:
    """The predictions table of manifest rows: ids, label, target, P(malignant), per-class probabilities
    (multi-class) and the manifest's subgroup columns."""
    index = {c: i for i, c in enumerate(classes)}
    out = pd.DataFrame({
        "path": frame["path"].astype(str).to_numpy(),
        "image_id": frame["image_id"].astype(str).to_numpy() if "image_id" in frame else "",
        "patient_id": frame["patient_id"].astype(str).to_numpy(),
        "split": frame["split"].astype(str).to_numpy() if split is None else split,
        "label": frame["label"].astype(str).to_numpy(),
        "target": frame["label"].astype(str).map(index).to_numpy(dtype=np.int64),
        "prob": positive_probability(probs, classes).astype(np.float64),
    })
    if probs.ndim == 2:
        for i, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, i].astype(np.float64)
    for col in SUBGROUP_COLUMNS:
        if col in frame:
            out[col] = frame[col].to_numpy()
    return out


def external_dir(run_dir: str | Path, dataset: str | Path, split: str = "test", tta: bool = False) -> Path:
    """Where a run's evaluation on another dataset lives: ``RUN/eval/<dataset name>-<split>[-tta]/``."""
    name = f"{Path(dataset).resolve().name}-{split}"
    return Path(run_dir) / EVAL_DIRNAME / (f"{name}-tta" if tta else name)


def _external_source(predictor: Any, dataset: Path) -> tuple[Path, str, list[str]]:
    """Which folder of OTHER's chain to read and where its images enter the recipe.

    An organized dataset enters at ``source`` (the run's conversion and preprocessing are applied).
    A preprocessed dataset whose preprocessing is exactly the run's enters at ``preprocessed``;
    one preprocessed otherwise is traced back to the organized dataset it came from, whose images
    get the run's own preprocessing.
    """
    from mammolab.recipe import dataset_chain

    chain = dataset_chain(dataset)
    stages = [info.get("stage") for _, info in chain]
    notes: list[str] = []
    if "preprocess" not in stages:
        return dataset, "source", notes
    steps = [s for _, info in reversed(chain) if info.get("stage") == "preprocess"
             for s in (info.get("config") or {}).get("steps", [])]
    first_dir, first = chain[-1]
    if steps == predictor.recipe.steps() and first.get("stage") not in ("preprocess", "augment"):
        return dataset, "preprocessed", notes
    if first.get("stage") in ("preprocess", "augment"):
        raise MammoLabError(f"--dataset: {dataset} was preprocessed differently from the run, and its source "
                            f"dataset {(first.get('source') or {}).get('dataset')} is not there to apply the run's "
                            "recipe to; pass the organized dataset instead")
    notes.append(f"{dataset} was preprocessed differently from the run: its organized source {first_dir} was "
                 "used, with the run's own preprocessing")
    return first_dir, "source", notes


@locks_output("run_dir", name="evaluate", create=False)  # it writes RUN/eval and the run's recipe threshold
def evaluate_run(run_dir: str | Path, split: str = "test", tta: bool = False, *, n_boot: int = 2000, seed: int = 0,
                 batch_size: int | None = None, checkpoint: str = "best", force: bool = False,
                 dataset: str | Path | None = None) -> Path:
    """Predict ``split`` with a run's checkpoint and write the evaluation into the run; return its folder.

    Every image goes through the run's recipe (:class:`mammolab.infer.predictor.Predictor`), the
    path ``predict`` and ``serve`` take. Internally the validation split is predicted too (unless
    ``split`` is ``val`` itself) so the second operating point is chosen on data the test metrics
    never saw; that threshold is recorded in the run's recipe. With ``dataset`` (another organized
    dataset: external validation) the run's recipe is applied to its images, ``split`` may also be
    ``all``, the operating point is still the run's own validation one, and the result goes to
    ``RUN/eval/<dataset>-<split>/``. Skipped when the folder already holds an evaluation of the same
    checkpoint with the same settings (``force`` redoes it).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MammoLabError(f"{run_dir}: run folder not found")
    if dataset is not None:
        return _evaluate_external(run_dir, Path(dataset), split, tta, n_boot=n_boot, seed=seed,
                                  batch_size=batch_size, checkpoint=checkpoint, force=force)
    if split not in ("train", "val", "test"):
        raise MammoLabError(f"--split: expected train, val or test, got {split!r}")
    folder = eval_dir(run_dir, split, tta)
    key = {"checkpoint": checkpoint_stamp(run_dir, checkpoint), "split": split, "tta": bool(tta),
           "n_boot": int(n_boot), "seed": int(seed)}
    if not force and _is_current(folder, key):
        return folder
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    run = predictor
    if run.config.views != "single":  # two-view runs: one prediction per breast, through the same Predictor
        breasts = predict_breasts(run, split, tta, batch_size or 16)
        val_b = breasts if split == "val" else predict_breasts(run, "val", tta, batch_size or 16)
        metrics = write_evaluation(breasts, folder, classes=list(run.classes), split=split,
                                   val_df=val_b if len(val_b) else None, n_boot=n_boot, seed=seed,
                                   extra={"key": key, "tta": bool(tta), "run": run_dir.name, "external": False,
                                          "unit": "breast"})
        if not tta and checkpoint == "best" and len(val_b):
            record_threshold(run_dir, metrics, len(val_b), unit="breasts")
        return folder
    dm = run_datamodule(run, hint="evaluate it on a dataset that is there with --dataset")
    kwargs: dict[str, Any] = {"tta": tta, "start": "preprocessed"}
    if batch_size:
        kwargs["batch_size"] = batch_size

    def predict(part: str) -> pd.DataFrame:
        frame = dm.frames[part]
        probs, _ = predict_frame(predictor, run.dataset_dir, frame, **kwargs)
        return _table(frame, probs, run.classes, part)

    pred_df = predict(split)
    if len(pred_df) == 0:
        raise MammoLabError(f"{run_dir}: the {split} split of the run's dataset has no images")
    val_df = pred_df if split == "val" else predict("val")
    val_df = val_df if len(val_df) else None
    metrics = write_evaluation(pred_df, folder, classes=list(run.classes), split=split, val_df=val_df, n_boot=n_boot,
                               seed=seed, extra={"key": key, "tta": bool(tta), "run": run_dir.name,
                                                 "external": False, "recipe_hash": predictor.recipe.hash()})
    if not tta and checkpoint == "best" and val_df is not None:
        record_threshold(run_dir, metrics, len(val_df))
    return folder


def _evaluate_external(run_dir: Path, dataset: Path, split: str, tta: bool, *, n_boot: int, seed: int,
                       batch_size: int | None, checkpoint: str, force: bool) -> Path:
    from mammolab.data.manifest import load_manifest, manifest_hash, read_info

    if split not in ("train", "val", "test", "all"):
        raise MammoLabError(f"--split: expected test, val, train or all, got {split!r}")
    if not (dataset / "manifest.csv").is_file():
        raise MammoLabError(f"--dataset: {dataset} is not a dataset folder (no manifest.csv; make one with "
                            "'mammolab organize')")
    folder = external_dir(run_dir, dataset, split, tta)
    key = {"checkpoint": checkpoint_stamp(run_dir, checkpoint), "split": split, "tta": bool(tta),
           "n_boot": int(n_boot), "seed": int(seed), "dataset": str(dataset.resolve()),
           "manifest_hash": manifest_hash(dataset)}
    if not force and _is_current(folder, key):
        return folder
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    classes = list(predictor.classes)
    read_from, start, notes = _external_source(predictor, dataset)
    frame = load_manifest(read_from)
    if split != "all":
        frame = frame[frame["split"].astype(str) == split]
    if frame.empty:
        raise MammoLabError(f"--dataset: {read_from} has no images in split {split!r} (try --split all)")
    unknown = sorted(set(frame["label"].astype(str)) - set(classes))
    if unknown:
        raise MammoLabError(f"--dataset: {read_from} has label(s) {unknown} that the run does not know "
                            f"(its classes: {classes})")
    kwargs: dict[str, Any] = {"tta": tta, "start": start}
    if batch_size:
        kwargs["batch_size"] = batch_size
    probs, warnings = predict_frame(predictor, read_from, frame, **kwargs)
    pred_df = _table(frame, probs, classes, None)
    # The operating point stays the run's own: chosen on its validation split, never on the external data.
    val_df = None
    val_path = eval_dir(run_dir, "test", tta) / VAL_PREDICTIONS_NAME
    if val_path.is_file():
        val_df = read_safe_csv(val_path, dtype={"patient_id": str, "image_id": str, "path": str})
    else:
        notes.append(f"{val_path} not found (run 'mammolab evaluate {run_dir}' first): the Youden threshold is "
                     "chosen on the external data itself, which is optimistic")
    info = read_info(dataset)
    extra = {"key": key, "tta": bool(tta), "run": run_dir.name, "external": True, "eval_split": split,
             "dataset": {"name": dataset.resolve().name, "path": str(dataset.resolve()),
                         "manifest_hash": manifest_hash(dataset), "config_hash": info.get("config_hash"),
                         "stage": info.get("stage"), "read_from": str(read_from.resolve()), "start": start},
             "recipe_hash": predictor.recipe.hash(), "notes": notes,
             "warnings": {"n": len(warnings), "first": sorted(set(warnings))[:5]}}
    write_evaluation(pred_df, folder, classes=classes, split=f"{dataset.resolve().name} {split}", val_df=val_df,
                     n_boot=n_boot, seed=seed, extra=extra)
    return folder
