"""Experiment tracking through Lightning's loggers: CSV, TensorBoard, MLflow and Weights & Biases.

A run folder already holds everything MammoLab needs (``metrics.csv``, ``run.json``); trackers are
for people who follow many runs in a dashboard. Lightning logs the per-epoch metrics and the
module's hyper-parameters (the resolved :class:`~mammolab.train.config.TrainConfig`) to every
logger; :func:`log_final` adds the run's outcome (best validation AUC and epoch, epochs run,
training time, throughput) at the end.

Where each logger writes, by default inside the run folder so a run stays self-contained::

    csv          RUN/logs/csv/metrics.csv, hparams.yaml
    tensorboard  RUN/tensorboard/events.out.tfevents.*      (tensorboard --logdir RUN)
    mlflow       sqlite:///RUN/mlflow.db, artifacts in RUN/mlartifacts/   (MLflow's embedded store;
                 mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db); ``tracking_uri`` points it
                 at a server instead (http://host:5000) or at a shared store (a study's)
    wandb        RUN/logs/wandb/, offline unless WANDB_API_KEY is set (wandb sync uploads later)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammolab.errors import MammoLabError

__all__ = ["LOGGER_NAMES", "build_loggers", "default_mlflow_uri", "log_final"]

#: The names ``--logger`` and the ``loggers:`` config key accept.
LOGGER_NAMES = ("csv", "tensorboard", "mlflow", "wandb")
_INSTALL = "pip install 'mammolab[tracking]' (TensorBoard and MLflow)"


def default_mlflow_uri(folder: str | Path) -> str:
    """MLflow's embedded store (a SQLite file) inside ``folder``: ``sqlite:////abs/folder/mlflow.db``."""
    return f"sqlite:///{(Path(folder) / 'mlflow.db').resolve()}"


def _missing(name: str, package: str, hint: str) -> MammoLabError:
    return MammoLabError(f"--logger {name}: the {package} package is not installed", hint=hint)


def _one(name: str, out: Path, *, experiment: str, run_name: str, tracking_uri: str | None) -> Any:
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(save_dir=str(out / "logs"), name="csv", version="")
    if name == "tensorboard":
        from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE
        from lightning.pytorch.loggers import TensorBoardLogger

        if not _TENSORBOARD_AVAILABLE:
            raise _missing(name, "tensorboard", _INSTALL)
        return TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
    if name == "mlflow":
        from lightning.pytorch.loggers.mlflow import _MLFLOW_AVAILABLE, MLFlowLogger

        if not _MLFLOW_AVAILABLE:
            raise _missing(name, "mlflow", _INSTALL)
        uri = tracking_uri or default_mlflow_uri(out)
        local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
        artifacts = (Path(uri.split("///", 1)[-1]).parent / "mlartifacts").resolve().as_uri() if local else None
        return MLFlowLogger(experiment_name=experiment, run_name=run_name, tracking_uri=uri,
                            artifact_location=artifacts, save_dir=None)
    if name == "wandb":
        from lightning.pytorch.loggers.wandb import _WANDB_AVAILABLE, WandbLogger

        if not _WANDB_AVAILABLE:
            raise _missing(name, "wandb", "pip install wandb")
        (out / "logs").mkdir(parents=True, exist_ok=True)
        offline = not os.environ.get("WANDB_API_KEY")  # no key: log locally, 'wandb sync' uploads later
        return WandbLogger(project=experiment, name=run_name, save_dir=str(out / "logs"), offline=offline)
    raise MammoLabError(f"--logger: expected one of {', '.join(LOGGER_NAMES)}, got {name!r}")


def build_loggers(specs: Sequence[Any], out: str | Path, *, experiment: str = "mammolab", run_name: str | None = None,
                  tracking_uri: str | None = None) -> list[Any]:
    """Lightning loggers for ``specs``: names from :data:`LOGGER_NAMES` or logger objects (kept as they are).

    A name given twice gives one logger. ``experiment`` is MLflow's experiment and W&B's project;
    ``run_name`` (default: the run folder's name) names the run in both.
    """
    out = Path(out)
    loggers: list[Any] = []
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, str):
            loggers.append(spec)
            continue
        name = spec.strip().lower()
        if name in seen:
            continue
        seen.add(name)
        loggers.append(_one(name, out, experiment=experiment, run_name=run_name or out.name,
                            tracking_uri=tracking_uri))
    return loggers


def log_final(loggers: Sequence[Any], info: dict[str, Any], step: int) -> None:
    """Log the run's outcome to every logger (``final/...`` metrics) and close them."""
    keys = {"best_val_auc": "final/best_val_auc", "best_epoch": "final/best_epoch", "epochs_run": "final/epochs_run",
            "train_seconds": "final/train_seconds", "throughput_img_s": "final/throughput_img_s"}
    metrics = {name: float(info[k]) for k, name in keys.items() if isinstance(info.get(k), (int, float))}
    for logger in loggers:
        if metrics:
            logger.log_metrics(metrics, step=step)
        logger.save()
        logger.finalize("success")
