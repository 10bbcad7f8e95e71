"""End-to-end tuning on a tiny dataset: SQLite study with pruning and export, resume after a kill, PostgreSQL workers.

Trials train mammocnn at 32 px for 1-2 epochs on 24 images, so a trial takes a few seconds; most of the
time of the subprocess tests is their workers importing torch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from mammolab.errors import MammoLabError
from mammolab.evaluate.report import load_run_summary
from mammolab.train.config import resolve_train_config
from mammolab.train.fit import train
from mammolab.tune.runner import tune
from mammolab.tune.storage import default_storage_url, open_storage, resolve_driver

GOOD_LR, BAD_LR = 0.05, 10000.0
#: A planted-bad space: SGD at lr 1e4 diverges in the first epoch (validation AUC 0), lr 0.05 learns.
PLANTED = {
    "optimizer": {"type": "categorical", "choices": ["sgd"]},
    "lr": {"type": "categorical", "choices": [GOOD_LR, BAD_LR]},
    "head_sizes": {"type": "categorical", "choices": [[], [16]]},
    "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
}
TINY = {"epochs": 2, "image_size": 32}
SPACE_YAML = "lr: {type: float, low: 0.001, high: 0.1, log: true}\noptimizer: {type: categorical, choices: [sgd]}\n"


def states(url: str, name: str) -> dict[int, str]:
    study = optuna.load_study(study_name=name, storage=resolve_driver(url))
    return {t.number: t.state.name for t in study.trials}


@pytest.mark.slow
def test_sqlite_study_prunes_planted_bad_trials_reports_and_exports(patch_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    # Seed the study with one good trial, so a completed trial exists for the median pruner to compare with.
    seeded = optuna.create_study(study_name="planted", storage=open_storage(default_storage_url(out)),
                                 direction="maximize")
    seeded.enqueue_trial({"optimizer": "sgd", "lr": GOOD_LR, "head_sizes": "[]", "weight_decay": 1e-4})
    export = tmp_path / "best.yaml"
    result = tune(patch_dataset, "mammocnn", 4, out, study_name="planted", space=PLANTED, seed=42, export=export,
                  n_startup_trials=1, n_warmup_steps=0, **TINY)

    assert result.counts.get("COMPLETE", 0) + result.counts.get("PRUNED", 0) == 4
    assert sorted(result.ran) == [0, 1, 2, 3]
    study = optuna.load_study(study_name="planted", storage=default_storage_url(out))
    bad = [t for t in study.trials if t.params["lr"] == BAD_LR]
    assert bad, "the seeded sampler is expected to draw the planted-bad learning rate at least once"
    # Every diverging trial was stopped after its first epoch; the good ones were not.
    assert all(t.state.name == "PRUNED" and max(t.intermediate_values) == 0 for t in bad)
    assert study.trials[0].state.name == "COMPLETE"
    assert result.best_params["lr"] == GOOD_LR and result.best_number is not None
    # Each trial trained through the train API into RUN/trials/<n>/.
    for t in study.trials:
        assert (out / "trials" / str(t.number) / "config.yaml").is_file()

    tune_dir = out / "tune"
    trials = pd.read_csv(tune_dir / "trials.csv")
    assert sorted(trials["number"]) == [0, 1, 2, 3]
    best = json.loads((tune_dir / "best.json").read_text())
    assert best["best"]["number"] == result.best_number and best["counts"] == result.counts
    assert (tune_dir / "optimization_history.png").stat().st_size > 5000
    # The best trial is a full training run carrying the study plots, so the comparison report shows them.
    summary = load_run_summary(out / "trials" / str(result.best_number), "val")
    assert {p.name for p in summary.tune_figures} >= {"optimization_history.png", "param_importances.png"}
    info = json.loads((out / "mammolab.json").read_text())
    assert info["stage"] == "tune" and info["study"] == "planted"

    # The export is a train preset: model + tuned fields, accepted by the train config and trainable.
    preset = yaml.safe_load(export.read_text())
    assert preset["model"] == "mammocnn" and preset["lr"] == GOOD_LR and preset["optimizer"] == "sgd"
    assert "epochs" not in preset and "image_size" not in preset
    cfg = resolve_train_config(export, overrides={"epochs": 1, "image_size": 32})
    run = train(patch_dataset, cfg, tmp_path / "final")
    assert run.epochs_run == 1 and run.best_val_auc is not None

    # Same target again: the study is complete, nothing runs; a different space is refused.
    again = tune(patch_dataset, "mammocnn", 4, out, study_name="planted", space=PLANTED, seed=42,
                 n_startup_trials=1, n_warmup_steps=0, **TINY)
    assert again.ran == {} and again.counts == result.counts
    with pytest.raises(MammoLabError, match="created with other settings.*space"):
        tune(patch_dataset, "mammocnn", 5, out, study_name="planted", space={"lr": PLANTED["lr"]}, **TINY)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mammolab.cli import main; main()", "tune", *args]


@pytest.mark.slow
def test_resume_after_kill_runs_only_missing_trials(patch_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    args = [str(patch_dataset), "--model", "mammocnn", "--trials", "3", "--out", str(out), "--space", str(space),
            "--epochs", "1", "--image-size", "32", "--heartbeat", "1", "--study", "resume"]
    url = default_storage_url(out)
    env = {**os.environ, "MAMMOLAB_QUIET": "1"}
    worker = subprocess.Popen(cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 150
        seen: dict[int, str] = {}
        while time.monotonic() < deadline and worker.poll() is None:
            time.sleep(0.3)
            try:
                seen = states(url, "resume")
            except (KeyError, Exception):  # the study is not created yet
                continue
            done = [n for n, s in seen.items() if s in ("COMPLETE", "PRUNED")]
            if done and "RUNNING" in seen.values():
                break
        assert worker.poll() is None, worker.communicate()[0]
        worker.send_signal(signal.SIGKILL)
    finally:
        worker.kill()
        worker.wait()
    before = states(url, "resume")
    finished_before = {n for n, s in before.items() if s in ("COMPLETE", "PRUNED")}
    killed = [n for n, s in before.items() if s == "RUNNING"]
    assert finished_before and killed
    first_metrics = {n: (out / "trials" / str(n) / "metrics.csv").read_bytes() for n in finished_before}

    result = tune(patch_dataset, "mammocnn", 3, out, space=space, study_name="resume", heartbeat_interval=1,
                  epochs=1, image_size=32)
    after = states(url, "resume")
    finished_after = {n for n, s in after.items() if s in ("COMPLETE", "PRUNED")}
    assert len(finished_after) == 3 and finished_before <= finished_after
    assert not set(result.ran) & finished_before  # finished trials were not run again
    assert len(result.ran) == 3 - len(finished_before)
    for n in finished_before:  # and their runs are untouched
        assert (out / "trials" / str(n) / "metrics.csv").read_bytes() == first_metrics[n]
    # The killed trial was failed (no heartbeat) and retried with the same parameters.
    study = optuna.load_study(study_name="resume", storage=url)
    assert after[killed[0]] == "FAIL"
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == killed[0]]
    assert len(retries) == 1 and retries[0].params == study.trials[killed[0]].params
    assert retries[0].state.name in ("COMPLETE", "PRUNED")
    # The killed attempt's half-trained run folder is gone (its retry has its own number and folder).
    assert not (out / "trials" / str(killed[0])).exists()
    assert (out / "trials" / str(retries[0].number) / "run.json").is_file()


@pytest.mark.slow
def test_two_workers_share_a_postgres_study(patch_dataset: Path, tmp_path: Path, pg_url: str) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE_YAML)
    name = f"test-workers-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "MAMMOLAB_QUIET": "1"}
    procs = []
    for w in range(2):
        args = [str(patch_dataset), "--model", "mammocnn", "--trials", "4", "--out", str(tmp_path / f"w{w}"),
                "--storage", pg_url, "--study", name, "--space", str(space), "--epochs", "1", "--image-size", "32"]
        procs.append(subprocess.Popen(cli(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0], logs
        final = states(pg_url, name)
        assert sorted(final) == [0, 1, 2, 3]  # four distinct trial numbers, no extra trial
        assert sorted(final.values()) == sorted(s for s in final.values() if s in ("COMPLETE", "PRUNED"))
        # Each trial ran in exactly one worker's run folder.
        ran = [sorted(int(p.name) for p in (tmp_path / f"w{w}" / "trials").iterdir()) for w in range(2)]
        assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3]
        assert "postgresql" in logs[0] and "***" in logs[0] and "mammolab:mammolab@" not in logs[0]
    finally:
        for p in procs:
            p.kill()
        optuna.delete_study(study_name=name, storage=resolve_driver(pg_url))
