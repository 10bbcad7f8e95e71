"""Runs on a cluster's storage (issue #23): checkpoints killed mid-write with ``--out`` on another file
system than the temporary folder, full disks (checkpoints, any atomic write, the image cache), one
writer per output folder, SIGTERM (a preempted SLURM job) and re-runs after a kill.

The other file system is a tmpfs mounted for the test (root only: ``mount -t tmpfs``); where mounting
is not allowed those tests skip and say why. Kills are deterministic: small drivers (below) wrap one
MammoLab function in the child process and SIGKILL, SIGSTOP or SIGTERM it at a chosen write. The
reference of every resumed run is the session's uninterrupted two-epoch run (``trained``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from fault_tools import TRAIN_ARGS, base_env, cli_in_process, count_renames, run_cli, run_in_process

from mammolab.errors import OutputError
from mammolab.io.atomic import TEMP_SUFFIX, atomic_write_bytes, temp_files
from mammolab.io.lock import LOCK_NAME, LockedError, output_lock

# ------------------------------------------------------------------------------------------- tools

#: The CLI, stopped (SIGSTOP) right after it took its output folder's lock, so a second writer can be
#: tried while the first really holds it (the test then sends SIGCONT).
LOCK_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import mammolab.io.lock as lock

    _real_holder = lock._write_holder  # a name SAVE_KILL, run in these globals, does not reuse

    def _write_holder(fd, command):
        _real_holder(fd, command)
        os.kill(os.getpid(), signal.SIGSTOP)

    lock._write_holder = _write_holder
    if os.environ.get("FAULT_FILE"):
        exec(open(os.environ["FAULT_SAVE_KILL"]).read())
    from mammolab.cli import main
    sys.argv = ["mammolab", *sys.argv[1:]]
    main()
""")

#: Run inside LOCK_DRIVER: SIGKILLs the CLI in the middle of writing a checkpoint. The FAULT_NTH save of
#: FAULT_FILE (the second last.ckpt: the end of epoch 2) writes half its bytes to the temp file, syncs
#: them, and dies.
SAVE_KILL = textwrap.dedent("""
    import contextlib, os, signal, sys
    import mammolab.train.fit as fit

    NAME, NTH = os.environ["FAULT_FILE"], int(os.environ["FAULT_NTH"])
    real, seen = fit.atomic_write, [0]

    class _Half:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            data = memoryview(data).cast("B")
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            os.fsync(self.fh.fileno())
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def atomic_write(path, mode="wb"):
        with real(path, mode) as fh:
            if os.path.basename(str(path)) == NAME:
                seen[0] += 1
                if seen[0] == NTH:
                    yield _Half(fh)
                    return
            yield fh

    fit.atomic_write = atomic_write
""")


def _driver(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    # TMPDIR on the test's own disk: --out lives on another file system (the tmpfs)
    return {**base_env(tmp), "TMPDIR": str(tmp), **extra}


def _mount_tmpfs(folder: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes on ``folder``; None, or why it cannot be done here."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return "mounting a tmpfs (another file system for --out) needs root and mount(8)"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=1777", "tmpfs", str(folder)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mounting a tmpfs is not allowed here: {r.stderr.strip() or r.returncode}"


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], check=False, capture_output=True)


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], Path]]:
    """``tmpfs(folder, size_bytes)`` mounts a tmpfs there (unmounted at the end), or skips the test."""
    mounted: list[Path] = []

    def mount(folder: Path, size: int) -> Path:
        why = _mount_tmpfs(folder, size)
        if why:
            pytest.skip(why)
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        _umount(folder)


def _resize(folder: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(folder)], check=True, capture_output=True)


def _cli(args: list, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """``mammolab ARGS`` in this process: exit code and the stderr lines."""
    code, _, lines = cli_in_process(args, capsys)
    return code, lines


def _errors(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("error:")]


def _weights(run: Path, name: str) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]


def _resume_matches_reference(trained, run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``train --resume`` in this process, then the same metrics and weights as the uninterrupted run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocesses (OMP_NUM_THREADS=1): the same kernels, the same sums
    try:
        code, lines = _cli(["train", trained.data.root, "--out", run, "--epochs", "2", *TRAIN_ARGS, "--resume"],
                           capsys)
    finally:
        torch.set_num_threads(threads)
    assert code == 0, lines
    assert temp_files(run) == []
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    ref = pd.read_csv(trained.run / "metrics.csv").drop(columns=["time"])
    pd.testing.assert_frame_equal(pd.read_csv(run / "metrics.csv").drop(columns=["time"]), ref)
    last, ref_last = _weights(run, "last.ckpt"), _weights(trained.run, "last.ckpt")
    assert last.keys() == ref_last.keys() and all(torch.equal(last[k], ref_last[k]) for k in last)


# ------------------------------------------------------------- a kill mid-checkpoint on another file system


@dataclass
class KilledRun:
    """A real ``mammolab train`` with --out on a tmpfs: stopped holding its lock while a second writer
    tried, then SIGKILLed in the middle of writing epoch 2's last.ckpt."""

    run: Path
    other_fs: str | None  # None: --out is on a tmpfs; else why it could not be mounted
    pid: int
    holder: dict
    second: tuple[int, list[str]]
    returncode: int
    stderr: str


@pytest.fixture(scope="module")
def killed_run(trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilledRun]:
    tmp = tmp_path_factory.mktemp("killed")
    fs = tmp / "project"
    size = (trained.run / "checkpoints" / "last.ckpt").stat().st_size
    why = _mount_tmpfs(fs, 5 * size)
    run = fs / "run"
    args = ["train", trained.data.root, "--out", run, "--epochs", "2", *TRAIN_ARGS]
    env = _env(tmp, FAULT_FILE="last.ckpt", FAULT_NTH="2",
               FAULT_SAVE_KILL=str(_driver(tmp, "save_kill.py", SAVE_KILL)))
    proc = subprocess.Popen([sys.executable, str(_driver(tmp, "lock_driver.py", LOCK_DRIVER)), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp)
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the first writer ended before it took the lock"
        holder = json.loads((run / LOCK_NAME).read_text())
        r = run_in_process(args, tmp=tmp)  # the second writer: this process, while the first holds the lock
        second = (r.returncode, r.error_lines)
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]  # the refused writer wrote nothing
        os.kill(proc.pid, signal.SIGCONT)
        _, stderr = proc.communicate(timeout=300)
        yield KilledRun(run, why, proc.pid, holder, second, proc.returncode, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if why is None:
            _umount(fs)


def test_second_train_writer_is_refused_naming_the_first(killed_run: KilledRun) -> None:
    code, lines = killed_run.second
    assert code == 2 and len(lines) == 1, lines
    line = lines[0]
    assert line.startswith(f"error: {killed_run.run}: another MammoLab process is writing this folder")
    assert f"pid {killed_run.pid} on {socket.gethostname()}" in line and "running 'mammolab train " in line
    assert killed_run.holder["pid"] == killed_run.pid and killed_run.holder["command"].startswith("mammolab train ")


def test_kill_mid_checkpoint_on_another_file_system_resumes(killed_run: KilledRun, trained, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's case: ``--out`` on a shared file system, ``$TMPDIR`` local. Killed while half of epoch
    2's last.ckpt is written, the run keeps epoch 1 intact under the final name, and --resume ends
    exactly where the uninterrupted run did."""
    if killed_run.other_fs:
        pytest.skip(killed_run.other_fs)
    run = killed_run.run
    assert os.stat(run).st_dev != os.stat(tmp_path).st_dev  # really another file system than $TMPDIR
    assert killed_run.returncode == -signal.SIGKILL, killed_run.stderr[-3000:]
    size = (trained.run / "checkpoints" / "last.ckpt").stat().st_size
    ckpts = run / "checkpoints"
    (half,) = temp_files(run)  # the half-written checkpoint, under its temp name only
    assert half.parent == ckpts and half.name.startswith(".last.ckpt.") and 0 < half.stat().st_size < size
    last = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 0  # the last finished epoch (1), complete
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # SIGKILL: nothing could say so
    # A plain re-run does not start over silently: it points at --resume (and already removed the temp).
    code, lines = _cli(["train", trained.data.root, "--out", run, "--epochs", "2", *TRAIN_ARGS], capsys)
    assert code == 2 and len(_errors(lines)) == 1 and "unfinished run" in lines[-1] and "--resume" in lines[-1]
    assert temp_files(run) == []
    _resume_matches_reference(trained, run, capsys)


# ------------------------------------------------------------------------------------------ full disks


def test_full_disk_during_training(trained, lesions, tmpfs, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Room for epoch 1's two checkpoints, not for epoch 2's: exit 2, one line naming the folder and the
    space needed, every checkpoint under a final name complete, run.json failed with the reason; with
    space again, --resume finishes the run."""
    size = (trained.run / "checkpoints" / "last.ckpt").stat().st_size
    fs = tmpfs(tmp_path / "small", 2 * size + size // 2)
    run = fs / "run"
    args = ["train", lesions, "--out", run, "--epochs", "2", *TRAIN_ARGS]
    code, lines = _cli(args, capsys)
    ckpts = run / "checkpoints"
    assert code == 2 and len(_errors(lines)) == 1, lines
    line = _errors(lines)[0]
    assert f"{ckpts}: the disk (or quota) is full" in line
    need = re.search(r"needs (\d+\.\d) MiB, (\d+\.\d) MiB free", line)
    assert need and abs(float(need[1]) - size / 2**20) < 0.2 and float(need[2]) < float(need[1]), line
    for name in ("best.ckpt", "last.ckpt"):  # never a truncated file under a final name
        assert torch.load(ckpts / name, map_location="cpu", weights_only=True)["epoch"] == 0
    assert temp_files(run) == []
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and info["resumable"] is True
    assert "OutputError" in info["reason"] and "is full" in info["reason"] and str(ckpts) in info["reason"]
    _resize(fs, 4 * size)
    code, lines = _cli([*args, "--resume"], capsys)
    assert code == 0, lines
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["epochs_run"] == 2


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmpfs, tmp_path: Path) -> None:
    """No space check first here: the write itself hits ENOSPC. The old content stays under the final
    name, the temp file goes, and the error is one line naming the folder."""
    fs = tmpfs(tmp_path / "tiny", 1 << 20)
    target = fs / "table.csv"
    atomic_write_bytes(target, b"old,content\n")
    with pytest.raises(OutputError) as info:
        atomic_write_bytes(target, os.urandom(3 << 20))
    assert str(info.value).startswith(f"{fs}: the disk (or quota) is full") and "\n" not in str(info.value)
    assert target.read_bytes() == b"old,content\n"
    assert temp_files(fs) == []


IMAGE_CACHE_SCRIPT = textwrap.dedent("""
    import sys
    import pandas as pd
    from mammolab.errors import MammoLabError
    from mammolab.train.imagecache import build_image_store

    dataset, cache_dir = sys.argv[1], sys.argv[2]
    paths = pd.read_csv(dataset + "/manifest.csv")["path"].tolist()
    try:
        build_image_store(dataset, paths, image_size=256, cache="disk", cache_dir=cache_dir, workers=1)
    except MammoLabError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
""")


def test_image_cache_on_a_full_disk_is_one_line(lesions, tmpfs, tmp_path: Path) -> None:
    """48 images at 256x256 need 3 or 6 MiB (8 or 16 bit); the cache folder has 1. Before: a sparse
    memory-mapped file and SIGBUS (exit 135) in the middle of decoding, no message. Now: one line, before
    any decoding."""
    fs = tmpfs(tmp_path / "cache", 1 << 20)
    proc = subprocess.run([sys.executable, "-c", IMAGE_CACHE_SCRIPT, str(lesions), str(fs)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])  # not -SIGBUS
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"{fs}: not enough space for the image cache: it needs ")
    need = re.search(r"it needs (\d+\.\d) MiB, (\d+\.\d) MiB free", lines[0])
    assert need and float(need[1]) >= 3.0 and float(need[2]) <= 1.0, lines[0]  # 48 x 256 x 256 x 1 or 2 bytes
    assert "--cache-dir" in lines[0] and "--cache ram" in lines[0]
    assert not list(fs.iterdir())  # the reserved temp array is gone


# ---------------------------------------------------------------------------------- one writer per folder


def test_sigterm_during_training_saves_and_resume_continues(trained, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """SIGTERM (a preempted SLURM job, or the time limit) right after epoch 1's last.ckpt is written:
    exit 128+15, one line saying what was kept, run.json interrupted, the lock released; --resume ends
    where the uninterrupted run did. In this process: Lightning's handler takes the signal during
    fit; a no-op handler of ours stands behind it, so a regression fails the test, not the session."""
    from mammolab.train.fit import AtomicCheckpointIO

    save, sent = AtomicCheckpointIO.save_checkpoint, []

    def save_then_sigterm(self: AtomicCheckpointIO, checkpoint: dict, path: object, storage_options=None) -> None:
        save(self, checkpoint, path, storage_options)
        if Path(str(path)).name == "last.ckpt" and not sent:
            sent.append(path)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", save_then_sigterm)
    run = tmp_path / "run"
    old = signal.signal(signal.SIGTERM, lambda *_: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference was trained: the same kernels, the same sums
    try:
        code, lines = _cli(["train", trained.data.root, "--out", run, "--epochs", "2", *TRAIN_ARGS], capsys)
    finally:
        signal.signal(signal.SIGTERM, old)
        torch.set_num_threads(threads)
    assert sent and code == 128 + signal.SIGTERM, lines
    stops = [ln for ln in lines if ln.startswith(("error:", "stopped:"))]
    assert len(stops) == 1 and stops[0].startswith(f"stopped: {run}: stopped by SIGTERM during epoch 2; "
                                                   "last.ckpt holds epoch 1 (run.json: interrupted)"), lines
    assert "--resume" in stops[0]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "interrupted" and info["resumable"] is True
    assert not (run / LOCK_NAME).exists()  # released and removed at the clean stop
    monkeypatch.undo()
    _resume_matches_reference(trained, run, capsys)


def test_second_organize_writer_is_refused_and_a_killed_holder_frees_the_folder(download, tmp_path: Path) -> None:
    from mammolab.data.organize import organize

    out = tmp_path / "ds"
    driver = _driver(tmp_path, "lock_driver.py", LOCK_DRIVER)
    args = ["organize", download.download_dir, "--csv-dir", download.csv_dir, "--out", out, "-j", "1"]
    proc = subprocess.Popen([sys.executable, str(driver), *map(str, args)], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)  # no FAULT_FILE: no kill
    try:
        _, status = os.waitpid(proc.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), "the first organize ended before it took the lock"
        with pytest.raises(LockedError) as info:
            organize(download.download_dir, csv_dir=download.csv_dir, out=out, workers=1, seed=7)
        msg = str(info.value)
        assert msg.startswith(f"{out}: another MammoLab process is writing this folder") and "\n" not in msg
        assert f"pid {proc.pid} on {socket.gethostname()}" in msg and "running 'mammolab organize " in msg
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused writer wrote nothing
    finally:
        proc.kill()  # SIGKILL, while it holds the lock: the kernel releases it
        proc.wait()
    res = organize(download.download_dir, csv_dir=download.csv_dir, out=out, workers=1)
    assert len(res.manifest) > 0 and (out / "manifest.csv").is_file()
    assert not (out / LOCK_NAME).exists()  # the stale lock file was taken over, then removed


HOLDER_SCRIPT = textwrap.dedent("""
    import sys
    from mammolab.io.lock import output_lock

    with output_lock(sys.argv[1], command=sys.argv[2]):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes our stdin
""")


@pytest.fixture
def holder() -> Iterator[Callable[[Path, str], int]]:
    """``holder(folder, command)``: another process holds ``folder``'s lock until the test ends; its pid."""
    procs: list[subprocess.Popen] = []

    def hold(folder: Path, command: str) -> int:
        proc = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(folder), command], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc.pid

    yield hold
    for proc in procs:
        proc.communicate(input="", timeout=30)


def _stage_calls(lesions: Path, trained) -> dict[str, tuple[Callable[[Path], object], bool]]:
    """Each writing stage called on a folder: (the call, whether the folder is the run itself)."""
    from mammolab.data.synth import synthesize
    from mammolab.evaluate.evaluation import evaluate_run
    from mammolab.evaluate.report import compare_runs
    from mammolab.explain.runner import explain_run
    from mammolab.preprocess.augment import augment
    from mammolab.preprocess.pipeline import preprocess

    return {
        "synth": (lambda out: synthesize(out, patients=6, image_size=256, workers=1), False),
        "preprocess": (lambda out: preprocess(lesions, out, "patch", workers=1), False),
        "augment": (lambda out: augment(lesions, out, workers=1), False),
        "evaluate": (lambda run: evaluate_run(run), True),
        "explain": (lambda out: explain_run(trained.run, out_dir=out, limit=1), False),
        "compare": (lambda out: compare_runs([trained.run], out), False),
    }


@pytest.mark.parametrize("stage", ["synth", "preprocess", "augment", "evaluate", "explain", "compare"])
def test_every_writing_stage_refuses_a_second_writer(stage: str, lesions, trained, holder, tmp_path: Path) -> None:
    call, is_run = _stage_calls(lesions, trained)[stage]
    folder = tmp_path / ("run" if is_run else "out")
    folder.mkdir()
    pid = holder(folder, f"mammolab {stage} (the first writer)")
    with pytest.raises(LockedError) as info:
        call(folder)
    msg = str(info.value)
    assert msg.startswith(f"{folder}: another MammoLab process is writing this folder") and "\n" not in msg
    assert f"pid {pid} on {socket.gethostname()}, running 'mammolab {stage} (the first writer)'" in msg
    assert [p.name for p in folder.iterdir()] == [LOCK_NAME]  # nothing written by the refused writer


def test_lock_is_reentrant_and_leaves_no_trace(tmp_path: Path) -> None:
    """``mammolab run`` trains then evaluates one run in one process: nested locks are counted. A folder
    the lock created and nothing else filled is removed with the lock file."""
    out = tmp_path / "new"
    with output_lock(out, command="outer"), output_lock(out, command="inner"):
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "outer"
    assert not out.exists()
    with output_lock(out):
        (out / "result.txt").write_text("kept")
    assert sorted(p.name for p in out.iterdir()) == ["result.txt"]


# ------------------------------------------------------------------------------- re-runs after a kill


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _plant_temp(folder: Path, name: str) -> Path:
    """What a SIGKILLed writer leaves: a temp file named for a process that is gone."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".{name}.{_dead_pid()}.0{TEMP_SUFFIX}"
    path.write_bytes(b"half a file")
    return path


@pytest.fixture(scope="module")
def good_run(lesions, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run on the clean lesion dataset (``trained``'s has an unreadable validation image)."""
    from mammolab.train.fit import prepare_config, train

    run = tmp_path_factory.mktemp("good") / "run"
    cfg = prepare_config(run, overrides={"model": "mammocnn", "image_size": 32, "batch_size": 8, "seed": 3,
                                         "weights": "none", "cache": "ram", "epochs": 1})
    train(lesions, cfg, run)
    return run


def test_killed_evaluate_compare_explain_temps_are_removed_by_the_re_run(good_run: Path, tmp_path: Path) -> None:
    from mammolab.evaluate.evaluation import evaluate_run
    from mammolab.evaluate.report import compare_runs
    from mammolab.explain.runner import explain_run

    run = tmp_path / "run"
    shutil.copytree(good_run, run, copy_function=os.link)  # checkpoints hard-linked: replaced, never changed
    planted = [_plant_temp(run / "eval" / "test", "predictions.csv"), _plant_temp(run, "recipe.json")]
    folder = evaluate_run(run, n_boot=20)
    assert (folder / "metrics.json").is_file() and not any(p.exists() for p in planted)
    compared = tmp_path / "compare"
    planted = _plant_temp(compared, "comparison.csv")
    paths = compare_runs([run], compared)
    assert paths["csv"].is_file() and not planted.exists()
    explained = tmp_path / "explain"
    planted = _plant_temp(explained / "overlays", "x.png")
    summary = explain_run(run, out_dir=explained, limit=2)
    assert summary["n_images"] >= 1 and not planted.exists()
    assert temp_files(run) == temp_files(compared) == temp_files(explained) == []


def test_killed_export_is_re_run(good_run: Path, lesions, tmp_path: Path) -> None:
    """SIGKILLed at its last atomic write (everything written, export.json not yet renamed into the temp
    folder): the folder under --out does not exist, only the temp sibling; the same command again
    removes it and exports, and predict takes the result."""
    from typer.testing import CliRunner

    from mammolab.cli import app
    from mammolab.evaluate.export import export_run

    with count_renames() as renames:  # an uninterrupted export: the model, recipe, card and export.json last
        export_run(good_run, tmp_path / "reference", "torchscript")
    out = tmp_path / "exported"
    args = ["export", str(good_run), "--out", str(out), "--format", "torchscript"]
    r = run_cli(args, tmp=tmp_path, kill_at=renames[0])
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert not out.exists() and [p.name for p in tmp_path.glob(f".{out.name}.*{TEMP_SUFFIX}")]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0, (again.output, again.exception)
    assert (out / "export.json").is_file() and not list(tmp_path.glob(f".{out.name}.*"))
    images = sorted(lesions.glob("test/*/*.png"))[:2]
    pred = CliRunner().invoke(app, ["predict", str(out), *map(str, images)])
    assert pred.exit_code == 0, (pred.output, pred.exception)


def test_resume_falls_back_to_best_when_last_is_unreadable(trained, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A last.ckpt damaged outside MammoLab (a copy cut short): --resume warns in one line and resumes
    from best.ckpt, the newest readable checkpoint, instead of leaving --overwrite as the only way."""
    run = tmp_path / "run"
    shutil.copytree(trained.run, run, copy_function=os.link)  # hard links: every write below replaces a file
    last = run / "checkpoints" / "last.ckpt"
    cut = last.read_bytes()[: last.stat().st_size // 4]
    last.unlink()
    last.write_bytes(cut)
    best_epoch = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["epoch"] + 1
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").unlink()  # not through the link into the session's run
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    code, lines = _cli(["train", trained.data.root, "--out", run, "--epochs", "2", *TRAIN_ARGS, "--resume"], capsys)
    assert code == 0, lines
    warn = [ln for ln in lines if ln.startswith("warning:")]
    assert len(warn) == 1 and f"{last} is not a readable checkpoint (truncated" in warn[0]
    assert f"resuming from {run / 'checkpoints' / 'best.ckpt'} (epoch {best_epoch})" in warn[0]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "complete" and info["resumed_from"] == "best.ckpt" and info["epochs_run"] == 2
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1  # rewritten, whole



def test_fallback_with_no_epoch_left_leaves_a_readable_last(good_run: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Killed after its final epoch with last.ckpt damaged: the resumed run trains nothing, and still ends
    with a readable last.ckpt (the checkpoint it resumed from, copied over the damaged one)."""
    run = tmp_path / "run"
    shutil.copytree(good_run, run, copy_function=os.link)
    last = run / "checkpoints" / "last.ckpt"
    last.unlink()
    last.write_bytes(b"PK\x03\x04 cut short")
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").unlink()
    (run / "run.json").write_text(json.dumps({**info, "status": "running"}))
    dataset = info["dataset"]
    code, lines = _cli(["train", dataset, "--out", run, "--epochs", "1", *TRAIN_ARGS, "--resume"], capsys)
    assert code == 0 and len([ln for ln in lines if ln.startswith("warning:")]) == 1, lines
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
