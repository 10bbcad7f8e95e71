"""Breast-level prediction for two-view (CC + MLO) runs: a breast's files in, one probability out.

A ``--views cc+mlo`` run (:mod:`mammolab.train.views`) scores a *breast*, not an image, so
``mammolab predict`` takes a breast's files in the order ``--file-views`` names them
(``predict RUN CC_FILE MLO_FILE --file-views cc+mlo``; several breasts as consecutive groups). Each file
goes through the run's recipe exactly as a single-view file does (:func:`mammolab.infer.breast.predict_breast`
through the one :class:`~mammolab.infer.predictor.Predictor`, so an
organized image gets the probability ``evaluate`` gave its breast), and a breast with one view
(``--file-views cc`` or ``--file-views mlo``) is handled as training and evaluation handle it: the missing
view is filled with the present one and flagged absent, so attention fusion gives it no weight and
concat fusion sees the present view's features twice. The result says which view was missing.

The same functions run an exported breast model (``mammolab export`` of a two-view run: inputs
``x [N, 2, 1, H, W]`` and ``present [N, 2]``, ``recipe.json`` saying ``views: cc+mlo``) through its
ONNX or TorchScript backend, and ``mammolab serve`` scores uploaded breasts with them. With
``heatmap`` a breast also gets its figure: each view's map of the breast score
(:mod:`mammolab.explain.breast`), CC and MLO side by side; an exported model has no layers to hook,
so occlusion is its only method, as for single images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammolab.errors import MammoLabError
from mammolab.infer import breast as core
from mammolab.infer.predictor import Predictor
from mammolab.infer.threshold import resolve_threshold
from mammolab.infer.views import VIEW_CHOICES, is_two_view, parse_views, refuse_two_view, run_views

__all__ = ["VIEW_CHOICES", "is_two_view", "parse_views", "predict_breast", "predict_breast_files",
           "refuse_two_view", "run_views"]


def predict_breast(predictor: Any, files: dict[str, str | Path | bytes], *, tta: bool = False,
                   names: dict[str, str] | None = None, heatmap: bool = False,
                   method: str = "gradcam") -> dict[str, Any]:
    """:func:`mammolab.infer.breast.predict_breast`; with ``heatmap`` the result's ``heatmap`` is the breast's
    figure (:func:`mammolab.explain.predicted.breast_heatmapper`) of the class the result prints."""
    draw = None
    if heatmap:  # torch and the CAM library: only for heatmaps (an ONNX export is served without torch)
        from mammolab.explain.predicted import breast_heatmapper

        draw = breast_heatmapper(predictor, method)
    return core.predict_breast(predictor, files, tta=tta, names=names, heatmap=draw)


def predict_breast_files(run_dir: str | Path, files: Sequence[str | Path], views: str = "cc+mlo", *,
                         threshold: float | str | None = None, checkpoint: str = "best",
                         tta: bool = False, heatmap_dir: str | Path | None = None,
                         method: str = "gradcam") -> list[dict[str, Any]]:
    """What ``mammolab predict RUN FILES --file-views V`` does: the files, in groups of the views ``V`` names
    (one group per breast), each group one result (see :func:`predict_breast`) with ``path`` (the
    group's files joined by `` + ``); a breast whose file fails is ``{path, cc, mlo, error}``.
    With ``heatmap_dir`` each breast's figure is written there as ``<cc stem>+<mlo stem>_<method>.png``
    and its path is the result's ``heatmap``."""
    if heatmap_dir is not None:  # torch and the CAM library: only for heatmaps
        from mammolab.explain.cam import METHODS
        from mammolab.explain.overlay import write_rgb_png
    if heatmap_dir is not None and method not in METHODS:
        raise MammoLabError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if heatmap_dir is not None:
        Path(heatmap_dir).mkdir(parents=True, exist_ok=True)

    order = parse_views(views)
    if not files:
        raise MammoLabError(f"predict --file-views {views}: give each breast's files in the order "
                            f"{' '.join(v + '_FILE' for v in order)}")
    if len(files) % len(order):
        raise MammoLabError(f"predict --file-views {views}: {len(files)} file(s) do not split into breasts of "
                            f"{len(order)} ({' '.join(v + '_FILE' for v in order)} per breast)")
    if not is_two_view(run_dir):
        raise MammoLabError(f"--file-views: {run_dir} is a single-view model; predict its files without "
                            "--file-views")
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    predictor = predictor.with_threshold(resolve_threshold(run_dir, threshold))
    results: list[dict[str, Any]] = []
    used: set[str] = set()
    for i in range(0, len(files), len(order)):
        group = dict(zip(order, files[i:i + len(order)], strict=True))
        base = {"path": " + ".join(str(f) for f in group.values())}
        try:
            res = {**base, **predict_breast(predictor, group, tta=tta, heatmap=heatmap_dir is not None,
                                            method=method)}
            if heatmap_dir is not None:
                name = "+".join(Path(str(f)).stem for f in group.values()) or "breast"
                while name in used:
                    name += "_"
                used.add(name)
                res["heatmap"] = str(write_rgb_png(Path(heatmap_dir) / f"{name}_{method}.png", res["heatmap"]))
            results.append(res)
        except MammoLabError as exc:
            results.append({**base, "cc": str(group.get("CC")) if "CC" in group else None,
                            "mlo": str(group.get("MLO")) if "MLO" in group else None, "error": str(exc)})
    return results
