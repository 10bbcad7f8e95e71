"""Heads beyond the linear/MLP read-out: Shen et al.'s all-convolutional top and two-view fusion.

* :class:`AllConvTop` is the "all convolutional" top of Shen et al. 2019 (Sci Rep 9:12495), who
  turned a patch classifier into a whole-image one by putting convolutional blocks on the patch
  model's *feature map* (not its pooled vector), so the new layers see where in the film the
  patch-level evidence lies before global pooling. Here: two 3x3 conv + batch norm + ReLU blocks,
  global average pooling; the linear (or MLP) head follows.
* :class:`ViewFusion` turns the pooled features of a breast's CC and MLO images (one shared
  backbone) into one vector: ``concat`` (a missing view takes the mean of the present ones, so the
  head's input keeps its meaning) or ``attention`` (gated attention pooling, Ilse et al. 2018; a
  missing view gets weight 0).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FUSIONS", "AllConvTop", "ViewFusion"]

FUSIONS = ("concat", "attention")


class AllConvTop(nn.Module):
    """``[N, C, h, w]`` feature map -> two conv blocks -> global average pool -> ``[N, width]``."""

    def __init__(self, in_channels: int, width: int = 256) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"the all-convolutional top needs a [N, C, h, w] feature map, got shape {tuple(x.shape)}")
        return self.pool(self.blocks(x)).flatten(1)


class ViewFusion(nn.Module):
    """``[N, V, D]`` per-view features (+ ``present [N, V]``) -> ``[N, out_features]``."""

    def __init__(self, num_features: int, views: int = 2, mode: str = "concat", hidden: int = 128) -> None:
        super().__init__()
        if mode not in FUSIONS:
            raise ValueError(f"fusion: expected one of {FUSIONS}, got {mode!r}")
        self.mode, self.views = mode, views
        if mode == "attention":
            self.attn_v = nn.Linear(num_features, hidden)
            self.attn_u = nn.Linear(num_features, hidden)
            self.attn_w = nn.Linear(hidden, 1)
            self.out_features = num_features
        else:
            self.out_features = num_features * views

    def weights(self, f: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
        """Attention weights ``[N, V]`` (sum 1 over the present views)."""
        scores = self.attn_w(torch.tanh(self.attn_v(f)) * torch.sigmoid(self.attn_u(f)))[..., 0]
        if present is not None:
            scores = scores.masked_fill(~present.bool(), float("-inf"))
        return torch.softmax(scores.float(), dim=1).to(f.dtype)

    def forward(self, f: torch.Tensor, present: torch.Tensor | None = None) -> torch.Tensor:
        if self.mode == "attention":
            return (self.weights(f, present)[..., None] * f).sum(1)
        if present is not None:
            m = present.to(f.dtype)[..., None]
            mean = (f * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)
            f = torch.where(m.bool(), f, mean)
        return f.flatten(1)
