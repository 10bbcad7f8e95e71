"""Tools of the fault-injection suite: tiny generated data, the CLI in a subprocess (optionally as
another user, under another umask, or killed with SIGKILL at the N-th atomic write).

Everything here is small (96-128 px films, 32 px patches, one-epoch runs of the smallest model) so
the whole suite stays under two minutes (91 s on two cores): commands that are not killed and need no
other user run in this process (`run_in_process`), killed ones side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

#: Runs the CLI with ``mammolab.io.atomic`` counting its renames and SIGKILLing its own process just
#: before the N-th one (``FAULT_KILL_AT``; 0 = never): the temp file is complete, the target not yet
#: replaced, the worst moment for a writer. The count is printed at exit, so a test can pick kill
#: points spread over a run. Nothing of this is in MammoLab itself.
KILL_DRIVER = textwrap.dedent("""
    import os, signal, sys
    import mammolab.io.atomic as atomic

    KILL_AT = int(os.environ.get("FAULT_KILL_AT", "0"))

    class _Os:
        renames = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def replace(self, src, dst):
            _Os.renames += 1
            if _Os.renames == KILL_AT:
                os.kill(os.getpid(), signal.SIGKILL)
            return os.replace(src, dst)

    atomic.os = _Os()
    import atexit
    atexit.register(lambda: print(f"FAULT_RENAMES={_Os.renames}", file=sys.stderr))
    from mammolab.cli import main
    sys.argv = ["mammolab", *sys.argv[1:]]
    main()
""")


#: Runs the CLI as another user (``FAULT_UID``): the interpreter starts as root (its own files may be
#: private to root, e.g. a pyenv Python under /root), imports everything the command needs, then
#: drops to the user with ``os.setgid``/``os.setgroups``/``os.setuid`` before the command runs.
SETUID_DRIVER = textwrap.dedent("""
    import os, sys
    import encodings.idna, encodings.utf_8_sig, encodings.latin_1, encodings.ascii  # imported lazily by codecs
    import json, concurrent.futures, email, zipfile, uuid, csv, decimal  # stdlib the command may import lazily
    import mammolab.cli
    import mammolab.data.organize, mammolab.data.cbis, mammolab.preprocess.pipeline
    import pydicom, pydicom.pixels
    uid = int(os.environ["FAULT_UID"])
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    assert os.geteuid() == uid
    from mammolab.cli import main
    sys.argv = ["mammolab", *sys.argv[1:]]
    main()
""")


@dataclass
class Result:
    """A finished CLI run: exit code and output (stderr carries the one-line errors)."""

    returncode: int
    stdout: str
    stderr: str
    counted: int | None = None  # renames counted in this process (``run_in_process(count=True)``)

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.strip()]

    @property
    def renames(self) -> int:
        if self.counted is not None:
            return self.counted
        for line in self.stderr.splitlines():
            if line.startswith("FAULT_RENAMES="):
                return int(line.split("=", 1)[1])
        raise AssertionError(f"no rename count in the output:\n{self.stderr}")


def base_env(tmp: Path) -> dict[str, str]:
    home = tmp / "home"
    home.mkdir(exist_ok=True, parents=True)
    home.chmod(0o777)
    return {**os.environ, "MAMMOLAB_QUIET": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg", "HOME": str(home),
            "MAMMOLAB_CACHE": str(home / "cache"), "MPLCONFIGDIR": str(home / "mpl"), "COLUMNS": "250",
            "OMP_NUM_THREADS": "1"}


def run_cli(args: Sequence[str | Path], *, tmp: Path, kill_at: int | None = None, uid: int | None = None,
            umask: int | None = None, timeout: float = 300) -> Result:
    """``mammolab ARGS`` in a fresh interpreter: as user ``uid`` (root only, see ``SETUID_DRIVER``), under
    ``umask``, or with the kill driver when ``kill_at`` is given (0 counts renames without killing)."""
    if uid is not None:
        driver = tmp / "setuid_driver.py"
        driver.write_text(SETUID_DRIVER)
        driver.chmod(0o644)
        cmd = [sys.executable, str(driver), *map(str, args)]
    elif kill_at is None:
        cmd = [sys.executable, "-c", "from mammolab.cli import main; main()", *map(str, args)]
    else:
        driver = tmp / "kill_driver.py"
        driver.write_text(KILL_DRIVER)
        driver.chmod(0o644)
        cmd = [sys.executable, str(driver), *map(str, args)]
    env = base_env(tmp)
    if kill_at is not None:
        env["FAULT_KILL_AT"] = str(kill_at)
    if uid is not None:
        env["FAULT_UID"] = str(uid)

    def preexec() -> None:
        if umask is not None:
            os.umask(umask)

    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec,
                          cwd=str(tmp))
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_cli_side_by_side(calls: Sequence[tuple[Sequence[str | Path], dict]]) -> list[Result]:
    """Several ``run_cli(args, **kwargs)`` at once (each a single-threaded interpreter; on two cores the
    kill tests' interpreter starts overlap instead of adding up). Results in the order of ``calls``."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, len(calls))) as pool:
        return list(pool.map(lambda call: run_cli(call[0], **call[1]), calls))


def _exit_code(main: Callable[[], object]) -> int:
    """The exit status the console entry point ``main`` would give the shell."""
    try:
        main()
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    return 0


def run_in_process(args: Sequence[str | Path], *, tmp: Path, umask: int | None = None,
                   count: bool = False) -> Result:
    """``mammolab ARGS`` in this process, in the environment ``run_cli`` gives a fresh interpreter (its
    HOME, cache and one thread), under ``umask``, optionally counting the atomic renames.

    For commands that are not killed and need no other user: each interpreter start costs the import
    of torch and Lightning (about 5 s here), which a suite of one-epoch runs cannot afford many times.
    """
    import io

    import torch

    from mammolab.cli import main

    overrides = {k: v for k, v in base_env(tmp).items() if os.environ.get(k) != v}
    saved_env = {k: os.environ.get(k) for k in overrides}
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr, sys.argv, torch.get_num_threads()
    old_mask = os.umask(umask) if umask is not None else None
    os.environ.update(overrides)
    sys.stdout, sys.stderr, sys.argv = out, err, ["mammolab", *map(str, args)]
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 in the subprocesses: the same kernels, the same sums
    counted = None
    try:
        with count_renames() if count else contextlib.nullcontext() as counter:
            code = _exit_code(main)
        counted = counter[0] if counter else None
    finally:
        sys.stdout, sys.stderr, sys.argv = saved[:3]
        torch.set_num_threads(saved[3])
        if old_mask is not None:
            os.umask(old_mask)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(code, out.getvalue(), err.getvalue(), counted)


@contextlib.contextmanager
def count_renames() -> Iterator[list[int]]:
    """Count ``mammolab.io.atomic``'s renames in this process (the in-process twin of the kill driver's
    count, for an uninterrupted reference run without an interpreter start)."""
    import mammolab.io.atomic as atomic

    real = atomic.os
    counter = [0]

    class _Os:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def replace(self, src: object, dst: object) -> None:
            counter[0] += 1
            real.replace(src, dst)

    atomic.os = _Os()  # type: ignore[assignment]
    try:
        yield counter
    finally:
        atomic.os = real


def digest(folder: Path, skip: Sequence[str] = ()) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path (paths containing a ``skip`` part left out)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        if p.is_file() and not any(s in rel for s in skip):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def other_user() -> int | None:
    """A uid to run as when we are root (so permissions are really enforced), else None (we are not
    root: permissions already apply to us)."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("running as root and there is no 'nobody' user to drop to: permission checks would not apply")


def world_tmp(parent: Path | None = None) -> Path:
    """A new folder another user can traverse and write (pytest's own tmp_path is private to root):
    under ``parent``, or directly under the system temp folder."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="mammolab-faults-", dir=parent))
    folder.chmod(0o777)
    return folder


TRAIN_ARGS = ["--model", "mammocnn", "--image-size", "32", "--batch-size", "8", "--seed", "3",
              "--weights", "none", "--cache", "ram"]


def huge_png(width: int = 40000, height: int = 40000) -> bytes:
    """A structurally valid PNG whose header declares ``width`` x ``height`` (over OpenCV's 2**30 pixels)
    with almost no data: what a damaged or hostile file looks like to a reader."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def cli_in_process(args: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, list[str]]:
    """``mammolab ARGS`` through the console entry point in this process: exit code, stdout and the
    non-empty stderr lines. A traceback on stderr fails the test (a user error is one line)."""
    from mammolab.cli import main

    old = sys.argv
    sys.argv = ["mammolab", *map(str, args)]
    try:
        code = _exit_code(main)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    assert "Traceback" not in err, err
    return code, out, [ln for ln in err.splitlines() if ln.strip()]
