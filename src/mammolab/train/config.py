"""The train configuration: every option of ``mammolab train`` with its default, in one model.

Resolution order (later wins): these defaults < the model's preset (e.g. ``resnet18_pft``) < the
YAML file given with ``--config`` < command-line options. :func:`resolve_train_config` also fills
the values that depend on the model (image size, weights), so the ``config.yaml`` written into a
run is complete: training it again from that file alone gives the same run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from mammolab.config import StrictModel, config_hash, load_config, load_yaml
from mammolab.errors import MammoLabError
from mammolab.imagesize import check_min_size, parse_image_size

__all__ = ["RUNTIME_FIELDS", "AugmentConfig", "TrainConfig", "resolve_train_config", "result_hash"]

#: Options that change where or how fast a run executes, not what it learns; they may differ on
#: ``--resume`` and do not make a finished run stale.
RUNTIME_FIELDS = frozenset({"accelerator", "devices", "num_nodes", "strategy", "num_workers", "cache", "cache_dir",
                            "tensorboard", "channels_last", "grad_checkpointing", "loggers", "tracking_uri"})
#: Options added after runs were made: left out of the result hash while at their default, so a
#: finished run of an older version is still recognised as up to date.
LATER_OPTIONS = {"weights_prefix": None, "weights_convention": None, "init_from": None, "head_type": "mlp",
                 "views": "single", "fusion": "concat", "accumulate_grad_batches": 1, "effective_batch": None}

_PRECISION_ALIASES = {
    "32": "32-true", "fp32": "32-true", "32-true": "32-true",
    "bf16": "bf16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true",
    "16": "16-mixed", "fp16": "16-mixed", "16-mixed": "16-mixed",
}


class AugmentConfig(StrictModel):
    """Online augmentation of the training split (never val/test): flips, rotation, intensity, crop."""

    enabled: bool = Field(True, description="apply the augmentations below; false = none at all")
    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.5, ge=0, le=1, description="probability of a vertical flip")
    rotate: float = Field(10.0, ge=0, le=180, description="maximum rotation in degrees (uniform +-)")
    brightness: float = Field(0.1, ge=0, le=1, description="brightness jitter factor")
    contrast: float = Field(0.1, ge=0, le=1, description="contrast jitter factor")
    crop_scale: tuple[float, float] = Field((0.85, 1.0), description="random resized crop area range; [1, 1] = off")

    @field_validator("crop_scale")
    @classmethod
    def _scale(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("expected 0 < low <= high <= 1")
        return v


class TrainConfig(StrictModel):
    """Every training option. ``model`` is a registry name; ``preset`` records the preset it came from."""

    model: str = Field(..., description="registry model or preset name (mammolab models), e.g. resnet18, "
                       "mammocnn, efficientnet_b3_optuna, timm/convnext_tiny")
    preset: str | None = Field(None, description="the preset the model name came from (set automatically)")
    regime: Literal["opw", "pft", "cft"] = Field(
        "cft", description="opw: frozen backbone, only a linear head trains; pft: the last stages and the head "
        "train; cft: everything trains")
    weights: str = Field("none", description="'imagenet', 'none' or a path to a .pth/.safetensors/.ckpt file")
    freeze_proportion: float | None = Field(None, ge=0, lt=1, description="pft: share of the backbone's layers, "
                                            "from the input, that stay frozen")
    trainable_stages: int | None = Field(None, ge=1, description="pft: backbone stages, from the output, that "
                                         "train (default 2 when freeze_proportion is unset)")
    head_hidden: list[int] | None = Field(None, description="sizes of the head's hidden layers, e.g. [256, 64]; "
                                          "none = one linear layer")
    head_dropout: float | list[float] | None = Field(None, description="dropout before each head layer (one "
                                                     "value for all, or one per layer)")
    head_activation: Literal["relu", "elu", "gelu", "leaky_relu", "silu"] | None = Field(
        None, description="activation between the head's hidden layers (default relu)")
    weights_prefix: str | None = Field(
        None, description="key prefix to strip from a --weights checkpoint that holds the encoder inside a bigger "
        "model (e.g. 'visual.trunk.'), or 'auto' to detect it; keys outside it are ignored, unexpected keys "
        "under it are reported in run.json")
    weights_convention: Literal["mammo-clip"] | None = Field(
        None, description="input convention of a published encoder given as --weights: its normalisation mean "
        "and std replace the model's (recorded in the recipe, applied by predict); mammo-clip: mean 0.3089, "
        "std 0.2505, trained at 1520x912 (docs/guide/weights.md)")
    init_from: str | None = Field(
        None, description="run folder whose trained backbone starts this model (patch-to-whole-image transfer); "
        "the runs' architectures must match; the head starts afresh")
    head_type: Literal["mlp", "allconv"] = Field(
        "mlp", description="mlp: linear/MLP head on pooled features; allconv: Shen et al.'s all-convolutional top "
        "(two 3x3 conv blocks on the backbone's feature map, global average pooling, linear; timm backbones)")
    views: Literal["single", "cc+mlo"] = Field(
        "single", description="single: one prediction per image; cc+mlo: one per breast from its CC and MLO "
        "images (pairs by patient_id and side), a shared backbone and a fusion head")
    fusion: Literal["concat", "attention"] = Field(
        "concat", description="cc+mlo fusion of the two views' pooled features: concatenation, or attention "
        "pooling (a learnt weight per view; a missing view gets none)")

    image_size: int | tuple[int, int] = Field(
        224, description="input size in pixels: N (a square) or HxW, height x width (e.g. 1152x896 for whole "
        "films; YAML [1152, 896] or '1152x896'); default: the model's")
    resize: Literal["stretch", "pad"] = Field("stretch", description="stretch to the input size, or keep the "
                                              "aspect ratio and pad with black (image centred)")
    epochs: int = Field(20, ge=1, description="maximum number of epochs")
    batch_size: int = Field(32, ge=1, description="images per batch and device")
    accumulate_grad_batches: int = Field(
        1, ge=1, description="batches whose gradients are summed (each loss divided by this) before one "
        "optimiser step: a larger effective batch in the memory of a small one")
    effective_batch: int | None = Field(
        None, ge=1, description="target images per optimiser step; sets accumulate_grad_batches to "
        "effective_batch / (batch_size x devices), which must be a whole number")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimiser")
    lr: float = Field(1e-3, gt=0, description="learning rate (the start of the schedule)")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay (L2 for adam/sgd, decoupled for adamw)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum (sgd)")
    scheduler: Literal["cosine", "step", "plateau", "none"] = Field(
        "cosine", description="learning-rate schedule: cosine to min_lr, step (x gamma every step_size epochs), "
        "plateau (x gamma when val AUC stalls) or none")
    step_size: int = Field(10, ge=1, description="epochs between learning-rate drops (step)")
    gamma: float = Field(0.1, gt=0, le=1, description="learning-rate factor (step, plateau)")
    min_lr: float = Field(0.0, ge=0, description="floor of the cosine schedule")
    patience: int = Field(5, ge=0, description="early-stopping patience on val AUC in epochs; 0 = off")
    min_delta: float = Field(0.0, ge=0, description="smallest val AUC gain that counts as better (early stopping)")
    pos_weight: Literal["none", "balanced"] | float = Field(
        "none", description="weight of the malignant class in the loss: none, balanced (benign/malignant count "
        "ratio of the training split) or a number")
    label_smoothing: float = Field(0.0, ge=0, lt=1, description="label smoothing of the targets")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="online augmentation of the "
                                   "training split (augment.hflip, augment.rotate, ...)")

    seed: int = Field(42, description="random seed; the same seed repeats a run exactly on CPU")
    deterministic: bool = Field(True, description="deterministic kernels where they exist (warns otherwise)")
    fold: int | None = Field(None, ge=0, description="cross-validation: validate on this fold of the training "
                             "rows (manifest column fold), train on the others")
    subset: int | None = Field(None, ge=1, description="train on about N training images, sampled by patient "
                               "with the label balance kept")

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = Field("auto", description="device kind (auto: "
                                                                      "a GPU when there is one)")
    devices: int | str = Field(1, description="number of devices, or auto")
    num_nodes: int = Field(1, ge=1, description="machines (SLURM nodes) for multi-node DDP")
    strategy: str = Field("auto", description="Lightning strategy, e.g. ddp for several GPUs")
    precision: str = Field("32-true", description="32, bf16 or fp16 (mixed precision; fp16 needs a GPU)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    cache: Literal["auto", "ram", "disk"] = Field("auto", description="decoded-image cache: auto (RAM when it "
                                                  "fits, else a memory-mapped file), ram or disk")
    cache_dir: str | None = Field(None, description="folder of the cache file (default $MAMMOLAB_CACHE, else "
                                  "DATASET/.mammolab-cache, else RUN/cache when the dataset is read-only)")
    tensorboard: bool = Field(False, description="also log to RUN/tensorboard (same as loggers: [tensorboard])")
    loggers: list[Literal["csv", "tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers (Lightning loggers) that also receive the metrics, "
                                          "the config as hyperparameters and the final results")
    tracking_uri: str | None = Field(None, description="MLflow tracking server or store (default: sqlite "
                                                       "mlflow.db in the run or study folder)")
    channels_last: bool = Field(False, description="channels-last memory format for the model and its inputs "
                                "(faster convolutions with AMP on recent GPUs)")
    grad_checkpointing: bool = Field(False, description="recompute activations in the backward pass (timm's "
                                     "set_grad_checkpointing): less memory for high-resolution images, ~30% slower")

    @field_validator("image_size", mode="before")
    @classmethod
    def _image_size(cls, v: Any) -> int | tuple[int, int]:
        # A square pair collapses to its int: the same hash, cache and recipe as before rectangles.
        try:
            return parse_image_size(v, minimum=8)
        except MammoLabError as exc:
            raise ValueError(str(exc).removeprefix("--image-size: ")) from None

    @field_validator("precision", mode="before")
    @classmethod
    def _precision(cls, v: Any) -> str:
        key = str(v).lower()
        if key not in _PRECISION_ALIASES:
            raise ValueError(f"expected one of 32, bf16, fp16 (or Lightning's names), got {v!r}")
        return _PRECISION_ALIASES[key]

    @field_validator("devices", mode="before")
    @classmethod
    def _devices(cls, v: Any) -> int | str:
        if isinstance(v, str) and v.strip().isdigit():
            return int(v)
        return v

    @field_validator("weights", mode="before")
    @classmethod
    def _weights(cls, v: Any) -> str:
        return "none" if v is None or str(v).strip().lower() in ("", "none", "null", "random") else str(v)

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.regime != "pft" and (self.freeze_proportion is not None or self.trainable_stages is not None):
            raise ValueError(f"freeze_proportion / trainable_stages apply to regime pft, not {self.regime}")
        if self.freeze_proportion is not None and self.trainable_stages is not None:
            raise ValueError("give either freeze_proportion or trainable_stages, not both")
        if self.effective_batch is not None and self.accumulate_grad_batches != 1:
            raise ValueError("give either effective_batch or accumulate_grad_batches, not both")
        if self.effective_batch is not None and self.effective_batch % self.batch_size:
            raise ValueError(f"effective_batch {self.effective_batch} is not a multiple of batch_size "
                             f"{self.batch_size}")
        return self

    @property
    def display_name(self) -> str:
        """The name a person would use: the preset, or model_regime."""
        # timm/<name> models: a slash would make a folder of a run name
        name = self.preset or f"{self.model}_{self.regime}"
        name = name.replace("/", "-")
        return name if self.views == "single" else f"{name}_{self.views.replace('+', '')}"


def result_hash(cfg: TrainConfig) -> str:
    """Hash of the options that decide what a run learns (runtime options left out)."""
    data = cfg.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
    return config_hash({k: v for k, v in data.items() if not (k in LATER_OPTIONS and v == LATER_OPTIONS[k])})


def resolve_train_config(config_file: str | Path | dict[str, Any] | None = None, *,
                         overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Merge defaults, preset, YAML file and overrides (``None`` = unset) into a complete config."""
    from mammolab.models.registry import get_model_entry, resolve_model_name

    if isinstance(config_file, (str, Path)):
        data: dict[str, Any] = load_yaml(config_file)
        source = str(config_file)
    else:
        data, source = dict(config_file or {}), "train config"
    user = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    name = user.get("model")
    if not name:
        raise MammoLabError("--model is required (or 'model:' in the --config file); "
                            "run 'mammolab models' for the names")
    backbone, preset = resolve_model_name(str(name))
    merged: dict[str, Any] = {}
    if preset is not None:
        merged.update(regime=preset.regime, preset=preset.name, **preset.overrides)
        if user.get("regime", preset.regime) != preset.regime:
            # The preset's name promises its regime; a different regime is a different config.
            merged["preset"] = None
            merged.pop("freeze_proportion", None)
        if "trainable_stages" in user:
            merged.pop("freeze_proportion", None)
    merged.update(user)
    merged["model"] = backbone
    entry = get_model_entry(backbone)
    merged.setdefault("image_size", entry.default_size)
    merged["image_size"] = parse_image_size(merged["image_size"], minimum=8)  # one line naming --image-size
    # --init-from replaces the backbone's weights: no ImageNet download for weights it overwrites.
    merged.setdefault("weights", "imagenet" if entry.pretrained and not merged.get("init_from") else "none")
    cfg = load_config(TrainConfig, merged, source=source)
    check_min_size(cfg.image_size, entry.min_size, backbone)
    if cfg.weights == "imagenet" and not entry.pretrained:
        raise MammoLabError(f"--weights imagenet: {backbone} has no ImageNet weights",
                            hint="use --weights none or --weights PATH")
    return cfg
