"""The Optuna study: create or resume it, run exactly N trials across any number of workers, report.

Optuna owns the search (TPE sampler, median pruner, RDB storage, heartbeats); this module adds what
a reproducible, resumable, shareable search needs around it:

* **Exactly N trials, however many workers.** ``MaxTrialsCallback`` stops a worker only *after* a
  trial ends, so two workers overshoot by one. Here a worker takes a study-wide lock
  (:class:`~mammolab.tune.storage.ClaimLock`), counts finished (COMPLETE + PRUNED) and running
  trials, and only starts a trial while that sum is below N; the lock is released as soon as the
  new trial is RUNNING, so the next worker sees it. A worker with nothing left to claim waits for
  the running trials instead of leaving, so a trial that fails frees its slot for someone.
* **Resume.** The study is loaded if it exists; a trial whose worker was killed stops sending
  heartbeats, is failed after the grace period and re-queued once with the same parameters; only the
  missing trials run. Finished trials are never re-run.
* **Reproducible sampling.** Before each trial the TPE sampler is re-seeded with ``seed + the number
  of trials so far`` (read under the lock), so a single worker replays the same search and two
  workers never draw the same random start-up parameters.
* **One study, one set of settings.** The model, space, image size, epochs and dataset hash are
  stored on the study; a worker started with different ones is refused instead of mixing results.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write, atomic_write_text, write_json
from mammolab.io.csvsafe import to_csv_text
from mammolab.tune.storage import ClaimLock, init_lock, redact_url

__all__ = [
    "FINISHED",
    "WorkerSummary",
    "best_trial",
    "create_or_load_study",
    "run_trials",
    "study_counts",
    "write_study_reports",
]

SETTINGS_ATTR = "mammolab_settings"


def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


#: Trial states that count towards a study's target: a pruned trial is a finished, scored decision too.
FINISHED = ("COMPLETE", "PRUNED")


def create_or_load_study(storage: Any, study_name: str, *, settings: Mapping[str, Any], seed: int = 0,
                         n_startup_trials: int = 3, n_warmup_steps: int = 1, url: str = "") -> Any:
    """Create the study (maximising validation AUC) or load it, and check it was made with ``settings``.

    ``n_startup_trials`` and ``n_warmup_steps`` tune the :class:`optuna.pruners.MedianPruner`: no
    trial is pruned before that many trials completed, nor before that many epochs were reported.
    """
    optuna = _optuna()
    sampler = optuna.samplers.TPESampler(seed=seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
    storage_url = getattr(storage, "url", None) or url
    # One worker at a time creates the study and records its settings (see init_lock): otherwise two
    # workers starting together both create it, or both find no settings and race to store them.
    with init_lock(storage_url) if storage_url else contextlib.nullcontext():
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", sampler=sampler,
                                    pruner=pruner, load_if_exists=True)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        wanted = json.loads(json.dumps(dict(settings), sort_keys=True, default=str))
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, wanted)
            stored = wanted
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise MammoLabError(f"study {study_name!r} in {redact_url(url) or 'the storage'} minimises; "
                            "a tuning study maximises validation AUC (use another --study name)")
    if stored != wanted:
        diff = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        detail = "; ".join(f"{k}: study has {stored.get(k)!r}, this run {wanted.get(k)!r}" for k in diff)
        raise MammoLabError(f"study {study_name!r} in {redact_url(url) or 'the storage'} was created with other "
                            f"settings ({detail}); resume it with the same options or use another --study name")
    return study


def study_counts(study: Any) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, RUNNING, FAIL, WAITING), read fresh from the storage."""
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


@dataclass
class WorkerSummary:
    """What one worker did: the trials it ran (by number and final state) and the study's totals."""

    ran: dict[int, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    timed_out: bool = False

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in FINISHED)


def run_trials(study: Any, objective: Callable[[Any], float], n_trials: int, *, lock: ClaimLock, seed: int = 0,
               timeout: float | None = None, poll_seconds: float = 2.0,
               on_event: Callable[[str], None] | None = None) -> WorkerSummary:
    """Run trials until the study holds ``n_trials`` finished (COMPLETE + PRUNED) ones.

    Safe to call from several processes on several machines at once (same storage, same study
    name): together they finish exactly ``n_trials``. ``timeout`` (seconds) stops starting new
    trials after that long; running ones finish. ``objective`` gets the Optuna trial and returns
    the value to maximise; it may raise ``optuna.TrialPruned``. Any other exception fails the trial
    and propagates (a bad configuration should stop the search, not burn every trial).
    """
    optuna = _optuna()
    if n_trials < 1:
        raise MammoLabError(f"--trials must be at least 1, got {n_trials}")
    say = on_event or (lambda _msg: None)
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    summary = WorkerSummary()
    started: list[int] = []

    def claimed(trial: Any) -> float:
        # The trial is RUNNING in the storage now: other workers will count it, so let them go.
        lock.release()
        started.append(trial.number)
        say(f"trial {trial.number} started")
        return objective(trial)

    waiting_said = False
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            summary.timed_out = True
            break
        lock.acquire()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            counts = study_counts(study)
            finished = sum(counts.get(s, 0) for s in FINISHED)
            if finished >= n_trials:
                break
            if finished + counts.get("RUNNING", 0) >= n_trials:
                wait = True
            else:
                wait = False
                waiting_said = False
                n_so_far = sum(counts.values())
                study.sampler = optuna.samplers.TPESampler(seed=seed + n_so_far)
                remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                before = len(started)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.optimize(claimed, n_trials=1, timeout=remaining, gc_after_trial=True)
                if len(started) > before:
                    number = started[-1]
                    state = next(t.state.name for t in study.get_trials(deepcopy=False) if t.number == number)
                    summary.ran[number] = state
                    say(f"trial {number} {state.lower()}")
        finally:
            lock.release()
        if wait:
            if not waiting_said:
                say("all remaining trials are running elsewhere; waiting for them to finish")
                waiting_said = True
            time.sleep(poll_seconds)
    summary.counts = study_counts(study)
    return summary


def best_trial(study: Any) -> Any:
    """The completed trial with the highest value; a clear error when none completed yet."""
    optuna = _optuna()
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if t.value is not None and math.isfinite(t.value)]
    if not done:
        raise MammoLabError(f"study {study.study_name!r} has no completed trial yet; run more trials first")
    return max(done, key=lambda t: (t.value, -t.number))


def _save_axes(ax: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
    fig.set_size_inches(7, 4.5)
    fig.tight_layout()
    with atomic_write(path) as fh:  # a recognisable temp name and the umask's mode, like every other write
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def write_study_reports(study: Any, out_dir: str | Path, *, decode: Callable[[Mapping[str, Any]], dict[str, Any]]
                        | None = None, extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``trials.csv``, ``best.json`` and Optuna's matplotlib plots into ``out_dir`` (``RUN/tune``).

    ``optimization_history.png`` always (once a trial completed); ``param_importances.png`` when
    at least two trials completed and a parameter varied (fANOVA needs something to explain).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    optuna = _optuna()
    from optuna.visualization import matplotlib as ovm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    df = study.trials_dataframe()
    atomic_write_text(out / "trials.csv", to_csv_text(df))
    written["trials"] = out / "trials.csv"
    counts = study_counts(study)
    info: dict[str, Any] = {"study": study.study_name, "counts": counts, **(extra or {})}
    try:
        best = best_trial(study)
    except MammoLabError:
        best = None
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if best is not None:
        params = decode(best.params) if decode else dict(best.params)
        info["best"] = {"number": best.number, "value": best.value, "params": params,
                        "user_attrs": dict(best.user_attrs)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _save_axes(ovm.plot_optimization_history(study, target_name="validation AUC"),
                       out / "optimization_history.png")
        written["optimization_history"] = out / "optimization_history.png"
        varied = [name for name in best.params if len({repr(t.params.get(name)) for t in complete}) > 1]
        if len(complete) >= 2 and varied:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(study)
                _save_axes(ovm.plot_param_importances(study), out / "param_importances.png")
            info["importances"] = {k: float(v) for k, v in importances.items()}
            written["param_importances"] = out / "param_importances.png"
        else:
            info["importances"] = None
            info["importances_note"] = "needs at least two completed trials with a varied parameter"
    write_json(out / "best.json", info)
    written["best"] = out / "best.json"
    return written
