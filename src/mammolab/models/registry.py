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
    "TIMM_PREFIX",
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
        #: What loading a local weights file gave (prefix, keys left aside, unexpected keys), or None.
        self.weights_report: dict[str, Any] | None = None

    #: True: ``forward`` returns the feature map (``forward_features``) for a convolutional top.
    spatial: bool = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spatial:
            return spatial_body(self.body)(x)
        return self.body(x)


def spatial_body(body: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The feature-map part of a body: timm's ``forward_features``, or a Sequential without its pool + flatten."""
    if hasattr(body, "forward_features"):
        return body.forward_features
    if (isinstance(body, nn.Sequential) and len(body) > 2 and isinstance(body[-2], nn.AdaptiveAvgPool2d)
            and body[-2].output_size in (1, (1, 1)) and isinstance(body[-1], nn.Flatten)):
        return body[:-2]
    raise MammoLabError("head_type allconv needs a backbone with a feature map before global pooling "
                        "(timm CNNs, mammoresnet)")


class MammoNet(nn.Module):
    """Backbone + head, with the regime's frozen normalisation layers pinned to eval mode.

    Frozen batch-norm layers keep their running statistics: ``train()`` puts them back in eval
    mode every time, so ``opw`` really is "only pretrained weights" and a frozen ``pft`` stage
    does not drift while the later stages learn.
    """

    def __init__(self, backbone: Backbone, head: nn.Module, *, name: str, regime: str, num_outputs: int,
                 top: nn.Module | None = None, fusion: nn.Module | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        if top is not None:
            self.top = top
        if fusion is not None:
            self.fusion = fusion
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

    @property
    def views(self) -> int:
        """1 for image models; 2 for two-view (CC + MLO) breast models."""
        return int(self.fusion.views) if hasattr(self, "fusion") else 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``[N, D]`` of single images (backbone, then the convolutional top if any)."""
        f = self.backbone(x)
        return self.top(f) if hasattr(self, "top") else f

    def forward(self, x: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of ``[N, C, H, W]`` images, or of ``[N, V, C, H, W]`` breasts (``present [N, V]``: views there)."""
        if x.ndim == 5:
            n, v = x.shape[:2]
            f = self.features(x.flatten(0, 1))
            return self.head(self.fusion(f.view(n, v, -1), present))
        return self.head(self.features(x))

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
    import timm

    if timm.is_model(name):  # a timm name without the prefix
        close = [TIMM_PREFIX + name, *close][:3]
    hint = (f"did you mean {', '.join(close)}?" if close else
            f"run 'mammolab models' for the list, or use any timm model as {TIMM_PREFIX}<name>")
    return MammoLabError(f"--model: unknown model {name!r}", hint=hint)


#: ``--model timm/<name>``: any timm architecture (optionally with a pretrained tag, ``resnet50.a1_in1k``).
TIMM_PREFIX = "timm/"
_TIMM_ENTRIES: dict[str, ModelEntry] = {}


def _timm_entry(name: str) -> ModelEntry:
    """A registry entry made on demand for ``timm/<arch>``: timm's own name list is the registry.

    The builder is :func:`mammolab.models.timm_backbones.timm_backbone`, the same path as the named
    models, so features, stages (timm's ``feature_info``), the 1-channel stem and weights all work.
    """
    if name in _TIMM_ENTRIES:
        return _TIMM_ENTRIES[name]
    import functools

    import timm

    from mammolab.models.timm_backbones import timm_backbone

    arch = name[len(TIMM_PREFIX):]
    if not arch or not timm.is_model(arch):
        close = difflib.get_close_matches(arch.split(".")[0], timm.list_models(), n=3, cutoff=0.6)
        hint = (f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}?" if close
                else "timm.list_models('*pattern*') lists timm's names")
        raise MammoLabError(f"--model: timm has no model {arch!r} (from {name!r})", hint=hint)
    cfg = timm.models.get_pretrained_cfg(arch)
    size = int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224
    pretrained = cfg is not None and bool(cfg.hf_hub_id or cfg.url or cfg.file)
    entry = ModelEntry(name, functools.partial(timm_backbone, arch, name=name),
                       f"timm model {arch} (no registry entry)", pretrained, size, 32)
    _TIMM_ENTRIES[name] = entry
    return entry


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of a backbone name (or ``timm/<arch>``); an unknown name raises with the closest names."""
    _ensure_loaded()
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name)
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
    if name.startswith(TIMM_PREFIX):
        return _timm_entry(name).name, None
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
    from mammolab.models.heads import AllConvTop, ViewFusion
    from mammolab.models.regimes import apply_regime

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
        from mammolab.models.weights import load_backbone_weights

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
