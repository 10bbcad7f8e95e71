"""Heatmaps of predictions: the figure beside a ``predict`` / ``serve`` result, of the class it prints.

:meth:`mammolab.infer.predictor.Predictor.predict_file(s)` and :func:`mammolab.infer.breast.predict_breast`
take ``heatmap=`` a function of the prepared image and its result; :func:`heatmapper` and
:func:`breast_heatmapper` make it. The class explained is the result's ``class`` (decided at the
recipe's threshold), so a heatmap never explains another class than the one printed beside it. An
exported model has no layers to hook: occlusion is its only method.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mammolab.explain.breast import breast_figure
from mammolab.explain.cam import torch_model
from mammolab.explain.common import heatmaps_for_arrays
from mammolab.explain.overlay import overlay_panel
from mammolab.recipe import VIEWS

__all__ = ["breast_heatmapper", "caption", "heatmapper"]


def caption(name: str, res: dict[str, Any], method: str) -> str:
    return f"{name}  P(malignant)={res['prob']:.2f}  {res['class']}  [{method}]"


def heatmapper(predictor: Any, method: str = "gradcam") -> Callable[[Any, dict[str, Any]], np.ndarray]:
    """``heatmap=`` for single images: the RGB ``[plain | overlay]`` panel of the result's class."""
    torch_model(predictor, method)  # an unusable method fails before any file is read

    def draw(prepared: Any, res: dict[str, Any]) -> np.ndarray:
        target = list(predictor.classes).index(res["class"])
        _, heats, _ = heatmaps_for_arrays(predictor, [prepared.image], method, target=predictor.classes[target],
                                          inputs=[prepared.tensor])
        return overlay_panel(prepared.image, heats[0], caption=caption(res.get("name", ""), res, method))

    return draw


def breast_heatmapper(predictor: Any, method: str = "gradcam") -> Callable[..., np.ndarray]:
    """``heatmap=`` for breasts: each present view's map of the breast score, CC and MLO side by side."""
    model = torch_model(predictor, method)

    def draw(prepared: dict[str, Any], x: np.ndarray, present: np.ndarray, res: dict[str, Any]) -> np.ndarray:
        device = predictor.device or "cpu"
        panel, _ = breast_figure(model, torch.from_numpy(x).to(device), torch.from_numpy(present).to(device),
                                 [prepared[v].image if v in prepared else None for v in VIEWS], method=method,
                                 target=list(predictor.classes).index(res["class"]),
                                 resize=predictor.recipe.transform.resize,
                                 caption=caption(res.get("name", ""), res, method), threshold=predictor.threshold)
        return panel

    return draw
