"""What the stages leave on disk (issue #14): an unwritable output folder, file modes, stale temp files,
the leftovers of runs that never started, a damaged checkpoint for --resume, a killed tune trial.

Permission tests run the CLI as another user when we are root (root ignores file modes, so a test
run as root would pass without checking anything): ``nobody``, through ``subprocess``'s ``user=``.
"""

from __future__ import annotations

import os
import pickle
import shutil
import stat
from pathlib import Path

import pytest
from fault_tools import TRAIN_ARGS, digest, other_user, run_cli, run_in_process

from mammolab.data.organize import organize
from mammolab.errors import OutputError
from mammolab.io.atomic import (
    atomic_path,
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    remove_stale_temps,
    temp_files,
)

# ------------------------------------------------------------------------------ unwritable output folder


def _organize_args(download, out: Path) -> list:
    return ["organize", download.download_dir, "--csv-dir", download.csv_dir, "--out", out, "-j", "1"]


def test_read_only_output_folder_at_start(download, shared_tmp: Path) -> None:
    uid = other_user()
    out = shared_tmp / "out"
    out.mkdir()
    out.chmod(0o555)
    r = run_cli(_organize_args(download, out), tmp=shared_tmp, uid=uid)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.error_lines) == 1, r.stderr
    assert f"--out: {out}: cannot write here (Permission denied)" in r.error_lines[0]
    assert list(out.iterdir()) == []


def test_read_only_class_folder_mid_run(download, shared_tmp: Path) -> None:
    uid = other_user()
    out = shared_tmp / "out"
    first = run_cli(_organize_args(download, out), tmp=shared_tmp, uid=uid)
    assert first.returncode == 0, first.stderr
    # Lose one image and its record, and make its class folder read-only: the re-run reuses the other
    # units and must stop at that image with one line naming the folder (not skip it, not a traceback).
    image = next(p for p in sorted((out / "train").rglob("*.png")))
    for record in (out / ".mammolab" / "units").glob("*.json"):
        if image.stem in record.read_text():
            record.unlink()
    image.unlink()
    image.parent.chmod(0o555)
    try:
        r = run_cli(_organize_args(download, out), tmp=shared_tmp, uid=uid)
    finally:
        image.parent.chmod(0o777)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.error_lines) == 1, r.stderr
    assert f"{image.parent}: cannot write here (Permission denied)" in r.error_lines[0]
    assert temp_files(out) == []


def test_a_file_where_the_output_folder_should_be(download, lesions, tmp_path: Path) -> None:
    """The same one-line error without any user switch: a plain file blocks the folder (root too)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=r"--out: .*blocker.* (exists and is not a folder|a file stands)"):
        ensure_writable_dir(blocker / "out")
    r = run_cli(["preprocess", lesions, "--out", blocker / "pp"], tmp=tmp_path)
    assert r.returncode == 2 and len(r.error_lines) == 1 and "Traceback" not in r.stderr
    assert str(blocker) in r.error_lines[0]


# ------------------------------------------------------------------------------------------ file modes


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_file_modes_follow_the_umask(download, shared_tmp: Path, umask: int) -> None:
    out = shared_tmp / "ds"
    r = run_cli(_organize_args(download, out), tmp=shared_tmp, umask=umask)
    assert r.returncode == 0, r.stderr
    modes = {stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert modes == {0o666 & ~umask}


def test_run_files_follow_the_umask(trained) -> None:
    files = [p for p in trained.run.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"best.ckpt", "last.ckpt", "curves.png", "config.yaml", "run.json", "metrics.csv"} <= names
    wrong = {p.relative_to(trained.run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o664}
    assert wrong == {}


# -------------------------------------------------------------------------------------- stale temp files


def test_stale_temp_files_are_removed_on_re_run(download, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    organize(download.download_dir, csv_dir=download.csv_dir, out=out, workers=1)
    before = digest(out)
    some = out / "train" / next(p.name for p in (out / "train").iterdir())
    dead = 2**22 + 12345  # above any pid_max default: no such process
    stale = [some / f".x.png.{dead}.0.mammolab-tmp", out / f".manifest.csv.{dead}.3.mammolab-tmp",
             out / ".mammolab" / "units" / ".a.json.k3j_9x0q.tmp"]  # the random name of older versions
    live = out / f".y.png.{os.getpid()}.0.mammolab-tmp"  # a writer still at work: left alone
    for p in [*stale, live]:
        p.write_bytes(b"half")
    assert set(temp_files(out)) == {*stale, live}
    organize(download.download_dir, csv_dir=download.csv_dir, out=out, workers=1)
    assert temp_files(out) == [live]
    live.unlink()
    assert digest(out) == before


def test_atomic_write_leaves_no_temp_on_error(tmp_path: Path) -> None:
    class Boom(Exception):
        pass

    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")
    with pytest.raises(Boom), atomic_write(target, "w") as fh:
        fh.write("half")
        raise Boom
    assert target.read_text() == "old" and temp_files(tmp_path) == []
    assert remove_stale_temps(tmp_path) == 0


def test_atomic_path_for_writers_that_want_a_name(tmp_path: Path) -> None:
    """Exports (torch.onnx.export, ScriptModule.save) write through a recognisable temp name."""
    target = tmp_path / "model.onnx"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        assert tmp in temp_files(tmp_path)  # a name the stale-temp cleanup recognises
        tmp.write_bytes(b"half")
        raise ValueError
    assert not target.exists() and temp_files(tmp_path) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and temp_files(tmp_path) == []
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- runs that never started


def test_organize_of_an_empty_download_leaves_nothing(download, tmp_path: Path) -> None:
    empty = tmp_path / "download"
    empty.mkdir()
    out = tmp_path / "ds"
    r = run_cli(["organize", empty, "--csv-dir", download.csv_dir, "--out", out], tmp=tmp_path)
    assert r.returncode == 2 and len(r.error_lines) == 1 and "no .dcm files" in r.error_lines[0]
    assert not out.exists()


def test_train_on_missing_files_leaves_nothing(lesions, tmp_path: Path) -> None:
    data = tmp_path / "ds"
    shutil.copytree(lesions, data)
    gone = next((data / "val").rglob("*.png"))
    gone.unlink()
    run = tmp_path / "run"
    r = run_in_process(["train", data, "--out", run, "--epochs", "1", *TRAIN_ARGS], tmp=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "not found" in r.stderr and gone.name in r.stderr
    assert not run.exists()


# --------------------------------------------------------------------------- --resume, damaged last.ckpt


@pytest.mark.parametrize("damage", ["truncated", "hostile"])
def test_resume_with_a_damaged_last_checkpoint(trained, tmp_path: Path, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained.run, run)
    last = run / "checkpoints" / "last.ckpt"
    marker = tmp_path / "payload-ran"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[: last.stat().st_size // 3])
    else:
        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        last.write_bytes(pickle.dumps({"state_dict": Payload()}))
    # best.ckpt truncated too: with a readable one, --resume falls back to it (tests/faults/test_cluster_storage.py)
    best = run / "checkpoints" / "best.ckpt"
    best.write_bytes(best.read_bytes()[:1000])
    # Mark the copy unfinished (as if killed), so --resume has to read last.ckpt.
    info = (run / "run.json").read_text().replace('"status": "complete"', '"status": "running"')
    (run / "run.json").write_text(info)
    r = run_in_process(["train", trained.data.root, "--out", run, "--epochs", "3", "--resume", *TRAIN_ARGS],
                       tmp=tmp_path)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and len(r.error_lines) == 1, r.stderr
    line = r.error_lines[0]
    assert f"--resume: {last} is not a readable checkpoint" in line and "--overwrite" in line
    assert not marker.exists()  # the pickle payload never ran
    assert last.is_file() and (run / "config.yaml").is_file()  # the damaged run is left for the user


# -------------------------------------------------------------------------------------- tune after a kill


def test_failed_trial_folders_are_removed(tmp_path: Path) -> None:
    import optuna

    from mammolab.tune.runner import remove_failed_trial_dirs

    study = optuna.create_study(direction="maximize")
    for state in ("COMPLETE", "FAIL", "RUNNING"):
        trial = study.ask()
        if state != "RUNNING":
            study.tell(trial, 0.5 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
        (tmp_path / "trials" / str(trial.number) / "checkpoints").mkdir(parents=True)
    removed = remove_failed_trial_dirs(tmp_path, study)
    assert removed == [tmp_path / "trials" / "1"]
    assert sorted(p.name for p in (tmp_path / "trials").iterdir()) == ["0", "2"]
