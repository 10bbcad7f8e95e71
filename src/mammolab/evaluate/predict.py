"""``mammolab predict``: files through the run's (or exported model's) one :class:`Predictor`.

The inference core lives in :mod:`mammolab.infer` (recipe application, backends, probabilities,
TTA, the decision at the recipe's threshold); this module is the command's function, writing the
heatmaps of :mod:`mammolab.explain.predicted` beside the results. ``Predictor`` and
``resolve_threshold`` are re-exported here for code written against the earlier layout.

The explain layer (torch, pytorch-grad-cam) is imported only when heatmaps are asked for: an
exported ONNX model is predicted by the light runtime install, without torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mammolab.errors import MammoLabError
from mammolab.infer.predictor import EXPORT_FILES, EXPORT_MARKER, Predictor, read_source, run_recipe
from mammolab.infer.threshold import resolve_threshold
from mammolab.infer.views import refuse_two_view

__all__ = ["EXPORT_FILES", "EXPORT_MARKER", "Predictor", "predict_files", "read_source", "resolve_threshold",
           "run_recipe"]

def predict_files(run_dir: str | Path, files: Sequence[str | Path], *, heatmap_dir: str | Path | None = None,
                  method: str = "gradcam", threshold: float | str | None = None, checkpoint: str = "best",
                  batch_size: int = 16, tta: bool = False,
                  box: tuple[int, int, int, int] | None = None) -> list[dict[str, Any]]:
    """What ``mammolab predict`` does: one result per file, in order (see :meth:`Predictor.predict_files`);
    with ``heatmap_dir`` each overlay is written there and its path is the result's ``heatmap``.

    ``threshold``: a number, ``youden`` or ``None``/``recipe`` (the run's recorded operating point).
    """
    if isinstance(files, str | os.PathLike):  # one file: a string is not a sequence of one-character names
        files = [files]
    if not files:
        raise MammoLabError("predict: give at least one image file")
    predictor = Predictor.load(run_dir, checkpoint=checkpoint)
    # a two-view run or exported breast model (train/views.py, evaluate/breast.py)
    refuse_two_view(predictor, "predict", "give each breast's files with --file-views",
                    "mammolab predict RUN CC_FILE MLO_FILE --file-views cc+mlo; one view only: --file-views cc FILE")
    predictor = predictor.with_threshold(resolve_threshold(run_dir, threshold))
    if heatmap_dir is not None:  # torch and the CAM library: only for heatmaps (see the module docstring)
        from mammolab.explain.overlay import write_rgb_png
        from mammolab.explain.predicted import heatmapper
    # the heatmap explains the class each result prints, decided at that same threshold
    results = predictor.predict_files(files, box=box, heatmap=heatmapper(predictor, method) if heatmap_dir else None,
                                      tta=tta, batch_size=batch_size)
    if heatmap_dir is not None:
        out = Path(heatmap_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for res in results:
            if "heatmap" not in res:
                continue
            name = Path(res["path"]).stem or "image"
            while name in used:
                name += "_"
            used.add(name)
            res["heatmap"] = str(write_rgb_png(out / f"{name}_{method}.png", res["heatmap"]))
    return results
