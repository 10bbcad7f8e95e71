"""``--init-from RUN``: start a model from another run's trained backbone (patch-to-whole-image transfer).

Shen et al. 2019 trained a patch classifier on lesion patches, then reused its convolutional body
for whole mammograms. Here the source is any finished MammoLab run (e.g. trained on ``--kind roi``
data): its best checkpoint's ``backbone`` weights are copied into the new model, whose head (and
all-convolutional top or fusion head) starts afresh. The two runs must use the same architecture;
otherwise the error names both. Image size, views and regime may differ: convolutional weights do
not depend on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mammolab.config import load_yaml
from mammolab.errors import MammoLabError
from mammolab.models.registry import MammoNet
from mammolab.models.weights import CKPT_META_KEY

__all__ = ["init_from_run", "run_checkpoint"]


def run_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint a run passes on: ``best.ckpt``, else ``last.ckpt``."""
    run_dir = Path(run_dir)
    for name in ("best", "last"):
        path = run_dir / "checkpoints" / f"{name}.ckpt"
        if path.is_file():
            return path
    raise MammoLabError(f"--init-from: {run_dir} has no checkpoints/best.ckpt or last.ckpt "
                        "(is it a finished 'mammolab train' run?)")


def init_from_run(model: MammoNet, run_dir: str | Path) -> dict[str, Any]:
    """Copy the backbone of ``run_dir``'s checkpoint into ``model`` (in place); return what was done."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        raise MammoLabError(f"--init-from: {run_dir} is not a training run (no config.yaml)")
    source_model = str(load_yaml(cfg_path).get("model", "?"))
    if source_model != model.name:
        raise MammoLabError(f"--init-from: {run_dir} holds a {source_model} backbone, this run builds "
                            f"{model.name}; the architectures must match",
                            hint=f"train with --model {source_model} (any regime, head or size) or start from "
                                 f"a {model.name} run")
    path = run_checkpoint(run_dir)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise MammoLabError(f"--init-from: {path}: unreadable checkpoint ({exc.__class__.__name__})") from None
    meta = ckpt.get(CKPT_META_KEY) or {}
    if meta.get("model") not in (None, model.name):
        raise MammoLabError(f"--init-from: {path} holds a {meta['model']} backbone, this run builds {model.name}")
    prefix = "model.backbone."
    state = {k[len(prefix):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith(prefix)}
    own = model.backbone.state_dict()
    missing = [k for k in own if k not in state]
    shape = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or shape:
        what = (f"{len(missing)} missing key(s), e.g. {missing[0]}" if missing else
                f"shape of {shape[0]}: {tuple(state[shape[0]].shape)} there vs {tuple(own[shape[0]].shape)} here")
        raise MammoLabError(f"--init-from: the backbone in {path} does not fit this {model.name} ({what})")
    model.backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    return {"run": str(run_dir), "checkpoint": str(path), "model": source_model, "tensors": len(own),
            "source_epoch": ckpt.get("epoch"), "source_classes": meta.get("classes")}
