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

in a module listed in :data:`mammolab.models.PLUGINS`.

The registry never imports the modules that register (they import it): the package
(``mammolab/models/__init__.py``) imports its plug-ins, :data:`mammolab.models.PLUGINS`, so the
registry is full whenever any ``mammolab.models`` module has been imported. A name prefix whose
entries are made on demand (``timm/<arch>``) is registered the same way (:func:`register_prefix`).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models.base import Backbone, MammoNet, build_head, spatial_body
from mammolab.models.heads import AllConvTop, ViewFusion
from mammolab.models.regimes import apply_regime
from mammolab.models.weights import load_backbone_weights

__all__ = [
    "REGIMES",
    "TIMM_PREFIX",
    "Backbone",
    "MammoNet",
    "ModelEntry",
    "Preset",
    "build_head",
    "create_model",
    "get_model_entry",
    "get_preset",
    "list_models",
    "list_presets",
    "register_model",
    "register_prefix",
    "register_preset",
    "resolve_model_name",
    "spatial_body",
]

REGIMES = ("opw", "pft", "cft")
REGIME_HELP = {
    "opw": "only pretrained weights: frozen backbone, linear head only",
    "pft": "partial fine-tuning: last stages + head train",
    "cft": "complete fine-tuning: everything trains",
}



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



#: ``--model timm/<name>``: any timm architecture (optionally with a pretrained tag, ``resnet50.a1_in1k``).
TIMM_PREFIX = "timm/"
#: Name prefixes whose entries a plug-in makes on demand (``timm/`` -> timm's own name list).
_PREFIXES: dict[str, Callable[[str], ModelEntry]] = {}


def register_prefix(prefix: str, factory: Callable[[str], ModelEntry]) -> None:
    """Make ``factory(name)`` the entry of every model name starting with ``prefix`` (raises for unknown ones)."""
    if prefix in _PREFIXES:
        raise ValueError(f"model name prefix {prefix!r} is registered twice")
    _PREFIXES[prefix] = factory


def _prefixed(name: str) -> ModelEntry | None:
    for prefix, factory in _PREFIXES.items():
        if name.startswith(prefix):
            return factory(name)
    return None


def list_models() -> list[str]:
    """Every registered model name (backbones), in registration order."""
    return list(_MODELS)


def list_presets() -> list[str]:
    """Every preset name (the classic ten and any added later), in registration order."""
    return list(_PRESETS)


def _unknown(name: str) -> MammoLabError:
    names = list(_MODELS) + list(_PRESETS)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
    import timm

    if timm.is_model(name):  # a timm name without the prefix
        close = [TIMM_PREFIX + name, *close][:3]
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"run 'mammolab models' for the list, or use any timm model as {TIMM_PREFIX}<name>")
    return MammoLabError(f"--model: unknown model {name!r}", hint=hint)


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of a backbone name (or ``timm/<arch>``); an unknown name raises with the closest names."""
    if (entry := _prefixed(name)) is not None:
        return entry
    if name not in _MODELS:
        raise _unknown(name)
    return _MODELS[name]


def get_preset(name: str) -> Preset | None:
    """The preset called ``name``, or ``None`` when ``name`` is not a preset."""
    return _PRESETS.get(name)


def resolve_model_name(name: str) -> tuple[str, Preset | None]:
    """Map a model *or* preset name to ``(backbone name, preset or None)``."""
    if name in _PRESETS:
        return _PRESETS[name].model, _PRESETS[name]
    if name in _MODELS:
        return name, None
    if (entry := _prefixed(name)) is not None:
        return entry.name, None
    raise _unknown(name)


def create_model(name: str, regime: str | None = None, weights: str | None = None, in_chans: int = 1,
                 num_outputs: int = 1, *, head_hidden: Sequence[int] | None = None,
                 head_dropout: float | Sequence[float] | None = None, head_activation: str | None = None,
                 freeze_proportion: float | None = None, trainable_stages: int | None = None,
                 weights_prefix: str | None = None, head_type: str = "mlp", views: int = 1,
                 fusion: str = "concat") -> MammoNet:
    """Build a registered model (or preset) with its head and regime applied.

    ``weights``: ``"imagenet"`` (timm / Hugging Face hub), a path to a ``.pth``/``.safetensors``
    state dict, or ``"none"``/``None`` for random init. ``head_*`` default to the model's own head
    (the backbone's default, a preset's MLP); ``opw`` always uses a linear head, since "only
    pretrained weights" means the features are fixed and only a linear read-out is fitted.
    ``weights_prefix`` (a key prefix, or ``"auto"``) takes an encoder out of a bigger checkpoint;
    what a local file gave is in ``model.backbone.weights_report``. ``head_type="allconv"`` puts
    Shen et al.'s all-convolutional top between the backbone's feature map and the head; ``views=2``
    makes a breast model (shared backbone, ``fusion`` of the two views' features, one head).
    """
    backbone_name, preset = resolve_model_name(name)
    entry = get_model_entry(backbone_name)
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
    local = weights not in (None, "imagenet")
    backbone = entry.builder(weights=None if local else weights, in_chans=in_chans)
    if local:
        backbone.weights_report = load_backbone_weights(
            backbone.body, str(weights), model_name=backbone_name, first_conv=backbone.first_conv,
            classifier_keys=backbone.classifier_keys, prefix=weights_prefix)
    elif weights_prefix:
        raise MammoLabError("--weights-prefix applies to --weights PATH (a local checkpoint) only")
    default_head = getattr(backbone, "default_head", None)
    if head_type not in ("mlp", "allconv"):
        raise MammoLabError(f"head_type: expected mlp or allconv, got {head_type!r}")
    if views not in (1, 2):
        raise MammoLabError(f"views: expected 1 (single image) or 2 (CC + MLO), got {views}")
    top: nn.Module | None = None
    width = backbone.num_features
    if head_type == "allconv":
        spatial_body(backbone.body)  # raises for a backbone without a feature map
        backbone.spatial = True
        top = AllConvTop(backbone.num_features, int(head_hidden[0]) if head_hidden else 256)
        width, head_hidden = top.out_features, list(head_hidden[1:]) if head_hidden else None
        if isinstance(head_dropout, (list, tuple)):
            head_dropout = list(head_dropout[1:])
        default_head = None
    fuse: ViewFusion | None = None
    if views == 2:
        fuse = ViewFusion(width, 2, fusion)
        width, default_head = fuse.out_features, None
    if regime == "opw":
        head = build_head(width, num_outputs)
    elif head_hidden is None and default_head is not None:
        head = default_head(num_outputs)
    else:
        head = build_head(width, num_outputs, head_hidden or (),
                          0.0 if head_dropout is None else head_dropout, head_activation or "relu")
    model = MammoNet(backbone, head, name=backbone_name, regime=regime, num_outputs=num_outputs, top=top,
                     fusion=fuse)
    apply_regime(model, regime, freeze_proportion=freeze_proportion, trainable_stages=trainable_stages)
    return model
