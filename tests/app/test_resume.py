"""Killing 'mammolab run' mid-study and running it again: finished runs are kept, the rest completes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers_app import tiny_experiment


@pytest.mark.slow
def test_killed_run_resumes_without_redoing_finished_runs(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg = tiny_experiment(out, epochs=2, runs=[{"model": "mammocnn", "name": "first"},
                                               {"model": "mammocnn", "name": "second", "epochs": 40, "lr": 0.0005}])
    cfg["explain"] = None
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "mammolab", "run", str(exp)]
    env = {**os.environ, "MAMMOLAB_QUIET": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    first_json, second_last = out / "runs" / "first" / "run.json", out / "runs" / "second" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            done = first_json.is_file() and json.loads(first_json.read_text() or "{}").get("status") == "complete"
            if done and second_last.is_file():  # the first run finished, the second is part-way
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the experiment ended before it could be interrupted"
        assert time.monotonic() < deadline, "the first run never finished"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert json.loads((out / "runs" / "second" / "run.json").read_text())["status"] == "running"
    assert not (out / "report" / "report.html").exists()
    ckpt = out / "runs" / "first" / "checkpoints" / "best.ckpt"
    mtime = ckpt.stat().st_mtime_ns

    # Re-run with the second run shortened so the test stays short; a changed epochs count is a
    # resumable change, so the killed run continues from its last checkpoint instead of restarting.
    cfg["train"]["runs"][1]["epochs"] = 3
    exp.write_text(yaml.safe_dump(cfg))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert ckpt.stat().st_mtime_ns == mtime
    log = (out / "run.log").read_text()
    assert "\ttrain\tfirst\tskip (up to date)" in log
    second = json.loads((out / "runs" / "second" / "run.json").read_text())
    assert second["status"] == "complete" and second["resumed"] is True and second["epochs_run"] == 3
    assert (out / "report" / "report.html").is_file()
    assert "first" in (out / "report" / "comparison.csv").read_text()
