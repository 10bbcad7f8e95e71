"""Heatmaps of where a model looks: Grad-CAM / Grad-CAM++ (pytorch-grad-cam) and batched occlusion.

* **Grad-CAM and Grad-CAM++** come from the maintained ``pytorch-grad-cam`` library. The target
  layer is found automatically for any registry model (1-channel inputs included): one forward
  pass records, in execution order, every module of the backbone that outputs a spatial feature
  map; the last one that is not a pooling/dropout layer is the final feature map before global
  pooling (``layer4`` for ResNets, ``bn2`` after EfficientNet's head conv, the last conv block of
  ``mammocnn``). When that map is smaller than ``MIN_CAM_CELLS`` per side (a 64 px patch through
  a stride-32 ResNet leaves 2x2 cells, and an upsampled 2x2 map can only point at a quadrant),
  the last map with enough cells is used instead (``layer3``); ``layer=`` names one explicitly.
  The input is made to require gradients, so frozen backbones (``opw``) work too.
* **Which class is explained**: by default the *predicted* class of each image. A single-logit
  binary model explains "benign" through the negated logit (pytorch-grad-cam's
  ``BinaryClassifierOutputTarget``); always explaining the malignant logit leaves a benign image
  with no positive evidence, and Grad-CAM's ReLU turns that into a blank map.
* **Occlusion** needs no gradients and no layer choice: a grey patch (the image mean) is slid
  over a coarse grid, every occluded copy of every image goes through the model in large
  batches, and the drop in the target probability per grid cell is upsampled to the image. A
  whole test split is practical because the grid, not the pixel count, sets the cost.

Every map is returned as float32 ``[0, 1]`` at the input's resolution (``(B, H, W)``).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from mammolab.errors import MammoLabError
from mammolab.explain.methods import METHODS
from mammolab.infer.core import class_probabilities, decide

__all__ = ["METHODS", "MIN_CAM_CELLS", "BackendModule", "compute_heatmaps", "find_target_layer", "predicted_targets",
           "torch_model",
           "target_probabilities"]

#: Fewest cells per side of an automatically chosen CAM layer (see the module docstring).
MIN_CAM_CELLS = 4

_SKIP_TYPES: tuple[type[nn.Module], ...] = (
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Dropout2d,
    nn.Identity, nn.Flatten,
)


def _feature_root(model: nn.Module) -> nn.Module:
    # MammoNet keeps the feature extractor in ``backbone``; the head never holds a spatial map.
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def find_target_layer(model: nn.Module, example: torch.Tensor, layer: str | None = None,
                      min_cells: int = MIN_CAM_CELLS) -> tuple[str, nn.Module]:
    """The module whose output the CAM is computed on: by default the last spatial feature map.

    Runs ``example`` (``[1, C, H, W]``) through the model once with forward hooks. The last map
    with at least ``min_cells`` cells per side wins; when none is that large, the last spatial
    map. ``layer`` picks a module by its name (as in ``model.named_modules()``, or relative to
    the backbone). Raises when the model has no 4-D feature map at all (nothing for a CAM to show).
    """
    root = _feature_root(model)
    if layer:
        modules = dict(model.named_modules())
        modules.update({k: v for k, v in root.named_modules() if k})
        if layer not in modules:
            names = [n for n, m in root.named_modules() if n and not isinstance(m, _SKIP_TYPES)]
            # Match the given name against every dotted tail ("layer5" ~ "body.layer4"), report full names.
            tails: dict[str, str] = {}
            for n in names:
                parts = n.split(".")
                for i in range(len(parts)):
                    tails.setdefault(".".join(parts[i:]), n)
            near = list(dict.fromkeys(tails[t] for t in difflib.get_close_matches(layer, list(tails), n=3)))
            hint = f"; did you mean {', '.join(near)}?" if near else f"; some layers: {', '.join(names[-5:])}"
            raise MammoLabError(f"--layer: {type(model).__name__} has no module named {layer!r}{hint}")
        return layer, modules[layer]
    order: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    hooks = []
    for name, module in root.named_modules():
        if name == "" and root is not model:
            continue

        def hook(mod: nn.Module, _inp: object, out: object, name: str = name) -> None:
            if isinstance(out, torch.Tensor) and out.dim() == 4:
                order.append((name, mod, tuple(out.shape)))

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    candidates = [(n, m, s) for n, m, s in order if not isinstance(m, _SKIP_TYPES)]
    spatial = [c for c in candidates if c[2][2] * c[2][3] > 1]
    fine = [c for c in spatial if min(c[2][2], c[2][3]) >= min_cells]
    chosen = (fine or spatial or candidates or [None])[-1]
    if chosen is None:
        raise MammoLabError(f"{type(model).__name__}: no convolutional feature map found to compute a CAM on; "
                            "use --method occlusion")
    return chosen[0], chosen[1]


def _logits_to_probs(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities of a model's logits by :func:`mammolab.infer.core.class_probabilities` (the one
    logits-to-probabilities function), on the logits' device."""
    probs = class_probabilities(logits.detach().float().reshape(len(logits), -1).cpu().numpy())
    return torch.from_numpy(probs).to(logits.device)


def target_probabilities(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """Class probabilities ``(B, C)``; a single-logit binary model gives ``[1 - p, p]``."""
    with torch.no_grad():
        return _logits_to_probs(model(x)).cpu().numpy()


def predicted_targets(probs: np.ndarray, threshold: float = 0.5) -> list[int]:
    """The predicted class index per row of ``probs`` (``(B, C)``): :func:`mammolab.infer.core.decide`."""
    return decide(probs, threshold).tolist()


class BackendModule:
    """An exported model's backend as a callable returning torch logits (enough for occlusion heatmaps)."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __call__(self, x: Any, present: Any = None) -> torch.Tensor:
        return torch.from_numpy(self.backend.logits(x, present))

    def eval(self) -> BackendModule:
        return self


def torch_model(predictor: Any, method: str) -> Any:
    """The predictor's PyTorch model, or for occlusion of an exported model its backend as a callable."""
    if method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if predictor.model is not None:
        return predictor.model
    if method != "occlusion":
        raise MammoLabError(f"--method {method}: an exported {predictor.format} model has no layers to hook; "
                            "use --method occlusion, or the run folder")
    return BackendModule(predictor.backend)


def _output_target(model_out_dim: int, target: int) -> object:
    from pytorch_grad_cam.utils.model_targets import BinaryClassifierOutputTarget, ClassifierOutputTarget

    # A single-logit model has one output column: the logit for class 1, its negation for class 0.
    return BinaryClassifierOutputTarget(target) if model_out_dim == 1 else ClassifierOutputTarget(target)


def _gradcam(model: nn.Module, x: torch.Tensor, targets: Sequence[int], plus: bool, batch_size: int,
             layer_name: str | None) -> np.ndarray:
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus

    _, layer = find_target_layer(model, x[:1], layer_name)
    with torch.no_grad():
        out_dim = model(x[:1]).reshape(1, -1).shape[1]
    cls = GradCAMPlusPlus if plus else GradCAM
    maps = []
    with cls(model=model, target_layers=[layer]) as cam:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].detach().clone().requires_grad_(True)
            tb = [_output_target(out_dim, t) for t in targets[i:i + batch_size]]
            maps.append(cam(input_tensor=xb, targets=tb))
    return np.concatenate(maps).astype(np.float32)


def _occlusion(model: nn.Module, x: torch.Tensor, targets: Sequence[int], grid: int, batch_size: int) -> np.ndarray:
    b, c, h, w = x.shape
    grid = max(2, min(grid, h, w))
    ys = np.linspace(0, h, grid + 1).round().astype(int)
    xs = np.linspace(0, w, grid + 1).round().astype(int)
    # Each window covers its cell and half a cell around it, so a lesion on a cell border is still
    # hidden whole by some window.
    windows = []
    for i in range(grid):
        for j in range(grid):
            hy, hx = (ys[i + 1] - ys[i]) // 2, (xs[j + 1] - xs[j]) // 2
            windows.append((max(0, ys[i] - hy), min(h, ys[i + 1] + hy), max(0, xs[j] - hx), min(w, xs[j + 1] + hx)))
    masks = torch.ones((len(windows), 1, h, w), dtype=x.dtype, device=x.device)
    for k, (y0, y1, x0, x1) in enumerate(windows):
        masks[k, :, y0:y1, x0:x1] = 0
    tidx = torch.as_tensor(list(targets), device=x.device)
    base = torch.as_tensor(target_probabilities(model, x), device=x.device).gather(1, tidx[:, None])[:, 0]
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    drops = torch.empty((b, len(windows)), dtype=torch.float32)
    # All (image, window) pairs, batched regardless of image boundaries.
    pairs = [(n, k) for n in range(b) for k in range(len(windows))]
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s:s + batch_size]
            n_idx = torch.as_tensor([p[0] for p in chunk], device=x.device)
            k_idx = torch.as_tensor([p[1] for p in chunk], device=x.device)
            m = masks[k_idx]
            xo = x[n_idx] * m + fill[n_idx] * (1 - m)
            p = _logits_to_probs(model(xo)).gather(1, tidx[n_idx][:, None])[:, 0]
            drops[n_idx.cpu(), k_idx.cpu()] = (base[n_idx] - p).float().cpu()
    out = np.empty((b, h, w), dtype=np.float32)
    for n in range(b):
        coarse = np.clip(drops[n].numpy().reshape(grid, grid), 0, None)
        fine = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        top = fine.max()
        out[n] = fine / top if top > 0 else 0.0
    return out


def compute_heatmaps(model: nn.Module, x: torch.Tensor, method: str = "gradcam", targets: Sequence[int] | None = None,
                     *, grid: int = 8, batch_size: int = 32, layer: str | None = None) -> np.ndarray:
    """Heatmaps ``(B, H, W)`` in ``[0, 1]`` for a batch of model inputs ``x`` (``[B, C, H, W]``).

    ``targets`` are class indices to explain (default: each image's predicted class). ``grid`` is
    the occlusion grid (cells per side); ``layer`` names the CAM layer (default: automatic).
    """
    if method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if x.dim() != 4:
        raise MammoLabError(f"expected a batch of images [B, C, H, W], got shape {tuple(x.shape)}")
    model.eval()
    targets = list(targets) if targets is not None else predicted_targets(target_probabilities(model, x))
    if len(targets) != len(x):
        raise MammoLabError(f"{len(targets)} targets for {len(x)} images")
    if method == "occlusion":
        maps = _occlusion(model, x, targets, grid, max(1, batch_size * 2))
    else:
        maps = _gradcam(model, x, targets, method == "gradcam++", max(1, batch_size), layer)
    return np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0).astype(np.float32)
