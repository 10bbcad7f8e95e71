"""ImageNet backbones from timm, one registered function each, all through :func:`timm_backbone`.

timm owns the architectures and the weights: ``--weights imagenet`` asks timm for its default
pretrained tag (downloaded from the Hugging Face hub and cached there), with ``in_chans=1`` so the
stem is adapted from the RGB filters by summing them (not by feeding three copies of the channel).
A local file goes through :func:`mammolab.models.weights.load_backbone_weights`, which applies the
same adaptation with timm's ``adapt_input_conv``.
"""

from __future__ import annotations

import difflib
import functools

from mammolab.errors import MammoLabError
from mammolab.models.hub import offline_if_unreachable
from mammolab.models.registry import TIMM_PREFIX, Backbone, ModelEntry, register_model, register_prefix
from mammolab.models.weights import load_backbone_weights

__all__ = ["timm_backbone", "timm_entry"]


def _offline_error(arch: str, hub_id: str, exc: Exception, offline: str | None = None) -> MammoLabError:
    why = f"offline: {offline}" if offline else "offline or no network?"
    return MammoLabError(
        f"--weights imagenet: could not fetch the {arch} weights from the Hugging Face hub "
        f"({exc.__class__.__name__}; {why})",
        hint=f"on a connected machine download https://huggingface.co/{hub_id} (file model.safetensors), "
             f"copy it here and pass --weights /path/to/model.safetensors; or train from scratch with --weights none")


def timm_backbone(arch: str, *, name: str | None = None, weights: str | None = None, in_chans: int = 1) -> Backbone:
    """A timm model without classifier (``num_classes=0`` -> pooled features) wrapped as a :class:`Backbone`."""
    import timm

    name = name or arch
    if weights == "imagenet":
        with offline_if_unreachable() as offline:  # offline: the hub's cache only, no ~50 s of retries
            try:
                body = timm.create_model(arch, pretrained=True, in_chans=in_chans, num_classes=0)
            except OSError as exc:  # huggingface_hub's offline / not-found / connection errors are OSErrors
                hub_id = timm.models.get_pretrained_cfg(arch).hf_hub_id or arch
                raise _offline_error(arch, hub_id, exc, offline) from None
    else:
        body = timm.create_model(arch, pretrained=False, in_chans=in_chans, num_classes=0)
    cfg = body.pretrained_cfg
    first_conv = cfg["first_conv"] if isinstance(cfg["first_conv"], str) else cfg["first_conv"][0]
    classifier = cfg.get("classifier") or ()
    classifier_keys = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    if weights not in (None, "imagenet"):
        load_backbone_weights(body, weights, model_name=name, first_conv=first_conv,
                              classifier_keys=classifier_keys)
    mean = sum(cfg.get("mean", (0.5,))) / len(cfg.get("mean", (0.5,)))
    std = sum(cfg.get("std", (0.5,))) / len(cfg.get("std", (0.5,)))
    # Stages for the regimes: timm's feature_info (every CNN and most transformers have one); a model
    # without it is one stage, so pft's stage count is 1 and freeze_proportion still works.
    info = getattr(body, "feature_info", None) or []
    ends = [f["module"] for f in info if isinstance(f, dict) and f.get("module")]
    return Backbone(body, body.num_features, stage_ends=ends,
                    first_conv=first_conv, mean=mean, std=std, classifier_keys=classifier_keys)


@register_model("resnet18", description="ResNet-18 (timm), 11M params")
def resnet18(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("resnet18", weights=weights, in_chans=in_chans)


@register_model("resnet34", description="ResNet-34 (timm), 21M params")
def resnet34(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("resnet34", weights=weights, in_chans=in_chans)


@register_model("resnet50", description="ResNet-50 (timm), 24M params")
def resnet50(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("resnet50", weights=weights, in_chans=in_chans)


@register_model("densenet121", description="DenseNet-121 (timm), 7M params")
def densenet121(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("densenet121", weights=weights, in_chans=in_chans)


@register_model("efficientnet_b3", description="EfficientNet-B3 (timm), 11M params", default_size=288)
def efficientnet_b3(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("efficientnet_b3", weights=weights, in_chans=in_chans)


@register_model("inception_resnet_v2", description="Inception-ResNet-v2 (timm), 54M params; input >= 75 px",
                default_size=299, min_size=75)
def inception_resnet_v2(weights: str | None = None, in_chans: int = 1) -> Backbone:
    return timm_backbone("inception_resnet_v2", weights=weights, in_chans=in_chans)


_TIMM_ENTRIES: dict[str, ModelEntry] = {}


def timm_entry(name: str) -> ModelEntry:
    """A registry entry made on demand for ``timm/<arch>``: timm's own name list is the registry.

    The builder is :func:`timm_backbone`, the same path as the named models, so features, stages
    (timm's ``feature_info``), the 1-channel stem and weights all work. timm is imported here, not
    at module level: the package imports this plug-in, and ``import timm`` costs about a second.
    """
    if name in _TIMM_ENTRIES:
        return _TIMM_ENTRIES[name]
    import timm

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


register_prefix(TIMM_PREFIX, timm_entry)
