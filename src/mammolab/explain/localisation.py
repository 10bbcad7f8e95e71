"""Does the heatmap point at the lesion? Energy-in-box share and the pointing game.

Both scores compare a heatmap with the lesion boxes of the manifest (in the saved image's
pixels, after the heatmap is resized to that image):

* **energy in box**: the share of the heatmap's total mass inside any lesion box. A map that
  ignored the image would score the boxes' area fraction, reported beside it as the baseline.
* **pointing game** (Zhang et al. 2016): a hit when the hottest pixel lies inside a box, grown by
  ``tolerance`` pixels (the original protocol used 15 px at full resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["box_mask", "energy_in_boxes", "pointing_hit", "summarise_localisation"]

Box = Sequence[float]


def box_mask(shape: tuple[int, int], boxes: Sequence[Box], grow: float = 0.0) -> np.ndarray:
    """Boolean mask of the pixels inside any box (``[x0, y0, x1, y1]``, x1/y1 exclusive), clipped to the image."""
    h, w = shape
    mask = np.zeros((h, w), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        c0 = int(np.clip(np.floor(x0 - grow), 0, w))
        c1 = int(np.clip(np.ceil(x1 + grow), 0, w))
        r0 = int(np.clip(np.floor(y0 - grow), 0, h))
        r1 = int(np.clip(np.ceil(y1 + grow), 0, h))
        mask[r0:r1, c0:c1] = True
    return mask


def energy_in_boxes(heat: np.ndarray, boxes: Sequence[Box]) -> float | None:
    """Share of the heatmap's mass inside the boxes; ``None`` without a box or for an all-zero map."""
    if not boxes:
        return None
    total = float(heat.sum())
    if total <= 0:
        return None
    return float(heat[box_mask(heat.shape, boxes)].sum() / total)


def pointing_hit(heat: np.ndarray, boxes: Sequence[Box], tolerance: float = 0.0) -> bool | None:
    """True when the heatmap's maximum lies inside a box (grown by ``tolerance`` px); ``None`` without a box."""
    if not boxes or float(heat.max()) <= 0:
        return None
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    return bool(box_mask(heat.shape, boxes, grow=tolerance)[r, c])


def summarise_localisation(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Means over the images that have a box: energy share, its area baseline, pointing-game hit rate."""
    energy = [r["energy_in_box"] for r in records if r.get("energy_in_box") is not None]
    # The baseline is averaged over the same images as the energy share, so the two compare.
    area = [r["box_area_fraction"] for r in records
            if r.get("box_area_fraction") is not None and r.get("energy_in_box") is not None]
    hits = [r["pointing_hit"] for r in records if r.get("pointing_hit") is not None]
    return {
        "n_images": len(records),
        "n_with_box": sum(1 for r in records if r.get("has_box")),
        # Maps with no positive evidence at all (Grad-CAM's ReLU leaves nothing); excluded from the means.
        "n_blank": sum(1 for r in records if r.get("blank")),
        "energy_in_box_mean": float(np.mean(energy)) if energy else None,
        "box_area_fraction_mean": float(np.mean(area)) if area else None,
        "pointing_game_hit_rate": float(np.mean(hits)) if hits else None,
        "pointing_game_n": len(hits),
    }
