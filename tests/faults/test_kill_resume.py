"""Kill and resume (issue #14): SIGKILL organize, preprocess and train at several points, re-run the same
command, and compare with an uninterrupted run: the same bytes (train: the same weights and metrics),
and no temp file left behind.

The kill points are deterministic: the CLI runs under ``fault_tools.KILL_DRIVER``, which SIGKILLs the
process just before its N-th atomic rename (the temp file written, the target not yet replaced). An
uninterrupted reference run counts the renames (in this process for organize and preprocess, under
the driver for the session's training run), and the points are spread over that count. Bounded:
three points for organize and preprocess, two for train, on tiny data.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pandas as pd
import torch
from fault_tools import TRAIN_ARGS, count_renames, digest, run_cli_side_by_side

from mammolab.data.organize import organize
from mammolab.io.atomic import temp_files
from mammolab.preprocess.pipeline import preprocess


def _points(total: int, fractions: tuple[float, ...]) -> list[int]:
    """Rename numbers spread over a run of ``total`` renames (1-based, distinct, never past the end)."""
    return sorted({min(total, max(1, round(total * f))) for f in fractions})


def _killed(r) -> None:
    assert r.returncode == -signal.SIGKILL, f"expected a SIGKILL, got {r.returncode}: {r.stderr[-2000:]}"


def test_organize_killed_at_three_points(download, tmp_path: Path) -> None:
    args = ["organize", download.download_dir, "--csv-dir", download.csv_dir, "-j", "1", "--out"]
    with count_renames() as renames:
        organize(download.download_dir, csv_dir=download.csv_dir, out=tmp_path / "ref", workers=1)
    total = renames[0]
    expected = digest(tmp_path / "ref")
    points = _points(total, (0.1, 0.5, 0.95))
    killed = run_cli_side_by_side([([*args, tmp_path / f"killed-{k}"], {"tmp": tmp_path, "kill_at": k})
                                   for k in points])
    for k, r in zip(points, killed, strict=True):
        out = tmp_path / f"killed-{k}"
        _killed(r)
        assert temp_files(out), "the kill point is mid-write: a temp file must be there"
        organize(download.download_dir, csv_dir=download.csv_dir, out=out, workers=1)
        assert temp_files(out) == [], k
        assert digest(out) == expected, f"killed at rename {k} of {total}"


def _quality_without_counts(folder: Path) -> dict:
    q = json.loads((folder / "quality_report.json").read_text())
    assert q["processed"] + q["reused"] == len(pd.read_csv(folder / "manifest.csv"))
    return {k: v for k, v in q.items() if k not in ("processed", "reused")}


def test_preprocess_killed_at_three_points(lesions, tmp_path: Path) -> None:
    args = ["preprocess", lesions, "--config", "patch", "--size", "32x32", "-j", "1", "--out"]
    with count_renames() as renames:
        preprocess(lesions, tmp_path / "ref", "patch", size=(32, 32), workers=1)
    total = renames[0]
    # The quality report says how many images a run processed and how many it reused: that differs
    # after a kill by design; every other byte is the same.
    expected = digest(tmp_path / "ref", skip=("quality_report.",))
    ref_quality = _quality_without_counts(tmp_path / "ref")
    points = _points(total, (0.1, 0.5, 0.95))
    killed = run_cli_side_by_side([([*args, tmp_path / f"killed-{k}"], {"tmp": tmp_path, "kill_at": k})
                                   for k in points])
    for k, r in zip(points, killed, strict=True):
        out = tmp_path / f"killed-{k}"
        _killed(r)
        assert temp_files(out)
        res = preprocess(lesions, out, "patch", size=(32, 32), workers=1)
        assert temp_files(out) == [], k
        assert digest(out, skip=("quality_report.",)) == expected, f"killed at rename {k} of {total}"
        assert _quality_without_counts(out) == ref_quality and res.reused > 0


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]


def test_train_killed_at_two_points(trained, tmp_path: Path) -> None:
    """The reference is the session's uninterrupted run (``trained``, whose renames were counted) on
    a dataset with two unreadable images, so the skip is resumed too; the re-run is the same command
    in this process (Typer's runner), one interpreter start fewer per kill point."""
    from typer.testing import CliRunner

    from mammolab.cli import app

    args = ["train", trained.data.root, "--epochs", "2", *TRAIN_ARGS, "--out"]
    ref_metrics = pd.read_csv(trained.run / "metrics.csv").drop(columns=["time"])
    ref_last = _weights(trained.run, "last.ckpt")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): the same kernels, the same sums
    try:
        # One point before the first epoch's checkpoint (the run starts again), one after it (it resumes).
        points = _points(trained.result.renames, (0.2, 0.7))
        killed = run_cli_side_by_side([([*args, tmp_path / f"killed-{k}"], {"tmp": tmp_path, "kill_at": k})
                                       for k in points])
        for k, r in zip(points, killed, strict=True):
            run = tmp_path / f"killed-{k}"
            _killed(r)
            resume = ["--resume"] if (run / "checkpoints" / "last.ckpt").is_file() else []
            again = CliRunner().invoke(app, [*map(str, args), str(run), *resume])
            assert again.exit_code == 0, (again.output, again.exception)
            assert temp_files(run) == [], k
            metrics = pd.read_csv(run / "metrics.csv").drop(columns=["time"])
            pd.testing.assert_frame_equal(metrics, ref_metrics)
            last = _weights(run, "last.ckpt")
            assert last.keys() == ref_last.keys()
            assert all(torch.equal(last[n], ref_last[n]) for n in last), f"killed at rename {k}"
    finally:
        torch.set_num_threads(threads)
