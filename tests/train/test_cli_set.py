"""``--set key=value`` and ``--logger`` on ``mammolab train`` and ``mammolab tune``: merged and validated like YAML."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from mammolab.cli import app

runner = CliRunner()
BASE = ["--model", "mammocnn", "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--patience", "0",
        "--accelerator", "cpu", "--weights", "none"]


def test_train_set_merges_nested_options_over_the_config_file(small_lesions: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"augment": {"rotate": 5.0, "hflip": 0.3}, "lr": 0.01}))
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", str(small_lesions), *BASE, "--out", str(out), "--config", str(cfg),
                              "--set", "augment.hflip=0", "--set", "head_hidden=[16]", "--set", "lr=3e-4",
                              "--logger", "csv"])
    assert res.exit_code == 0, res.output
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augment"]["hflip"] == 0 and saved["augment"]["rotate"] == 5.0  # the file's other key kept
    assert saved["head_hidden"] == [16] and saved["lr"] == 3e-4 and saved["loggers"] == ["csv"]
    assert (out / "logs" / "csv" / "metrics.csv").is_file()
    assert saved["epochs"] == 1  # --epochs 1 (a dedicated flag) wins over the file and --set


def test_flags_win_over_set(tmp_path: Path) -> None:
    from mammolab.train.fit import prepare_config

    cfg = prepare_config(tmp_path, overrides={"model": "mammocnn", "epochs": 3}, sets={"epochs": 9, "seed": 5})
    assert cfg.epochs == 3 and cfg.seed == 5


def test_train_set_errors_name_the_option(small_lesions: Path, tmp_path: Path) -> None:
    for args, msg in ((["--set", "augment.hflp=1"], "augment.hflp: unknown option"),
                      (["--set", "lr=fast"], "lr: Input should be a valid number"),
                      (["--set", "lr"], "--set 'lr': expected KEY=VALUE"),
                      (["--logger", "comet"], "loggers")):
        res = runner.invoke(app, ["train", str(small_lesions), *BASE, "--out", str(tmp_path / "x"), *args])
        assert res.exit_code != 0 and msg in str(res.exception), (args, res.exception)
        assert not (tmp_path / "x" / "checkpoints").exists()


def test_tune_set_is_validated_before_any_trial(small_lesions: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["tune", str(small_lesions), "--model", "mammocnn", "--trials", "1", "--out",
                              str(tmp_path / "t"), "--set", "scheduler=sometimes"])
    assert res.exit_code != 0 and "scheduler" in str(res.exception)
    assert not (tmp_path / "t" / "trials").exists()
