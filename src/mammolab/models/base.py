"""The parts every model is made of: :class:`Backbone`, :class:`MammoNet` (backbone + head) and the MLP head.

Below the registry in the layers: the plug-ins that build backbones (:mod:`~mammolab.models.mammocnn`,
:mod:`~mammolab.models.timm_backbones`), the regimes that freeze them and the registry that puts them
together all import these types, and these import none of them. :mod:`mammolab.models.registry`
re-exports every name here, which is where the rest of MammoLab imports them from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from mammolab.errors import MammoLabError

__all__ = ["Backbone", "MammoNet", "build_head", "spatial_body"]


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
