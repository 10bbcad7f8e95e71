"""``train(dataset, config, out)``: one engine for every registry model, regime and preset.

Lightning owns the loop, devices, precision and checkpoints; this module wires MammoLab's pieces
into it and writes the run folder::

    RUN/config.yaml            the resolved TrainConfig (train it again from this file alone)
    RUN/run.json               dataset + manifest hash, model, classes, parameter counts, epochs,
                               timings, throughput, versions, device; status running/complete
    RUN/metrics.csv            one row per epoch: train/val loss, accuracy, AUC, lr, seconds
    RUN/curves.png             loss, accuracy, AUC and learning rate per epoch, best epoch marked
    RUN/logs/, tensorboard/, mlflow.db   experiment trackers, with loggers (mammolab.train.tracking)
    RUN/checkpoints/best.ckpt  best validation AUC;  RUN/checkpoints/last.ckpt  end of the last epoch

Every checkpoint is written by :class:`AtomicCheckpointIO`: a temp file in ``RUN/checkpoints`` itself,
fsynced, then renamed, so a kill or a full disk never leaves a truncated file under a final name,
even when ``--out`` is on another file system than ``$TMPDIR`` (a cluster's shared project space).
``run.json`` says ``failed`` (with the reason) when a run stops on an error and ``interrupted`` when
SIGTERM or SIGUSR1 (SLURM's warning before preemption or the time limit) stopped it; the folder is
locked while a run writes it (:mod:`mammolab.io.lock`).

A finished run with the same result-relevant config is skipped; ``resume=True`` continues a killed
run from ``last.ckpt`` and ends where an uninterrupted run with the same seed would (model,
optimiser, schedule, early-stopping state and metrics history are all in the checkpoint, and every
random draw is seeded per epoch).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mammolab.config import deep_merge, dump_yaml, load_yaml
from mammolab.data.manifest import manifest_hash, read_info
from mammolab.errors import MammoLabError, OutputError
from mammolab.io.atomic import (
    atomic_write,
    atomic_write_text,
    ensure_writable_dir,
    read_json,
    remove_stale_temps,
    write_json,
)
from mammolab.io.lock import LOCK_NAME, output_lock
from mammolab.models.registry import MammoNet, create_model
from mammolab.models.transfer import init_from_run
from mammolab.models.weights import check_checkpoint_model
from mammolab.progress import quiet
from mammolab.train.config import RUNTIME_FIELDS, TrainConfig, resolve_train_config, result_hash
from mammolab.train.curves import plot_training_curves
from mammolab.train.datamodule import MammoDataModule
from mammolab.train.module import MammoModule
from mammolab.train.scaling import accumulation, apply_model_options
from mammolab.train.views import TwoViewDataModule

__all__ = [
    "METRICS_COLUMNS",
    "AtomicCheckpointIO",
    "RunResult",
    "TrainingStopped",
    "build_model",
    "plot_curves",
    "prepare_config",
    "read_metrics",
    "train",
]

METRICS_COLUMNS = ("epoch", "train_loss", "train_acc", "train_auc", "val_loss", "val_acc", "val_auc", "lr", "time")
CONFIG_NAME, RUN_JSON, METRICS_NAME, CURVES_NAME = "config.yaml", "run.json", "metrics.csv", "curves.png"
#: Options that may change when resuming: they extend or relocate a run without changing what it learnt so far.
RESUMABLE_CHANGES = frozenset({"epochs", "patience"}) | RUNTIME_FIELDS


@dataclass
class RunResult:
    """What a training run produced (also what a skipped, already finished run holds)."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_val_auc: float | None
    best_epoch: int | None
    epochs_run: int
    metrics: pd.DataFrame
    info: dict[str, Any]
    skipped: bool = False
    #: False in the extra processes of a multi-device run, which write nothing and report nothing.
    primary: bool = True


class TrainingStopped(MammoLabError):
    """SIGTERM or SIGUSR1 stopped the run; ``last.ckpt`` holds the last finished epoch for ``--resume``."""

    def __init__(self, message: str, signum: int, requeued: bool = False) -> None:
        super().__init__(message)
        self.signum = signum
        self.requeued = requeued


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic on any file system.

    The checkpoint is serialised in memory first (so its size is known), checked against the free
    space of its folder (a full disk is one line: the folder, the bytes needed and free), then
    written to ``.<name>.<pid>.<n>.mammolab-tmp`` IN THE SAME FOLDER, fsynced and ``os.replace``d
    (:func:`mammolab.io.atomic.atomic_write`): never a rename across file systems, never a partial
    file under ``best.ckpt`` or ``last.ckpt``. A killed run's temp file is removed by the next run
    (:func:`mammolab.io.atomic.remove_stale_temps`).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        data = buf.getbuffer()
        _check_space(path.parent, data.nbytes, what=f"checkpoint {path.name}")
        with atomic_write(path, "wb") as fh:
            fh.write(data)

    def remove_checkpoint(self, path: Any) -> None:
        Path(path).unlink(missing_ok=True)


def _check_space(folder: Path, needed: int, what: str) -> None:
    """One line before writing ``needed`` bytes into ``folder`` when they cannot fit (the old file of the
    same name, replaced by the rename, is not counted as free: both exist until the rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise OutputError(f"{folder}: the disk (or quota) is full: {what} needs {needed / 2**20:.1f} MiB, "
                          f"{free / 2**20:.1f} MiB free; free space or choose another --out")


class _StopOnSignal(Callback):
    """SIGUSR1 (``sbatch --signal=SIGUSR1@90``: SLURM's warning before preemption or the time limit) stops
    the run at the next batch, like Lightning's own SIGTERM handling does for SIGTERM; nothing of the
    unfinished epoch is saved, so ``last.ckpt`` stays the last finished epoch and a resumed run ends
    exactly where an uninterrupted one would."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: Any = None

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
            self._old = signal.signal(signal.SIGUSR1, self._handler)

    def uninstall(self) -> None:
        if self._old is not None:
            signal.signal(signal.SIGUSR1, self._old)
            self._old = None

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def _check(self) -> None:
        if self.signum is not None:
            raise _Preempted(self.signum)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()

    def on_validation_batch_end(self, *args: Any, **kwargs: Any) -> None:
        self._check()


class _Preempted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _slurm_requeue() -> bool:
    """``scontrol requeue`` this job (SLURM, unless ``MAMMOLAB_SLURM_REQUEUE=0``); True when it worked."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job or os.environ.get("MAMMOLAB_SLURM_REQUEUE", "1") == "0":
        return False
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    import subprocess

    try:
        return subprocess.run(["scontrol", "requeue", job], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class MetricsLogger(Callback):
    """Writes ``metrics.csv`` after every epoch; its rows travel in the checkpoint for exact resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, float]] = []
        self._t0 = 0.0
        self._t_val = 0.0
        self._lr = float("nan")
        self.train_seconds: list[float] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = [dict(r) for r in state_dict.get("rows", [])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = self._t_val = time.perf_counter()
        self._lr = float(trainer.optimizers[0].param_groups[0]["lr"]) if trainer.optimizers else float("nan")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._t_val = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        now = time.perf_counter()
        m = trainer.callback_metrics

        def value(key: str) -> float:
            return float(m[key]) if key in m else float("nan")

        row = {"epoch": trainer.current_epoch + 1, **{k: value(k) for k in METRICS_COLUMNS[1:7]},
               "lr": self._lr, "time": round(now - self._t0, 3)}
        self.rows = [r for r in self.rows if r["epoch"] < row["epoch"]] + [row]
        self.train_seconds.append(max(1e-9, self._t_val - self._t0))
        if trainer.is_global_zero:
            atomic_write_text(self.path, pd.DataFrame(self.rows, columns=list(METRICS_COLUMNS))
                              .to_csv(index=False, lineterminator="\n", float_format="%.6g"))


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` (empty frame with the contract columns when absent)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return pd.DataFrame(columns=list(METRICS_COLUMNS))
    return pd.read_csv(path)


def plot_curves(metrics: pd.DataFrame, path: str | Path, title: str = "") -> None:
    """Loss, accuracy, AUC and learning rate per epoch, best epoch marked, written atomically as PNG.

    The same figure as the comparison report's (:func:`mammolab.train.curves.plot_training_curves`).
    """
    plot_training_curves(metrics, title=title, path=path)


def build_model(cfg: TrainConfig, num_outputs: int, *, weights: str | None = None) -> MammoNet:
    """The model a config describes (weights default to the config's)."""
    weights = cfg.weights if weights is None else weights
    model = create_model(cfg.model, regime=cfg.regime, weights=weights,
                         in_chans=1, num_outputs=num_outputs, head_hidden=cfg.head_hidden,
                         head_dropout=cfg.head_dropout, head_activation=cfg.head_activation,
                         freeze_proportion=cfg.freeze_proportion, trainable_stages=cfg.trainable_stages,
                         weights_prefix=cfg.weights_prefix if weights not in ("none", "imagenet") else None,
                         head_type=cfg.head_type, views=1 if cfg.views == "single" else 2, fusion=cfg.fusion)
    if cfg.weights_convention:  # a published encoder's normalisation: in the recipe and at every rebuild
        from mammolab.models.conventions import get_convention

        conv = get_convention(cfg.weights_convention)
        model.backbone.mean, model.backbone.std = conv.mean, conv.std
    return model


def prepare_config(out: str | Path, *, config_file: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   resume: bool = False, sets: dict[str, Any] | None = None) -> TrainConfig:
    """The config for ``mammolab train``: with ``resume``, the run's own ``config.yaml`` is the base.

    ``sets`` (``--set key=value``, nested) is merged section by section over the file; ``overrides``
    (the command's own flags) win over both.
    """
    base: dict[str, Any] = {}
    if resume:
        stored = Path(out) / CONFIG_NAME
        if not stored.is_file():
            raise MammoLabError(f"--resume: {stored} not found; there is no run to resume in {out}")
        base = load_yaml(stored)
        if (overrides or {}).get("model") not in (None, base.get("model"), base.get("preset")):
            raise MammoLabError(f"--resume: {out} was trained with model {base.get('preset') or base.get('model')!r}, "
                                f"not {overrides['model']!r}", hint="a checkpoint only resumes the model it holds")
    if config_file is not None:
        base.update(load_yaml(config_file))
    if sets:
        base = deep_merge(base, sets)
    cfg = resolve_train_config(base, overrides=overrides)
    if sets:  # lax validation reads --set epochs=true as 1 epoch: the --set values are checked strictly
        from mammolab.config import check_set_types

        check_set_types(TrainConfig, cfg.model_dump(mode="json"), sets)
    return cfg


def _versions() -> dict[str, str]:
    import lightning
    import timm
    import torchmetrics

    import mammolab

    return {"mammolab": getattr(mammolab, "__version__", "?"), "python": platform.python_version(),
            "torch": torch.__version__, "lightning": lightning.__version__, "timm": timm.__version__,
            "torchmetrics": torchmetrics.__version__, "numpy": np.__version__}


def _device(trainer: L.Trainer) -> dict[str, Any]:
    root = trainer.strategy.root_device
    info: dict[str, Any] = {"type": root.type, "devices": trainer.num_devices, "nodes": trainer.num_nodes,
                            "strategy": type(trainer.strategy).__name__, "precision": str(trainer.precision)}
    if root.type == "cuda":
        info["name"] = torch.cuda.get_device_name(root)
    else:
        info["name"] = platform.processor() or platform.machine()
        info["threads"] = torch.get_num_threads()
    return info


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's info chatter (device banners, tips, hints about worker counts)."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    levels = {n: logging.getLogger(n).level for n in names}
    deterministic = torch.are_deterministic_algorithms_enabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=r".*number of training batches.*smaller than the logging interval.*")
        warnings.filterwarnings("ignore", message=r".*modules? in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        for n in names:  # device banners and tips: the progress bar and our summary say what matters
            logging.getLogger(n).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for n, lvl in levels.items():
                logging.getLogger(n).setLevel(lvl)
            # Trainer(deterministic=True) switches a process-wide flag; give the process its own back.
            torch.use_deterministic_algorithms(deterministic)


def _finished(out: Path) -> dict[str, Any] | None:
    info = read_json(out / RUN_JSON)
    return info if isinstance(info, dict) and info.get("status") == "complete" else None


def _result(out: Path, info: dict[str, Any], skipped: bool) -> RunResult:
    ck = out / "checkpoints"
    return RunResult(out, ck / "best.ckpt", ck / "last.ckpt", info.get("best_val_auc"), info.get("best_epoch"),
                     int(info.get("epochs_run", 0)), read_metrics(out), info, skipped)


def _read_checkpoint(path: Path) -> tuple[dict[str, Any] | None, str]:
    """``(checkpoint, "")``, or ``(None, why)`` when ``path`` cannot be resumed from. weights_only: a hostile
    pickle is refused, never run."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on unusual pickle protocols: the error says it all
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        return None, f"truncated, damaged or not written by MammoLab: {exc.__class__.__name__}"
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        return None, f"it holds a {type(ckpt).__name__}, not a MammoLab training checkpoint"
    return ckpt, ""


def _fallback_checkpoint(out: Path, cfg: TrainConfig, last: Path, why: str) -> Path | None:
    """The newest readable checkpoint of the run other than an unreadable ``last.ckpt`` (in practice
    ``best.ckpt``: a full training state too), announced in one warning line; None when there is none.

    A last.ckpt can be damaged outside MammoLab (a copy cut short, a file system fault): resuming from
    best.ckpt retrains only the epochs after it, where refusing would leave ``--overwrite`` (every epoch
    lost) as the only way on."""
    found: list[tuple[int, Path]] = []
    for path in sorted((out / "checkpoints").glob("*.ckpt")):
        if path == last:
            continue
        ckpt, _ = _read_checkpoint(path)
        if ckpt is None:
            continue
        try:
            check_checkpoint_model(ckpt, cfg.model, path)
        except MammoLabError:
            continue
        found.append((int(ckpt.get("epoch", -1)), path))
    if not found:
        return None
    epoch, path = max(found)
    from mammolab.io.atomic import atomic_path
    from mammolab.progress import console

    console.print(f"[yellow]warning:[/] {last} is {why}; resuming from {path} (epoch {epoch + 1}), copied over "
                  "it: the epochs after it are trained again", highlight=False, soft_wrap=True)
    # The damaged file goes now, not at the next epoch's end: a run with no epoch left to train would
    # otherwise finish with an unreadable last.ckpt.
    with atomic_path(last) as tmp:
        shutil.copyfile(path, tmp)
    return path


def _check_resume(out: Path, cfg: TrainConfig) -> Path:
    last = out / "checkpoints" / "last.ckpt"
    stored = TrainConfig.model_validate(load_yaml(out / CONFIG_NAME))
    if stored.model != cfg.model:
        raise MammoLabError(f"--resume: {out} holds model {stored.model!r}, not {cfg.model!r}")
    a, b = stored.model_dump(mode="json"), cfg.model_dump(mode="json")
    changed = sorted(k for k in a if a[k] != b[k] and k not in RESUMABLE_CHANGES)
    if changed:
        raise MammoLabError(f"--resume: option(s) {', '.join(changed)} differ from {out / CONFIG_NAME}; a resumed "
                            "run keeps its config (only epochs, patience and runtime options may change)")
    if not last.is_file():
        fallback = _fallback_checkpoint(out, cfg, last, "missing")
        if fallback is not None:
            return fallback
        raise MammoLabError(f"--resume: {last} not found; the run stopped before its first epoch ended",
                            hint="start it again without --resume (add --overwrite)")
    ckpt, why = _read_checkpoint(last)
    if ckpt is None:  # one line either way: a warning and the fallback, or the refusal
        fallback = _fallback_checkpoint(out, cfg, last, f"not a readable checkpoint ({why})")
        if fallback is not None:
            return fallback
        raise MammoLabError(f"--resume: {last} is not a readable checkpoint ({why}), and the run has no other "
                            "readable checkpoint; resume needs the checkpoint of a finished epoch",
                            hint="restore the file from a copy, or start the run again with --overwrite")
    check_checkpoint_model(ckpt, cfg.model, last)
    return last


def _clear(out: Path) -> None:
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in (RUN_JSON, METRICS_NAME, CURVES_NAME):
        (out / name).unlink(missing_ok=True)


def _discard_unstarted(out: Path, created: bool) -> None:
    """Remove what a run that never finished an epoch wrote (config.yaml, run.json ...), so no folder
    looks like a run that is not one; with a ``last.ckpt`` there is something to resume: keep it all."""
    if (out / "checkpoints" / "last.ckpt").is_file() or not out.is_dir():
        return
    for name in (CONFIG_NAME, RUN_JSON, METRICS_NAME, CURVES_NAME, "recipe.json"):
        (out / name).unlink(missing_ok=True)
    for sub in (out / "checkpoints", out):
        if sub.is_dir() and (sub is not out or created):
            remove_stale_temps(sub)
            with contextlib.suppress(OSError):
                sub.rmdir()  # only when empty: someone else's files are never removed


def _stopped(out: Path, dataset: Path, signum: int, logger: MetricsLogger) -> TrainingStopped:
    """The one line of a run stopped by a signal; on SLURM (SIGUSR1) the job is requeued first."""
    name = signal.Signals(signum).name
    done = len(logger.rows)
    requeued = signum == getattr(signal, "SIGUSR1", None) and _slurm_requeue()
    last = out / "checkpoints" / "last.ckpt"
    kept = f"last.ckpt holds epoch {done}" if done and last.is_file() else "no epoch had finished (nothing to resume)"
    then = ("the SLURM job was requeued and resumes by itself" if requeued else
            f"continue with: mammolab train {dataset} --out {out} --resume")
    return TrainingStopped(f"{out}: stopped by {name} during epoch {done + 1}; {kept} (run.json: interrupted); "
                           f"{then}", signum, requeued)


def _monitor_for(val_counts: np.ndarray, classes: Sequence[str]) -> tuple[str, str | None]:
    """What picks the best checkpoint and stops early: val AUC, or val loss when AUC cannot be defined.

    A validation split without some class has no AUC (logged as empty, never 0); following it would
    keep the first epoch and stop after ``patience`` epochs of nothing. Returns the metric and why.
    """
    absent = [c for c, n in zip(classes, val_counts, strict=True) if n == 0]
    if not absent:
        return "val_auc", None
    return "val_loss", (f"the validation split has no {' or '.join(absent)} image, so val AUC is undefined "
                        "(logged as empty): the best checkpoint and early stopping follow val loss")


def _best_epoch(metrics: pd.DataFrame, monitor: str) -> int | None:
    """The epoch the best checkpoint holds: highest val AUC or lowest val loss, as monitored."""
    col = metrics[monitor] if len(metrics) else pd.Series(dtype=float)
    if not col.notna().any():
        return None
    return int(metrics.loc[col.idxmax() if monitor == "val_auc" else col.idxmin(), "epoch"])


def train(dataset: str | Path, config: TrainConfig | dict[str, Any], out: str | Path, *, resume: bool = False,
          overwrite: bool = False, callbacks: Sequence[Callback] = (), loggers: Sequence[Any] = (),
          experiment: str | None = None) -> RunResult:
    """Train ``config`` on ``dataset`` into the run folder ``out``; return what it produced.

    ``loggers`` adds experiment trackers to the config's ``loggers``: names (csv, tensorboard, mlflow,
    wandb) or Lightning logger objects; ``experiment`` names MLflow's experiment / W&B's project
    (default: the run's display name). See :mod:`mammolab.train.tracking`.

    A finished run with the same result-relevant config is returned as is (``skipped=True``).
    ``resume`` continues from ``out/checkpoints/last.ckpt``; ``overwrite`` starts afresh. A run that
    stops on a user error or Ctrl+C before its first epoch ends leaves nothing behind (see
    :func:`_discard_unstarted`); after that, ``last.ckpt`` is kept for ``--resume``.
    """
    out = Path(out)
    created = not out.exists()
    if not created:
        ensure_writable_dir(out)
    try:
        # One writer per run folder: a second 'mammolab train --out' here is refused, naming this one.
        lock = output_lock(out, command=f"mammolab train {dataset} --out {out}") if _primary_process() \
            else contextlib.nullcontext()
        with lock:
            if not created:
                remove_stale_temps(out)  # what a killed run was writing when it died
            if _slurm_restarted(out, resume, overwrite):
                resume = True
            try:
                return _train(dataset, config, out, resume=resume, overwrite=overwrite, callbacks=callbacks,
                              loggers=loggers, experiment=experiment)
            except (MammoLabError, KeyboardInterrupt) as exc:
                # A user error or Ctrl+C before the first epoch ended. Not a callback's own exception (a pruned
                # tuning trial keeps what it logged) and not a bug (the traceback and the folder tell the story).
                _mark_stopped(out, exc)
                _discard_unstarted(out, created)
                raise
            except BaseException as exc:
                _mark_stopped(out, exc)
                raise
    finally:
        if created and out.is_dir() and {p.name for p in out.iterdir()} <= {LOCK_NAME}:
            (out / LOCK_NAME).unlink(missing_ok=True)  # nothing else was written: no folder is left behind
            with contextlib.suppress(OSError):
                out.rmdir()


def _primary_process() -> bool:
    """True except in the extra processes of a multi-device run (Lightning's DDP launcher re-runs the
    command with LOCAL_RANK set; SLURM and torchrun set RANK / SLURM_PROCID): rank 0 holds the lock."""
    return all(os.environ.get(k, "0") in ("", "0") for k in ("LOCAL_RANK", "NODE_RANK", "RANK", "SLURM_PROCID"))


def _slurm_restarted(out: Path, resume: bool, overwrite: bool) -> bool:
    """A SLURM job requeued after preemption (``SLURM_RESTART_COUNT`` > 0) re-runs its command unchanged:
    it resumes its unfinished run from ``last.ckpt`` without needing ``--resume`` in the script."""
    restarts = os.environ.get("SLURM_RESTART_COUNT", "0").strip() or "0"
    return (not resume and not overwrite and restarts != "0" and (out / "checkpoints" / "last.ckpt").is_file()
            and _finished(out) is None)


def _mark_stopped(out: Path, exc: BaseException) -> None:
    """``run.json`` of a run that stops says so: ``interrupted`` (a signal or Ctrl+C; ``last.ckpt`` is there
    to resume) or ``failed`` with the reason, never a ``running`` that nothing runs any more."""
    info = read_json(out / RUN_JSON)
    if not isinstance(info, dict) or info.get("status") != "running":
        return
    if isinstance(exc, (TrainingStopped, KeyboardInterrupt)):
        status, reason = "interrupted", str(exc) or "interrupted (Ctrl+C)"
    else:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        status, reason = "failed", f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    info.update(status=status, stopped=_now(), reason=reason,
                resumable=(out / "checkpoints" / "last.ckpt").is_file())
    with contextlib.suppress(OSError, MammoLabError):  # a full disk may refuse even this small file
        write_json(out / RUN_JSON, info)


def _train(dataset: str | Path, config: TrainConfig | dict[str, Any], out: str | Path, *, resume: bool,
           overwrite: bool, callbacks: Sequence[Callback], loggers: Sequence[Any] = (),
           experiment: str | None = None) -> RunResult:
    t_start = time.perf_counter()
    dataset, out = Path(dataset).resolve(), Path(out)
    cfg = config if isinstance(config, TrainConfig) else resolve_train_config(config)
    done = _finished(out)
    if done and not overwrite:
        if done.get("config_hash") == result_hash(cfg):
            return _result(out, done, skipped=True)
        if not resume:
            raise MammoLabError(f"{out} holds a finished run with another config",
                                hint="choose another --out, --resume with more --epochs, or --overwrite")
    ckpt_path: Path | None = None
    if resume and not overwrite:
        ckpt_path = _check_resume(out, cfg)
    elif (out / "checkpoints" / "last.ckpt").is_file() and not overwrite:
        raise MammoLabError(f"{out} holds an unfinished run", hint="pass --resume to continue it or --overwrite")
    if overwrite:
        _clear(out)
    ensure_writable_dir(out)
    atomic_write_text(out / CONFIG_NAME, dump_yaml(cfg))

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    # The image cache: --cache-dir, $MAMMOLAB_CACHE, the dataset's folder, else this run's (imagecache.py)
    from mammolab.train.imagecache import resolve_cache_dir

    dm_cfg = cfg if cfg.cache == "ram" else cfg.model_copy(
        update={"cache_dir": str(resolve_cache_dir(dataset, cfg.cache_dir, run_dir=out))})
    dm = (MammoDataModule if cfg.views == "single" else TwoViewDataModule)(dataset, dm_cfg, mean=0.5, std=0.5)
    classes = list(dm.classes)
    binary = len(classes) == 2
    model = build_model(cfg, 1 if binary else len(classes), weights="none" if ckpt_path else None)
    whole_image: dict[str, Any] = {"accumulate_grad_batches": accumulation(cfg),
                                   "weights_report": model.backbone.weights_report}
    if cfg.init_from and not ckpt_path:
        whole_image["init_from"] = init_from_run(model, cfg.init_from)
    if isinstance(dm, TwoViewDataModule):
        whole_image["n_breasts"] = {k: int(len(v)) for k, v in dm.breasts.items()}
        whole_image["pairing"] = dm.pairing
    apply_model_options(model, cfg)
    dm.mean, dm.std = model.mean, model.std
    pos_weight: float | None = None
    if cfg.pos_weight != "none":
        if not binary:
            raise MammoLabError("pos_weight applies to binary labels only")
        counts = dm.class_counts("train")
        pos_weight = float(counts[0] / max(1, counts[1])) if cfg.pos_weight == "balanced" else float(cfg.pos_weight)
    module = MammoModule(model, cfg.model_dump(mode="json"), classes, pos_weight)
    monitor, monitor_reason = _monitor_for(dm.class_counts("val"), classes)
    module.monitor = (monitor, "max" if monitor == "val_auc" else "min")

    ckpt_dir = out / "checkpoints"
    logger = MetricsLogger(out / METRICS_NAME)
    best_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=module.monitor[1],
                              save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False)
    # Not save_last=True: Lightning writes that copy only when the monitored metric improved, so it
    # would lag behind the run and --resume would redo epochs. This one is rewritten every epoch.
    last_cb = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
                              auto_insert_metric_name=False, enable_version_counter=False)
    cbs: list[Callback] = [logger, best_cb, last_cb, *callbacks]
    if cfg.patience > 0:
        cbs.append(EarlyStopping(monitor=monitor, mode=module.monitor[1], patience=cfg.patience,
                                 min_delta=cfg.min_delta, check_finite=False))
    from mammolab.train.tracking import build_loggers, log_final

    trackers = build_loggers([*cfg.loggers, *(["tensorboard"] if cfg.tensorboard else []), *loggers], out,
                             experiment=experiment or cfg.display_name, tracking_uri=cfg.tracking_uri)

    info: dict[str, Any] = {
        "status": "running", "started": _now(), "dataset": str(dataset), "manifest_hash": manifest_hash(dataset),
        "dataset_config_hash": read_info(dataset).get("config_hash"), "model": cfg.model, "preset": cfg.preset,
        "regime": cfg.regime, "name": cfg.display_name, "classes": classes,
        "labels": "binary" if binary else f"{len(classes)}class", "config_hash": result_hash(cfg),
        "epochs_planned": cfg.epochs, "parameters": model.parameter_counts(),
        "n_images": {k: int(len(v)) for k, v in dm.frames.items()}, "monitor": monitor,
        "monitor_reason": monitor_reason, **whole_image, "resumed": ckpt_path is not None,
        "resumed_from": ckpt_path.name if ckpt_path else None,
        "versions": _versions(), "pos_weight": pos_weight, "seed": cfg.seed, "fold": cfg.fold, "subset": cfg.subset,
    }
    write_json(out / RUN_JSON, info)
    # The recipe (source conversion, preprocessing, transform, classes) travels with the run: predict,
    # serve, evaluate and export apply it, and they need no dataset folder.
    from mammolab.recipe import build_recipe, write_recipe

    write_recipe(out, build_recipe(dataset, name=out.resolve().name, model=cfg.display_name, classes=classes,
                                   num_outputs=1 if binary else len(classes), image_size=cfg.image_size,
                                   resize=cfg.resize, mean=model.mean, std=model.std))

    on_cpu = cfg.accelerator == "cpu" or (cfg.accelerator == "auto" and not torch.cuda.is_available())
    if on_cpu and cfg.precision == "16-mixed":
        raise MammoLabError("--precision fp16 needs a GPU", hint="use --precision bf16 on CPU")
    stopper = _StopOnSignal()
    cbs.append(stopper)
    plugins: list[Any] = [AtomicCheckpointIO()]
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if SLURMEnvironment.detect():
        # SLURM's rank and node discovery, without Lightning's SIGUSR1 handler: that one saves a mid-epoch
        # hpc_ckpt (a resume from it repeats part of the epoch); ours stops at the next batch and keeps
        # last.ckpt at the last finished epoch, then requeues the job (see _slurm_requeue).
        plugins.append(SLURMEnvironment(auto_requeue=False))
    with _quiet_lightning():
        trainer = L.Trainer(
            max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices, num_nodes=cfg.num_nodes,
            accumulate_grad_batches=whole_image["accumulate_grad_batches"],
            strategy=cfg.strategy,
            precision=cfg.precision, callbacks=cbs, logger=trackers or False, default_root_dir=str(out),
            num_sanity_val_steps=0, enable_progress_bar=not quiet(), enable_model_summary=False,
            # "warn": deterministic kernels wherever they exist; an op without one (some CUDA backward
            # passes) warns instead of stopping the run. On CPU every op used here is deterministic.
            deterministic="warn" if cfg.deterministic else False, log_every_n_steps=1, benchmark=False,
            plugins=plugins)
        t_fit = time.perf_counter()
        stopper.install()
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=True)
        except _Preempted as exc:
            raise _stopped(out, dataset, exc.signum, logger) from None
        except SystemExit as exc:
            from lightning.pytorch.utilities.exceptions import SIGTERMException

            if isinstance(exc, SIGTERMException):  # Lightning's SIGTERM handling: stopped at the next batch
                raise _stopped(out, dataset, signal.SIGTERM, logger) from None
            # Lightning turns Ctrl+C into sys.exit(1) and leaves SIGINT ignored; give callers (and the
            # CLI's one-line message) the KeyboardInterrupt and a working Ctrl+C back. last.ckpt holds
            # the last finished epoch for --resume.
            if trainer.interrupted:
                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt from None
            raise
        finally:
            stopper.uninstall()
        fit_seconds = time.perf_counter() - t_fit

    best, last = ckpt_dir / "best.ckpt", ckpt_dir / "last.ckpt"
    if trainer.is_global_zero:
        if not best.is_file() and last.is_file():  # val AUC never defined (one class in val): best = last
            shutil.copyfile(last, best)
        metrics = pd.DataFrame(logger.rows, columns=list(METRICS_COLUMNS))
        if len(metrics):
            plot_curves(metrics, out / CURVES_NAME, title=f"{cfg.display_name} on {dataset.name}")
        best_auc = metrics["val_auc"].max() if len(metrics) and metrics["val_auc"].notna().any() else None
        best_epoch = _best_epoch(metrics, monitor)
        store = dm.store
        n_train = len(dm.frames["train"])
        secs = logger.train_seconds
        info.update({
            "status": "complete", "finished": _now(), "epochs_run": int(len(metrics)),
            "skipped_images": dm.skipped,  # unreadable images left out of the run (path -> reason)
            "stopped_early": bool(len(metrics) < cfg.epochs), "best_epoch": best_epoch,
            "best_val_auc": None if best_auc is None else float(best_auc),
            "train_seconds": round(fit_seconds, 3), "total_seconds": round(time.perf_counter() - t_start, 3),
            "throughput_img_s": round(n_train * len(secs) / sum(secs), 2) if secs else None,
            "device": _device(trainer),
            "cache": None if store is None else {"file": str(store.file) if store.file else None,
                                                 "in_ram": store.in_ram, "reused": store.reused,
                                                 "build_seconds": round(store.build_seconds, 3)},
        })
        write_json(out / RUN_JSON, info)
        log_final(trackers, info, step=trainer.global_step)
    result = _result(out, info, skipped=False)
    result.primary = trainer.is_global_zero
    return result
