"""Predict new files with a trained run: DICOM, PNG, JPEG, TIFF or PGM in, probability and class out.

The run's own validation preprocessing (from its saved config) is applied, so a file gets the
same probability the run gave it during evaluation. A file that cannot be read becomes one
result with an ``error`` and the others are still predicted; a long list is one bad file away
from being useless otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError

__all__ = ["predict_files", "resolve_threshold"]


def resolve_threshold(run_dir: str | Path, threshold: float | str) -> float:
    """A number, or ``youden``: the operating point the run's test evaluation chose on validation."""
    if isinstance(threshold, (int, float)):
        value = float(threshold)
    elif str(threshold).strip().lower() == "youden":
        from mammolab.evaluate.evaluation import eval_dir

        path = eval_dir(run_dir, "test") / "metrics.json"
        if not path.is_file():
            raise MammoLabError(f"--threshold youden: {path} not found (run 'mammolab evaluate {run_dir}' first)")
        metrics = json.loads(path.read_text(encoding="utf-8"))
        try:
            value = float(metrics["operating_points"]["youden"]["threshold"])
        except (KeyError, TypeError):
            raise MammoLabError(f"--threshold youden: {path} has no Youden threshold (4-class run?)") from None
    else:
        try:
            value = float(threshold)
        except ValueError:
            raise MammoLabError(f"--threshold: expected a number in [0, 1] or 'youden', got {threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise MammoLabError(f"--threshold: expected a number in [0, 1], got {value}")
    return value


def predict_files(run_dir: str | Path, files: Sequence[str | Path], *, heatmap_dir: str | Path | None = None,
                  method: str = "gradcam", threshold: float | str = 0.5, checkpoint: str = "best",
                  batch_size: int = 16, tta: bool = False) -> list[dict[str, Any]]:
    """One result per file, in input order: ``path``, ``prob`` (P(malignant)), ``class``, ``probs``
    (per class), ``heatmap`` (overlay path, with ``heatmap_dir``) - or ``path`` and ``error``.

    Binary runs call a file malignant when ``prob >= threshold``; multi-class runs take the most
    probable class.
    """
    from mammolab.io.images import read_image
    from mammolab.train.inference import load_run, positive_probability

    if not files:
        raise MammoLabError("predict: give at least one image file")
    thr = resolve_threshold(run_dir, threshold)
    run = load_run(run_dir, checkpoint=checkpoint)
    results: list[dict[str, Any]] = []
    arrays: list[np.ndarray] = []
    slots: list[int] = []
    for f in files:
        try:
            arrays.append(read_image(f))
            slots.append(len(results))
            results.append({"path": str(f)})
        except MammoLabError as exc:
            results.append({"path": str(f), "error": str(exc)})
    if not arrays:
        return results
    probs = run.predict_arrays(arrays, batch_size=batch_size, tta=tta)
    p_pos = positive_probability(probs, run.classes)
    for k, slot in enumerate(slots):
        res = results[slot]
        res["prob"] = round(float(p_pos[k]), 6)
        if run.binary:
            res["class"] = run.classes[1] if p_pos[k] >= thr else run.classes[0]
            res["probs"] = {run.classes[0]: round(1 - float(p_pos[k]), 6), run.classes[1]: round(float(p_pos[k]), 6)}
            res["threshold"] = thr
        else:
            res["class"] = run.classes[int(np.argmax(probs[k]))]
            res["probs"] = {c: round(float(v), 6) for c, v in zip(run.classes, probs[k], strict=True)}
    if heatmap_dir is not None:
        from mammolab.explain.overlay import overlay_panel, write_rgb_png
        from mammolab.explain.runner import heatmaps_for_arrays

        out = Path(heatmap_dir)
        out.mkdir(parents=True, exist_ok=True)
        _, heats, _ = heatmaps_for_arrays(run, arrays, method, batch_size=batch_size)
        used: set[str] = set()
        for k, slot in enumerate(slots):
            res = results[slot]
            name = Path(res["path"]).stem or "image"
            while name in used:
                name += "_"
            used.add(name)
            caption = f"{Path(res['path']).name}  P(malignant)={res['prob']:.2f}  {res['class']}  [{method}]"
            path = write_rgb_png(out / f"{name}_{method}.png", overlay_panel(arrays[k], heats[k], caption=caption))
            res["heatmap"] = str(path)
    return results
