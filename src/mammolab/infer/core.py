"""The arithmetic every prediction shares: logits to probabilities, test-time flips, the decision.

Written once, in numpy only, so every caller (the :class:`~mammolab.infer.predictor.Predictor` of a
run or of an exported ONNX model, two-view breasts, heatmaps, evaluation tables) turns the same
logits into the same numbers and the same class, and the ONNX path never needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["as_class_matrix", "class_probabilities", "decide", "output_probabilities", "positive_probability",
           "tta_views"]


def class_probabilities(logits: Any) -> np.ndarray:
    """Class probabilities ``[N, C]`` (float32) of logits ``[N, outputs]``, as training's loss reads them:
    one logit is a sigmoid (``[1 - p, p]``), several are a softmax."""
    z = np.asarray(logits, dtype=np.float32)
    z = z.reshape(z.shape[0], -1) if z.ndim != 2 else z
    if z.shape[1] == 1:
        # 1 / (1 + exp(-z)) without overflow warnings for large |z|
        p = np.where(z[:, 0] >= 0, 1.0 / (1.0 + np.exp(-np.abs(z[:, 0]))),
                     np.exp(-np.abs(z[:, 0])) / (1.0 + np.exp(-np.abs(z[:, 0])))).astype(np.float32)
        return np.stack([1.0 - p, p], axis=1).astype(np.float32)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def output_probabilities(class_probs: np.ndarray, binary: bool) -> np.ndarray:
    """What a prediction reports: P(positive) ``[N]`` for a binary model, ``[N, C]`` otherwise."""
    return class_probs[:, 1] if binary else class_probs


def as_class_matrix(probs: np.ndarray) -> np.ndarray:
    """``[N]`` P(positive) -> ``[N, 2]``; ``[N, C]`` unchanged (heatmap targets need one column per class)."""
    probs = np.asarray(probs)
    return np.stack([1.0 - probs, probs], axis=1) if probs.ndim == 1 else probs


def _flip(x: Any, axis: int) -> Any:
    return x.flip(axis) if hasattr(x, "flip") else np.ascontiguousarray(np.flip(x, axis))


def tta_views(x: Any, tta: bool) -> list[Any]:
    """The batch and, with ``tta``, its horizontal and vertical flips (numpy array or torch tensor);
    the probabilities of these views are averaged."""
    return [x, _flip(x, -1), _flip(x, -2)] if tta else [x]


def positive_probability(probs: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """P(malignant): the probability itself for binary, the sum over ``malignant*`` classes otherwise."""
    probs = np.asarray(probs)
    if probs.ndim == 1:
        return probs
    malignant = [i for i, c in enumerate(classes) if str(c).startswith("malignant")]
    return probs[:, malignant].sum(1) if malignant else probs.max(1)


def decide(probs: np.ndarray, threshold: float) -> np.ndarray:
    """The class index per prediction: binary (``[N]`` P(positive), or ``[N, 2]``) at ``threshold``, the
    argmax otherwise. The one place a probability becomes a class, so every output agrees."""
    probs = np.asarray(probs)
    if probs.ndim == 2 and probs.shape[1] == 2:
        probs = probs[:, 1]
    if probs.ndim == 1:
        return (probs >= threshold).astype(np.int64)
    return probs.argmax(axis=1).astype(np.int64)
