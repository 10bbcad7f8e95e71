"""Loading backbone weights from a local file: ``.pth``/``.pt``/``.bin``, ``.safetensors`` or a MammoLab ``.ckpt``.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never by unpickling code.
Accepted layouts: a plain state dict of the backbone (e.g. a timm ``model.safetensors`` from the
Hugging Face hub, classifier included or not), a ``{"state_dict": ...}``/``{"model": ...}`` wrapper,
a MammoLab model state dict (``backbone.body.*``) or a MammoLab training checkpoint, which must
come from the same model. A 3-channel stem is adapted to the 1-channel grayscale stem with timm's
``adapt_input_conv`` (summing the RGB filters, as ``in_chans=1`` does for hub weights).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammolab.errors import MammoLabError

__all__ = ["CKPT_META_KEY", "check_checkpoint_model", "detect_prefix", "load_backbone_weights", "read_state_file"]

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


def detect_prefix(keys: Iterable[str], own: Iterable[str]) -> str | None:
    """The key prefix (ending in ``.``) whose removal makes the most file keys name a model key.

    An encoder saved inside a bigger model (a CLIP-style image tower, a detector's backbone) has
    keys like ``visual.trunk.conv_stem.weight``; the prefix is found by counting, for every
    dotted prefix of every key, how many keys then match the model. ``None`` when nothing matches.
    """
    own_keys = set(own)
    counts: Counter[str] = Counter()
    for k in keys:
        for i, ch in enumerate(k):
            if ch == "." and k[i + 1:] in own_keys:
                counts[k[: i + 1]] += 1
    if not counts:
        return None
    best = max(counts.items(), key=lambda kv: (kv[1], -len(kv[0])))
    return best[0]


def _apply_prefix(sd: dict[str, torch.Tensor], prefix: str, own: dict[str, Any], path: Path,
                  report: dict[str, Any]) -> dict[str, torch.Tensor]:
    if prefix == "auto":
        found = detect_prefix(sd, own)
        if found is None:
            raise MammoLabError(f"--weights-prefix auto: no key prefix of {path} makes its keys match the model "
                                f"(first key: {next(iter(sd))})", hint="pass the prefix to strip, e.g. "
                                "--weights-prefix visual.trunk.")
        prefix = found
    prefix = prefix if prefix.endswith(".") else prefix + "."
    inside = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not inside:
        raise MammoLabError(f"--weights-prefix: no key of {path} starts with {prefix!r} "
                            f"(first key: {next(iter(sd))})")
    report.update(prefix=prefix, outside_prefix=len(sd) - len(inside))
    return inside


def load_backbone_weights(body: nn.Module, path: str | Path, *, model_name: str, first_conv: str,
                          classifier_keys: tuple[str, ...] = (), prefix: str | None = None) -> dict[str, Any]:
    """Load a weights file into a backbone body, adapting the stem's input channels; return a report.

    Without ``prefix`` the file must hold exactly the backbone (strict), unless none of its keys
    names a model key: then the prefix is detected (an encoder inside a bigger model). With a
    prefix (given, ``"auto"`` or detected) only the keys under it are used; keys under it that the
    model lacks are reported as unexpected, keys of the model the file lacks are still an error.
    The report: ``prefix``, ``outside_prefix`` (keys left aside), ``loaded``, ``unexpected``.
    """
    from timm.models import adapt_input_conv

    path = Path(path)
    sd = _unwrap(read_state_file(path), model_name, path)
    own = body.state_dict()
    report: dict[str, Any] = {"file": str(path), "prefix": None, "outside_prefix": 0, "unexpected": []}
    if prefix is None and not set(sd) & set(own):
        prefix = detect_prefix(sd, own)
    if prefix:
        sd = _apply_prefix(sd, prefix, own, path, report)
    for key in classifier_keys:
        sd.pop(key + ".weight", None)
        sd.pop(key + ".bias", None)
    stem_key = first_conv + ".weight"
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
    if report["prefix"] and not missing and not shape:
        report.update(loaded=len(own), unexpected=unexpected)
        body.load_state_dict({k: sd[k] for k in own}, strict=True)
        return report
    if missing or unexpected or shape:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
        if shape:
            k = shape[0]
            parts.append(f"shape mismatch at {k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}")
        where = f" under prefix {report['prefix']!r}" if report["prefix"] else ""
        raise MammoLabError(f"--weights: {path} does not hold {model_name} weights{where} ({'; '.join(parts)})")
    body.load_state_dict(sd, strict=True)
    report["loaded"] = len(own)
    return report
