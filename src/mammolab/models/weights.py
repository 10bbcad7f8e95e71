"""Loading backbone weights from a local file: ``.pth``/``.pt``/``.bin``, ``.safetensors`` or a MammoLab ``.ckpt``.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never by unpickling code.
Accepted layouts: a plain state dict of the backbone (e.g. a timm ``model.safetensors`` from the
Hugging Face hub, classifier included or not), a ``{"state_dict": ...}``/``{"model": ...}`` wrapper,
a MammoLab model state dict (``backbone.body.*``) or a MammoLab training checkpoint, which must
come from the same model. A 3-channel stem is adapted to the 1-channel grayscale stem with timm's
``adapt_input_conv`` (summing the RGB filters, as ``in_chans=1`` does for hub weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammolab.errors import MammoLabError

__all__ = ["CKPT_META_KEY", "check_checkpoint_model", "load_backbone_weights", "read_state_file"]

#: The key under which MammoLab checkpoints record which model and classes they hold.
CKPT_META_KEY = "mammolab"

_PREFIXES = ("model.backbone.body.", "backbone.body.", "module.")


def read_state_file(path: str | Path) -> dict[str, Any]:
    """Read a weights file safely; return the raw object (a dict)."""
    path = Path(path)
    if not path.is_file():
        raise MammoLabError(f"--weights: file not found: {path}",
                            hint="pass 'imagenet', 'none' or the path of a .pth/.safetensors state dict")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for foreign or corrupt files
        raise MammoLabError(f"--weights: cannot read {path} as a state dict ({exc.__class__.__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(obj, dict):
        raise MammoLabError(f"--weights: {path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def check_checkpoint_model(ckpt: dict[str, Any], model_name: str, source: str | Path) -> dict[str, Any]:
    """Raise one clear error when a MammoLab checkpoint holds another model than ``model_name``."""
    meta = ckpt.get(CKPT_META_KEY)
    if not isinstance(meta, dict) or "model" not in meta:
        raise MammoLabError(f"{source}: not a MammoLab checkpoint (no '{CKPT_META_KEY}' record)")
    if meta["model"] != model_name:
        raise MammoLabError(f"{source}: checkpoint of model {meta['model']!r}, not {model_name!r}",
                            hint="pass a checkpoint trained with the same --model")
    return meta


def _unwrap(obj: dict[str, Any], model_name: str, source: Path) -> dict[str, torch.Tensor]:
    if CKPT_META_KEY in obj:
        check_checkpoint_model(obj, model_name, source)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise MammoLabError(f"--weights: {source} holds no tensors")
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def load_backbone_weights(body: nn.Module, path: str | Path, *, model_name: str, first_conv: str,
                          classifier_keys: tuple[str, ...] = ()) -> None:
    """Load a weights file into a backbone body strictly, adapting the stem's input channels."""
    from timm.models import adapt_input_conv

    path = Path(path)
    sd = _unwrap(read_state_file(path), model_name, path)
    for key in classifier_keys:
        sd.pop(key + ".weight", None)
        sd.pop(key + ".bias", None)
    stem_key = first_conv + ".weight"
    own = body.state_dict()
    if stem_key in sd and stem_key in own and sd[stem_key].ndim == 4:
        want, have = own[stem_key].shape[1], sd[stem_key].shape[1]
        if want != have:
            sd[stem_key] = adapt_input_conv(want, sd[stem_key], base_chans=have)
    for k in own:  # many published files omit batch norm's step counter; it carries no weights
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        raise MammoLabError(f"--weights: {path} does not hold {model_name} weights ({'; '.join(parts)})")
    body.load_state_dict(sd, strict=True)
