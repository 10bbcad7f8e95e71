"""Where a study lives: URL checks, an eager connection with one clear error, and a cross-worker lock.

A study is stored in a database so that it survives a kill (SQLite, the default, one machine) or is
shared by workers on several machines (PostgreSQL). Optuna's RDB storage does the bookkeeping; this
module only makes its failure modes readable (a typo in the URL, a server that is down, a missing
driver each become one :class:`MammoLabError` naming the URL with its password hidden) and adds the
one thing Optuna lacks for "exactly N trials": a lock under which a worker counts the finished and
running trials and claims the next one (see :mod:`mammolab.tune.search`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mammolab.errors import MammoLabError

__all__ = [
    "ClaimLock",
    "default_storage_url",
    "init_lock",
    "open_storage",
    "redact_url",
    "resolve_driver",
    "validate_storage_url",
]

SUPPORTED_BACKENDS = ("sqlite", "postgresql")
_EXAMPLES = "sqlite:///PATH/optuna.db or postgresql://USER:PASSWORD@HOST:5432/DB"


def default_storage_url(run_dir: str | Path) -> str:
    """``sqlite:///RUN/optuna.db`` with an absolute path, so workers started elsewhere find the same file."""
    return f"sqlite:///{(Path(run_dir).resolve() / 'optuna.db').as_posix()}"


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***`` (safe for messages, logs and records)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        # Not parseable: hide anything between "://user:" and "@" by hand.
        head, sep, rest = url.partition("://")
        if sep and "@" in rest:
            cred, _, host = rest.rpartition("@")
            user = cred.split(":", 1)[0]
            return f"{head}://{user}:***@{host}"
        return url


def validate_storage_url(url: str) -> Any:
    """Parse a storage URL and check it names a supported backend and, for SQLite, a file.

    Returns the SQLAlchemy URL object. Raises :class:`MammoLabError` naming the URL (password hidden).
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise MammoLabError(f"--storage: {shown!r} is not a database URL (expected {_EXAMPLES})") from None
    backend = parsed.get_backend_name()
    if backend not in SUPPORTED_BACKENDS:
        raise MammoLabError(f"--storage: unsupported database {backend!r} in {shown!r} "
                            f"(supported: {', '.join(SUPPORTED_BACKENDS)}; e.g. {_EXAMPLES})")
    if backend == "sqlite" and (not parsed.database or parsed.database == ":memory:"):
        raise MammoLabError(f"--storage: {shown!r} names no file; an in-memory study cannot be resumed "
                            "(use sqlite:///PATH/optuna.db)")
    if backend == "postgresql" and not parsed.host:
        raise MammoLabError(f"--storage: {shown!r} names no host (expected postgresql://USER:PASSWORD@HOST:5432/DB)")
    return parsed


def resolve_driver(url: str) -> str:
    """Pick an installed PostgreSQL driver when the URL names none.

    SQLAlchemy 2.1 maps a bare ``postgresql://`` to psycopg 3, while ``mammolab[postgres]`` (and most
    machines) have psycopg2; use whichever is installed so the plain URL from the issue just works.
    """
    parsed = validate_storage_url(url)
    if parsed.get_backend_name() != "postgresql" or "+" in parsed.drivername:
        return url
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return parsed.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    return url


def _retry_callback(max_retry: int) -> Any:
    """Re-queue a trial whose worker died (no heartbeat for the grace period) with the same parameters."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return text or exc.__class__.__name__


#: The advisory-lock key under which workers create the schema and the study, one at a time.
_INIT_KEY = int.from_bytes(hashlib.sha256(b"mammolab-tune:init").digest()[:8], "big", signed=True)


@contextlib.contextmanager
def init_lock(url: str, connect_timeout: int = 10) -> Iterator[None]:
    """Hold the storage-wide lock under which workers create the tables and the study, one at a time.

    Why: Optuna creates its schema (tables, enum types, the alembic version row) and a study with
    check-then-insert statements. Several workers started together on a fresh database all see "no
    tables" and all create them; the losers fail with ``duplicate key value violates unique
    constraint "pg_type_typname_nsp_index"`` or ``"alembic_version_pkc"`` (the flaky multi-worker
    test, failing only right after a cluster was created). Under this lock the first worker creates
    and the others find everything in place. PostgreSQL: a session advisory lock on its own
    connection (released by the server if the worker dies); SQLite: an ``flock`` beside the file.
    A URL that cannot be reached is left to :func:`open_storage` to report.
    """
    parsed = validate_storage_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(f"{parsed.database}.init.lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+")  # noqa: SIM115 - closed below
        except OSError:
            yield
            return
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            yield
        finally:
            fh.close()
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError
    from sqlalchemy.pool import NullPool

    engine = create_engine(resolve_driver(url), poolclass=NullPool,
                           connect_args={"connect_timeout": int(connect_timeout)})
    try:
        try:
            conn = engine.connect()
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _INIT_KEY})
        except (SQLAlchemyError, ImportError):
            yield  # unreachable or no driver: open_storage gives the one clear error
            return
        try:
            yield
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _INIT_KEY})
            conn.close()
    finally:
        engine.dispose()


def open_storage(url: str, *, heartbeat_interval: int = 10, grace_period: int | None = None,
                 max_retry: int = 1, connect_timeout: int = 10) -> Any:
    """Connect to the study database now (not at the first trial) and return an Optuna RDB storage.

    Heartbeats mark each running trial alive every ``heartbeat_interval`` seconds; a trial whose
    worker was killed stops beating and, after ``grace_period`` (default twice the interval), is
    failed and re-queued once with the same parameters (``RetryFailedTrialCallback``), which is what
    makes an interrupted search resume where it stopped.
    """
    import optuna
    from sqlalchemy.exc import NoSuchModuleError, SQLAlchemyError

    parsed = validate_storage_url(url)
    shown = redact_url(url)
    url = resolve_driver(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if parsed.get_backend_name() == "sqlite":
        db = Path(parsed.database)
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MammoLabError(f"cannot reach database at {shown}: "
                                f"cannot create {db.parent} ({exc.strerror})") from None
        # Several local workers may share one SQLite file: wait for a lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        engine_kwargs["connect_args"] = {"connect_timeout": int(connect_timeout)}
    try:
        with warnings.catch_warnings(), init_lock(url, connect_timeout):
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period,
                heartbeat_stale_trial_callback=_retry_callback(max_retry),
            )
    except (ImportError, NoSuchModuleError) as exc:
        driver = parsed.get_driver_name()
        raise MammoLabError(f"--storage {shown}: the database driver {driver!r} is not installed "
                            f"(for PostgreSQL: pip install 'mammolab[postgres]'): {_reason(exc)}") from None
    except SQLAlchemyError as exc:
        raise MammoLabError(f"cannot reach database at {shown}: {_reason(exc)}") from None


class ClaimLock:
    """A lock shared by every worker of one study, held while a worker counts trials and claims one.

    PostgreSQL: a session advisory lock keyed by the study name (released by the server if the
    worker dies). SQLite: an ``flock`` on ``<db>.lock`` beside the database file (released by the
    kernel if the worker dies); SQLite studies are single-machine by nature.
    """

    def __init__(self, url: str, study_name: str) -> None:
        parsed = validate_storage_url(url)
        self._backend = parsed.get_backend_name()
        self._held = False
        self._fh: Any = None
        self._conn: Any = None
        if self._backend == "sqlite":
            self._path = Path(f"{parsed.database}.lock")
        else:
            from sqlalchemy import create_engine
            from sqlalchemy.pool import NullPool

            digest = hashlib.sha256(f"mammolab-tune:{study_name}".encode()).digest()
            self._key = int.from_bytes(digest[:8], "big", signed=True)
            self._engine = create_engine(resolve_driver(url), poolclass=NullPool)

    def acquire(self) -> None:
        if self._held:
            return
        if self._backend == "sqlite":
            self._fh = open(self._path, "a+")  # noqa: SIM115 - held open across calls on purpose
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX)
        else:
            from sqlalchemy import text

            self._conn = self._engine.connect()
            self._conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._held = True

    def release(self) -> None:
        """Release the lock; a no-op when not held (the objective releases it early, then the loop again)."""
        if not self._held:
            return
        self._held = False
        if self._backend == "sqlite":
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
        else:
            from sqlalchemy import text

            try:
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            finally:
                self._conn.close()
                self._conn = None

    def close(self) -> None:
        self.release()
        if self._backend != "sqlite":
            self._engine.dispose()

    def __enter__(self) -> ClaimLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
