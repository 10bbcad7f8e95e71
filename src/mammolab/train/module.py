"""The LightningModule: model, loss, metrics, optimiser and schedule for every registry model.

Binary tasks use one logit and ``BCEWithLogitsLoss`` (optional ``pos_weight`` from the class
balance); multi-class tasks use cross-entropy. Accuracy and AUC come from torchmetrics, computed
over the whole epoch (AUC per batch would be noise). Each training step re-seeds the global RNG
from ``(seed, epoch, batch, rank)``, so dropout draws depend on the step only and a resumed run
repeats an uninterrupted one exactly.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, MulticlassAccuracy, MulticlassAUROC
from torchmetrics.utilities.data import dim_zero_cat

from mammolab.models.registry import MammoNet
from mammolab.models.weights import CKPT_META_KEY
from mammolab.train.config import TrainConfig
from mammolab.train.datamodule import seed_mix

__all__ = ["MammoModule"]


def _undefined_auc(target: Any, num_classes: int) -> torch.Tensor | None:
    """NaN when the epoch's targets miss a class: AUC is then undefined, where torchmetrics returns 0.

    A 0 would read as the worst possible model, and the best checkpoint and early stopping would
    act on it; NaN is logged as an empty cell and the monitor falls back to val loss (see ``fit``).
    """
    t = dim_zero_cat(target)
    if t.numel() == 0 or int(torch.unique(t).numel()) < num_classes:
        return torch.tensor(float("nan"), device=t.device)
    return None


class _BinaryAUROC(BinaryAUROC):
    """:class:`BinaryAUROC` that is NaN, not 0, for targets of one class."""

    def compute(self) -> torch.Tensor:
        undefined = _undefined_auc(self.target, 2)
        return super().compute() if undefined is None else undefined


class _MulticlassAUROC(MulticlassAUROC):
    """Macro :class:`MulticlassAUROC` that is NaN, not a mean with zeros, when a class is absent."""

    def compute(self) -> torch.Tensor:
        undefined = _undefined_auc(self.target, self.num_classes)
        return super().compute() if undefined is None else undefined


def _metrics(num_classes: int, prefix: str) -> MetricCollection:
    if num_classes == 2:
        metrics = {"acc": BinaryAccuracy(), "auc": _BinaryAUROC()}
    else:
        metrics = {"acc": MulticlassAccuracy(num_classes, average="micro"),
                   "auc": _MulticlassAUROC(num_classes, average="macro")}
    return MetricCollection(metrics, prefix=prefix)


class MammoModule(L.LightningModule):
    """Trains a :class:`~mammolab.models.registry.MammoNet` under a :class:`TrainConfig`."""

    def __init__(self, model: MammoNet, config: dict[str, Any], classes: list[str],
                 pos_weight: float | None = None) -> None:
        super().__init__()
        self.save_hyperparameters({"config": config, "classes": list(classes), "pos_weight": pos_weight})
        self.model = model
        self.cfg = TrainConfig.model_validate(config)
        self.classes = list(classes)
        self.binary = len(classes) == 2
        if self.binary:
            pw = None if pos_weight is None else torch.tensor([float(pos_weight)])
            self.loss_fn: nn.Module = nn.BCEWithLogitsLoss(pos_weight=pw)
        else:
            self.loss_fn = nn.CrossEntropyLoss(label_smoothing=self.cfg.label_smoothing)
        self.train_metrics = _metrics(len(classes), "train_")
        self.val_metrics = _metrics(len(classes), "val_")
        #: What model selection follows: ``fit`` sets ``("val_loss", "min")`` when val AUC is undefined.
        self.monitor: tuple[str, str] = ("val_auc", "max")

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        if self.cfg.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x) if present is None else self.model(x, present)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """P(positive) ``[N]`` for binary, class probabilities ``[N, C]`` otherwise."""
        return torch.sigmoid(logits[:, 0].float()) if self.binary else torch.softmax(logits.float(), dim=1)

    def _step(self, batch: tuple[torch.Tensor, ...], metrics: MetricCollection, stage: str) -> torch.Tensor:
        x, y, *present = batch  # two-view batches also carry which views are there
        logits = self(x, *present)
        if self.binary:
            target = y.float()
            if self.cfg.label_smoothing:
                target = target * (1 - self.cfg.label_smoothing) + 0.5 * self.cfg.label_smoothing
            loss = self.loss_fn(logits[:, 0].float(), target)
        else:
            loss = self.loss_fn(logits.float(), y)
        metrics.update(self.probabilities(logits.detach()), y)
        self.log(f"{stage}_loss", loss, on_step=False, on_epoch=True, batch_size=len(y), sync_dist=True,
                 prog_bar=stage == "val")
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val")
        return loss

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Dropout & co. draw from the global RNG, which Lightning and the DataLoader also draw from at
        # moments that differ between a fresh and a resumed run; a seed per (epoch, batch, rank) makes
        # every step's draws independent of that history.
        torch.manual_seed(seed_mix(self.cfg.seed, self.current_epoch, batch_idx, self.global_rank, 3))

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_metrics, "train")

    def validation_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._step(batch, self.val_metrics, "val")

    def predict_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self.probabilities(self(batch[0], *batch[2:3]))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CKPT_META_KEY] = {
            "model": self.model.name, "regime": self.model.regime, "preset": self.cfg.preset,
            "classes": self.classes, "num_outputs": self.model.num_outputs,
            # an int for a square, [height, width] for a rectangle (as config.yaml and recipe.json)
            "image_size": size if isinstance(size := self.cfg.image_size, int) else list(size),
        }

    def configure_optimizers(self) -> Any:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            opt: torch.optim.Optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                  nesterov=cfg.momentum > 0)
        if cfg.scheduler == "none":
            return opt
        if cfg.scheduler == "cosine":
            sched: Any = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.min_lr)
        elif cfg.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
        else:
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=self.monitor[1], factor=cfg.gamma,
                                                               patience=max(1, cfg.patience // 2))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor[0],
                                                       "interval": "epoch"}}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
