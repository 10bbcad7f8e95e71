"""Load a published checkpoint, in whatever layout it was saved, into a timm model from Python.

The same path as ``mammolab train --weights FILE``: :func:`load_foreign_checkpoint` recognises the
layout (timm, torchvision, efficientnet_pytorch, wrapped in a Lightning ``.ckpt``, DataParallel or a
training checkpoint, encoder under a prefix), converts it and returns the model with a report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models.layouts import EP_NATIVE_SIZE
from mammolab.models.registry import TIMM_PREFIX, Backbone, MammoNet
from mammolab.models.weights import load_backbone_weights

__all__ = ["StaticSamePadConv2d", "load_foreign_checkpoint", "static_same_padding"]


class StaticSamePadConv2d(nn.Conv2d):
    """A convolution with fixed 'same' padding (left, right, top, bottom), as efficientnet_pytorch builds them.

    efficientnet_pytorch's ``from_name``/``from_pretrained`` compute each strided convolution's 'same'
    padding once, for the model's native image size, and apply it to every input; timm's ``tf_``
    models compute it for each input (as TensorFlow does). The two agree when a layer's input has
    the parity it has at the native size, and differ by a one-pixel shift otherwise.
    """

    static_pad: tuple[int, int, int, int] = (0, 0, 0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.static_pad), self.weight, self.bias, self.stride, 0, self.dilation,
                        self.groups)


def static_same_padding(model: nn.Module, image_size: int) -> int:
    """Fix every dynamically 'same'-padded convolution of a timm model to its padding at ``image_size``.

    The inputs each layer sees at the native size are measured with one forward pass; the padding
    is efficientnet_pytorch's ``Conv2dStaticSamePadding`` formula. Returns the number of layers fixed;
    parameter names do not change.
    """
    from timm.layers import Conv2dSame

    convs = [m for m in model.modules() if isinstance(m, Conv2dSame)]
    sizes: dict[int, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(id(mod), tuple(args[0].shape[-2:])))
             for m in convs]
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    chans = first.in_channels if first is not None else 3
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, chans, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    for m in convs:
        pads = []
        for i, size in enumerate(sizes[id(m)]):
            k, s, d = m.kernel_size[i], m.stride[i], m.dilation[i]
            out = -(-size // s)
            pads.append(max((out - 1) * s + (k - 1) * d + 1 - size, 0))
        ph, pw = pads
        m.__class__ = StaticSamePadConv2d
        m.static_pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return len(convs)


def _timm_keys(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") or "conv_stem"
    first = first if isinstance(first, str) else first[0]
    cls = cfg.get("classifier") or ()
    return first, ((cls,) if isinstance(cls, str) else tuple(cls))


def load_foreign_checkpoint(path: str | Path, model: str | nn.Module, prefix: str | None = "auto", *,
                            in_chans: int = 3, num_classes: int = 0,
                            static_padding: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """Load the encoder in ``path`` into ``model`` (a timm name or module); return ``(model, report)``.

    ``model``: a timm architecture name (``"tf_efficientnet_b5"``, ``"timm/resnet50"``), built with
    random weights, ``in_chans`` input channels and ``num_classes`` outputs (0: pooled features; a
    head of the file's shape is converted too); or a timm module, a MammoLab :class:`Backbone` or
    :class:`MammoNet` (its backbone is loaded). ``prefix``: ``"auto"`` (find the encoder: ``image_encoder.``,
    ``visual.``, a Lightning ``model.``), ``None`` (the same), or the prefix to strip. A 3-channel stem
    goes into a 1-channel model with its filters summed, which is exactly a grey image fed as three
    equal channels. ``static_padding``: an efficientnet_pytorch file loaded into a timm ``tf_`` model
    gets efficientnet_pytorch's own padding (fixed for the variant's native size, see
    :func:`static_same_padding`), so the features equal the source model's at every input size;
    ``mammolab train`` keeps timm's dynamic TF padding (its runs are rebuilt from the config) and
    says so in its report. The report says what was found, converted, ignored and missing
    (``report["summary"]`` is one line); an unknown layout raises :class:`MammoLabError` naming the
    file's first keys and the layouts supported.

    Example (a Mammo-CLIP EfficientNet-B5 checkpoint, efficientnet_pytorch layout)::

        from mammolab.models import load_foreign_checkpoint

        model, report = load_foreign_checkpoint("b5-model-best-epoch-7.tar", "tf_efficientnet_b5")
        print(report["summary"])   # efficientnet_pytorch efficientnet-b5 under 'image_encoder.' -> ...
        features = model.eval()(images)   # [N, 2048] pooled features
    """
    if isinstance(model, str):
        import timm

        name = model[len(TIMM_PREFIX):] if model.startswith(TIMM_PREFIX) else model
        if not timm.is_model(name):
            raise MammoLabError(f"load_foreign_checkpoint: timm has no model {name!r}",
                                hint="timm.list_models('*pattern*') lists timm's names")
        target: nn.Module = timm.create_model(name, pretrained=False, in_chans=in_chans, num_classes=num_classes)
        out: nn.Module = target
        first, cls = _timm_keys(target)
    elif isinstance(model, (Backbone, MammoNet)):
        backbone = model.backbone if isinstance(model, MammoNet) else model
        target, out, name = backbone.body, model, getattr(model, "name", type(backbone.body).__name__)
        first, cls = backbone.first_conv, backbone.classifier_keys
    elif isinstance(model, nn.Module):
        target, out = model, model
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        first, cls = _timm_keys(model)
    else:
        raise MammoLabError(f"load_foreign_checkpoint: model must be a timm name or a torch module, "
                            f"got {type(model).__name__}")
    report = load_backbone_weights(target, path, model_name=name, first_conv=first, classifier_keys=cls,
                                   prefix=prefix)
    variant = str(report.get("source", "")).rsplit("-", 1)[-1]
    if static_padding and report.get("layout") == "efficientnet_pytorch" and variant in EP_NATIVE_SIZE:
        n = static_same_padding(target, EP_NATIVE_SIZE[variant])
        if n:
            report["padding"] = f"static 'same' for {EP_NATIVE_SIZE[variant]} px ({n} layers), as efficientnet_pytorch"
            report["notes"] = [x for x in report.get("notes", []) if "native" not in x]
    if isinstance(model, (Backbone, MammoNet)):
        (model.backbone if isinstance(model, MammoNet) else model).weights_report = report
    return out, report
