"""``tune(dataset, model, n_trials, out)``: a reproducible, resumable, shareable hyperparameter search.

Each trial trains one configuration with :func:`mammolab.train.fit.train` into ``RUN/trials/<n>/``
and is scored by its best validation AUC; Optuna's Lightning integration reports the validation
AUC after every epoch so the median pruner can stop weak trials early. The run folder::

    RUN/optuna.db                 the study (default storage; PostgreSQL with storage="postgresql://...")
    RUN/mammolab.json             stage "tune": dataset, model, study, storage (password hidden), settings
    RUN/trials/<n>/               each trial's training run (config.yaml, metrics.csv, checkpoints, ...)
    RUN/tune/trials.csv           every trial: number, state, value, parameters, duration
    RUN/tune/best.json            the best trial, its parameters, counts per state, parameter importances
    RUN/tune/optimization_history.png, RUN/tune/param_importances.png   Optuna's matplotlib plots
    RUN/trials/<best>/tune/       a copy of RUN/tune, so 'mammolab compare RUN/trials/<best> ...' shows the study

:func:`export_preset` writes the best parameters as a YAML that ``mammolab train --config`` accepts;
that is how the shipped ``efficientnet_b3_optuna`` preset is meant to be (re)made.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mammolab.config import deep_merge, dump_yaml, load_yaml
from mammolab.data.manifest import load_manifest, manifest_hash, read_info, write_info
from mammolab.errors import MammoLabError
from mammolab.imagesize import size_text
from mammolab.io import atomic_write_bytes, atomic_write_text
from mammolab.tune.search import best_trial, create_or_load_study, run_trials, write_study_reports
from mammolab.tune.space import SearchSpace, load_space
from mammolab.tune.storage import ClaimLock, default_storage_url, open_storage, redact_url

__all__ = ["EXCLUDED_FIELDS", "RUN_SIZE_FIELDS", "TuneResult", "check_sets", "export_preset",
           "remove_failed_trial_dirs", "tune", "tune_config"]

#: Train-config fields a search space may not tune: the tuner sets them (model, run size, seed) or
#: they change where a run executes rather than what it learns.
RUN_SIZE_FIELDS = ("epochs", "image_size", "subset", "seed", "fold")
EXCLUDED_FIELDS = ("model", "preset", "weights", *RUN_SIZE_FIELDS, "accelerator", "devices", "strategy",
                   "num_workers", "cache", "cache_dir", "tensorboard", "deterministic", "loggers", "tracking_uri")
MONITOR = "val_auc"


@dataclass
class TuneResult:
    """What a worker left behind: the study's counts, the best trial, the report files and the export."""

    run_dir: Path
    study_name: str
    storage: str
    counts: dict[str, int]
    ran: dict[int, str]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    reports: dict[str, Path] = field(default_factory=dict)
    export: Path | None = None
    timed_out: bool = False


def _base_options(model: str, base_config: str | Path | Mapping[str, Any] | None, *, epochs: int,
                  image_size: int | str | tuple[int, int] | None, subset: int | None,
                  seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(fixed train options from the user's base YAML, the tuner's run-size options)."""
    fixed = load_yaml(base_config) if isinstance(base_config, (str, Path)) else dict(base_config or {})
    if fixed.get("model") not in (None, model):
        raise MammoLabError(f"--config names model {fixed['model']!r} but --model is {model!r}; give one")
    fixed.pop("model", None)
    size = {"model": model, "epochs": epochs, "image_size": image_size, "subset": subset, "seed": seed}
    return fixed, {k: v for k, v in size.items() if v is not None}


def check_sets(model: str, base_config: str | Path | Mapping[str, Any] | None, sets: Mapping[str, Any]) -> None:
    """``tune --set`` values typed as ``train --set`` types them: ``--set epochs=true`` is one line naming
    the key and the type expected, not a trial of 1 epoch (lax validation reads true as 1).

    The base is the ``--config`` file resolved for ``model``; only the values ``--set`` gave are judged
    strictly (:func:`mammolab.config.check_set_types`)."""
    if not sets:
        return
    from mammolab.config import check_set_types
    from mammolab.train.config import TrainConfig, resolve_train_config

    fixed = load_yaml(base_config) if isinstance(base_config, (str, Path)) else dict(base_config or {})
    base = resolve_train_config({**fixed, "model": fixed.get("model") or model})
    check_set_types(TrainConfig, base.model_dump(mode="json"), dict(sets))


def tune_config(fixed: Mapping[str, Any], run_size: Mapping[str, Any], overrides: Mapping[str, Any]) -> Any:
    """The train config of one trial: fixed options < tuned values < the tuner's run-size options.

    Tuning ``freeze_proportion`` implies partial fine-tuning (regime ``pft``), the only regime it
    applies to, so a space that tunes it does not also need the regime fixed by hand.
    """
    from mammolab.train.config import resolve_train_config

    merged = deep_merge(fixed, overrides)
    if "freeze_proportion" in overrides and "regime" not in overrides:
        merged["regime"] = "pft"
        merged.pop("trainable_stages", None)
    merged.update(run_size)
    return resolve_train_config(merged)


def _check_run_dir(out: Path, study_name: str, storage_shown: str) -> None:
    if (out / "manifest.csv").is_file() or (out / "run.json").is_file():
        raise MammoLabError(f"--out {out} is a {'dataset' if (out / 'manifest.csv').is_file() else 'training run'} "
                            "folder; a tuning run needs its own folder")
    info = read_info(out)
    if info and info.get("stage") != "tune":
        raise MammoLabError(f"{out} holds a {info.get('stage', 'non-tuning')} folder, not a tuning run; "
                            "choose another --out")
    if info and (info.get("study"), info.get("storage")) != (study_name, storage_shown):
        raise MammoLabError(f"{out} belongs to study {info.get('study')!r} in {info.get('storage')}; "
                            f"one run folder holds one study (choose another --out for {study_name!r})")


def tune(dataset: str | Path, model: str, n_trials: int, out: str | Path, *, storage: str | None = None,
         study_name: str | None = None, space: str | Path | Mapping[str, Any] | None = None, epochs: int = 5,
         image_size: int | str | tuple[int, int] | None = None, subset: int | None = None, seed: int = 42,
         timeout: float | None = None,
         export: str | Path | None = None, base_config: str | Path | Mapping[str, Any] | None = None,
         n_startup_trials: int = 3, n_warmup_steps: int = 1, heartbeat_interval: int = 10,
         grace_period: int | None = None, on_event: Callable[[str], None] | None = None,
         loggers: Sequence[str] = (), tracking_uri: str | None = None) -> TuneResult:
    """Run (or resume, or join) a TPE search that maximises validation AUC; see the module docstring.

    ``n_trials`` is the study's target of finished (complete or pruned) trials, shared by every
    worker on the same storage and study name. ``timeout`` stops starting trials after that many
    seconds. ``base_config`` fixes train options that are not searched (e.g. ``scheduler: none``).
    ``n_startup_trials``/``n_warmup_steps`` configure the median pruner (trials completed before
    any pruning / epochs before a trial may be pruned); a killed worker's trial is retried after
    ``grace_period`` seconds without heartbeat (default ``2 * heartbeat_interval``). ``loggers`` sends
    every trial to experiment trackers (one MLflow experiment per study, by default in ``out/mlflow.db``).
    """
    from optuna_integration import PyTorchLightningPruningCallback

    from mammolab.train.config import RUNTIME_FIELDS, TrainConfig
    from mammolab.train.fit import train

    dataset, out = Path(dataset), Path(out)
    load_manifest(dataset)  # a clear error for a folder that is not a dataset, before any database work
    fixed, run_size = _base_options(model, base_config, epochs=epochs, image_size=image_size, subset=subset,
                                    seed=seed)
    if loggers:
        fixed["loggers"] = list(loggers)
    if tracking_uri:
        fixed["tracking_uri"] = tracking_uri
    base_cfg = tune_config(fixed, run_size, {})
    search_space: SearchSpace = load_space(space, config_model=TrainConfig, exclude=EXCLUDED_FIELDS)
    search_space.check(lambda ov: tune_config(fixed, run_size, ov))
    size_json = base_cfg.model_dump(mode="json")["image_size"]  # a rectangle as [H, W], as the study stores it
    study_name = study_name or f"{model}-{size_text(base_cfg.image_size)}px"
    url = storage or default_storage_url(out)
    shown = redact_url(url)
    _check_run_dir(out, study_name, shown)
    settings = {
        "model": model, "epochs": base_cfg.epochs, "image_size": size_json, "subset": base_cfg.subset,
        "seed": base_cfg.seed, "space": search_space.to_dict(),
        # Where a worker runs (GPU here, CPU there) may differ between workers; what trials learn may not.
        "fixed": {k: v for k, v in fixed.items() if k not in RUNTIME_FIELDS},
        "dataset_manifest_hash": manifest_hash(dataset),
    }
    study_storage = open_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study = create_or_load_study(study_storage, study_name, settings=settings, seed=seed,
                                 n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps, url=url)
    out.mkdir(parents=True, exist_ok=True)
    record = {"stage": "tune", "dataset": str(dataset.resolve()), "model": model, "study": study_name,
              "storage": shown, "n_trials": n_trials, "settings": settings}
    write_info(out, record)

    def objective(trial: Any) -> float:
        values = search_space.suggest(trial)
        cfg = tune_config(fixed, run_size, search_space.overrides(values))
        trial_dir = out / "trials" / str(trial.number)
        if trial_dir.exists():  # leftovers of a crashed attempt: trial numbers are never reused in a study
            shutil.rmtree(trial_dir)
        trial.set_user_attr("run_dir", str(trial_dir.resolve()))
        if "mlflow" in cfg.loggers and cfg.tracking_uri is None:  # one store for the whole study
            from mammolab.train.tracking import default_mlflow_uri

            cfg = cfg.model_copy(update={"tracking_uri": default_mlflow_uri(out)})
        result = train(dataset, cfg, trial_dir,
                       callbacks=[PyTorchLightningPruningCallback(trial, monitor=MONITOR)], experiment=study_name)
        if result.best_val_auc is None or not math.isfinite(result.best_val_auc):
            raise MammoLabError(f"trial {trial.number}: validation AUC is undefined (does the val split of "
                                f"{dataset} hold both classes?)")
        trial.set_user_attr("best_epoch", result.best_epoch)
        return float(result.best_val_auc)

    remove_failed_trial_dirs(out, study)
    lock = ClaimLock(url, study_name)
    try:
        summary = run_trials(study, objective, n_trials, lock=lock, seed=seed, timeout=timeout, on_event=on_event)
    finally:
        lock.close()
    remove_failed_trial_dirs(out, study)  # a killed worker's trial is failed (and retried) during the run
    reports = write_study_reports(study, out / "tune", decode=search_space.decode,
                                  extra={"model": model, "storage": shown, "n_trials": n_trials,
                                         "image_size": size_json, "epochs": base_cfg.epochs})
    try:
        best = best_trial(study)
        best_number, best_value, best_params = best.number, float(best.value), search_space.decode(best.params)
    except MammoLabError:  # every trial so far was pruned or failed
        best_number, best_value, best_params = None, None, {}
    _attach_to_best(out, best_number)
    exported = export_preset(study, search_space, export, model=model, fixed=fixed) if export else None
    return TuneResult(out, study_name, shown, summary.counts, summary.ran, best_number, best_value, best_params,
                      reports, exported, summary.timed_out)


def remove_failed_trial_dirs(out: Path, study: Any) -> list[Path]:
    """Delete ``RUN/trials/<n>/`` of every trial the study holds as FAIL; return what was removed.

    Why: a worker killed mid-trial leaves a half-trained run folder (100+ MB of checkpoints and
    cache). Optuna then fails that trial for its missing heartbeat and retries its parameters as a
    *new* trial number, so the old folder would never be used or cleaned again. A FAIL trial never
    runs again, so its folder is safe to remove; RUNNING trials (maybe on another worker sharing the
    folder) and finished ones are never touched.
    """
    import optuna

    trials_dir = out / "trials"
    if not trials_dir.is_dir():
        return []
    failed = {str(t.number) for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))}
    removed = []
    for folder in sorted(trials_dir.iterdir()):
        if folder.is_dir() and folder.name in failed:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _attach_to_best(out: Path, best_number: int | None) -> None:
    """Copy RUN/tune into the best trial's run folder (a full training run that ``compare`` can evaluate).

    The comparison report shows the study plots of any run folder that has a ``tune/`` folder; the
    tune run itself holds no model, its best trial does. Copies in trials that are no longer the best
    are removed. In a multi-machine study the best trial may have run elsewhere: then nothing is copied.
    """
    trials = out / "trials"
    for stale in trials.glob("*/tune"):
        if stale.parent.name != str(best_number):
            shutil.rmtree(stale, ignore_errors=True)
    target = trials / str(best_number)
    if best_number is None or not (target / "config.yaml").is_file():
        return
    (target / "tune").mkdir(exist_ok=True)
    for src in sorted((out / "tune").iterdir()):
        if src.is_file():
            atomic_write_bytes(target / "tune" / src.name, src.read_bytes())


def export_preset(study: Any, space: SearchSpace, path: str | Path, *, model: str,
                  fixed: Mapping[str, Any] | None = None) -> Path:
    """Write the best trial as a train preset: ``model``, the fixed options and the tuned fields.

    Run-size options (epochs, image size, subset, seed) are left out on purpose: a search runs
    small and short, the final training does not. The file is validated as a train config before
    it is written, so ``mammolab train --config FILE.yaml`` accepts it.
    """
    from mammolab.train.config import resolve_train_config

    best = best_trial(study)
    tuned = space.overrides(space.decode(best.params))
    preset: dict[str, Any] = {"model": model}
    preset.update(deep_merge(dict(fixed or {}), tuned))
    if "freeze_proportion" in tuned and "regime" not in tuned:
        preset["regime"] = "pft"
        preset.pop("trainable_stages", None)
    resolve_train_config(preset)
    settings = study.user_attrs.get("mammolab_settings", {})
    searched = size_text(settings["image_size"]) if settings.get("image_size") else "?"
    header = (f"# Best parameters of Optuna study {study.study_name!r}: trial {best.number}, validation AUC "
              f"{best.value:.4f}\n# (searched at {searched} px for "
              f"{settings.get('epochs', '?')} epoch(s)). Written by 'mammolab tune --export'; train it with\n"
              f"#   mammolab train DATASET --config {Path(path).name} --out RUN [--image-size N --epochs N]\n")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = dump_yaml({k: v for k, v in preset.items() if k != "model"})
    atomic_write_text(path, header + yaml.safe_dump({"model": model}, sort_keys=False) + body)
    return path
