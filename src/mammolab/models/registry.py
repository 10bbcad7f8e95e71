"""The model registry: every trainable model is one registered function, every classic config a preset.

The classic study copied a 200-line loop per configuration. Here a model is a function that builds
a *backbone* (image -> pooled feature vector); :func:`create_model` adds the classification head
and applies the training regime (``opw``/``pft``/``cft``, see :mod:`mammolab.models.regimes`), so a
backbone never needs to know how it will be trained. A *preset* names a (model, regime, overrides)
triple, which is how the ten configurations of the classic study are reproduced by name.

Adding a model::

    @register_model("my_net", description="...", pretrained=False, default_size=256)
    def my_net(weights: str | None = None, in_chans: int = 1) -> Backbone:
        ...
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mammolab.errors import MammoLabError

__all__ = [
    "REGIMES",
    "Backbone",
    "MammoNet",
    "ModelEntry",
    "Preset",
    "create_model",
    "get_model_entry",
    "get_preset",
    "list_models",
    "list_presets",
    "register_model",
    "register_preset",
    "resolve_model_name",
]

REGIMES = ("opw", "pft", "cft")
REGIME_HELP = {
    "opw": "only pretrained weights: frozen backbone, linear head only",
    "pft": "partial fine-tuning: last stages + head train",
    "cft": "complete fine-tuning: everything trains",
}


class Backbone(nn.Module):
    """An image -> ``[N, num_features]`` feature extractor plus what the rest of MammoLab needs to know.

    ``stage_ends`` names, in forward order, the module that closes each resolution stage (timm's
    ``feature_info`` modules for timm models); :mod:`regimes` freezes by these stages. ``mean`` and
    ``std`` normalise a ``[0, 1]`` grayscale input the way the (pretrained) weights expect.
    ``first_conv`` names the stem convolution, so 3-channel weights can be adapted to 1 channel.
    """

    def __init__(self, body: nn.Module, num_features: int, *, stage_ends: Sequence[str], first_conv: str,
                 mean: float = 0.5, std: float = 0.5, classifier_keys: Sequence[str] = ()) -> None:
        super().__init__()
        self.body = body
        self.num_features = int(num_features)
        self.stage_ends = tuple(stage_ends)
        self.first_conv = first_conv
        self.mean = float(mean)
        self.std = float(std)
        self.classifier_keys = tuple(classifier_keys)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MammoNet(nn.Module):
    """Backbone + head, with the regime's frozen normalisation layers pinned to eval mode.

    Frozen batch-norm layers keep their running statistics: ``train()`` puts them back in eval
    mode every time, so ``opw`` really is "only pretrained weights" and a frozen ``pft`` stage
    does not drift while the later stages learn.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, *, name: str, regime: str, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.name = name
        self.regime = regime
        self.num_outputs = num_outputs
        self.frozen_modules: list[str] = []

    @property
    def mean(self) -> float:
        return self.backbone.mean

    @property
    def std(self) -> float:
        return self.backbone.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> MammoNet:
        super().train(mode)
        if mode:
            for name in self.frozen_modules:
                self.get_submodule(name).eval()
        return self

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"total": total, "trainable": trainable, "frozen": total - trainable}


@dataclass(frozen=True)
class ModelEntry:
    """A registered backbone builder and what ``mammolab models`` says about it."""

    name: str
    builder: Callable[..., Backbone]
    description: str
    pretrained: bool
    default_size: int
    min_size: int


@dataclass(frozen=True)
class Preset:
    """A named configuration: model + regime + option overrides (e.g. the classic ten)."""

    name: str
    model: str
    regime: str
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


_MODELS: dict[str, ModelEntry] = {}
_PRESETS: dict[str, Preset] = {}


def register_model(name: str, *, description: str, pretrained: bool = True, default_size: int = 224,
                   min_size: int = 32) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: register ``fn(weights=..., in_chans=...) -> Backbone`` under ``name``."""

    def deco(fn: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _MODELS or (name in _PRESETS and _PRESETS[name].model != name):
            raise ValueError(f"model name {name!r} is registered twice")
        _MODELS[name] = ModelEntry(name, fn, description, pretrained, default_size, min_size)
        return fn

    return deco


def register_preset(name: str, model: str, regime: str, description: str, **overrides: Any) -> Preset:
    """Register a named (model, regime, overrides) configuration."""
    if name in _PRESETS or (name in _MODELS and name != model):
        raise ValueError(f"preset name {name!r} is already registered")
    if regime not in REGIMES:
        raise ValueError(f"preset {name!r}: unknown regime {regime!r}")
    preset = Preset(name, model, regime, description, dict(overrides))
    _PRESETS[name] = preset
    return preset


def _ensure_loaded() -> None:
    # The registering modules import this one; importing them here fills the registry on first use.
    from mammolab.models import mammocnn, presets, timm_backbones  # noqa: F401


def list_models() -> list[str]:
    """Every registered model name (backbones), in registration order."""
    _ensure_loaded()
    return list(_MODELS)


def list_presets() -> list[str]:
    """Every preset name (the classic ten and any added later), in registration order."""
    _ensure_loaded()
    return list(_PRESETS)


def _unknown(name: str) -> MammoLabError:
    names = list(_MODELS) + list(_PRESETS)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "run 'mammolab models' for the list"
    return MammoLabError(f"--model: unknown model {name!r}", hint=hint)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of a backbone name; an unknown name raises with the closest names."""
    _ensure_loaded()
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def get_preset(name: str) -> Preset | None:
    """The preset called ``name``, or ``None`` when ``name`` is not a preset."""
    _ensure_loaded()
    return _PRESETS.get(name)


def resolve_model_name(name: str) -> tuple[str, Preset | None]:
    """Map a model *or* preset name to ``(backbone name, preset or None)``."""
    _ensure_loaded()
    if name in _PRESETS:
        return _PRESETS[name].model, _PRESETS[name]
    if name in _MODELS:
        return name, None
    raise _unknown(name)


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "elu": nn.ELU, "gelu": nn.GELU, "leaky_relu": lambda: nn.LeakyReLU(0.01), "silu": nn.SiLU,
}


def build_head(num_features: int, num_outputs: int, hidden: Sequence[int] = (),
               dropout: float | Sequence[float] = 0.0, activation: str = "relu") -> nn.Module:
    """A linear head, or an MLP ``num_features -> hidden... -> num_outputs`` with dropout after each layer."""
    if activation not in _ACTIVATIONS:
        raise MammoLabError(f"head_activation: expected one of {sorted(_ACTIVATIONS)}, got {activation!r}")
    hidden = list(hidden)
    drops = [float(dropout)] * len(hidden) if isinstance(dropout, (int, float)) else [float(d) for d in dropout]
    if len(drops) != len(hidden):
        raise MammoLabError(f"head_dropout: expected one value or {len(hidden)} (one per hidden layer), "
                            f"got {len(drops)}")
    layers: list[nn.Module] = []
    width = num_features
    for h, d in zip(hidden, drops, strict=True):
        layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
        if d > 0:
            layers.append(nn.Dropout(d))
        width = h
    layers.append(nn.Linear(width, num_outputs))
    return layers[0] if len(layers) == 1 else nn.Sequential(*layers)


def create_model(name: str, regime: str | None = None, weights: str | None = None, in_chans: int = 1,
                 num_outputs: int = 1, *, head_hidden: Sequence[int] | None = None,
                 head_dropout: float | Sequence[float] | None = None, head_activation: str | None = None,
                 freeze_proportion: float | None = None, trainable_stages: int | None = None) -> MammoNet:
    """Build a registered model (or preset) with its head and regime applied.

    ``weights``: ``"imagenet"`` (timm / Hugging Face hub), a path to a ``.pth``/``.safetensors``
    state dict, or ``"none"``/``None`` for random init. ``head_*`` default to the model's own head
    (the backbone's default, a preset's MLP); ``opw`` always uses a linear head, since "only
    pretrained weights" means the features are fixed and only a linear read-out is fitted.
    """
    from mammolab.models.regimes import apply_regime

    backbone_name, preset = resolve_model_name(name)
    entry = _MODELS[backbone_name]
    if preset is not None:
        ov = preset.overrides
        regime = regime or preset.regime
        head_hidden = ov.get("head_hidden") if head_hidden is None else head_hidden
        head_dropout = ov.get("head_dropout") if head_dropout is None else head_dropout
        head_activation = ov.get("head_activation") if head_activation is None else head_activation
        if (regime or preset.regime) == "pft" and freeze_proportion is None and trainable_stages is None:
            freeze_proportion = ov.get("freeze_proportion")
    regime = regime or "cft"
    if regime not in REGIMES:
        raise MammoLabError(f"--regime: expected one of {', '.join(REGIMES)}, got {regime!r}")
    weights = None if weights in (None, "", "none", "None") else weights
    if weights == "imagenet" and not entry.pretrained:
        raise MammoLabError(f"--weights imagenet: {backbone_name} is defined in MammoLab and has no ImageNet "
                            "weights", hint="use --weights none or --weights PATH to a saved state dict")
    backbone = entry.builder(weights=weights, in_chans=in_chans)
    default_head = getattr(backbone, "default_head", None)
    if regime == "opw":
        head = build_head(backbone.num_features, num_outputs)
    elif head_hidden is None and default_head is not None:
        head = default_head(num_outputs)
    else:
        head = build_head(backbone.num_features, num_outputs, head_hidden or (),
                          0.0 if head_dropout is None else head_dropout, head_activation or "relu")
    model = MammoNet(backbone, head, name=backbone_name, regime=regime, num_outputs=num_outputs)
    apply_regime(model, regime, freeze_proportion=freeze_proportion, trainable_stages=trainable_stages)
    return model
