"""mammolab run: stages in order, skip when up to date, redo when changed, failures isolated, validation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from helpers_app import REPO, tiny_experiment

from mammolab.app.experiment import load_experiment
from mammolab.app.run import run_experiment
from mammolab.errors import MammoLabError


def test_first_run_does_every_stage(finished_experiment: tuple[dict[str, Any], Any]) -> None:
    cfg, result = finished_experiment
    out = Path(cfg["out"])
    for stage in ("synth", "organize", "preprocess", "train", "evaluate", "explain", "compare"):
        statuses = result.statuses(stage)
        assert statuses and set(statuses.values()) == {"done"}, (stage, statuses)
    assert result.report == out / "report" / "report.html" and result.report.is_file()
    assert (out / "runs" / "cnn" / "eval" / "test" / "metrics.json").is_file()
    assert len(list((out / "runs" / "cnn" / "explain" / "test-gradcam" / "overlays").glob("*.png"))) == 4
    assert json.loads((out / "runs" / "cnn" / "run.json").read_text())["status"] == "complete"
    assert not result.failed


def test_rerun_skips_everything_then_a_changed_run_is_redone(finished_experiment: tuple[dict[str, Any], Any]) -> None:
    cfg, _ = finished_experiment
    out = Path(cfg["out"])
    ckpt = out / "runs" / "cnn" / "checkpoints" / "best.ckpt"
    mtime = ckpt.stat().st_mtime_ns
    again = run_experiment(cfg)
    for stage in ("synth", "organize", "preprocess", "train", "evaluate", "explain", "compare"):
        assert set(again.statuses(stage).values()) == {"skipped"}, stage
    assert ckpt.stat().st_mtime_ns == mtime
    assert "skip (up to date)" in (out / "run.log").read_text()

    changed = copy.deepcopy(cfg)
    changed["train"]["runs"] = [{"model": "mammocnn", "name": "cnn"}, {"model": "mammocnn", "name": "cnn_lr",
                                                                        "lr": 0.01}]
    third = run_experiment(changed)
    assert third.statuses("organize") == {"organize": "skipped"}
    assert third.statuses("train") == {"cnn": "skipped", "cnn_lr": "done"}
    assert third.statuses("compare") == {"compare": "done"}  # a new run changes the report
    assert ckpt.stat().st_mtime_ns == mtime
    report = (out / "report" / "comparison.csv").read_text()
    assert "cnn_lr" in report


def test_a_failing_run_does_not_stop_the_others(tmp_path: Path,
                                                finished_experiment: tuple[dict[str, Any], Any]) -> None:
    cfg = copy.deepcopy(finished_experiment[0])
    cfg["compare"] = {"out": str(tmp_path / "report")}
    cfg["train"]["runs"] = [{"model": "mammocnn", "name": "broken", "weights": str(tmp_path / "missing.pth")},
                            {"model": "mammocnn", "name": "cnn"}]
    result = run_experiment(cfg)
    assert result.statuses("train") == {"broken": "failed", "cnn": "skipped"}
    assert [r.item for r in result.failed] == ["broken"]
    assert (Path(cfg["out"]) / "runs" / "broken" / "error.txt").is_file()
    assert (tmp_path / "report" / "report.html").is_file()


def test_cli_run_exit_codes(tmp_path: Path, finished_experiment: tuple[dict[str, Any], Any]) -> None:
    import yaml
    from typer.testing import CliRunner

    from mammolab.cli import app

    cfg = finished_experiment[0]
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(path), "--only", "compare"])
    assert res.exit_code == 0, res.output
    assert "compare: skip (up to date)" in res.output
    bad = CliRunner().invoke(app, ["run", str(path), "--only", "deploy"])
    assert bad.exit_code != 0 and "--only" in str(bad.exception or bad.output)


def test_classic10_dry_run_validates_without_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mammolab.models import CLASSIC_TEN

    monkeypatch.chdir(tmp_path)
    result = run_experiment(REPO / "experiments" / "cbis_mass_classic10.yaml", dry_run=True)
    assert list(result.statuses("train")) == list(CLASSIC_TEN)
    assert set(result.statuses("train").values()) == {"planned"}
    assert not any(tmp_path.iterdir())  # a dry run writes nothing
    # The shipped file's data paths are placeholders: the plan is listed and each missing path said.
    assert [p.split(":")[0] for p in result.problems] == ["data.download", "data.csv_dir", "data.metadata"]
    assert all("is missing" in p for p in result.problems)
    cfg = load_experiment(REPO / "experiments" / "cbis_mass_classic10.yaml")
    from mammolab.app.experiment import resolved_runs

    runs = dict(resolved_runs(cfg))
    assert runs["mammocnn"].image_size == 512 and runs["mammocnn"].weights == "none"
    assert runs["resnet18_opw"].image_size == 224 and runs["resnet18_opw"].weights == "imagenet"
    assert runs["efficientnet_b3_optuna"].head_hidden == [768, 128, 32]


def test_demo_experiment_validates() -> None:
    cfg = load_experiment(REPO / "experiments" / "demo.yaml")
    assert cfg.data.synth is not None and len(cfg.train.runs) >= 2


@pytest.mark.parametrize(("change", "message"), [
    (lambda c: c.update(tarin={}), "tarin: unknown option"),
    (lambda c: c["train"]["runs"].append({"model": "mammocnn", "name": "x", "lr": -1}), "train.runs[1]"),
    (lambda c: c["train"]["runs"].append({"model": "nosuchnet"}), "train.runs[1]"),
    (lambda c: c["train"]["runs"].append({"model": "mammocnn", "name": "cnn"}), "also used by train.runs[0]"),
    (lambda c: c["data"].update(manifest="x.csv"), "exactly one data source"),
    (lambda c: c["organize"].update(kind="banana"), "organize"),
    (lambda c: c.update(preprocess={"config": "nosuchpreset"}), "preprocess.config"),
])
def test_validation_errors_name_the_key(tmp_path: Path, change: Any, message: str) -> None:
    cfg = tiny_experiment(tmp_path / "out")
    change(cfg)
    with pytest.raises(MammoLabError, match=None) as info:
        load_experiment(cfg)
    assert message in str(info.value)
    assert not (tmp_path / "out").exists()


def test_real_data_paths_are_checked_before_work(tmp_path: Path) -> None:
    cfg = tiny_experiment(tmp_path / "out")
    cfg["data"] = {"download": str(tmp_path / "nope"), "csv_dir": str(tmp_path / "nocsv")}
    with pytest.raises(MammoLabError, match=r"data.download: .*nope not found"):
        run_experiment(cfg)


def test_report_shows_what_explain_measured(finished_experiment: tuple[dict[str, Any], Any]) -> None:
    import pandas as pd

    cfg, _ = finished_experiment
    out = Path(cfg["out"])
    summary = json.loads((out / "runs" / "cnn" / "explain" / "test-gradcam" / "localisation.json").read_text())
    assert summary["target"] == "true" and summary["n_with_box"] == summary["n_images"] == 4
    scored = summary["pointing_game_n"]
    assert scored + summary["n_blank"] == summary["n_with_box"]
    row = pd.read_csv(out / "report" / "comparison.csv").set_index("run").loc["cnn"]
    assert row["localisation_method"] == "gradcam"
    if scored:
        assert row["localisation_energy"] == pytest.approx(summary["energy_in_box_mean"])
        assert row["localisation_box_area"] == pytest.approx(summary["box_area_fraction_mean"])
        assert row["pointing_game"] == pytest.approx(summary["pointing_game_hit_rate"])
