"""Loading backbone weights from a local file: ``.pth``/``.pt``/``.bin``, ``.safetensors`` or a MammoLab ``.ckpt``.

Files are read with ``torch.load(weights_only=True)`` or safetensors, never by unpickling code.
Accepted layouts: a plain state dict of the backbone (e.g. a timm ``model.safetensors`` from the
Hugging Face hub, classifier included or not), a ``{"state_dict": ...}``/``{"model": ...}`` wrapper,
a MammoLab model state dict (``backbone.body.*``) or a MammoLab training checkpoint, which must
come from the same model. A 3-channel stem is adapted to the 1-channel grayscale stem with timm's
``adapt_input_conv`` (summing the RGB filters, as ``in_chans=1`` does for hub weights).
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.models.layouts import (
    EP_NATIVE_SIZE,
    HEAD_PREFIXES,
    LAYOUTS,
    SUPPORTED,
    Found,
    efficientnet_pytorch_variant,
    find_layout,
    fix_legacy_densenet,
    group_counts,
    order_keys,
    strip_wrapper_segments,
    torchvision_efficientnet_variant,
)

__all__ = ["CKPT_META_KEY", "WRAPPER_KEYS", "check_checkpoint_model", "detect_prefix", "load_backbone_weights",
           "read_state_file", "summary_line"]

#: The key under which MammoLab checkpoints record which model and classes they hold.
CKPT_META_KEY = "mammolab"

_PREFIXES = ("model.backbone.body.", "backbone.body.")


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
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # not a refusal: a corrupt or foreign file
            raise MammoLabError(f"--weights: cannot read {path} as a state dict (UnpicklingError: "
                                f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        # weights_only refused a pickled Python object (a config object, a path...)
        what = str(exc).split("Unsupported global: ")[-1].split(" ")[0].strip(".") if "global" in str(exc) else ""
        raise MammoLabError(f"--weights: {path} pickles Python objects besides tensors{f' ({what})' if what else ''}; "
                            "MammoLab reads tensors only and never runs a file's code",
                            hint="in an environment you trust, re-save the weights alone: torch.save(torch.load(F, "
                                 "weights_only=False)['model'], 'encoder.pth')") from None
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


#: Keys under which training checkpoints keep the weights, in order of preference (EMA weights first,
#: as timm's own loader prefers them; ``model`` is Mammo-CLIP's and many research codes').
WRAPPER_KEYS = ("state_dict_ema", "model_ema", "state_dict", "model_state_dict", "model", "net", "network",
                "encoder", "weights", "params")


def _unwrap(obj: dict[str, Any], model_name: str, source: Path) -> dict[str, torch.Tensor]:
    if CKPT_META_KEY in obj:
        check_checkpoint_model(obj, model_name, source)
    for _ in range(4):  # {'model': {'state_dict': {...}}} and the like
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict) and obj[k]), None)
        if inner is None:
            break
        obj = inner
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise MammoLabError(f"--weights: {source} holds no tensors (top-level keys: "
                            f"{', '.join(map(str, list(obj)[:6]))}; looked under {', '.join(WRAPPER_KEYS)})")
    sd = strip_wrapper_segments(sd)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return fix_legacy_densenet(sd)


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
    outside = [k for k in sd if not k.startswith(prefix)]
    report.update(prefix=prefix, outside_prefix=len(outside), ignored_groups=group_counts(outside) if outside else "")
    return inside


def _first_bn_eps(body: nn.Module) -> float | None:
    return next((float(m.eps) for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)


def _pads_tf_same(body: nn.Module) -> bool:
    """True when the model pads its strided convolutions TF-'same' (timm's ``tf_`` ports), as TF did."""
    from timm.layers import Conv2dSame

    return any(isinstance(m, Conv2dSame) for m in body.modules())


def _source_info(found: Found, sd: dict[str, torch.Tensor]) -> tuple[str, str | None, str, float]:
    """(source architecture, timm model that reproduces it, its padding, its batch-norm eps)."""
    if found.layout == "efficientnet_pytorch":
        v = efficientnet_pytorch_variant(sd)
        # efficientnet_pytorch follows TF: 'same' padding, BN eps 1e-3 (momentum 0.01), swish = SiLU.
        return (f"efficientnet-{v}" if v else "EfficientNet (unknown size)", f"tf_efficientnet_{v}" if v else None,
                "TF 'same'", 1e-3)
    name, v2 = torchvision_efficientnet_variant(sd)
    # torchvision pads symmetrically; its V1 uses BN eps 1e-5, its V2 1e-3 (torchvision efficientnet.py).
    return (name or "EfficientNet (unknown size)"), name, "symmetric", 1e-3 if v2 else 1e-5


def _same_kind(src: str, s: torch.Tensor, dst: str, d: torch.Tensor, stem: str) -> bool:
    if src.rsplit(".", 1)[-1] != dst.rsplit(".", 1)[-1]:
        return False
    if dst == stem and s.ndim == 4 and d.ndim == 4:  # the stem's input channels are adapted afterwards
        return s.shape[0] == d.shape[0] and s.shape[2:] == d.shape[2:]
    return tuple(s.shape) == tuple(d.shape)


def _convert_by_order(body: nn.Module, sd: dict[str, torch.Tensor], found: Found, path: Path, *, model_name: str,
                      first_conv: str, classifier_keys: tuple[str, ...], report: dict[str, Any]) -> dict[str, Any]:
    """Load an efficientnet_pytorch / torchvision EfficientNet encoder into a timm EfficientNet (see layouts.py)."""
    p = found.prefix
    inside = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    outside = [k for k in sd if not k.startswith(p)]
    heads = HEAD_PREFIXES[found.layout]
    head_src = {k: v for k, v in inside.items() if k.startswith(heads)}
    enc_src = {k: v for k, v in inside.items() if not k.startswith(heads)}
    arch, reproducer, pad, eps = _source_info(found, enc_src)
    own = body.state_dict()
    cls = tuple(c + "." for c in classifier_keys)
    own_head = [k for k in own if cls and k.startswith(cls)]
    src_keys = [k for k in order_keys(found.layout, enc_src) if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in own if not k.endswith("num_batches_tracked") and k not in own_head]
    stem = first_conv + ".weight"
    diff: str | None = None
    for i, (s_key, d_key) in enumerate(zip(src_keys, dst_keys, strict=False)):
        if not _same_kind(s_key, enc_src[s_key], d_key, own[d_key], stem):
            diff = (f"tensor {i}: file {s_key} {tuple(enc_src[s_key].shape)} vs model {d_key} "
                    f"{tuple(own[d_key].shape)}")
            break
    if diff is None and len(src_keys) != len(dst_keys):
        diff = f"the file's encoder has {len(src_keys)} tensors, the model {len(dst_keys)}"
    if diff is not None:
        hint = (f"this file loads into timm {reproducer}: pass --model timm/{reproducer}" if reproducer else
                "the file's EfficientNet size is not one of B0-B7 / V2-S/M/L")
        raise MammoLabError(f"--weights: {path} holds {LAYOUTS[found.layout]} {arch} weights"
                            f"{f' under {p!r}' if p else ''}, which do not fit {model_name} ({diff})", hint=hint)
    new = {d: enc_src[s] for s, d in zip(src_keys, dst_keys, strict=True)}
    ignored = list(outside)
    head_ignored: list[str] = []
    head_src_keys = [k for k in order_keys(found.layout, head_src) if not k.endswith("num_batches_tracked")]
    if own_head and len(head_src_keys) == len(own_head) and all(
            tuple(head_src[s].shape) == tuple(own[d].shape) for s, d in zip(head_src_keys, own_head, strict=True)):
        new.update({d: head_src[s] for s, d in zip(head_src_keys, own_head, strict=True)})
    else:
        head_ignored = list(head_src)
    missing = [k for k in own_head if k not in new]
    for k in own:  # batch norm's step counters carry no weights; a model head the file lacks keeps its init
        if k not in new and (k.endswith("num_batches_tracked") or k in own_head):
            new[k] = own[k]
    _adapt_stem(new, own, stem)
    body.load_state_dict(new, strict=True)
    notes = []
    target_pad = "TF 'same'" if _pads_tf_same(body) else "symmetric"
    target_eps = _first_bn_eps(body)
    if target_pad != pad or (target_eps is not None and abs(target_eps - eps) > 1e-12):
        fit = f"; timm {reproducer} reproduces them" if reproducer and reproducer != model_name.split("/")[-1] else ""
        notes.append(f"the file's model pads {pad} with batch-norm eps {eps:g}, {model_name} pads {target_pad} "
                     f"with eps {target_eps:g}: features differ from the source model's{fit}")
    if found.layout == "efficientnet_pytorch" and target_pad == pad and reproducer:
        native = EP_NATIVE_SIZE[reproducer.rsplit("_", 1)[-1]]
        notes.append(f"efficientnet_pytorch pads for its native {native} px (static 'same' padding), timm "
                     f"dynamically: features agree exactly where every stride-2 layer's input has the parity it "
                     f"has at {native} px; load_foreign_checkpoint(static_padding=True) reproduces it at any size")
    report.update(layout=found.layout, source=arch, prefix=p or None, outside_prefix=len(outside),
                  loaded=len(own) - len(missing), converted=len(src_keys) + (len(own_head) - len(missing)),
                  ignored=len(ignored) + len(head_ignored),
                  ignored_groups=", ".join(([f"head {group_counts(head_ignored)}"] if head_ignored else [])
                                           + ([group_counts(ignored)] if ignored else [])),
                  missing=missing, unexpected=[], notes=notes)
    return report


def _adapt_stem(sd: dict[str, torch.Tensor], own: dict[str, Any], stem: str) -> None:
    """3-channel stem -> the model's input channels with timm's ``adapt_input_conv`` (1: the RGB filters summed)."""
    from timm.models import adapt_input_conv

    if stem in sd and stem in own and sd[stem].ndim == 4:
        want, have = own[stem].shape[1], sd[stem].shape[1]
        if want != have:
            sd[stem] = adapt_input_conv(want, sd[stem], base_chans=have)


def summary_line(report: dict[str, Any]) -> str:
    """The weights report as the one line ``mammolab train`` prints (what was found, converted, ignored, missing)."""
    layout = LAYOUTS.get(report.get("layout") or "timm", report.get("layout"))
    src = f" {report['source']}" if report.get("source") else ""
    where = f" under {report['prefix']!r}" if report.get("prefix") else ""
    n_ign = report.get("ignored", report.get("outside_prefix", 0)) or 0
    ignored = f"{n_ign} ignored" + (f" ({report['ignored_groups']})" if report.get("ignored_groups") else "")
    unexpected = report.get("unexpected") or []
    extra = f", {len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else ""
    missing = report.get("missing") or []
    miss = f"{len(missing)} missing (kept initialised: {', '.join(missing[:2])})" if missing else "none missing"
    line = (f"weights: {report.get('file')}: {layout}{src}{where} -> {report.get('target', '?')}: "
            f"{report.get('converted', report.get('loaded'))} tensors loaded, {ignored}{extra}, {miss}")
    for note in report.get("notes") or []:
        line += f"; note: {note}"
    return line


def load_backbone_weights(body: nn.Module, path: str | Path, *, model_name: str, first_conv: str,
                          classifier_keys: tuple[str, ...] = (), prefix: str | None = None) -> dict[str, Any]:
    """Load a weights file into a backbone body, converting a foreign layout and adapting the stem; return a report.

    The file's layout is recognised by its keys (:mod:`mammolab.models.layouts`): timm's own names
    (torchvision's ResNets and DenseNets share them), efficientnet_pytorch (Mammo-CLIP, Mammo-FM) and
    torchvision EfficientNets, each possibly inside a training checkpoint, a Lightning ``.ckpt``,
    a DataParallel ``module.`` wrapper or under an encoder prefix (``image_encoder.``, ``visual.``).
    Foreign layouts are converted by forward order, every tensor's kind and shape checked. For timm
    names without ``prefix`` the file must hold exactly the backbone (strict), unless none of its
    keys names a model key: then the prefix is detected. With a prefix (given, ``"auto"`` or
    detected) only the keys under it are used; keys under it that the model lacks are reported as
    unexpected, keys of the model the file lacks are an error. The report: ``file``, ``target``,
    ``layout``, ``source``, ``prefix``, ``outside_prefix`` / ``ignored`` (keys left aside, e.g. a
    text encoder or a classifier head), ``loaded``, ``converted``, ``missing``, ``unexpected``,
    ``notes`` and ``summary`` (one line).
    """
    path = Path(path)
    sd = _unwrap(read_state_file(path), model_name, path)
    own = body.state_dict()
    report: dict[str, Any] = {"file": str(path), "target": model_name, "layout": "timm", "prefix": None,
                              "outside_prefix": 0, "unexpected": []}
    if prefix == "auto" and set(sd) & set(own):  # already the model's names: nothing to strip
        prefix = None
    outside_keys: list[str] = []
    if prefix not in (None, "auto"):
        outside_keys = [k for k in sd if not k.startswith(_norm_prefix(prefix))]
        sd = _apply_prefix(sd, prefix, own, path, report)
    outside = len(outside_keys)
    found = find_layout(sd) if not set(sd) & set(own) else None
    if found is not None:
        _convert_by_order(body, sd, found, path, model_name=model_name, first_conv=first_conv,
                          classifier_keys=classifier_keys, report=report)
        if prefix not in (None, "auto"):
            report["prefix"] = _norm_prefix(prefix) + (found.prefix or "")
            report["ignored"] += outside
            report["outside_prefix"] += outside
            if outside_keys:
                report["ignored_groups"] = ", ".join(filter(None, [report.get("ignored_groups"),
                                                                   group_counts(outside_keys)]))
        report["summary"] = summary_line(report)
        return report
    if prefix not in (None, "auto"):
        prefix = None  # already applied above
    elif not set(sd) & set(own):  # None or auto, and no key is the model's: find the encoder's prefix
        prefix = detect_prefix(sd, own)
        if prefix is None:
            first = ", ".join(list(sd)[:3])
            raise MammoLabError(f"--weights: {path} does not hold {model_name} weights in a layout MammoLab knows "
                                f"(first keys: {first})", hint=f"supported: {SUPPORTED}")
    if prefix:
        sd = _apply_prefix(sd, prefix, own, path, report)
    _load_same_names(body, sd, own, path, model_name=model_name, first_conv=first_conv,
                     classifier_keys=classifier_keys, report=report)
    if model_name.split("/")[-1].split(".")[0].startswith(("resnet", "densenet")):
        report["layout"] = "torchvision-names"
    report.setdefault("ignored", report["outside_prefix"])
    report["summary"] = summary_line(report)
    return report


def _norm_prefix(prefix: str) -> str:
    return prefix if prefix.endswith(".") else prefix + "."


def _load_same_names(body: nn.Module, sd: dict[str, torch.Tensor], own: dict[str, Any], path: Path, *,
                     model_name: str, first_conv: str, classifier_keys: tuple[str, ...],
                     report: dict[str, Any]) -> None:
    """timm's (and torchvision ResNet/DenseNet) names: strict, classifier dropped, stem adapted."""
    ignored_head = []
    for key in classifier_keys:
        for suffix in (".weight", ".bias"):
            if key + suffix in sd and key + suffix not in own:
                ignored_head.append(key + suffix)
                sd.pop(key + suffix)
    stem_key = first_conv + ".weight"
    _adapt_stem(sd, own, stem_key)
    for k in own:  # many published files omit batch norm's step counter; it carries no weights
        if k.endswith("num_batches_tracked") and k not in sd:
            sd[k] = own[k]
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    report["missing"] = []
    report["ignored"] = report["outside_prefix"] + len(ignored_head)
    if ignored_head:
        report["ignored_groups"] = ", ".join(filter(None, [f"head {group_counts(ignored_head)}",
                                                           report.get("ignored_groups")]))
    if report["prefix"] and not missing and not shape:
        report.update(loaded=len(own), converted=len(own), unexpected=unexpected)
        body.load_state_dict({k: sd[k] for k in own}, strict=True)
        return
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
    report.update(loaded=len(own), converted=len(own))
