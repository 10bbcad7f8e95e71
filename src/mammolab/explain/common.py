"""What single-image and two-view explain share: heatmaps of a Predictor's images, the class each one
explains, maps back onto image pixels, lesion boxes of a manifest row, output names and the output key."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd

from mammolab.data.manifest import BBOX_COLUMNS, parse_boxes
from mammolab.errors import MammoLabError
from mammolab.explain.cam import compute_heatmaps, torch_model
from mammolab.infer.core import as_class_matrix, decide
from mammolab.infer.runfiles import checkpoint_stamp
from mammolab.train.imagecache import pad_placement

__all__ = ["heatmaps_for_arrays", "output_key", "resolve_targets", "row_boxes", "safe_name", "to_image_space"]


def to_image_space(heat: np.ndarray, shape: tuple[int, int], size: int | tuple[int, int] | None = None,
                   mode: str = "stretch") -> np.ndarray:
    """Map a heatmap at the model's input (``size``: an int square or ``(height, width)``; by default the
    heatmap's own shape) back onto the original image's pixels.

    Inverts the training resize (``mammolab.train.imagecache.resize_image``): ``stretch`` is a
    plain resize; ``pad`` first cuts away the black bars the image was centred between.
    """
    h, w = shape
    if size is None:
        size = (int(heat.shape[0]), int(heat.shape[1]))
    if mode == "pad":
        y0, x0, th, tw = pad_placement((h, w), size)
        heat = heat[y0:y0 + th, x0:x0 + tw]
    elif mode != "stretch":
        raise MammoLabError(f"resize: expected 'stretch' or 'pad', got {mode!r}")
    out = cv2.resize(np.ascontiguousarray(heat, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.clip(out, 0.0, 1.0)


def resolve_targets(spec: str, classes: Sequence[str], probs: np.ndarray,
                    labels: Sequence[str] | None = None, threshold: float = 0.5) -> list[int]:
    """Class index to explain per image: ``predicted``, ``true`` (the manifest label) or a class name.

    ``predicted`` is the class decided at ``threshold`` (binary runs: the recipe's threshold, so a
    heatmap explains the class that is printed beside it). ``true`` falls back to the predicted class
    for an image without a label (a file from outside the dataset), so a mixed list of files still gets
    one heatmap each.
    """
    predicted = decide(probs, threshold).tolist()
    if spec == "predicted":
        return predicted
    if spec == "true":
        labels = list(labels) if labels is not None else [""] * len(predicted)
        bad = sorted({lab for lab in labels if lab and lab not in classes})
        if bad:
            raise MammoLabError(f"--target true: label(s) {', '.join(bad)} are not classes of the run "
                                f"({', '.join(classes)}); use --target predicted or a class name")
        return [classes.index(lab) if lab else p for lab, p in zip(labels, predicted, strict=True)]
    if spec in classes:
        return [list(classes).index(spec)] * len(predicted)
    raise MammoLabError(f"--target: expected predicted, true or a class of the run ({', '.join(classes)}), "
                        f"got {spec!r}")


def heatmaps_for_arrays(predictor: Any, arrays: Sequence[np.ndarray], method: str = "gradcam", *, grid: int = 8,
                        batch_size: int = 16, target: str = "predicted", labels: Sequence[str] | None = None,
                        layer: str | None = None, threshold: float | None = None,
                        inputs: Sequence[np.ndarray] | None = None,
                        tta: bool = False) -> tuple[np.ndarray, list[np.ndarray], list[int]]:
    """Class probabilities ``(N, C)``, one heatmap per image in that image's own pixels, and the class explained.

    ``predictor`` is a :class:`~mammolab.infer.predictor.Predictor`: its probabilities are the ones
    ``predict`` prints. ``arrays`` are preprocessed images (the run's dataset images, or a file through
    the recipe); ``inputs`` their model inputs when already made. ``target`` is ``predicted`` (decided at
    ``threshold``, by default the recipe's), ``true`` (with ``labels``) or a class name; see
    :func:`resolve_targets`. ``tta`` decides the class from the image and its flips (the class
    ``predict --tta`` prints); the heatmap itself is of the unflipped image.
    """
    import torch

    model = torch_model(predictor, method)
    threshold = predictor.threshold if threshold is None else threshold
    device = predictor.device or "cpu"
    mode = predictor.recipe.transform.resize
    probs_all, heats, explained = [], [], []
    for i in range(0, len(arrays), batch_size):
        chunk = arrays[i:i + batch_size]
        x_np = np.stack(list(inputs[i:i + batch_size]) if inputs is not None
                        else [predictor.model_input(a) for a in chunk])
        probs = as_class_matrix(predictor.probabilities(list(x_np), tta=tta, batch_size=batch_size))
        targets = resolve_targets(target, predictor.classes, probs,
                                  None if labels is None else labels[i:i + batch_size], threshold)
        x = torch.from_numpy(x_np).to(device)
        maps = compute_heatmaps(model, x, method, targets, grid=grid, batch_size=batch_size, layer=layer)
        size = (int(x.shape[-2]), int(x.shape[-1]))
        heats += [to_image_space(m, a.shape, size, mode) for m, a in zip(maps, chunk, strict=True)]
        probs_all.append(probs)
        explained += targets
    return (np.concatenate(probs_all) if probs_all else np.zeros((0, 2))), heats, explained


def row_boxes(row: pd.Series) -> list[list[float]]:
    boxes = parse_boxes(row.get("boxes")) if "boxes" in row else []
    if not boxes and all(c in row for c in BBOX_COLUMNS):
        vals = [row[c] for c in BBOX_COLUMNS]
        if all(v is not None and not pd.isna(v) for v in vals):
            boxes = [[float(v) for v in vals]]
    return boxes


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "image"


def output_key(run: Any, entries: list[dict[str, Any]], method: str, split: str, grid: int, target: str,
         layer: str | None, tta: bool = False) -> dict[str, Any]:
    files = hashlib.sha256("\n".join(str(e["file"]) for e in entries).encode()).hexdigest()[:16]
    return {"checkpoint": checkpoint_stamp(run.run_dir, Path(run.checkpoint).stem), "method": method,
            "split": split, "grid": grid if method == "occlusion" else None, "images": files, "target": target,
            "layer": None if method == "occlusion" else layer,
            "threshold": round(run.threshold, 6) if len(run.classes) == 2 else None,
            **({"tta": True} if tta else {})}  # without --tta the key is as before: older outputs stay current
