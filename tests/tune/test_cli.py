"""``mammolab tune`` user errors: one line naming the culprit, exit code 2, nothing trained."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from mammolab.cli import main


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", ["mammolab", "tune", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def base(dataset: Path, out: Path) -> list[str]:
    return [str(dataset), "--model", "mammocnn", "--trials", "2", "--out", str(out), "--image-size", "32",
            "--epochs", "1"]


@pytest.mark.parametrize(("storage", "message"), [
    ("sqlite:/nowhere", "is not a database URL"),
    ("mongodb://u:hunter2@db/optuna", "unsupported database 'mongodb'"),
    ("postgresql://mammolab:hunter2@127.0.0.1:1/mammolab", "cannot reach database at postgresql"),
])
def test_bad_or_unreachable_storage(patch_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str], storage: str, message: str) -> None:
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, tmp_path / "run"), "--storage", storage)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]
    assert "hunter2" not in err
    assert not (tmp_path / "run" / "trials").exists()


def test_unknown_parameter_in_space(patch_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("lr: {type: float, low: 0.001, high: 0.1, log: true}\n"
                     "head_size: {type: categorical, choices: [[], [64]]}\n")
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, tmp_path / "run"), "--space", str(space))
    assert code == 2
    assert "unknown parameter 'head_size'" in err and "head_sizes" in err  # with the nearest known name
    assert not (tmp_path / "run").exists()


def test_value_the_train_config_rejects(patch_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("optimizer: {type: categorical, choices: [adamw, rmsprop]}\n")
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, tmp_path / "run"), "--space", str(space))
    assert code == 2 and "parameter 'optimizer' value 'rmsprop' is not accepted" in err


def test_tuner_owned_field_and_missing_dataset(tmp_path: Path, patch_dataset: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("epochs: {type: int, low: 1, high: 5}\n")
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, tmp_path / "run"), "--space", str(space))
    assert code == 2 and "unknown parameter 'epochs'" in err and "set by the tuner" in err
    code, err = run_cli(monkeypatch, capsys, *base(tmp_path / "nope", tmp_path / "run"))
    assert code == 2 and "nope" in err


def test_help_explains_every_option(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["mammolab", "tune", "--help"])
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--trials", "--out", "--storage", "--study", "--export", "--timeout", "--space",
                   "--epochs", "--image-size", "--subset", "--seed", "--startup-trials", "--warmup-epochs"):
        assert option in text


def test_run_folder_holds_one_study(patch_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    from mammolab.data.manifest import write_info

    other = tmp_path / "run"
    write_info(other, {"stage": "tune", "study": "resnet18-224px", "storage": "sqlite:///elsewhere.db"})
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, other))
    assert code == 2 and "belongs to study 'resnet18-224px'" in err
    code, err = run_cli(monkeypatch, capsys, *base(patch_dataset, patch_dataset))  # --out = the dataset itself
    assert code == 2 and "is a dataset folder" in err
