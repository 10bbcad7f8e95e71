"""Training options for large inputs (whole films at 1152x896 and up) on one GPU.

* gradient accumulation to a target batch: ``effective_batch`` -> Lightning's
  ``accumulate_grad_batches`` (each micro-batch's loss is divided by the count, so the summed
  gradient is the mean over the large batch, the same as one large batch when no layer looks
  across the batch: frozen or eval-mode batch norm, layer/group norm);
* channels-last memory format (model and inputs), which cuDNN's mixed-precision convolutions prefer;
* gradient checkpointing through timm's ``set_grad_checkpointing`` (activations recomputed in the
  backward pass: memory for time).

bf16 autocast is Lightning's ``precision="bf16-mixed"`` (``--precision bf16``).
"""

from __future__ import annotations

import torch

from mammolab.errors import MammoLabError
from mammolab.models.registry import MammoNet
from mammolab.train.config import TrainConfig

__all__ = ["accumulation", "apply_model_options", "world_size"]


def world_size(cfg: TrainConfig) -> int:
    """Processes that each take ``batch_size`` images per step (devices x nodes; ``auto`` = visible GPUs or 1)."""
    if isinstance(cfg.devices, int):
        devices = cfg.devices
    elif str(cfg.devices).isdigit():
        devices = int(cfg.devices)
    else:
        devices = torch.cuda.device_count() if torch.cuda.is_available() and cfg.accelerator != "cpu" else 1
    return max(1, devices) * cfg.num_nodes


def accumulation(cfg: TrainConfig) -> int:
    """Batches per optimiser step: ``accumulate_grad_batches``, or what ``effective_batch`` needs."""
    if cfg.effective_batch is None:
        return cfg.accumulate_grad_batches
    per_step = cfg.batch_size * world_size(cfg)
    if cfg.effective_batch % per_step:
        raise MammoLabError(f"--effective-batch {cfg.effective_batch}: not a multiple of batch_size x devices = "
                            f"{cfg.batch_size} x {per_step // cfg.batch_size}",
                            hint=f"use a multiple of {per_step}, or change --batch-size")
    return max(1, cfg.effective_batch // per_step)


def apply_model_options(model: MammoNet, cfg: TrainConfig) -> MammoNet:
    """Channels-last and gradient checkpointing, as the config asks (in place)."""
    if cfg.grad_checkpointing:
        body = model.backbone.body
        if not hasattr(body, "set_grad_checkpointing"):
            raise MammoLabError(f"--grad-checkpointing: {model.name} has no gradient checkpointing "
                                "(timm backbones have it)")
        try:
            body.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError) as exc:
            raise MammoLabError(f"--grad-checkpointing: timm does not support it for {model.name} ({exc})") from None
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    return model
