"""Cutting lesion patches and converting bit depth: the pixel rules both importers share.

Both ways of organizing (CBIS-DDSM and a generic manifest) cut their ``roi`` patches, crop masks and
write their images through these functions, and a recipe applies the same ones to a raw file at
prediction time (``organize``'s conversion is part of what a run records), so a patch cut here and
one cut for a prediction are the same pixels. Pure array functions: no files, no options objects.
"""

from __future__ import annotations

import cv2
import numpy as np

from mammolab.io.images import to_uint8

__all__ = ["as_depth", "bbox", "crop_mask", "is_binary", "roi_patch"]


def is_binary(arr: np.ndarray) -> bool:
    """True for a mask: not all zero, every pixel 0 or one top value (how a CBIS mask is told from its crop)."""
    top = arr.max()
    return bool(top > 0 and np.count_nonzero((arr != 0) & (arr != top)) == 0)


def bbox(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Pixel box ``x0, y0, x1, y1`` with exclusive right/bottom edges, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)


def as_depth(img: np.ndarray, bit_depth: int) -> np.ndarray:
    """``img`` at the dataset's ``bit_depth``: 8 scales to 0-255 (:func:`to_uint8`), 16 widens 8-bit by 257."""
    if bit_depth == 8:
        return to_uint8(img)
    if img.dtype == np.uint8:
        return img.astype(np.uint16) * 257
    return img


def roi_patch(img: np.ndarray, mask: np.ndarray, box: tuple[float, float, float, float], size: int,
              margin: float, film_height: int | None = None) -> tuple[np.ndarray, np.ndarray,
                                                                  tuple[float, float, float, float]]:
    """A square patch around ``box``, zero-padded, resized to ``size``.

    By default the patch is the box with ``margin`` context per side, so every lesion fills the same
    share of its patch. With ``film_height`` every patch has the scale of the film resized to that
    height instead (side ``size * image height / film_height`` source pixels, centred on the box),
    the scale a whole-image model at that height sees: what patch-to-whole transfer needs.
    """
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    longest = max(x1 - x0, y1 - y0)
    if film_height is None:
        side = int(np.ceil(longest * (1 + 2 * margin)))
    else:
        side = max(int(round(size * img.shape[0] / film_height)), int(np.ceil(longest)))
    side = max(side, 8)
    sx, sy = int(round(cx - side / 2)), int(round(cy - side / 2))
    h, w = img.shape
    pad = [(max(0, -sy), max(0, sy + side - h)), (max(0, -sx), max(0, sx + side - w))]
    src_img = np.pad(img, pad) if any(p for pp in pad for p in pp) else img
    src_mask = np.pad(mask, pad) if any(p for pp in pad for p in pp) else mask
    oy, ox = sy + pad[0][0], sx + pad[1][0]
    patch = src_img[oy:oy + side, ox:ox + side]
    mpatch = src_mask[oy:oy + side, ox:ox + side]
    scale = size / side
    patch = cv2.resize(patch, (size, size), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    mpatch = cv2.resize(mpatch.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST).astype(bool)
    nb = ((x0 - sx) * scale, (y0 - sy) * scale, (x1 - sx) * scale, (y1 - sy) * scale)
    nb = (max(0.0, nb[0]), max(0.0, nb[1]), min(float(size), nb[2]), min(float(size), nb[3]))
    return patch, mpatch, nb


def crop_mask(mask: np.ndarray, crop_shape: tuple[int, int]) -> np.ndarray:
    """The lesion mask in the CBIS crop's pixels, assuming the crop is centred on the lesion box."""
    box = bbox(mask)
    out = np.zeros(crop_shape, dtype=bool)
    if box is None:
        return out
    x0, y0, x1, y1 = (int(v) for v in box)
    ch, cw = crop_shape
    ox = int(round((x0 + x1) / 2 - cw / 2))
    oy = int(round((y0 + y1) / 2 - ch / 2))
    sy0, sx0 = max(0, oy), max(0, ox)
    sy1, sx1 = min(mask.shape[0], oy + ch), min(mask.shape[1], ox + cw)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - oy:sy1 - oy, sx0 - ox:sx1 - ox] = mask[sy0:sy1, sx0:sx1]
    return out
