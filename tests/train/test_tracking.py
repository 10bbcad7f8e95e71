"""Experiment tracking through Lightning's loggers: each writes its files, with the config and final metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mammolab.errors import MammoLabError
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train
from mammolab.train.tracking import build_loggers, default_mlflow_uri


def _cfg(**kw: object):
    base = {"model": "mammocnn", "image_size": 32, "batch_size": 8, "epochs": 2, "patience": 0,
            "accelerator": "cpu", "weights": "none", "lr": 0.002}
    return resolve_train_config(overrides={**base, **kw})


@pytest.fixture(scope="module")
def tracked(small_lesions: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("tracked") / "run"
    # csv and mlflow from the config (as in an experiment file), tensorboard from the Python argument
    train(small_lesions, _cfg(loggers=["csv", "mlflow"]), out, loggers=["tensorboard"])
    return out


def test_csv_logger_writes_metrics_config_and_final_results(tracked: Path) -> None:
    info = json.loads((tracked / "run.json").read_text())
    logged = pd.read_csv(tracked / "logs" / "csv" / "metrics.csv")
    val = logged.dropna(subset=["val_auc"])
    assert len(val) == 2  # one row per epoch
    ours = pd.read_csv(tracked / "metrics.csv")
    assert val["val_auc"].to_numpy() == pytest.approx(ours["val_auc"].to_numpy(), abs=1e-6)
    assert logged["final/best_val_auc"].dropna().item() == pytest.approx(info["best_val_auc"])
    assert logged["final/epochs_run"].dropna().item() == 2
    hparams = yaml.safe_load((tracked / "logs" / "csv" / "hparams.yaml").read_text())
    assert hparams["config"]["lr"] == 0.002 and hparams["config"]["model"] == "mammocnn"


def test_tensorboard_logger_writes_scalars(tracked: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((tracked / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(tracked / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val_auc", "train_loss", "final/best_val_auc"} <= set(tags)
    assert len(acc.Scalars("val_auc")) == 2


def test_mlflow_logger_uses_a_local_store_in_the_run(tracked: Path) -> None:
    from mlflow.tracking import MlflowClient

    assert (tracked / "mlflow.db").is_file()
    client = MlflowClient(tracking_uri=default_mlflow_uri(tracked))
    exp = client.get_experiment_by_name("mammocnn")  # the run's display name (a preset here)
    assert exp is not None and exp.artifact_location.endswith("mlartifacts")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.params["config/lr"] == "0.002" and run.data.params["config/image_size"] == "32"
    info = json.loads((tracked / "run.json").read_text())
    assert run.data.metrics["final/best_val_auc"] == pytest.approx(info["best_val_auc"])
    assert len(client.get_metric_history(run.info.run_id, "val_auc")) == 2


def test_tracking_uri_points_mlflow_elsewhere(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    store = tmp_path / "shared" / "mlflow.db"
    store.parent.mkdir()
    (logger,) = build_loggers(["mlflow", "MLflow"], tmp_path / "run", experiment="study",
                              tracking_uri=f"sqlite:///{store}")  # a name given twice: one logger
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize("success")
    assert store.is_file() and not (tmp_path / "run" / "mlflow.db").exists()


def test_wandb_logs_offline_without_a_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (logger,) = build_loggers(["wandb"], tmp_path / "run", experiment="mammolab-test")
    assert logger._offline is True  # noqa: SLF001


def test_unknown_logger_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="loggers"):
        _cfg(loggers=["comet"])
    with pytest.raises(MammoLabError, match="--logger: expected one of csv, tensorboard, mlflow, wandb"):
        build_loggers(["comet"], tmp_path)
    # A finished run is not retrained because trackers were added: they are runtime options.
    a, b = _cfg(), _cfg(loggers=["csv"], tracking_uri="http://localhost:5000")
    from mammolab.train.config import result_hash

    assert result_hash(a) == result_hash(b)


def test_tune_trials_share_the_study_mlflow_store(small_lesions: Path, tmp_path: Path) -> None:
    """Every trial of a study logs into one MLflow experiment named after the study, in the study folder."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from mammolab.tune.runner import tune

    data = small_lesions
    out = tmp_path / "study"
    space = {"lr": {"type": "categorical", "choices": [0.01, 0.02]}}
    result = tune(data, "mammocnn", 2, out, study_name="tiny", space=space, epochs=1, image_size=32,
                  loggers=["mlflow", "csv"])
    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 2
    assert (out / "mlflow.db").is_file() and not list(out.glob("trials/*/mlflow.db"))
    client = MlflowClient(tracking_uri=default_mlflow_uri(out))
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["0", "1"]  # one MLflow run per trial, named by its number
    assert {r.data.params["config/lr"] for r in runs} <= {"0.01", "0.02"}
    assert all((out / "trials" / str(n) / "logs" / "csv" / "metrics.csv").is_file() for n in (0, 1))
