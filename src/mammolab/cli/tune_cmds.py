"""CLI command of the tuning stage: ``tune`` (an Optuna search over train options, resumable and shareable)."""

from __future__ import annotations

from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import LOGGER_HELP, parse_sets, set_option

_SAY = {"soft_wrap": True, "highlight": False}  # paths and URLs stay on one copyable line


@app.command(epilog="Example: mammolab tune data/mass-roi-pp --model efficientnet_b3 --trials 50 --out "
                    "runs/tune-effb3 --export presets/effb3_tuned.yaml --logger mlflow")
def tune(
    dataset: Path = typer.Argument(..., help="Dataset folder with manifest.csv; trials train on its train rows "
                                   "and are scored on its val rows."),
    model: str = typer.Option(..., "--model", "-m", help="Model or preset to tune (see 'mammolab models'), e.g. "
                              "efficientnet_b3 or mammocnn."),
    trials: int = typer.Option(..., "--trials", "-n", help="Finished (complete + pruned) trials the study should "
                               "hold; shared by all workers of the study. A resumed study runs only the missing "
                               "ones."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder: optuna.db (default storage), "
                                    "trials/<n>/ (each trial's training run) and tune/ (trials.csv, best.json, "
                                    "plots). Default: runs/tune-<model>."),
    storage: str | None = typer.Option(None, "--storage", help="Study database URL. Default "
                                       "sqlite:///RUN/optuna.db. Use postgresql://USER:PASSWORD@HOST:5432/DB to "
                                       "let workers on several machines share one study."),
    study: str | None = typer.Option(None, "--study", help="Study name (default <model>-<size>px). Workers with "
                                     "the same --storage and --study cooperate; re-running resumes it."),
    export: Path | None = typer.Option(None, "--export", help="Write the best parameters as a train preset "
                                       "YAML, for 'mammolab train DATASET --config FILE.yaml'."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop starting new trials after this many "
                                         "seconds (running trials finish; re-run to continue)."),
    space: Path | None = typer.Option(None, "--space", help="Search space YAML (default: the shipped "
                                      "tune_space.yaml: lr, weight_decay, optimizer, batch_size, dropout, "
                                      "head_sizes, freeze_proportion, augmentation_strength)."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML of train options held fixed during the "
                                       "search (e.g. scheduler: none); they are also written into --export."),
    epochs: int = typer.Option(5, "--epochs", help="Epochs per trial (pruning may stop a trial earlier)."),
    image_size: str | None = typer.Option(None, "--image-size", help="Input size in pixels for every trial: N "
                                          "(square) or HxW, height x width (default: the model's). Small sizes "
                                          "make a quick first search."),
    subset: int | None = typer.Option(None, "--subset", help="Train each trial on about N training images "
                                      "(sampled by patient, label balance kept)."),
    seed: int = typer.Option(42, "--seed", help="Seed of the TPE sampler and of every trial's training."),
    startup_trials: int = typer.Option(3, "--startup-trials", help="Median pruner: completed trials needed "
                                       "before any trial is pruned."),
    warmup_epochs: int = typer.Option(1, "--warmup-epochs", help="Median pruner: epochs a trial always runs "
                                      "before it may be pruned."),
    heartbeat: int = typer.Option(10, "--heartbeat", help="Seconds between a running trial's heartbeats; a "
                                  "trial silent for twice as long (its worker died) is failed and retried once."),
    logger: list[str] | None = typer.Option(None, "--logger", help=LOGGER_HELP.replace("RUN/mlflow.db",
                                            "RUN/mlflow.db of the study, one experiment per study")),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking server or store for "
                                            "every trial (default: sqlite:///RUN/mlflow.db)."),
    set_: list[str] | None = set_option(),
) -> None:
    """Search train options with Optuna (TPE sampler, median pruning) to maximise validation AUC.

    The study lives in a database, so an interrupted search resumes where it stopped (finished
    trials are kept, a killed trial is retried) and several workers, on one or several machines,
    can share it with --storage postgresql://...: together they finish exactly --trials trials.
    Writes RUN/tune/trials.csv, best.json, optimization_history.png and param_importances.png
    ('mammolab compare' shows the plots); --export saves the best parameters as a train preset.
    """
    from mammolab.progress import console, quiet
    from mammolab.tune.runner import tune as run_tune

    out = out or Path("runs") / f"tune-{model}"
    sets = parse_sets(set_)
    if sets:  # fixed train options: --set over the --config file, each value typed as for train --set
        from mammolab.config import deep_merge, load_yaml
        from mammolab.tune.runner import check_sets

        check_sets(model, config, sets)

        config = deep_merge(load_yaml(config) if config else {}, sets)  # type: ignore[assignment]

    def event(msg: str) -> None:
        if not quiet():
            console.print(f"tune: {msg}", **_SAY)

    result = run_tune(dataset, model, trials, out, storage=storage, study_name=study, space=space, epochs=epochs,
                      image_size=image_size, subset=subset, seed=seed, timeout=timeout, export=export,
                      base_config=config, n_startup_trials=startup_trials, n_warmup_steps=warmup_epochs,
                      heartbeat_interval=heartbeat, on_event=event, loggers=logger or (),
                      tracking_uri=tracking_uri)
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(result.counts.items())) or "no trials"
    here = f"this worker ran {len(result.ran)}" + (" (stopped by --timeout)" if result.timed_out else "")
    console.print(f"tune: study {result.study_name!r} in {result.storage}: {counts}; {here}", **_SAY)
    if result.best_number is not None:
        params = ", ".join(f"{k}={v!r}" for k, v in result.best_params.items())
        console.print(f"best: trial {result.best_number}, val AUC {result.best_value:.4f}: {params}", **_SAY)
        console.print(f"best run: {out / 'trials' / str(result.best_number)}", **_SAY)
    console.print(f"reports: {out / 'tune'}  (trials.csv, best.json, optimization_history.png"
                  + (", param_importances.png)" if "param_importances" in result.reports else ")"), **_SAY)
    if result.export is not None:
        console.print(f"preset: {result.export}", **_SAY)
        console.print(f"next: mammolab train {dataset} --config {result.export} --out runs/<name>", **_SAY)
