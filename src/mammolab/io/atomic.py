"""Atomic writes: a file either has its old content or its complete new content, never half.

Everything MammoLab writes goes through here: a temp file in the same folder (so the rename stays on
one file system), flushed, then ``os.replace``.

* **Temp names are recognisable**: ``.<name>.<pid>.<n>.mammolab-tmp``. A run killed mid-write leaves
  one behind; every stage calls :func:`remove_stale_temps` on its output folder when it starts, which
  removes the temp files of processes that are gone (a live process's temp file is left alone, so
  two workers sharing a folder do not delete each other's half-written files).
* **Modes follow the umask** (0644 under ``umask 022``, 0664 under ``002``): datasets and runs are
  shared on clusters. The temp file is created with ``os.open(..., 0o666)``, so the kernel applies
  the process's umask (and any default ACL of the folder) itself; no umask is read or changed, which
  would not be thread-safe.
* **A folder that cannot be written is one error for the whole run**: permission denied, a read-only
  file system or a full disk raise :class:`~mammolab.errors.OutputError` naming the folder, which
  the per-item loops let through instead of skipping every item one by one.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mammolab.errors import OutputError

__all__ = [
    "TEMP_SUFFIX",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "ensure_writable_dir",
    "pid_alive",
    "read_json",
    "remove_stale_temps",
    "temp_files",
    "write_json",
]

TEMP_SUFFIX = ".mammolab-tmp"
#: ``.<name>.<pid>.<n>.mammolab-tmp`` (and the random ``.<name>.<8 chars>.tmp`` of versions before 0.2).
_TEMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)\.\d+" + re.escape(TEMP_SUFFIX) + r"$")
_LEGACY_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: A temp file this old is stale whatever its pid says (pids are reused; shared file systems).
_STALE_SECONDS = 24 * 3600
_counter = itertools.count()
#: errno values that mean "this folder cannot take our files": stop the run, do not skip items.
_FATAL_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def _output_error(folder: Path, exc: OSError) -> OutputError:
    """The one-line error for an output folder that cannot be written."""
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        what = "the disk (or quota) is full; free space or choose another output folder"
    elif exc.errno == errno.ENOTDIR:
        what = "a file stands where a folder is expected; remove it or choose another output folder"
    else:
        what = (f"cannot write here ({exc.strerror or exc}); expected a folder you can write to "
                "(check its owner and mode, or choose another output folder)")
    return OutputError(f"{folder}: {what}")


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # a file where the folder should be
        raise _output_error(folder, OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))) from exc
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            # Name the deepest folder that exists: that is the one the user has to fix.
            existing = next((p for p in (folder, *folder.parents) if p.exists()), folder)
            raise _output_error(existing, exc) from None
        raise


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create this process's temp file beside ``path`` (mode 0o666 less the umask)."""
    for _ in range(3):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{next(_counter)}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), tmp
        except FileExistsError:  # left by a dead process that had our pid: it is stale
            with contextlib.suppress(OSError):
                tmp.unlink()
        except OSError as exc:
            if exc.errno in _FATAL_ERRNOS:
                raise _output_error(path.parent, exc) from None
            raise
    raise _output_error(path.parent, OSError(errno.EEXIST, "cannot create a temp file"))


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp file name beside ``path`` for writers that want a name, not a handle (``torch.onnx.export``,
    ``ScriptModule.save``); on clean exit it replaces ``path``. Same temp names, modes and errors as
    :func:`atomic_write`, so a killed export is cleaned up like any other stage's temp file."""
    path = Path(path)
    _mkdir(path.parent)
    fd, tmp = _open_temp(path)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.errno in _FATAL_ERRNOS:
            raise _output_error(path.parent, exc) from None
        raise
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temp file beside ``path``; on clean exit it replaces ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, mode) as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8, ``\\n`` newlines) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path: str | Path) -> Any | None:
    """The JSON in ``path``, or ``None`` when it is missing or not valid JSON: the reading side of the
    resumable records and markers, where anything unreadable simply means "redo the work"."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON atomically (stable bytes for stable input)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def ensure_writable_dir(folder: str | Path, option: str = "--out") -> Path:
    """Create ``folder`` if needed and prove it takes files, so a stage fails at its start, in one line
    naming the folder, instead of a traceback from deep inside the run. Works for root too: a file
    really is created (and removed), rather than trusting ``os.access``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{option}: {folder} exists and is not a folder")
    try:
        _mkdir(folder)
        fd, tmp = _open_temp(folder / "write-check")
    except OutputError as exc:
        raise OutputError(f"{option}: {exc.message}") from None
    os.close(fd)
    tmp.unlink()
    return folder


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` is running: a temp file or folder named after a live process is not stale."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temp_files(root: str | Path) -> list[Path]:
    """Every MammoLab temp file under ``root`` (this version's and the older random ``.tmp`` names)."""
    root = Path(root)
    found: list[Path] = []
    if not root.is_dir():
        return found
    for dirpath, _dirs, files in os.walk(root):
        found.extend(Path(dirpath) / f for f in files
                     if f.startswith(".") and (_TEMP_RE.match(f) or _LEGACY_RE.match(f)))
    return sorted(found)


def remove_stale_temps(root: str | Path) -> int:
    """Remove the temp files a killed run left under ``root``; return how many.

    A temp file is stale when the process that wrote it is gone, when it is older than a day, or
    when it has the older random name (those were never cleaned up). Called by each stage at start
    on its own output folder only.
    """
    removed = 0
    now = time.time()
    for path in temp_files(root):
        m = _TEMP_RE.match(path.name)
        try:
            stale = m is None or not pid_alive(int(m.group("pid"))) or now - path.stat().st_mtime > _STALE_SECONDS
            if stale:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
    return removed
