"""Study storage: bad URLs and unreachable databases give one clear error; the claim loop runs exactly N."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest

from mammolab.errors import MammoLabError
from mammolab.tune.search import create_or_load_study, run_trials, study_counts
from mammolab.tune.storage import ClaimLock, default_storage_url, open_storage, redact_url, resolve_driver


@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "is not a database URL"),
    ("mysql://u:secret@db/optuna", "unsupported database 'mysql'"),
    ("sqlite://", "names no file"),
    ("postgresql:///optuna", "names no host"),
])
def test_bad_storage_url(url: str, message: str) -> None:
    with pytest.raises(MammoLabError, match=message) as err:
        open_storage(url)
    assert "secret" not in str(err.value)


def test_unreachable_postgres_names_url_without_password() -> None:
    # Port 1 on localhost: nothing listens there, the connection is refused at once.
    url = "postgresql://mammolab:topsecret@127.0.0.1:1/mammolab"
    with pytest.raises(MammoLabError, match=r"cannot reach database at postgresql\S*://mammolab:\*\*\*@127.0.0.1:1/"
                                            r"mammolab: .*(refused|failed)") as err:
        open_storage(url, connect_timeout=3)
    assert "topsecret" not in str(err.value)


def test_sqlite_path_that_cannot_be_a_database(tmp_path: Path) -> None:
    (tmp_path / "optuna.db").mkdir()  # a directory where the file should be
    with pytest.raises(MammoLabError, match="cannot reach database at sqlite:///.*unable to open database file"):
        open_storage(f"sqlite:///{tmp_path / 'optuna.db'}")


def test_default_url_and_redaction(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path / "run")
    assert url == f"sqlite:///{(tmp_path / 'run').resolve()}/optuna.db"
    assert redact_url("postgresql://u:pw@h:5432/d") == "postgresql://u:***@h:5432/d"
    assert resolve_driver("postgresql://u:pw@h/d").startswith(("postgresql+psycopg2://", "postgresql+psycopg://"))
    assert resolve_driver("postgresql+pg8000://u:pw@h/d") == "postgresql+pg8000://u:pw@h/d"


def test_study_refuses_other_settings(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    storage = open_storage(url)
    create_or_load_study(storage, "s", settings={"model": "mammocnn", "image_size": 32}, url=url)
    create_or_load_study(storage, "s", settings={"model": "mammocnn", "image_size": 32}, url=url)
    with pytest.raises(MammoLabError, match="image_size: study has 32, this run 64"):
        create_or_load_study(storage, "s", settings={"model": "mammocnn", "image_size": 64}, url=url)


def test_loop_stops_at_n_and_resumes(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    storage = open_storage(url, heartbeat_interval=1)
    study = create_or_load_study(storage, "loop", settings={}, url=url)
    lock = ClaimLock(url, "loop")
    summary = run_trials(study, lambda t: t.suggest_float("x", 0, 1), 3, lock=lock, seed=5)
    assert summary.finished == 3 and sorted(summary.ran) == [0, 1, 2]
    # Raising the target runs only the missing trials; the same target runs none.
    assert sorted(run_trials(study, lambda t: t.suggest_float("x", 0, 1), 5, lock=lock, seed=5).ran) == [3, 4]
    assert run_trials(study, lambda t: t.suggest_float("x", 0, 1), 5, lock=lock, seed=5).ran == {}
    # Re-seeding by trial count: a fresh study with the same seed replays the same parameters.
    again = create_or_load_study(storage, "loop2", settings={}, url=url)
    run_trials(again, lambda t: t.suggest_float("x", 0, 1), 5, lock=ClaimLock(url, "loop2"), seed=5)
    assert [t.params for t in again.trials] == [t.params for t in study.trials]
    # ... and no two trials of one study drew the same value.
    assert len({t.params["x"] for t in study.trials}) == 5


def test_objective_error_fails_trial_and_stops(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    study = create_or_load_study(open_storage(url), "err", settings={}, url=url)

    def bad(trial: optuna.Trial) -> float:
        raise MammoLabError("batch_size 64 does not fit")

    with pytest.raises(MammoLabError, match="does not fit"):
        run_trials(study, bad, 3, lock=ClaimLock(url, "err"))
    assert study_counts(study) == {"FAIL": 1}


WORKER = textwrap.dedent("""
    import json, sys, time
    from mammolab.tune.search import create_or_load_study, run_trials
    from mammolab.tune.storage import ClaimLock, open_storage
    url, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # grace_period 30 s: this test is about the claim lock; a heartbeat starved for 2 s on a loaded
    # machine must not fail a 0.05 s trial (stale-trial retries are tested in test_tune.py).
    study = create_or_load_study(open_storage(url, heartbeat_interval=1, grace_period=30), name,
                                 settings={"k": 1}, url=url)
    def objective(trial):
        x = trial.suggest_float("x", 0, 1)
        time.sleep(0.05)
        return x
    summary = run_trials(study, objective, n, lock=ClaimLock(url, name), poll_seconds=0.2)
    print(json.dumps(sorted(summary.ran)))
""")


@pytest.fixture
def fresh_pg_url(pg_url: str) -> Iterator[str]:
    """``pg_url`` pointed at a new, empty schema (dropped afterwards): every run starts as on a freshly
    created cluster, where Optuna still has to create its tables, the case that used to fail."""
    import sqlalchemy

    schema = f"t_{uuid.uuid4().hex[:10]}"
    engine = sqlalchemy.create_engine(resolve_driver(pg_url))
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in pg_url else "?"
    try:
        yield f"{pg_url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        engine.dispose()


def test_three_light_workers_on_postgres_finish_exactly_n(fresh_pg_url: str, tmp_path: Path) -> None:
    """The claim lock, stressed: three processes race for 12 short trials; none is lost or extra.

    On an empty database the three also race to create Optuna's tables and the study (they used to
    fail with a duplicate-key error there, see ``mammolab.tune.storage.init_lock``).
    """
    pg_url = fresh_pg_url
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    name = f"test-light-{uuid.uuid4().hex[:8]}"
    procs = [subprocess.Popen([sys.executable, str(script), pg_url, name, "12"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    ran: list[int] = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        ran += json.loads(out.strip().splitlines()[-1])
    study = optuna.load_study(study_name=name, storage=resolve_driver(pg_url))
    assert sorted(ran) == list(range(12))
    assert study_counts(study) == {"COMPLETE": 12}


def test_timeout_stops_starting_trials(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path)
    study = create_or_load_study(open_storage(url), "timeout", settings={}, url=url)

    def slow(trial: optuna.Trial) -> float:
        time.sleep(0.4)
        return trial.suggest_float("x", 0, 1)

    summary = run_trials(study, slow, 50, lock=ClaimLock(url, "timeout"), timeout=0.6)
    assert summary.timed_out and 1 <= len(summary.ran) <= 3
    assert study_counts(study) == {"COMPLETE": len(summary.ran)}  # the running trial was allowed to finish
