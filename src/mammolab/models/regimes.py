"""Training regimes: which parameters learn.

* ``opw`` (only pretrained weights): the whole backbone is frozen *and* kept in eval mode (batch
  norm statistics and dropout included); only the linear head learns. The honest baseline: what
  the pretrained features alone are worth.
* ``pft`` (partial fine-tuning): the first layers are frozen, the last stages and the head learn.
  How much is either ``freeze_proportion`` (the fraction of parameterised layers, counted from the
  input, that stay frozen; the Keras-style knob the classic study tuned) or ``trainable_stages``
  (how many of the backbone's resolution stages, counted from the output, learn). Frozen
  batch-norm layers keep their running statistics.
* ``cft`` (complete fine-tuning): everything learns.

Stages come from the backbone's ``stage_ends`` (timm's ``feature_info`` for timm models: five
stages, stem to last block), so one rule works for every architecture.
"""

from __future__ import annotations

from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models.base import Backbone, MammoNet

__all__ = ["DEFAULT_TRAINABLE_STAGES", "apply_regime", "backbone_stages"]

#: ``pft`` without ``freeze_proportion`` or ``trainable_stages``: the last two stages learn.
DEFAULT_TRAINABLE_STAGES = 2


def _inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def backbone_stages(backbone: Backbone) -> list[list[str]]:
    """Names (relative to ``backbone.body``) of the layers that own parameters, grouped by stage.

    Modules are visited in registration order, which for every registered model is forward order;
    a new stage starts once the traversal leaves the subtree of the previous stage's end module.
    Layers after the last stage end (e.g. EfficientNet's head convolution) join the last stage.
    """
    ends = list(backbone.stage_ends)
    n = max(1, len(ends))
    stages: list[list[str]] = [[] for _ in range(n)]
    k, entered = 0, False
    for name, module in backbone.body.named_modules():
        if not name:
            continue
        if k < len(ends):
            if _inside(name, ends[k]):
                entered = True
            elif entered:
                k, entered = k + 1, False
                if k < len(ends) and _inside(name, ends[k]):
                    entered = True
        if any(True for _ in module.parameters(recurse=False)):
            stages[min(k, n - 1)].append(name)
    return [s for s in stages if s] or [[]]


def _freeze(module: nn.Module) -> None:
    for p in module.parameters():
        p.requires_grad_(False)


def apply_regime(model: MammoNet, regime: str, *, freeze_proportion: float | None = None,
                 trainable_stages: int | None = None) -> MammoNet:
    """Set ``requires_grad`` and the eval-pinned modules of ``model`` for ``regime`` (in place)."""
    for p in model.parameters():
        p.requires_grad_(True)
    model.frozen_modules = []
    if regime == "cft":
        if freeze_proportion or trainable_stages:
            raise MammoLabError("freeze_proportion / trainable_stages apply to --regime pft only, "
                                f"not {regime!r}")
        return model
    if regime == "opw":
        _freeze(model.backbone)
        model.frozen_modules = ["backbone"]
        model.train(model.training)
        return model
    if regime != "pft":
        raise MammoLabError(f"--regime: expected one of opw, pft, cft, got {regime!r}")
    stages = backbone_stages(model.backbone)
    if freeze_proportion is not None and trainable_stages is not None:
        raise MammoLabError("give either freeze_proportion or trainable_stages for --regime pft, not both")
    if freeze_proportion is not None:
        if not 0.0 <= freeze_proportion < 1.0:
            raise MammoLabError(f"freeze_proportion: expected a number in [0, 1), got {freeze_proportion}")
        layers = [name for stage in stages for name in stage]
        frozen = layers[: int(round(freeze_proportion * len(layers)))]
    else:
        k = DEFAULT_TRAINABLE_STAGES if trainable_stages is None else trainable_stages
        if not 1 <= k <= len(stages):
            raise MammoLabError(f"trainable_stages: {model.name} has {len(stages)} stages, "
                                f"expected 1..{len(stages)}, got {k}")
        frozen = [name for stage in stages[: len(stages) - k] for name in stage]
    body = model.backbone.body
    for name in frozen:
        _freeze(body.get_submodule(name))
    model.frozen_modules = [f"backbone.body.{name}" for name in frozen]
    model.train(model.training)
    return model
