"""CLI commands of the models and training stage: ``models`` and ``train``."""

from __future__ import annotations

from pathlib import Path

import typer

from mammolab.cli._app import app
from mammolab.cli._options import LOGGER_HELP, overwrite_option, parse_sets, set_option


@app.command(epilog="Example: mammolab models   (then: mammolab train DATA --model resnet18_pft --out runs/r18)")
def models() -> None:
    """List every model name of the registry and every preset (the classic study's ten configurations).

    A model is a backbone trained under a regime (--regime opw, pft or cft); a preset fixes the model,
    the regime and options such as the head or the learning rate. Both are valid for 'mammolab train --model'.
    """
    from rich.table import Table

    from mammolab.models import CLASSIC_TEN, REGIMES, get_model_entry, get_preset, list_models, list_presets
    from mammolab.models.registry import REGIME_HELP
    from mammolab.progress import console

    table = Table(title="models (mammolab train --model NAME [--regime opw|pft|cft])", title_justify="left")
    table.add_column("name", min_width=max(map(len, list_models())), no_wrap=True)
    for col in ("weights", "size", "what it is"):
        table.add_column(col)
    for name in list_models():
        e = get_model_entry(name)
        size = f"{e.default_size}" + (f" (>= {e.min_size})" if e.min_size > 32 else "")
        table.add_row(name, "imagenet" if e.pretrained else "none", size, e.description)
    console.print(table)
    presets = Table(title="presets (mammolab train --model PRESET)", title_justify="left")
    presets.add_column("preset", min_width=max(map(len, list_presets())), no_wrap=True)
    for col in ("model", "regime", "classic", "what it is"):
        presets.add_column(col)
    for name in list_presets():
        p = get_preset(name)
        assert p is not None
        presets.add_row(name, p.model, p.regime, "yes" if name in CLASSIC_TEN else "", p.description)
    console.print(presets)
    console.print("regimes: " + "; ".join(f"{r} = {REGIME_HELP[r]}" for r in REGIMES), highlight=False)
    console.print("any other timm model: --model timm/<name> (e.g. timm/convnext_tiny, timm/efficientnet_b0)",
                  highlight=False)


@app.command(epilog="Example: mammolab train data/mass-roi-pp --model resnet18_cft --epochs 30 --out runs/r18 "
                    "--set augment.rotate=15 --logger mlflow")
def train(
    dataset: Path = typer.Argument(..., help="Dataset folder with manifest.csv (from 'mammolab organize' or "
                                   "'mammolab preprocess'); train/val/test rows come from its split column."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model or preset name (see 'mammolab models'), "
                                     "e.g. resnet18, mammocnn, efficientnet_b3_optuna. Required unless --config "
                                     "or --resume supplies it."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write: config.yaml, run.json, metrics.csv, "
                             "curves.png, checkpoints/{best,last}.ckpt."),
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML file of train options (any option below, "
                                       "plus augment:, head_hidden:, ...); command-line options override it."),
    regime: str | None = typer.Option(None, "--regime", help="opw (frozen backbone, linear head), pft (last "
                                      "stages + head train) or cft (everything trains). Default: the preset's, "
                                      "else cft."),
    weights: str | None = typer.Option(None, "--weights", help="'imagenet' (timm / Hugging Face hub), 'none', "
                                       "or a local .pth/.safetensors/.ckpt file. Default: imagenet for timm "
                                       "models, none for MammoLab's CNNs."),
    epochs: int | None = typer.Option(None, "--epochs", help="Maximum number of epochs (default 20)."),
    image_size: str | None = typer.Option(None, "--image-size", help="Input size in pixels: N for a square, or "
                                          "HxW (height x width, e.g. 1152x896 for whole films). Default: the "
                                          "model's, e.g. 224, 512 for mammocnn."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Images per batch and device (default 32)."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default 1e-3, or the preset's)."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="adamw, adam or sgd (default adamw)."),
    scheduler: str | None = typer.Option(None, "--scheduler", help="cosine, step, plateau or none (default "
                                         "cosine)."),
    patience: int | None = typer.Option(None, "--patience", help="Early-stopping patience in epochs on val AUC "
                                        "(default 5; 0 = never stop early)."),
    freeze_proportion: float | None = typer.Option(None, "--freeze-proportion", help="pft: fraction of the "
                                                   "backbone's layers, from the input, that stay frozen."),
    trainable_stages: int | None = typer.Option(None, "--trainable-stages", help="pft: number of backbone "
                                                "stages, from the output, that train (default 2)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 42); the same seed repeats a "
                                    "run exactly on CPU."),
    fold: int | None = typer.Option(None, "--fold", help="Cross-validation: validate on fold K of the training "
                                    "rows (manifest 'fold' column), train on the other folds."),
    subset: int | None = typer.Option(None, "--subset", help="Train on about N training images, sampled by "
                                      "patient with the label balance kept (quick experiments)."),
    devices: str | None = typer.Option(None, "--devices", help="Number of devices (GPUs) or 'auto' (default 1)."),
    num_nodes: int | None = typer.Option(None, "--num-nodes", help="Machines for multi-node DDP (SLURM: one "
                                         "task per device on each node). Default 1."),
    strategy: str | None = typer.Option(None, "--strategy", help="Lightning strategy, e.g. ddp for several "
                                        "GPUs (default auto)."),
    accelerator: str | None = typer.Option(None, "--accelerator", help="auto, cpu, gpu/cuda or mps "
                                           "(default auto)."),
    precision: str | None = typer.Option(None, "--precision", help="32, bf16 or fp16 (mixed precision; fp16 "
                                         "needs a GPU). Default 32."),
    loader_workers: int | None = typer.Option(None, "--loader-workers", help="DataLoader worker processes, "
                                              "inside training (config key num_workers; default 0: images come "
                                              "from the cache, so they rarely help). Not a stage's -j/--workers."),
    cache: str | None = typer.Option(None, "--cache", help="Image cache: auto (a file, see --cache-dir; in RAM "
                                     "when it fits), disk (always memory-mapped) or ram (no file)."),
    cache_dir: str | None = typer.Option(None, "--cache-dir", help="Folder of the image cache file. Default: "
                                         "$MAMMOLAB_CACHE, else DATASET/.mammolab-cache (reused by every run on "
                                         "the dataset), else RUN/cache when the dataset is read-only. Its space "
                                         "is reserved before training starts."),
    logger: list[str] | None = typer.Option(None, "--logger", help=LOGGER_HELP),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking server or store, e.g. "
                                            "http://mlflow.lab:5000 (default: sqlite:///RUN/mlflow.db)."),
    set_: list[str] | None = set_option(),
    views: str | None = typer.Option(None, "--views", help="single (one prediction per image, default) or "
                                     "cc+mlo (one per breast from its CC and MLO images, paired by patient_id "
                                     "and side; shared backbone, fusion head)."),
    fusion: str | None = typer.Option(None, "--fusion", help="cc+mlo: concat (pooled features side by side, "
                                      "default) or attention (attention pooling over the views)."),
    init_from: str | None = typer.Option(None, "--init-from", help="Run folder whose trained backbone starts "
                                         "this model (e.g. a patch classifier trained on --kind roi data); same "
                                         "architecture required, the head starts afresh."),
    head_type: str | None = typer.Option(None, "--head-type", help="mlp (default) or allconv (Shen et al.'s "
                                         "all-convolutional top on the feature map)."),
    weights_prefix: str | None = typer.Option(None, "--weights-prefix", help="Key prefix to strip from a "
                                              "--weights checkpoint holding the encoder of a bigger model "
                                              "(e.g. visual.trunk.), or auto."),
    weights_convention: str | None = typer.Option(None, "--weights-convention", help="Input convention of the "
                                                  "published encoder in --weights: mammo-clip (its mean/std; "
                                                  "train it at --image-size 1520x912)."),
    effective_batch: int | None = typer.Option(None, "--effective-batch", help="Images per optimiser step: "
                                               "gradients of effective/(batch-size x devices) batches are "
                                               "accumulated."),
    accumulate: int | None = typer.Option(None, "--accumulate", help="Batches per optimiser step (gradient "
                                          "accumulation; default 1)."),
    channels_last: bool = typer.Option(False, "--channels-last", help="Channels-last memory format (faster "
                                       "AMP convolutions on recent GPUs)."),
    grad_checkpointing: bool = typer.Option(False, "--grad-checkpointing", help="Recompute activations in "
                                            "the backward pass (timm models): less memory, more time."),
    resume: bool = typer.Option(False, "--resume", help="Continue the killed run in --out from its last "
                                "checkpoint (same config; --epochs may grow)."),
    overwrite: bool = overwrite_option("Replace a run already in --out."),
) -> None:
    """Train a registry model or preset on a dataset folder; a finished run with the same config is skipped.

    Every epoch logs train/val loss, accuracy and AUC to RUN/metrics.csv; the best (val AUC) and last
    checkpoints go to RUN/checkpoints. Kill it any time: --resume continues from the last epoch.
    """
    from mammolab.progress import console
    from mammolab.train.fit import prepare_config
    from mammolab.train.fit import train as run_training

    overrides = {
        "model": model, "regime": regime, "weights": weights, "epochs": epochs, "image_size": image_size,
        "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "scheduler": scheduler, "patience": patience,
        "freeze_proportion": freeze_proportion, "trainable_stages": trainable_stages, "seed": seed, "fold": fold,
        "subset": subset, "devices": devices, "num_nodes": num_nodes, "strategy": strategy, "accelerator": accelerator,
        "precision": precision, "num_workers": loader_workers, "cache": cache, "cache_dir": cache_dir,
        "views": views, "fusion": fusion, "init_from": init_from, "head_type": head_type,
        "weights_prefix": weights_prefix, "weights_convention": weights_convention,
        "effective_batch": effective_batch, "accumulate_grad_batches": accumulate,
        "channels_last": channels_last or None, "grad_checkpointing": grad_checkpointing or None,
        "loggers": logger or None, "tracking_uri": tracking_uri,
    }
    from mammolab.train.fit import TrainingStopped

    cfg = prepare_config(out, config_file=config, overrides=overrides, resume=resume, sets=parse_sets(set_))
    try:
        result = run_training(dataset, cfg, out, resume=resume, overwrite=overwrite)
    except TrainingStopped as exc:  # SIGTERM / SIGUSR1: a clean stop, not a crash; 128 + the signal's number
        from rich.console import Console

        Console(stderr=True).print(f"[yellow]stopped:[/] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(128 + exc.signum) from None
    if not result.primary:  # the other processes of --devices N: rank 0 reports
        return
    say = {"soft_wrap": True, "highlight": False}
    if result.skipped:
        console.print(f"train: {out} already holds this finished run, skipped (--overwrite to redo it)", **say)
    auc = "n/a" if result.best_val_auc is None else f"{result.best_val_auc:.4f}"
    console.print(f"train: {cfg.display_name}, {result.epochs_run} epoch(s), best val AUC {auc} "
                  f"(epoch {result.best_epoch})", **say)
    if result.info.get("monitor_reason"):  # val AUC undefined: model selection followed val loss
        console.print(f"note: {result.info['monitor_reason']} (best epoch {result.best_epoch} by val loss)", **say)
    rep = result.info.get("weights_report") or {}
    if rep.get("summary"):  # layout found, tensors converted, ignored (head, text encoder...), missing
        console.print(rep["summary"], **say)
    console.print(f"run: {out}  (metrics.csv, curves.png, run.json)", **say)
    console.print(f"best checkpoint: {result.best_checkpoint}", **say)
    console.print(f"next: mammolab evaluate {out}", **say)
