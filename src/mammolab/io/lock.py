"""One writer per output folder: a lock file that refuses a second ``mammolab`` process writing the same ``--out``.

Two processes writing one folder with different options both "succeeded" before this module: one
training silently overwrote the other, organize left orphan images. Now every stage that writes a
folder (synth, organize, preprocess, augment, train, evaluate, explain, export, compare) holds
``FOLDER/.mammolab.lock`` while it writes, and a second writer stops at its start with one line
naming the holder: pid, host, command and since when. (``tune`` is the exception by design: several
workers share one tuning folder and one study; each trial's run folder is locked by ``train``.)

* **The kernel decides, not a file's presence**: the lock is ``flock`` on the open file, so it dies
  with its process (a SIGKILLed run leaves no lock behind, only a file whose content is ignored).
  On NFS, Linux maps ``flock`` to POSIX byte-range locks served by the NFS lock manager, so two
  machines of a cluster exclude each other too.
* **Where the file system has no locks** (``ENOLCK``/``EOPNOTSUPP``: some NFS mounts without a lock
  daemon, some FUSE file systems), the holder recorded in the file is checked instead: the same host
  and a dead pid is a stale lock and is taken over; a live pid, or another host, refuses.
* **Re-entrant in one process**: ``mammolab run`` trains, then evaluates the same run in-process;
  nested locks of one folder by one process are counted, not refused.
* **The file is removed at release**, while still locked, so a finished command leaves no trace (and a
  folder the lock itself created, still empty, goes too: a refused or failed command leaves nothing).
  A process that opened the old file before the removal and locks it after finds that file no longer
  under the name (the inode check in ``_acquire``) and starts again on the new one, so two processes
  never both "hold" the lock.
* **Stale temp files go at the start**: :func:`locks_output` removes, under the lock, the temp files that
  killed runs left in the folder (:func:`mammolab.io.atomic.remove_stale_temps`), so a re-run after a
  kill starts clean; no other process can be writing them while the lock is held.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from mammolab.errors import MammoLabError

__all__ = ["LOCK_NAME", "LockedError", "current_command", "locks_output", "output_lock"]

LOCK_NAME = ".mammolab.lock"
F = TypeVar("F", bound=Callable[..., Any])

_held: dict[str, tuple[int, int]] = {}  # lock file -> (fd, depth) held by this process
_guard = threading.Lock()


class LockedError(MammoLabError):
    """Another process writes this output folder."""


def _holder_text(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _describe(info: dict[str, Any]) -> str:
    if not info:
        return "another process (it recorded no details)"
    return (f"pid {info.get('pid')} on {info.get('host')}, running {info.get('command') or '?'!r} "
            f"since {info.get('since')}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(info: dict[str, Any]) -> bool:
    """A recorded holder on this host whose process is gone (only consulted where flock is unavailable)."""
    try:
        return info.get("host") == socket.gethostname() and not _pid_alive(int(info["pid"]))
    except (KeyError, TypeError, ValueError):
        return not info


def _write_holder(fd: int, command: str | None) -> None:
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": command or " ".join(["mammolab", *sys.argv[1:]]),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    data = json.dumps(info).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _refusal(folder: Path, lock: Path, info: dict[str, Any]) -> LockedError:
    return LockedError(f"{folder}: another MammoLab process is writing this folder ({_describe(info)}); wait for "
                       f"it to finish or choose another output folder (if that process is gone, delete {lock})")


@contextlib.contextmanager
def output_lock(folder: str | Path, *, command: str | None = None,
                lock_file: str | Path | None = None, option: str = "--out") -> Iterator[Path]:
    """Hold ``folder``'s lock (``folder/.mammolab.lock``, or ``lock_file``) for the ``with`` block.

    Creates ``folder`` when needed (and removes it again at release when it is still empty: nothing
    looks like an output that is not one). Raises :class:`LockedError` (one line naming the holder)
    when another process holds it. ``command`` is what the holder file says this process runs; ``option``
    is how an unwritable folder is named in the error (the command's option or argument).
    """
    folder = Path(folder)
    lock = Path(lock_file) if lock_file is not None else folder / LOCK_NAME
    from mammolab.io.atomic import ensure_writable_dir

    created = not lock.parent.exists()
    ensure_writable_dir(lock.parent, option=option if lock_file is None else f"{option} (its parent folder)")
    key = str(lock.resolve())
    try:
        with _guard:
            if key in _held:  # re-entrant in this process
                fd, depth = _held[key]
                _held[key] = (fd, depth + 1)
            else:
                _held[key] = (_acquire(folder, lock, command), 1)
    except BaseException:
        if created:
            _remove_empty(lock.parent)
        raise
    try:
        yield lock
    finally:
        with _guard:
            fd, depth = _held[key]
            if depth > 1:
                _held[key] = (fd, depth - 1)
            else:
                del _held[key]
                _release(fd, lock)
                if created:
                    _remove_empty(lock.parent)


def _release(fd: int, lock: Path) -> None:
    """Remove the lock file while still holding it (see the module docstring), then unlock."""
    with contextlib.suppress(OSError):
        if os.fstat(fd).st_ino == os.stat(lock).st_ino:
            lock.unlink()
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def _remove_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: someone else's files are never removed


def _acquire(folder: Path, lock: Path, command: str | None) -> int:
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _refusal(folder, lock, _holder_text(lock)) from None
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                os.close(fd)
                raise
            # No kernel locks here: judge the recorded holder (pid + host) instead.
            info = _holder_text(lock)
            if info and not _stale(info) and info.get("pid") != os.getpid():
                os.close(fd)
                raise _refusal(folder, lock, info) from None
        try:  # the file we locked must still be the one under the name (see the module docstring)
            if os.fstat(fd).st_ino != os.stat(lock).st_ino:
                os.close(fd)
                continue
        except FileNotFoundError:
            os.close(fd)
            continue
        _write_holder(fd, command)
        return fd
    raise MammoLabError(f"{lock}: could not take the output lock (the file keeps being replaced)")


def current_command(fallback: str) -> str:
    """What the lock file says this process runs: the ``mammolab`` command line, or ``fallback`` (the
    function and its folder) when MammoLab is called from Python."""
    if Path(sys.argv[0]).name.startswith("mammolab"):
        return " ".join(["mammolab", *sys.argv[1:]])
    return fallback


def locks_output(param: str = "out", name: str | None = None, *, create: bool = True,
                 clean: bool = True) -> Callable[[F], F]:
    """Decorator: the function holds the lock of the folder given as its argument ``param`` while it runs.

    One line above a stage's entry function, so each stage is locked without touching its body.
    ``create=False`` is for a folder the function reads as well as writes (a run folder): when it does
    not exist the function runs unlocked and says so in its own words. ``clean`` removes the temp files
    killed runs left in the folder, once the lock is held (:func:`mammolab.io.atomic.remove_stale_temps`).
    """

    def deco(fn: F) -> F:
        sig = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            bound = sig.bind_partial(*args, **kwargs)
            folder = bound.arguments.get(param)
            if folder is None or (not create and not Path(folder).is_dir()):
                return fn(*args, **kwargs)
            cmd = current_command(f"{name or fn.__name__}({param}={str(folder)!r})")
            with output_lock(folder, command=cmd, option="RUN" if param == "run_dir" else "--out"):
                if clean:
                    from mammolab.io.atomic import remove_stale_temps

                    remove_stale_temps(folder)
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return deco
