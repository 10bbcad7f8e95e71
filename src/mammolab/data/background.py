"""Background (normal-tissue) patches for patch classifiers: ``organize --kind roi --roi-background N``.

Shen et al.'s patch classifier, whose backbone starts a whole-image model, is trained on lesion patches
*and* on patches of normal tissue at the same fixed scale: without them a patch model never learns "no
lesion here", and its features do not transfer to whole films. This module decides where those patches
go on one film (inside the breast, away from every lesion of that film) and cuts them; organize writes
them as the class ``normal``.

Placement is a pure function of the film's pixels, its lesion boxes, the config seed and the film's id,
so every re-run and any number of workers give the same patches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import cv2
import numpy as np

from mammolab.io.images import to_uint8

#: The class name of background patches; it comes first in the class order (target 0).
NORMAL = "normal"
#: Share of a window that must be breast tissue.
MIN_TISSUE = 0.6
#: Random windows tried per film before giving up on the rest.
MAX_TRIES = 200
#: Lesion boxes are grown by this share of the patch side (at least 4 px) before the overlap test.
BOX_MARGIN = 0.1

Box = tuple[float, float, float, float]


def background_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The class order of a dataset with background patches: ``normal`` first, then the lesion classes."""
    return (NORMAL, *[c for c in classes if c != NORMAL])


def patch_side(film_rows: int, roi_size: int, film_height: int) -> int:
    """Source pixels per side of a fixed-scale patch: what ``roi_size`` px are on the film at ``film_height``."""
    return max(int(round(roi_size * film_rows / film_height)), 8)


def breast_mask(img: np.ndarray) -> np.ndarray:
    """Breast tissue of a film: above Otsu's threshold, the largest connected region only.

    Taking the largest region drops burnt-in labels and markers, which are bright but small and apart
    from the breast. Computed on an 8-bit copy at most 512 px tall (then resized back), which is
    plenty for a 60%-of-a-window test.
    """
    h, w = img.shape
    scale = min(1.0, 512 / max(h, 1))
    small = to_uint8(img)
    if scale < 1.0:
        small = cv2.resize(small, (max(1, int(round(w * scale))), max(1, int(round(h * scale)))),
                           interpolation=cv2.INTER_AREA)
    if int(small.max()) == int(small.min()):
        return np.zeros((h, w), dtype=bool)
    _, fg = cv2.threshold(small, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n > 1:
        largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        fg = (lab == largest).astype(np.uint8)
    if scale < 1.0:
        fg = cv2.resize(fg, (w, h), interpolation=cv2.INTER_NEAREST)
    return fg.astype(bool)


def _seed(seed: int, film_id: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{film_id}".encode()).digest()[:8], "little")


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_background(img: np.ndarray, lesion_boxes: Sequence[Box], count: int, side: int, seed: int,
                     film_id: str) -> list[tuple[int, int]]:
    """Top-left corners of up to ``count`` windows of ``side`` px holding normal tissue.

    A window is kept when at least :data:`MIN_TISSUE` of it is breast, it overlaps no lesion box grown
    by :data:`BOX_MARGIN` of the side, and at most half of it is covered by a window already kept
    (background patches of one film should not repeat each other). At most :data:`MAX_TRIES` windows
    are drawn, so a film whose breast has no room gets fewer patches.
    """
    h, w = img.shape
    if count <= 0 or side > h or side > w:
        return []
    tissue = breast_mask(img)
    integral = cv2.integral(tissue.astype(np.uint8))  # (h+1, w+1) sums
    grow = max(4.0, BOX_MARGIN * side)
    grown = [(b[0] - grow, b[1] - grow, b[2] + grow, b[3] + grow) for b in lesion_boxes]
    rng = np.random.default_rng(_seed(seed, film_id))
    need = MIN_TISSUE * side * side
    kept: list[tuple[int, int]] = []
    for _ in range(MAX_TRIES):
        if len(kept) >= count:
            break
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        win = (float(x), float(y), float(x + side), float(y + side))
        if any(_overlaps(win, g) for g in grown):
            continue
        area = int(integral[y + side, x + side]) - int(integral[y, x + side]) - int(integral[y + side, x]) \
            + int(integral[y, x])
        if area < need:
            continue
        shared = max((max(0, side - abs(x - kx)) * max(0, side - abs(y - ky)) for kx, ky in kept), default=0)
        if shared > side * side / 2:
            continue
        kept.append((x, y))
    return kept


def cut_background(img: np.ndarray, corner: tuple[int, int], side: int, size: int) -> np.ndarray:
    """The window at ``corner`` resized to ``size`` (area interpolation when shrinking, as lesion patches)."""
    x, y = corner
    patch = img[y:y + side, x:x + side]
    interp = cv2.INTER_AREA if size < side else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interp)


__all__ = ["NORMAL", "MIN_TISSUE", "MAX_TRIES", "background_classes", "breast_mask", "cut_background",
           "patch_side", "place_background"]
