"""Heatmaps of a two-view (CC + MLO) breast model, one map per view.

A breast model (``--views cc+mlo``) runs both views through one shared backbone and fuses the
pooled features (:class:`~mammolab.models.heads.ViewFusion`), so its logit is a function of both
views' feature maps. Each view's map is computed by the single-image machinery of
:mod:`mammolab.explain.cam` unchanged, on the breast model *seen as a model of that view alone*:

* :class:`OneViewModel` (a PyTorch breast model) takes ``[k, 1, H, W]`` images of one view, runs
  them through the backbone, and fuses them with the *other* view's pooled features, computed once
  and held fixed. Its output is the breast's logit; Grad-CAM's gradients of it with respect to the
  view's last-stage feature map are exactly the partial derivatives of the breast logit with
  respect to that view's map (the other view's map does not depend on this view's pixels), and the
  forward hooks see only this view's activations. Occlusion of this view holds the other fixed.
* :class:`OneViewImages` wraps any breast callable (an exported ONNX / TorchScript backend) the
  same way with the other view's *image* held fixed: enough for occlusion, which needs no layers.

A missing view (``present`` false) gets no map (``None``). A missing view's slot is filled as in
training (concat fusion replaces it with the present view's features, attention gives it weight 0),
so holding it fixed changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from mammolab.errors import MammoLabError

__all__ = ["OneViewImages", "OneViewModel", "breast_heatmaps", "breast_probabilities"]

BreastFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class OneViewModel(nn.Module):
    """A PyTorch breast model as a single-image model of view ``view``; the other views' pooled features fixed.

    ``fixed`` is ``[1, V, D]`` (the breast's pooled features per view) and ``present`` ``[1, V]``.
    The model's children are registered under their own names, so ``--layer`` names and the CAM
    layer search (on ``backbone``) are the breast model's, and errors name the breast model's class.
    """

    def __init__(self, model: nn.Module, fixed: torch.Tensor, present: torch.Tensor, view: int) -> None:
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "net", model)  # not registered: its modules are the children above
        self.fixed, self.present, self.view = fixed.detach(), present.bool(), int(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.features(x)
        k = len(x)
        parts = [f if j == self.view else self.fixed[:, j].expand(k, -1) for j in range(self.fixed.shape[1])]
        return self.net.head(self.net.fusion(torch.stack(parts, 1), self.present.expand(k, -1)))


class OneViewImages:
    """Any breast callable ``fn(x [N, V, 1, H, W], present [N, V]) -> logits`` as a model of one view's images,
    the other views' images held fixed (occlusion of an exported model)."""

    def __init__(self, fn: BreastFn, breast: torch.Tensor, present: torch.Tensor, view: int) -> None:
        self.fn, self.breast, self.present, self.view = fn, breast, present.bool(), int(view)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        k = len(x)
        full = self.breast.expand(k, *self.breast.shape[1:]).clone()
        full[:, self.view] = x
        return self.fn(full, self.present.expand(k, -1))

    def eval(self) -> OneViewImages:
        return self


def _is_torch_breast(model: Any) -> bool:
    return isinstance(model, nn.Module) and all(hasattr(model, a) for a in ("features", "fusion", "head", "backbone"))


def _breast_fn(model: Any) -> BreastFn:
    if isinstance(model, nn.Module):
        return lambda x, present: model(x, present)
    return model


def breast_probabilities(model: Any, x: torch.Tensor, present: torch.Tensor) -> np.ndarray:
    """Class probabilities ``(N, C)`` of breasts ``x [N, V, 1, H, W]``; single-logit binary gives ``[1 - p, p]``."""
    from mammolab.explain.cam import _logits_to_probs

    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        return _logits_to_probs(_breast_fn(model)(x, present)).cpu().numpy()


def breast_heatmaps(model: Any, x: torch.Tensor, present: torch.Tensor, method: str = "gradcam",
                    targets: Sequence[int] | None = None, *, grid: int = 8, batch_size: int = 32,
                    layer: str | None = None, threshold: float = 0.5) -> list[list[np.ndarray | None]]:
    """Per breast, per view: the heatmap ``(H, W)`` in ``[0, 1]`` of the breast's score, ``None`` for a missing view.

    ``model`` is a PyTorch breast model (:class:`~mammolab.models.registry.MammoNet` with a fusion)
    or, for occlusion only, any callable ``fn(x, present) -> logits``. ``targets`` are the class
    indices explained per breast (default: each breast's class decided at ``threshold``), as in
    :func:`~mammolab.explain.cam.compute_heatmaps`, which computes every map.
    """
    from mammolab.explain.cam import METHODS, compute_heatmaps, find_target_layer, predicted_targets

    if method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if x.dim() != 5 or present.shape != x.shape[:2]:
        raise MammoLabError(f"expected breasts x [N, V, C, H, W] with present [N, V], got shapes "
                            f"{tuple(x.shape)} and {tuple(present.shape)}")
    torch_model = _is_torch_breast(model)
    if method != "occlusion" and not torch_model:
        raise MammoLabError(f"--method {method}: an exported breast model has no layers to hook; use --method "
                            "occlusion, or the run folder")
    present = present.bool()
    if (~present).all(dim=1).any():
        raise MammoLabError("a breast needs at least one view (present is all false)")
    targets = list(targets) if targets is not None else predicted_targets(breast_probabilities(model, x, present),
                                                                                      threshold)
    if len(targets) != len(x):
        raise MammoLabError(f"{len(targets)} targets for {len(x)} breasts")
    if torch_model:
        model.eval()
        if layer and method != "occlusion":  # checked on the breast model itself, so an error names it
            find_target_layer(model, x[0, 0][None], layer)
    out: list[list[np.ndarray | None]] = []
    for n in range(len(x)):
        maps: list[np.ndarray | None] = []
        fixed = None
        if torch_model:
            with torch.no_grad():
                fixed = model.features(x[n])[None]
        for v in range(x.shape[1]):
            if not bool(present[n, v]):
                maps.append(None)
                continue
            one: Any = (OneViewModel(model, fixed, present[n:n + 1], v) if fixed is not None
                        else OneViewImages(_breast_fn(model), x[n:n + 1], present[n:n + 1], v))
            maps.append(compute_heatmaps(one, x[n, v][None], method, [targets[n]], grid=grid,
                                         batch_size=batch_size, layer=layer)[0])
        out.append(maps)
    return out


def _image_maps(maps: Sequence[np.ndarray | None], images: Sequence[np.ndarray | None], size: tuple[int, int],
                mode: str) -> list[np.ndarray | None]:
    """Each view's map (at the model input ``size``) back onto that view's own image pixels."""
    from mammolab.explain.common import to_image_space

    return [None if m is None or im is None else to_image_space(m, im.shape, size, mode)
            for m, im in zip(maps, images, strict=True)]


def breast_figure(model: Any, x: torch.Tensor, present: torch.Tensor, images: Sequence[np.ndarray | None], *,
                  method: str = "gradcam", target: int | None = None, resize: str = "stretch",
                  boxes: Sequence[Sequence[Sequence[float]]] | None = None, caption: str = "",
                  grid: int = 8, layer: str | None = None,
                  threshold: float = 0.5) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """One breast (``x [1, V, 1, H, W]``, ``images``: each view's preprocessed image or ``None``) -> the
    side-by-side RGB figure (:func:`~mammolab.explain.overlay.breast_panel`) and each view's map in its
    image's pixels. Without ``target`` the map explains the class decided at ``threshold``."""
    from mammolab.explain.overlay import breast_panel
    from mammolab.train.views import VIEWS

    maps = breast_heatmaps(model, x, present, method, None if target is None else [target], grid=grid,
                           layer=layer, threshold=threshold)[0]
    heats = _image_maps(maps, images, (int(x.shape[-2]), int(x.shape[-1])), resize)
    boxes = boxes or [[] for _ in VIEWS]
    panel = breast_panel([(v, im, h, b) for v, im, h, b in zip(VIEWS, images, heats, boxes, strict=True)],
                         caption=caption)
    return panel, heats
