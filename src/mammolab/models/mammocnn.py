"""The two CNNs defined in MammoLab (no ImageNet weights; 1-channel input by design).

* ``mammocnn``: the classic study's own CNN for 512 px ROI crops. Four conv blocks of 32, 64, 128
  and 256 channels, each two 3x3 conv + batch norm + LeakyReLU, then 2x2 max-pool and dropout
  rising 0.1 -> 0.4; adaptive average pool to 4x4 (so any input size gives 4096 features); MLP
  head 4096 -> 512 -> 128 -> outputs with dropout 0.5 and 0.3.
* ``mammoresnet``: a small residual CNN (about 2.8M parameters) for high-resolution whole
  mammograms, where an ImageNet backbone at 1024+ px is too slow: an aggressive strided stem
  (/4), four residual stages each halving the resolution (/64 overall), global average pooling.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from mammolab.models.registry import Backbone, build_head, register_model
from mammolab.models.weights import load_backbone_weights

__all__ = ["mammocnn", "mammoresnet"]


def _conv_block(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.01, inplace=True),
        nn.MaxPool2d(2), nn.Dropout(dropout),
    )


def _mammocnn_head(num_features: int) -> Callable[[int], nn.Module]:
    def make(num_outputs: int) -> nn.Module:
        return build_head(num_features, num_outputs, (512, 128), (0.5, 0.3), "leaky_relu")

    return make


def _finish(body: nn.Module, num_features: int, ends: list[str], first_conv: str, name: str,
            weights: str | None) -> Backbone:
    if weights:
        load_backbone_weights(body, weights, model_name=name, first_conv=first_conv)
    return Backbone(body, num_features, stage_ends=ends, first_conv=first_conv, mean=0.5, std=0.25)


@register_model("mammocnn", description="the classic study's CNN: 4 conv blocks (32-256 ch), MLP 4096-512-128; "
                "1-channel, 512 px", pretrained=False, default_size=512, min_size=16)
def mammocnn(weights: str | None = None, in_chans: int = 1) -> Backbone:
    widths, drops = (32, 64, 128, 256), (0.1, 0.2, 0.3, 0.4)
    blocks: OrderedDict[str, nn.Module] = OrderedDict()
    cin = in_chans
    for i, (w, d) in enumerate(zip(widths, drops, strict=True), start=1):
        blocks[f"block{i}"] = _conv_block(cin, w, d)
        cin = w
    blocks["pool"] = nn.AdaptiveAvgPool2d(4)
    blocks["flatten"] = nn.Flatten(1)
    body = nn.Sequential(blocks)
    num_features = widths[-1] * 16
    backbone = _finish(body, num_features, [f"block{i}" for i in range(1, 5)], "block1.0", "mammocnn", weights)
    backbone.default_head = _mammocnn_head(num_features)
    return backbone


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut, as in ResNet-18."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


@register_model("mammoresnet", description="small residual CNN (2.8M params, /64 downsampling) for high-resolution "
                "whole mammograms; 1-channel, 1024 px", pretrained=False, default_size=1024, min_size=32)
def mammoresnet(weights: str | None = None, in_chans: int = 1) -> Backbone:
    widths = (32, 64, 128, 256)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["stem"] = nn.Sequential(
        nn.Conv2d(in_chans, 24, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(24), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    cin = 24
    for i, w in enumerate(widths, start=1):
        layers[f"layer{i}"] = nn.Sequential(_BasicBlock(cin, w, 2), _BasicBlock(w, w, 1))
        cin = w
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten(1)
    body = nn.Sequential(layers)
    ends = ["stem", "layer1", "layer2", "layer3", "layer4"]
    return _finish(body, widths[-1], ends, "stem.0", "mammoresnet", weights)
