"""One breast of a two-view (CC + MLO) model through the :class:`~mammolab.infer.predictor.Predictor`.

Each file goes through the recipe exactly as a single-view file does (:meth:`Predictor.prepare`, so
an organized image gets the probability ``evaluate`` gave its breast); a breast with one view is
handled as training and evaluation handle it: the missing view is filled with the present one and
flagged absent. The same function runs a run's PyTorch model and an exported ONNX / TorchScript one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.infer.predictor import read_source
from mammolab.infer.views import is_two_view
from mammolab.recipe import VIEWS

__all__ = ["breast_input", "predict_breast"]

#: ``heatmap=`` of :func:`predict_breast`: (prepared views, x, present, result) -> RGB figure.
BreastHeatmapper = Callable[[dict[str, Any], np.ndarray, np.ndarray, dict[str, Any]], np.ndarray]


def breast_input(prepared: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """``x [1, 2, 1, H, W]`` (CC, MLO) and ``present [1, 2]``, a missing view filled with the present one
    (as :class:`~mammolab.train.views.TwoViewDataset` does)."""
    tensors = [prepared[v].tensor if v in prepared else None for v in VIEWS]
    fill = next(t for t in tensors if t is not None)
    x = np.stack([t if t is not None else fill for t in tensors])[None]
    present = np.array([[t is not None for t in tensors]])
    return x, present


def predict_breast(predictor: Any, files: dict[str, str | Path | bytes], *, tta: bool = False,
                   names: dict[str, str] | None = None, heatmap: BreastHeatmapper | None = None) -> dict[str, Any]:
    """One breast: ``files`` maps ``CC``/``MLO`` to a file (one may be absent) -> ``prob``, ``class``,
    ``probs``, ``threshold``, ``warnings``, ``views`` (``cc+mlo``, ``cc`` or ``mlo``), ``missing_view``
    (``None``, ``CC`` or ``MLO``), ``cc`` and ``mlo`` (the files, ``None`` when missing); with
    ``heatmap`` (:func:`mammolab.explain.predicted.breast_heatmapper`), ``heatmap``: the figure of the
    class printed.

    A file may be an upload's bytes (``mammolab serve``); ``names`` then gives its file name per view.
    A file that cannot be read or processed raises a one-line :class:`MammoLabError` naming it.
    """
    if not is_two_view(predictor):
        raise MammoLabError(f"--file-views: {predictor.path} is a single-view model; predict its files without "
                            "--file-views")
    given = {str(v).upper(): f for v, f in files.items() if f is not None}
    if not given or set(given) - set(VIEWS):
        raise MammoLabError(f"predict: a breast needs a CC and/or an MLO file, got views {sorted(given) or 'none'}")
    prepared: dict[str, Any] = {}
    warnings: list[str] = []
    for view in VIEWS:
        if view not in given:
            continue
        image, name = read_source(given[view], (names or {}).get(view))
        pr = predictor.prepare_named(image, name, None, predictor.start_for(given[view]))
        prepared[view] = pr
        warnings += [f"{view}: {w}" for w in pr.warnings]
    missing = next((v for v in VIEWS if v not in prepared), None)
    if missing is not None:
        present = next(v for v in VIEWS if v in prepared)
        warnings.append(f"no {missing} view: predicted from the {present} view alone (the missing view is "
                        "handled as in training and evaluation)")
    x, present_mask = breast_input(prepared)
    res = predictor.result(predictor.breast_probabilities(x, present_mask, tta=tta)[0], warnings)
    shown = {v: (names or {}).get(v) or str(f) for v, f in given.items()}
    res.update(views="+".join(v.lower() for v in VIEWS if v in prepared), missing_view=missing,
               cc=shown.get("CC"), mlo=shown.get("MLO"))
    if heatmap is not None:
        label = " + ".join(Path(str(shown[v])).name for v in VIEWS if v in shown)
        res["heatmap"] = heatmap(prepared, x, present_mask, {**res, "name": label})
    return res
