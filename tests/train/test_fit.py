"""The training engine end to end at tiny sizes: run folder contract, skip, resume after a kill, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from train_fixtures import make_lesion_dataset
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.config import load_yaml
from mammolab.data.manifest import FOURCLASS_CLASSES, load_manifest, manifest_hash, write_info, write_manifest
from mammolab.errors import MammoLabError
from mammolab.infer import load_run, predict_split
from mammolab.io import read_image
from mammolab.models import create_model
from mammolab.train.config import TrainConfig, resolve_train_config
from mammolab.train.fit import METRICS_COLUMNS, prepare_config, train


def _cfg(**kw: object) -> TrainConfig:
    base = {"model": "mammoresnet", "image_size": 32, "batch_size": 8, "epochs": 2, "patience": 0,
            "accelerator": "cpu", "weights": "none"}
    return resolve_train_config(overrides={**base, **kw})


@pytest.fixture(scope="module")
def finished(small_lesions: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "mammoresnet"
    train(small_lesions, _cfg(), out)
    return out


def test_run_folder_contract(finished: Path, small_lesions: Path) -> None:
    for name in ("config.yaml", "run.json", "metrics.csv", "curves.png", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt"):
        assert (finished / name).is_file(), name
    metrics = pd.read_csv(finished / "metrics.csv")
    assert tuple(metrics.columns) == METRICS_COLUMNS
    assert metrics["epoch"].tolist() == [1, 2]
    for col in ("train_auc", "val_auc", "train_acc", "val_acc"):
        assert metrics[col].between(0, 1).all(), col
    assert (metrics[["train_loss", "val_loss", "lr", "time"]] > 0).all().all()
    assert metrics["lr"].iloc[1] < metrics["lr"].iloc[0]  # cosine schedule steps per epoch
    import json

    info = json.loads((finished / "run.json").read_text())
    assert info["status"] == "complete" and info["model"] == "mammoresnet" and info["regime"] == "cft"
    assert info["dataset"] == str(small_lesions.resolve()) and info["manifest_hash"] == manifest_hash(small_lesions)
    assert info["classes"] == ["benign", "malignant"] and info["epochs_run"] == 2
    assert info["parameters"]["total"] == info["parameters"]["trainable"] > 1_000_000
    assert info["throughput_img_s"] > 0 and info["train_seconds"] > 0 and info["device"]["type"] == "cpu"
    assert {"torch", "lightning", "timm"} <= set(info["versions"])
    assert info["best_val_auc"] == pytest.approx(metrics["val_auc"].max())
    assert TrainConfig.model_validate(load_yaml(finished / "config.yaml")) == _cfg()
    ckpt = torch.load(finished / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["mammolab"]["model"] == "mammoresnet" and ckpt["mammolab"]["classes"] == ["benign", "malignant"]


def test_finished_run_is_skipped_and_another_config_refused(finished: Path, small_lesions: Path) -> None:
    stamp = (finished / "checkpoints" / "last.ckpt").stat().st_mtime_ns
    again = train(small_lesions, _cfg(num_workers=0, devices=1), finished)  # runtime options do not matter
    assert again.skipped and again.epochs_run == 2 and again.best_val_auc is not None
    assert (finished / "checkpoints" / "last.ckpt").stat().st_mtime_ns == stamp
    with pytest.raises(MammoLabError, match="finished run with another config"):
        train(small_lesions, _cfg(lr=0.05), finished)


def test_inference_matches_validation_preprocessing(finished: Path, small_lesions: Path) -> None:
    run = load_run(finished)
    assert not run.model.training and run.classes == ("benign", "malignant") and run.config == _cfg()
    pred = predict_split(run, "test")
    df = load_manifest(small_lesions)
    assert len(pred) == int((df["split"] == "test").sum())
    for col in ("path", "image_id", "patient_id", "split", "label", "target", "prob", "view", "density",
                "abnormality"):
        assert col in pred, col
    assert pred["prob"].between(0, 1).all() and set(pred["split"]) == {"test"}
    direct = run.predict_arrays([read_image(small_lesions / p) for p in pred["path"]])
    np.testing.assert_allclose(direct, pred["prob"].to_numpy(), rtol=0, atol=1e-6)
    tta = predict_split(run, "val", tta=True)
    assert len(tta) == len(predict_split(run, "val")) and tta["prob"].between(0, 1).all()
    last = load_run(finished, checkpoint="last")
    assert last.checkpoint == "last.ckpt"


class Crash(Callback):
    """Simulates a killed process: dies when the second epoch starts (after epoch 1's checkpoint)."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated kill")


def test_resume_after_a_kill_ends_like_an_uninterrupted_run(small_lesions: Path, tmp_path: Path) -> None:
    # mammocnn has dropout and the train split is augmented: every random draw must line up after resume
    cfg = _cfg(model="mammocnn", epochs=3, seed=7, batch_size=16)
    full = train(small_lesions, cfg, tmp_path / "full")
    killed = tmp_path / "killed"
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(small_lesions, cfg, killed, callbacks=[Crash()])
    assert len(pd.read_csv(killed / "metrics.csv")) == 1
    with pytest.raises(MammoLabError, match="unfinished run"):
        train(small_lesions, cfg, killed)
    resumed = train(small_lesions, cfg, killed, resume=True)
    assert resumed.epochs_run == full.epochs_run == 3 and resumed.info["resumed"]
    cols = [c for c in METRICS_COLUMNS if c != "time"]
    pd.testing.assert_frame_equal(resumed.metrics[cols], full.metrics[cols], rtol=1e-5, atol=1e-6)
    ca, cb = (torch.load(r.last_checkpoint, weights_only=True) for r in (full, resumed))
    assert ca["epoch"] == cb["epoch"] == 2  # last.ckpt is the end of the last epoch, not of the best one
    a, b = ca["state_dict"], cb["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.best_epoch == full.best_epoch


def test_checkpoint_of_another_model_is_one_clear_error(finished: Path, small_lesions: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    train(small_lesions, _cfg(model="mammocnn", epochs=1), other)
    foreign = other / "checkpoints" / "best.ckpt"
    with pytest.raises(MammoLabError, match=r"checkpoint of model 'mammocnn', not 'mammoresnet'"):
        load_run(finished, checkpoint=foreign)
    with pytest.raises(MammoLabError, match=r"checkpoint of model 'mammocnn', not 'mammoresnet'"):
        create_model("mammoresnet", weights=str(foreign))
    with pytest.raises(MammoLabError, match="trained with model 'mammoresnet', not 'resnet18'"):
        prepare_config(finished, overrides={"model": "resnet18"}, resume=True)
    # the same model's checkpoint initialises a new run's backbone
    warm = create_model("mammocnn", weights=str(foreign))
    state = torch.load(foreign, weights_only=True)["state_dict"]
    torch.testing.assert_close(warm.backbone.body.state_dict()["block1.0.weight"],
                               state["model.backbone.body.block1.0.weight"])


def test_dataset_without_val_split_is_refused_before_training(tmp_path: Path) -> None:
    ds = make_lesion_dataset(tmp_path / "noval", patients=10, size=32, val=False)
    with pytest.raises(MammoLabError, match="no validation rows"):
        train(ds, _cfg(), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.filterwarnings("ignore:No positive samples in targets")
def test_four_class_training_and_prediction(tmp_path: Path) -> None:
    # seed 6: the four validation patients are one of each class, so the macro AUC is defined (a val split
    # missing a class gives NaN and val-loss monitoring: tests/train/test_undefined_val_auc.py)
    ds = make_lesion_dataset(tmp_path / "four", patients=24, size=32, seed=6)
    df = load_manifest(ds)
    kind = np.where(df["patient_id"].str[-2:].astype(int) % 4 < 2, "mass", "calc")
    df["label"] = [f"{lab}_{k}" for lab, k in zip(df["label"], kind, strict=True)]
    df["target"] = [FOURCLASS_CLASSES.index(lab) for lab in df["label"]]
    write_manifest(df, ds)
    write_info(ds, {"stage": "test", "classes": list(FOURCLASS_CLASSES), "labels": "4class"})
    result = train(ds, _cfg(epochs=1), tmp_path / "run4")
    assert result.info["labels"] == "4class" and np.isfinite(result.metrics["val_auc"]).all()
    run = load_run(tmp_path / "run4")
    pred = predict_split(run, "test")
    probs = pred[[f"prob_{c}" for c in FOURCLASS_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(pred["prob"], probs[:, 2] + probs[:, 3], atol=1e-6)  # P(malignant_*)
    assert run.predict_arrays([read_image(ds / pred["path"].iloc[0])]).shape == (1, 4)


@pytest.mark.parametrize(("model", "options"), [
    ("mammocnn", {"optimizer": "adam", "scheduler": "plateau"}),
    ("resnet18_pft", {"optimizer": "sgd", "scheduler": "step", "pos_weight": "balanced"}),
    ("densenet121_opw", {"scheduler": "none", "augment": {"enabled": False}}),
])
def test_engine_trains_models_and_presets_one_epoch(model: str, options: dict, small_lesions: Path,
                                                    tmp_path: Path) -> None:
    result = train(small_lesions, _cfg(model=model, epochs=1, **options), tmp_path / "run")
    assert result.epochs_run == 1 and result.best_checkpoint.is_file()
    if options.get("pos_weight") == "balanced":
        train_rows = load_manifest(small_lesions).query("split == 'train'")
        n_pos = int((train_rows["label"] == "malignant").sum())
        assert result.info["pos_weight"] == pytest.approx((len(train_rows) - n_pos) / n_pos)
    assert result.info["regime"] == {"mammocnn": "cft", "resnet18_pft": "pft", "densenet121_opw": "opw"}[model]
    params = result.info["parameters"]
    assert (params["trainable"] < params["total"]) == (model != "mammocnn")


def test_cli_train_models_and_errors(small_lesions: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    listing = runner.invoke(app, ["models"], terminal_width=200)
    assert listing.exit_code == 0
    for name in ("resnet18", "inception_resnet_v2", "mammocnn", "mammoresnet", "efficientnet_b3_optuna", "opw"):
        assert name in listing.output
    out = tmp_path / "cli-run"
    args = ["train", str(small_lesions), "--model", "mammoresnet", "--out", str(out), "--epochs", "1",
            "--image-size", "32", "--batch-size", "8", "--weights", "none", "--accelerator", "cpu"]
    first = runner.invoke(app, args, terminal_width=200)
    assert first.exit_code == 0, first.output
    assert "best val AUC" in first.output and (out / "checkpoints" / "best.ckpt").is_file()
    second = runner.invoke(app, args, terminal_width=200)
    assert second.exit_code == 0 and "skipped" in second.output
    bad = runner.invoke(app, ["train", str(small_lesions), "--model", "resnet5", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, MammoLabError) and "resnet50" in str(bad.exception)
    fp16 = runner.invoke(app, [*args[:-6], "--epochs", "1", "--precision", "fp16", "--accelerator", "cpu",
                               "--out", str(tmp_path / "y")])
    assert isinstance(fp16.exception, MammoLabError) and "bf16" in str(fp16.exception)


def test_bf16_mixed_precision_on_cpu(small_lesions: Path, tmp_path: Path) -> None:
    result = train(small_lesions, _cfg(epochs=1, precision="bf16"), tmp_path / "bf16")
    assert result.info["device"]["precision"] == "bf16-mixed" and np.isfinite(result.metrics["train_loss"]).all()
    assert load_run(tmp_path / "bf16").predict_arrays([np.zeros((40, 40), np.uint8)]).dtype == np.float32


@pytest.mark.slow
def test_ddp_two_processes_from_the_cli(small_lesions: Path, tmp_path: Path) -> None:
    """``--devices 2 --strategy ddp`` (gloo on CPU): Lightning relaunches the command; rank 0 writes the run."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "MAMMOLAB_QUIET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mammolab", "train", str(small_lesions), "--model", "mammoresnet", "--out",
           str(out), "--image-size", "32", "--batch-size", "8", "--epochs", "2", "--weights", "none",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("best val AUC") == 1  # only rank 0 reports
    import json

    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "complete" and info["device"]["devices"] == 2
    assert info["device"]["strategy"] == "DDPStrategy" and info["epochs_run"] == 2
    assert len(pd.read_csv(out / "metrics.csv")) == 2
    assert load_run(out).predict_arrays([np.zeros((32, 32), np.uint16)]).shape == (1,)


def test_early_stopping_on_val_auc(small_lesions: Path, tmp_path: Path) -> None:
    # min_delta 1.0: no AUC gain can count as an improvement, so patience 1 stops after the second epoch
    result = train(small_lesions, _cfg(epochs=6, patience=1, min_delta=1.0), tmp_path / "es")
    assert result.epochs_run == 2 and result.info["stopped_early"] and result.info["epochs_planned"] == 6
    assert len(pd.read_csv(tmp_path / "es" / "metrics.csv")) == 2


class CtrlC(Callback):
    def on_train_epoch_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt


def test_ctrl_c_is_a_keyboard_interrupt_and_resumable(small_lesions: Path, tmp_path: Path) -> None:
    import signal

    cfg = _cfg(epochs=2)
    with pytest.raises(KeyboardInterrupt):
        train(small_lesions, cfg, tmp_path / "int", callbacks=[CtrlC()])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Lightning's SIG_IGN undone
    resumed = train(small_lesions, cfg, tmp_path / "int", resume=True)
    assert resumed.epochs_run == 2 and resumed.info["resumed"]
