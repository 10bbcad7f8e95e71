"""MammoLab from Python: one function per pipeline stage, the same code the CLI runs.

``import mammolab`` stays fast (torch and friends load on the first call), and every function
returns a typed result that a notebook can inspect::

    import mammolab as ml

    data = ml.organize("~/CBIS-DDSM", csv_dir="~/cbis-csv", out="data/mass-roi", kind="roi", roi_size=256)
    pp = ml.preprocess(data.out, "data/mass-roi-pp", size=(128, 128))
    run = ml.train(pp.out, out="runs/r18", model="resnet18_cft", epochs=10, loggers=["csv"])
    ev = ml.evaluate(run.run_dir)
    print(ev.auc, ev.auc_ci)
    ex = ml.explain(run.run_dir)
    report = ml.compare(["runs/r18", "runs/effb3"], out="report")

``organize``, ``preprocess``, ``predict`` and ``load_run`` are the stage functions themselves;
``train``, ``evaluate``, ``explain`` and ``compare`` wrap the CLI's calls into results that carry
the tables as well as the paths.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from mammolab.errors import MammoLabError
from mammolab.io.csvsafe import read_csv as read_safe_csv

if TYPE_CHECKING:
    from mammolab.train.config import TrainConfig
    from mammolab.train.fit import RunResult

__all__ = ["API", "Comparison", "Evaluation", "Explanation", "compare", "evaluate", "explain", "train"]

#: The public functions of ``mammolab`` and where each lives (``module:attribute``). ``train``, ``evaluate``,
#: ``explain`` and ``preprocess`` are also subpackages: ``mammolab.train`` is the package, and calling it
#: calls the function (see :mod:`mammolab._callable`).
API: dict[str, str] = {
    "organize": "mammolab.data.organize:organize",
    "preprocess": "mammolab.preprocess.pipeline:preprocess",
    "train": "mammolab.api:train",
    "evaluate": "mammolab.api:evaluate",
    "explain": "mammolab.api:explain",
    "predict": "mammolab.evaluate.predict:predict_files",
    "compare": "mammolab.api:compare",
    "load_run": "mammolab.infer.predictor:load_run",
}


def train(dataset: str | Path, config: TrainConfig | dict[str, Any] | str | Path | None = None, *,
          out: str | Path, resume: bool = False, overwrite: bool = False, callbacks: Sequence[Any] = (),
          loggers: Sequence[Any] | None = None, **options: Any) -> RunResult:
    """Train one model on a dataset folder into the run folder ``out``, as ``mammolab train`` does.

    ``config`` is a :class:`~mammolab.train.config.TrainConfig`, a mapping or a YAML file; ``options``
    are training options by name (``model="resnet18_cft"``, ``epochs=10``, ``augment={"hflip": 0}``)
    and win over ``config``, exactly like command-line options. ``loggers`` adds experiment tracking:
    names (``"csv"``, ``"tensorboard"``, ``"mlflow"``, ``"wandb"``) or Lightning logger objects.
    A finished run with the same config is returned as it is (``result.skipped``).
    """
    from mammolab.train.config import TrainConfig, resolve_train_config
    from mammolab.train.fit import train as fit

    if isinstance(config, TrainConfig) and not options:
        cfg = config
    else:
        base = config.model_dump(mode="json") if isinstance(config, TrainConfig) else config
        cfg = resolve_train_config(base, overrides=options)
    kwargs: dict[str, Any] = {"resume": resume, "overwrite": overwrite, "callbacks": callbacks}
    if loggers:
        kwargs["loggers"] = list(loggers)
    return fit(dataset, cfg, out, **kwargs)


@dataclass
class Evaluation:
    """A run's evaluation on one split: the folder it is written to, every metric and the per-image table."""

    folder: Path
    metrics: dict[str, Any]
    predictions: pd.DataFrame

    @property
    def auc(self) -> float | None:
        """AUC (macro one-vs-rest for 4 classes)."""
        return (self.metrics.get("auc") or {}).get("value")

    @property
    def auc_ci(self) -> tuple[float | None, float | None]:
        """95% patient-bootstrap interval of the AUC."""
        auc = self.metrics.get("auc") or {}
        return auc.get("ci_low"), auc.get("ci_high")

    @property
    def figures(self) -> list[Path]:
        """The figures written beside ``metrics.json`` (ROC, PR, confusion, calibration)."""
        return [self.folder / f for f in self.metrics.get("figures", [])]


def _read_evaluation(folder: Path) -> Evaluation:
    from mammolab.evaluate.evaluation import METRICS_NAME, PREDICTIONS_NAME

    try:
        metrics = json.loads((folder / METRICS_NAME).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MammoLabError(f"{folder / METRICS_NAME}: cannot read the evaluation ({exc})") from None
    preds = read_safe_csv(folder / PREDICTIONS_NAME, dtype={"patient_id": str, "image_id": str, "path": str},
                        keep_default_na=False, na_values=[""])
    return Evaluation(folder, metrics, preds)


def evaluate(run: str | Path, split: str = "test", *, tta: bool = False, dataset: str | Path | None = None,
             n_boot: int = 2000, seed: int = 0, batch_size: int | None = None, checkpoint: str = "best",
             overwrite: bool = False, force: bool | None = None) -> Evaluation:
    """Score a run on a split (or on another dataset with ``dataset=``), as ``mammolab evaluate`` does.

    Writes ``RUN/eval/<split>/`` (skipped when up to date, redone with ``overwrite=True``) and returns
    it read back. ``force`` is ``overwrite``'s old name (the CLI's ``--force``), kept for one release.
    """
    if force is not None:
        import warnings

        warnings.warn("evaluate(force=...) is deprecated and will be removed in the next release; use "
                      "overwrite=...", DeprecationWarning, stacklevel=2)
        overwrite = overwrite or force
    from mammolab.evaluate.evaluation import evaluate_run

    kwargs: dict[str, Any] = {"n_boot": n_boot, "seed": seed, "batch_size": batch_size, "checkpoint": checkpoint,
                              "force": overwrite}
    if dataset is not None:
        kwargs["dataset"] = dataset
    return _read_evaluation(Path(evaluate_run(run, split, tta, **kwargs)))


@dataclass
class Explanation:
    """Heatmaps of a run: the folder, the localisation summary and one row per image (with its overlay)."""

    folder: Path
    summary: dict[str, Any]
    records: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def overlays(self) -> list[Path]:
        """The overlay PNGs, in the order of ``records``."""
        return [self.folder / str(o) for o in self.records.get("overlay", [])]


def explain(run: str | Path, images: Sequence[str | Path] | None = None, *, split: str = "test",
            method: str = "gradcam", out: str | Path | None = None, **options: Any) -> Explanation:
    """Heatmap overlays and localisation scores, as ``mammolab explain`` does.

    ``out`` defaults to ``RUN/explain/<split>-<method>`` (``RUN/explain/files-<method>`` for ``images``);
    ``options`` are :func:`mammolab.explain.runner.explain_run`'s (``target``, ``limit``, ``layer``, ``tta``...),
    with ``overwrite=True`` to redo an explanation that is up to date, as ``mammolab explain --overwrite``.
    """
    from mammolab.explain.runner import explain_run

    if "overwrite" in options:  # the CLI's word; explain_run still calls it force
        options["force"] = bool(options.pop("overwrite")) or bool(options.get("force"))

    folder = Path(out) if out is not None else Path(run) / "explain" / f"{'files' if images else split}-{method}"
    summary = explain_run(run, images, split=split, method=method, out_dir=folder, **options)
    csv = folder / "localisation.csv"
    records = read_safe_csv(csv, dtype={"image_id": str, "path": str}) if csv.is_file() else pd.DataFrame()
    return Explanation(folder, summary, records)


@dataclass
class Comparison:
    """The comparison report's files and its runs table (one row per run, best first)."""

    folder: Path
    html: Path
    csv: Path
    markdown: Path
    table: pd.DataFrame


def compare(runs: Sequence[str | Path], out: str | Path, *, split: str = "test",
            evaluate_missing: bool = True) -> Comparison:
    """The self-contained HTML report, ``comparison.csv`` and ``comparison.md``, as ``mammolab compare`` does."""
    from mammolab.evaluate.report import compare_runs

    paths = compare_runs(list(runs), out, split=split, evaluate_missing=evaluate_missing)
    return Comparison(Path(out), paths["html"], paths["csv"], paths["markdown"], read_safe_csv(paths["csv"]))
