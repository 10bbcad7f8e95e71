"""The key layouts that published encoders are saved in, and their conversion to timm's names.

The encoders this field publishes are rarely in timm's layout: Mammo-CLIP's and Mammo-FM's
EfficientNets are saved with efficientnet_pytorch (lukemelas) names (``_conv_stem``,
``_blocks.N._depthwise_conv``, ``_bn0``, ``_fc``) inside a training checkpoint, torchvision's
EfficientNets have their own (``features.1.0.block.0.0``), and Lightning or DataParallel add
prefixes. This module only looks at a flat ``{key: tensor}`` dict: it recognises the layout by
the keys' names, then maps the file's tensors to the model's *by forward order*.

Why by order: efficientnet_pytorch, torchvision and timm build the same EfficientNet from the same
block table, and register each block's layers in the order they run (expand conv, its norm,
depthwise conv, its norm, squeeze-excite reduce/expand, projection conv, its norm). Sorting the
file's keys into that order (block numbers as numbers, each library's layer names ranked) and
pairing them one for one with the timm model's state dict, with every pair checked for the same
kind of tensor (weight, bias, running mean/var) and the same shape, converts every variant without
a hand-written table per variant; a file of another size or architecture fails the check at its
first differing tensor, which the error names. ResNets and DenseNets need no mapping: torchvision
and timm use the same names (old DenseNet files spell ``norm.1`` for ``norm1``; fixed here the way
torchvision's own loader does).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "EP_NATIVE_SIZE",
    "HEAD_PREFIXES",
    "LAYOUTS",
    "SUPPORTED",
    "Found",
    "efficientnet_pytorch_variant",
    "find_layout",
    "fix_legacy_densenet",
    "group_counts",
    "order_keys",
    "strip_wrapper_segments",
    "torchvision_efficientnet_variant",
]

#: One line on what ``--weights PATH`` recognises (used in errors and the docs).
SUPPORTED = ("timm; torchvision ResNet/DenseNet (same names as timm); efficientnet_pytorch (lukemelas: "
             "Mammo-CLIP, Mammo-FM); torchvision EfficientNet B0-B7/V2; each also inside a Lightning .ckpt, "
             "a DataParallel/DDP 'module.' wrapper, a training checkpoint (model, state_dict, "
             "model_state_dict, net, encoder) or under an encoder prefix (image_encoder., visual., ...)")

#: Layout name -> the library whose conventions (padding, batch-norm eps) its tensors were trained with.
LAYOUTS = {
    "timm": "timm",
    "torchvision-names": "torchvision/timm (same key names)",
    "efficientnet_pytorch": "efficientnet_pytorch (lukemelas)",
    "torchvision-efficientnet": "torchvision EfficientNet",
}

_SUFFIX_RANK = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3, "num_batches_tracked": 4}
# efficientnet_pytorch registers its layers in this order (model.py: EfficientNet and MBConvBlock).
_EP_TOP = {"_conv_stem": 0, "_bn0": 1, "_blocks": 2, "_conv_head": 3, "_bn1": 4, "_fc": 5}
_EP_BLOCK = {"_expand_conv": 0, "_bn0": 1, "_depthwise_conv": 2, "_bn1": 3, "_se_reduce": 4, "_se_expand": 5,
             "_project_conv": 6, "_bn2": 7}
_TV_TOP = {"features": 0, "avgpool": 1, "classifier": 2}
#: Each layout's classifier head (kept apart: converted when the model has a head of that shape).
HEAD_PREFIXES = {"efficientnet_pytorch": ("_fc.",), "torchvision-efficientnet": ("classifier.",)}
_LEGACY_DENSENET = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|"
                              r"running_var|num_batches_tracked))$")
_WRAPPER_SEGMENTS = ("module", "_orig_mod")  # DataParallel/DDP; torch.compile


@dataclass(frozen=True)
class Found:
    """A recognised layout: its name and the prefix its encoder sits under ('' when none)."""

    layout: str
    prefix: str


def strip_wrapper_segments(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DataParallel/DDP ``module.`` and torch.compile ``_orig_mod.`` path segments from every key.

    They wrap a model without changing it, at the front (``module.conv1.weight``) or inside a
    bigger model (``model.module.encoder...``); no timm, torchvision or efficientnet_pytorch layer
    is itself called ``module``.
    """
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        parts = [p for p in k.split(".") if p not in _WRAPPER_SEGMENTS]
        out[".".join(parts)] = v
    return out


def fix_legacy_densenet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old torchvision DenseNet keys (``denselayer1.norm.1.weight`` -> ``denselayer1.norm1.weight``)."""
    return {(_LEGACY_DENSENET.sub(r"\1\2", k) if "denselayer" in k else k): v for k, v in sd.items()}


def _anchored(keys: Iterable[str], anchor: str, also: str | None = None) -> Counter[str]:
    """Prefixes P (counted by keys under them) such that ``P + anchor`` (and ``P + also``) is a key."""
    keys = list(keys)
    keyset = set(keys)
    prefixes = [k[: -len(anchor)] for k in keys if k.endswith(anchor) and (k == anchor or k[-len(anchor) - 1] == ".")]
    prefixes = [p for p in prefixes if also is None or p + also in keyset]
    return Counter({p: sum(1 for k in keys if k.startswith(p)) for p in prefixes})


def find_layout(sd: Mapping[str, torch.Tensor]) -> Found | None:
    """The foreign layout of ``sd`` and the prefix of its encoder, or ``None`` (timm names, or unknown).

    efficientnet_pytorch is recognised by ``_conv_stem.weight`` with ``_blocks.0._depthwise_conv``;
    torchvision's EfficientNet by ``features.0.0.weight`` with ``features.1.0.block.0.0.weight``.
    When several prefixes qualify (two towers), the one holding most keys wins.
    """
    cands: list[tuple[int, Found]] = []
    for layout, anchor, also in (("efficientnet_pytorch", "_conv_stem.weight", "_blocks.0._depthwise_conv.weight"),
                                 ("torchvision-efficientnet", "features.0.0.weight", "features.1.0.block.0.0.weight")):
        for prefix, n in _anchored(sd, anchor, also).items():
            cands.append((n, Found(layout, prefix)))
    if not cands:
        return None
    return max(cands, key=lambda c: (c[0], -len(c[1].prefix)))[1]


def _tok(part: str, ranks: Mapping[str, int]) -> tuple[int, int | str]:
    if part.isdigit():
        return (0, int(part))
    if part in ranks:
        return (1, ranks[part])
    return (2, part)


def _sort_key(layout: str, key: str) -> tuple:
    parts = key.split(".")
    *mods, suffix = parts
    tail = (_SUFFIX_RANK.get(suffix, 9), suffix)
    if layout == "efficientnet_pytorch":
        if mods and mods[0] == "_blocks" and len(mods) >= 3:
            return (_EP_TOP["_blocks"], int(mods[1]) if mods[1].isdigit() else 0,
                    tuple(_tok(p, _EP_BLOCK) for p in mods[2:]), tail)
        return (_EP_TOP.get(mods[0], 9) if mods else 9, 0, tuple(_tok(p, {}) for p in mods[1:]), tail)
    return (_TV_TOP.get(mods[0], 9) if mods else 9, tuple(_tok(p, {}) for p in mods[1:]), tail)


def order_keys(layout: str, keys: Iterable[str]) -> list[str]:
    """The file's keys in the order their layers run (block numbers as numbers, each library's layer order)."""
    return sorted(keys, key=lambda k: _sort_key(layout, k))


def _blocks(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.match(pattern, k))})


#: efficientnet_pytorch variants by (stem channels, blocks, head channels); from its own block table
#: (``efficientnet_params``: width and depth coefficients), checked against ``EfficientNet.from_name``.
_EP_VARIANTS = {(32, 16, 1280): "b0", (32, 23, 1280): "b1", (32, 23, 1408): "b2", (40, 26, 1536): "b3",
                (48, 32, 1792): "b4", (48, 39, 2048): "b5", (56, 45, 2304): "b6", (64, 55, 2560): "b7"}


#: The image size efficientnet_pytorch's ``from_name``/``from_pretrained`` bake their static 'same' padding for.
EP_NATIVE_SIZE = {"b0": 224, "b1": 240, "b2": 260, "b3": 300, "b4": 380, "b5": 456, "b6": 528, "b7": 600}


def efficientnet_pytorch_variant(sd: Mapping[str, torch.Tensor]) -> str | None:
    """``b0``..``b7`` of an efficientnet_pytorch state dict (no prefix), or ``None`` for another size."""
    try:
        stem, head = sd["_conv_stem.weight"].shape[0], sd["_conv_head.weight"].shape[0]
    except KeyError:
        return None
    return _EP_VARIANTS.get((int(stem), _blocks(sd, r"_blocks\.(\d+)\."), int(head)))


_TV_V2 = {(24, 40): "efficientnetv2_s", (24, 57): "efficientnetv2_m", (32, 79): "efficientnetv2_l"}


def torchvision_efficientnet_variant(sd: Mapping[str, torch.Tensor]) -> tuple[str | None, bool]:
    """(timm name, is V2) of a torchvision EfficientNet state dict (no prefix); name ``None`` if unknown.

    V1's first block is a depthwise convolution (one input channel per filter), V2's a full 3x3
    (Fused-MBConv); blocks are counted as ``features.i.j``.
    """
    first = sd.get("features.1.0.block.0.0.weight")
    v2 = first is not None and first.ndim == 4 and first.shape[1] != 1
    stem = int(sd["features.0.0.weight"].shape[0])
    n = _blocks(sd, r"features\.(\d+\.\d+)\.block\.")
    if v2:
        return _TV_V2.get((stem, n)), True
    head = None
    convs = [k for k in sd if re.match(r"features\.\d+\.0\.weight$", k)]
    if convs:
        head = int(sd[max(convs, key=lambda k: int(k.split(".")[1]))].shape[0])
    variant = _EP_VARIANTS.get((stem, n, head or 0))
    return (f"efficientnet_{variant}" if variant else None), False


def group_counts(keys: Iterable[str], limit: int = 4) -> str:
    """``text_encoder.* 199, image_projection.* 2, logit_scale 1``: what a set of keys is, in one phrase."""
    c: Counter[str] = Counter(k.split(".")[0] + (".*" if "." in k else "") for k in keys)
    parts = [f"{g} {n}" for g, n in c.most_common(limit)]
    if len(c) > limit:
        parts.append(f"{len(c) - limit} more group(s)")
    return ", ".join(parts)
