"""Preprocessing steps: small, pure callables on a :class:`Sample` (image + lesion mask + lesion boxes).

Every step is a pydantic model whose fields are its parameters (so a config is validated by the
same class that runs it) and whose ``__call__`` maps a :class:`Sample` to a new one without touching
the input arrays. Steps that move pixels (crop, flip, resize, rotate) move the lesion mask and the
lesion boxes with them, so the manifest's boxes stay right after preprocessing.

The analysis parts (finding the film edge, the breast) run on a small thumbnail made with an integer
``INTER_AREA`` reduction: full-size mammograms are 15 million pixels, and a 512-pixel thumbnail finds
the same borders and the same breast at a fraction of the cost. Only the final, cheap operations
(slicing, one mask multiply, one resize) touch the full image.

Functional forms (``crop_border(image, mask, boxes, **params)`` ...) wrap the classes for notebook use.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import cv2
import numpy as np
from pydantic import Field, field_validator

from mammolab.config import StrictModel
from mammolab.errors import MammoLabError

__all__ = [
    "OPS",
    "Clahe",
    "CropBorder",
    "Denoise",
    "Op",
    "Orient",
    "RemoveAnnotations",
    "Resize",
    "Sample",
    "artifact_mask",
    "breast_mask",
    "chest_wall_slivers",
    "clahe",
    "crop_border",
    "denoise",
    "find_border",
    "flip",
    "orient",
    "remove_annotations",
    "resize",
    "rotate",
    "segmentation_check",
    "segmentation_residue",
    "straight_edge_mask",
    "thumbnail",
]

THUMB_SIDE = 512
#: The fewest pixels on a side that the analysing steps (``crop_border`` in auto mode,
#: ``remove_annotations``, ``clahe``) accept: a film edge, a breast or a contrast tile cannot be told
#: apart on fewer. Such images (a 1-pixel line, a mis-read file) are refused with one line instead.
MIN_SIDE = 8


# ------------------------------------------------------------------------------------------- sample

def _as_boxes(boxes: Any) -> np.ndarray:
    if boxes is None:
        return np.zeros((0, 4), dtype=np.float64)
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 4), dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise MammoLabError(f"lesion boxes: expected a list of [x0, y0, x1, y1], got shape {arr.shape}")
    return arr


@dataclass
class Sample:
    """One image with what must move with it.

    ``image`` is 2-D ``uint8`` or ``uint16``; ``mask`` is the lesion mask (``uint8`` 0/255, same shape)
    or ``None``; ``boxes`` is an ``(N, 4)`` float array of lesion boxes ``x0, y0, x1, y1`` in this
    image's pixels with exclusive right/bottom edges (the manifest's convention); ``meta`` collects
    what steps decided (crop window, flip) for reports.
    """

    image: np.ndarray
    mask: np.ndarray | None = None
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    meta: dict[str, Any] = field(default_factory=dict)
    #: ``(thumb, k)`` of :func:`thumbnail` for this image, computed once by :func:`sample_thumbnail`
    #: and carried through crops that keep its grid, so the border and the breast are found on one
    #: reduction of the full image instead of two. Steps never modify arrays in place, so it stays valid.
    _thumb: tuple[np.ndarray, int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        img = self.image
        if not isinstance(img, np.ndarray) or img.ndim != 2:
            shape = getattr(img, "shape", None)
            raise MammoLabError(f"expected a 2-D grayscale image, got {type(img).__name__} of shape {shape}")
        if img.dtype not in (np.uint8, np.uint16):
            raise MammoLabError(f"expected a uint8 or uint16 image, got {img.dtype}")
        if self.mask is not None:
            m = self.mask
            if m.shape != img.shape:
                raise MammoLabError(f"lesion mask shape {m.shape} differs from the image shape {img.shape}")
            if m.dtype != np.uint8:  # uint8 masks are taken as 0/255 (checking costs a full pass per step)
                self.mask = np.where(m > 0, np.uint8(255), np.uint8(0))
        self.boxes = _as_boxes(self.boxes)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    def replace(self, image: np.ndarray, mask: np.ndarray | None = ..., boxes: np.ndarray | None = None,
                **meta: Any) -> Sample:
        """A new sample with ``image`` (and mask/boxes when given); ``meta`` is copied and updated."""
        out = Sample(image, self.mask if mask is ... else mask, self.boxes if boxes is None else boxes,
                     {**self.meta, **meta})
        if image is self.image:
            out._thumb = self._thumb
        return out


def require_min_side(img: np.ndarray, what: str, min_side: int = MIN_SIDE) -> None:
    """Refuse an image too thin for ``what`` with one line that names its size (width x height)."""
    h, w = img.shape[:2]
    if min(h, w) < min_side:
        raise MammoLabError(f"image is {w}x{h} pixels (width x height); {what} expects at least "
                            f"{min_side} pixels on each side")


def _full_scale(img: np.ndarray) -> int:
    return 255 if img.dtype == np.uint8 else 65535


def _clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip boxes to the image and drop those left with no area (cropped or rotated away)."""
    if len(boxes) == 0:
        return boxes
    out = boxes.copy()
    out[:, [0, 2]] = np.clip(out[:, [0, 2]], 0, width)
    out[:, [1, 3]] = np.clip(out[:, [1, 3]], 0, height)
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out[keep]


# ------------------------------------------------------------------------------- geometric primitives

def _crop(s: Sample, x0: int, y0: int, x1: int, y1: int) -> Sample:
    """Crop to ``[x0, x1) x [y0, y1)``; a view, no copy (later steps copy when they need to)."""
    boxes = s.boxes - np.array([x0, y0, x0, y0], dtype=np.float64) if len(s.boxes) else s.boxes
    mask = None if s.mask is None else s.mask[y0:y1, x0:x1]
    out = Sample(s.image[y0:y1, x0:x1], mask, _clip_boxes(boxes, x1 - x0, y1 - y0), dict(s.meta))
    out._thumb = _crop_thumb(s._thumb, x0, y0, x1 - x0, y1 - y0)
    return out


def _crop_thumb(cached: tuple[np.ndarray, int] | None, x0: int, y0: int, w: int, h: int,
                ) -> tuple[np.ndarray, int] | None:
    """The thumbnail of a crop, cut from the parent's when it is exactly that: same factor ``k`` and a
    crop origin on the parent's ``k``-grid, so every ``k x k`` block of the crop is a parent block
    (the integer ``INTER_AREA`` reduction averages each block on its own). ``None`` otherwise."""
    if cached is None:
        return None
    thumb, k = cached
    if k < 2 or x0 % k or y0 % k or max(1, min(math.ceil(max(h, w) / THUMB_SIDE), h, w)) != k or h < k or w < k:
        return None
    ty, tx = y0 // k, x0 // k
    return np.ascontiguousarray(thumb[ty:ty + h // k, tx:tx + w // k]), k


def flip(s: Sample, horizontal: bool = True) -> Sample:
    """Mirror left-right (``horizontal``) or top-bottom; boxes and mask follow."""
    code = 1 if horizontal else 0
    # OpenCV reads a cropped view (rows with a stride) as it is: no contiguous copy first.
    img = cv2.flip(s.image, code)
    mask = None if s.mask is None else cv2.flip(s.mask, code)
    boxes = s.boxes.copy()
    if len(boxes):
        if horizontal:
            boxes[:, [0, 2]] = s.width - s.boxes[:, [2, 0]]
        else:
            boxes[:, [1, 3]] = s.height - s.boxes[:, [3, 1]]
    key = "hflip" if horizontal else "vflip"
    return Sample(img, mask, boxes, {**s.meta, key: not s.meta.get(key, False)})


def rotate(s: Sample, angle: float) -> Sample:
    """Rotate by ``angle`` degrees (counter-clockwise) about the centre on the same canvas, black fill.

    Each box becomes the box of its rotated corners; when a lesion mask exists the box is then
    tightened to the rotated mask inside it, so boxes do not grow with every rotation.
    """
    h, w = s.image.shape
    mat = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    img = cv2.warpAffine(np.ascontiguousarray(s.image), mat, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    mask = None
    if s.mask is not None:
        mask = cv2.warpAffine(np.ascontiguousarray(s.mask), mat, (w, h), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    boxes = []
    for x0, y0, x1, y1 in s.boxes:
        # Pixel edges -> centres (-0.5) for the rotation, back to edges (+0.5) after.
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]], dtype=np.float64) - 0.5
        rc = corners @ mat[:, :2].T + mat[:, 2] + 0.5
        box = [rc[:, 0].min(), rc[:, 1].min(), rc[:, 0].max(), rc[:, 1].max()]
        if mask is not None:
            bx0, by0 = max(0, int(math.floor(box[0]))), max(0, int(math.floor(box[1])))
            bx1, by1 = min(w, int(math.ceil(box[2]))), min(h, int(math.ceil(box[3])))
            if bx1 > bx0 and by1 > by0:
                ys, xs = np.nonzero(mask[by0:by1, bx0:bx1])
                if len(xs):
                    box = [bx0 + xs.min(), by0 + ys.min(), bx0 + xs.max() + 1, by0 + ys.max() + 1]
        boxes.append(box)
    out = _clip_boxes(_as_boxes(boxes), w, h)
    return Sample(img, mask, out, {**s.meta, "rotation": s.meta.get("rotation", 0.0) + float(angle)})


# ---------------------------------------------------------------------------------------- analysis

def thumbnail(img: np.ndarray, side: int = THUMB_SIDE) -> tuple[np.ndarray, int]:
    """An ``INTER_AREA`` reduction by an integer factor ``k`` so the long side is at most ``side``.

    Returns ``(thumb, k)``: thumb pixel ``(x, y)`` covers image pixels ``[k*x, k*x+k)``. The image is
    first trimmed to a multiple of ``k`` (a view) so OpenCV takes its fast integer-area path.
    """
    h, w = img.shape
    # Never more than the short side: a thin strip must keep at least one thumbnail row/column that
    # really covers k image rows/columns (the crop and mask arithmetic relies on it).
    k = max(1, min(math.ceil(max(h, w) / side), h, w))
    if k == 1:
        return np.ascontiguousarray(img), 1
    th, tw = max(1, h // k), max(1, w // k)
    trimmed = img[: th * k, : tw * k]
    return cv2.resize(trimmed, (tw, th), interpolation=cv2.INTER_AREA), k


def sample_thumbnail(sample: Sample) -> tuple[np.ndarray, int]:
    """:func:`thumbnail` of the sample's image, computed once per image and kept on the sample."""
    if sample._thumb is None:
        sample._thumb = thumbnail(sample.image)
    return sample._thumb


def find_border(img: np.ndarray, *, max_fraction: float = 0.1, bright_level: float = 0.95,
                edge_fraction: float = 0.5, flat_std: float = 0.01, max_edge_slope: float = 0.2,
                max_edge_residual: float = 1.5, thumb: tuple[np.ndarray, int] | None = None,
                ) -> tuple[int, int, int, int]:
    """Find the film edge and scanner border; return the crop window ``(x0, y0, x1, y1)`` in image pixels.

    From each side inwards (at most ``max_fraction`` of the image), a line (row or column of the
    thumbnail) is border when it is *flat* (standard deviation below ``flat_std`` of full scale: a
    scanner border or an empty margin) or part of a *film edge*. A film edge is judged by its own
    brightness, not by the image's maximum (dense tissue or a pectoral muscle can be as bright, and
    a label brighter): it is a uniform bright band along the side with a straight inner boundary.

    * A line starts one when it is as bright as unexposed film (its 90th percentile at least
      ``bright_level`` of the 95th percentile of the film above Otsu's level: labels are too small to
      set that, a grey first scan line is below it) and uniform at that level: at least
      ``edge_fraction`` of its on-film length is within ``bright_level`` of it (tissue varies by far
      more along a line than film).
    * The band goes on over the lines that still hold 2% of pixels at its level (edges are often
      slanted or cover only part of the side), and its inner boundary is followed up to half the
      image. When that boundary is straight (a line fit within ``atan(max_edge_slope)`` of the side,
      median residual at most ``max_edge_residual`` thumbnail pixels) and the band is narrow (under
      5% of the positions reach half the image), the band goes with one more line for the pixels
      partly bright at its boundary.
    * Otherwise the bright region runs away from the side (a saturated pectoral muscle in the
      chest-wall corner, a dense breast against the film edge): it is tissue and stays; only the
      lines at the band's level along 90% of the length (no tissue is that uniform) are cut.

    ``thumb`` is ``thumbnail(img)`` when the caller already has it.
    """
    small, k = thumbnail(img) if thumb is None else thumb
    t = small.astype(np.float32) / _full_scale(img)
    th, tw = t.shape
    hi = float(t.max())
    if hi <= 0:
        return 0, 0, img.shape[1], img.shape[0]
    # One 256-bin histogram of the thumbnail, stretched by its maximum as _to_u8 does (OpenCV's
    # calcHist: a tenth of the cost of stretching the thumbnail and thresholding it).
    top_value = int(small.max())
    hist = cv2.calcHist([small], [0], None, [256], [0, top_value + 1]).ravel()
    otsu = _otsu_of_hist(hist)
    # Unexposed film is the brightest part of a film: an edge is at least ``bright_level`` of the
    # 95th percentile of the film above Otsu (labels are too small to set it; a grey first scan line
    # is below it).
    above = hist[otsu + 1:]
    p95 = otsu + 1 + int(np.searchsorted(np.cumsum(above), 0.95 * above.sum())) if above.sum() else 255
    bright_film = bright_level * (p95 + 0.5) / 256.0 * hi

    # The positions along each side that lie on the film (not the flat dark matrix around it).
    col_std, row_std = t.std(axis=0), t.std(axis=1)
    on_film_rows = (row_std >= flat_std) | (t.mean(axis=1) > 0.16)
    on_film_cols = (col_std >= flat_std) | (t.mean(axis=0) > 0.16)

    def depth(lines: np.ndarray, std: np.ndarray, along: np.ndarray) -> int:
        """``lines[i]``: the i-th line from this side (its pixels along the side); ``along``: which of
        those positions are on the film."""
        limit = int(len(lines) * max_fraction)
        pos = along if int(along.sum()) >= 4 else np.ones(lines.shape[1], bool)
        d = start = 0
        level: float | None = None
        full = True  # still on lines at the band's level along (nearly) the whole length
        full_end = 0
        head = lines[:limit][:, pos]
        tops = np.percentile(head, 90, axis=1) if limit else np.zeros(0)  # one call, not one per line
        for i in range(limit):
            line = head[i]
            if level is None:
                top = float(tops[i])
                share = float((line >= bright_level * top).mean())
                if top >= bright_film and share >= edge_fraction:
                    level, start, d = top, i, i + 1  # the first line of a film edge
                    full = share >= 0.9
                    full_end = d if full else i
                    continue
                if std[i] < flat_std:
                    d = i + 1  # scanner border, empty margin
                    continue
                break
            share = float((line >= bright_level * level).mean())
            if share < 0.02:
                break
            d = i + 1
            full = full and share >= 0.9
            full_end = d if full else full_end
        if level is None:
            return d
        if d == full_end:  # a uniform band along the whole side, nothing partly at its level after it
            return min(limit, d + 1)
        # The inner boundary of what lies at the band's level beyond its full-length lines, followed
        # past the cut limit (up to half the image) so that a pectoral muscle shows its whole
        # slanted outline, not just where it ends within the limit.
        band = lines[start:max(d, len(lines) // 2)][:, pos] >= bright_level * level
        run = np.where(band.all(axis=0), band.shape[0], np.argmin(band, axis=0)).astype(np.float64)
        inner = np.nonzero((run > full_end - start) & (run < band.shape[0]))[0]
        if len(inner) >= 4 and (run >= band.shape[0]).mean() < 0.05:  # an edge is narrow, tissue is not
            x = inner.astype(np.float64)
            fit = np.polyfit(x, run[inner], 1)
            residual = float(np.median(np.abs(run[inner] - np.polyval(fit, x))))
            if abs(fit[0]) <= max_edge_slope and residual <= max_edge_residual:
                return min(limit, d + 1)
        return full_end

    left = depth(t.T, col_std, on_film_rows)
    right = depth(t.T[::-1], col_std[::-1], on_film_rows)
    top = depth(t, row_std, on_film_cols)
    bottom = depth(t[::-1], row_std[::-1], on_film_cols)
    h, w = img.shape
    x0, y0 = left * k, top * k
    # The thumbnail drops the last (size mod k) pixels; a border found there covers them too.
    x1 = w - right * k - (w - tw * k if right else 0)
    y1 = h - bottom * k - (h - th * k if bottom else 0)
    if x1 - x0 < w // 2 or y1 - y0 < h // 2:  # never crop most of the image away on a bad guess
        return 0, 0, w, h
    return x0, y0, x1, y1


def _otsu_of_hist(hist: np.ndarray) -> int:
    """Otsu's threshold (the bin index) of a 256-bin histogram: the split with the largest
    between-class variance, as ``cv2.THRESH_OTSU`` computes it on an image."""
    total = float(hist.sum())
    if total <= 0:
        return 0
    bins = np.arange(len(hist), dtype=np.float64)
    w0 = np.cumsum(hist) / total
    m0 = np.cumsum(hist * bins) / total
    mean = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean * w0 - m0) ** 2 / (w0 * (1.0 - w0))
    between[~np.isfinite(between)] = 0.0
    return int(np.argmax(between))


def breast_mask(img: np.ndarray, *, kernel: float = 0.02, grow: float = 0.3, fill_holes: bool = True,
                rim: float = 0.1, thumb: tuple[np.ndarray, int] | None = None) -> tuple[np.ndarray, int]:
    """The breast as a thumbnail mask (``uint8`` 0/255) and the thumbnail factor ``k``.

    1. Otsu's threshold separates tissue from background (the film base, often well above black).
    2. Burnt-in labels, markers and film-edge pieces are found first (:func:`artifact_mask`: bright,
       with a sharp edge to the background on a good part of their outline, small) and taken out, so a
       label that touches the breast or the pectoral muscle cannot ride along with it.
    3. A closing then an opening (elliptic kernel, ``kernel`` times the thumbnail's long side) joins
       the breast and cuts thin bridges to what is left; the largest connected component is the breast.
    4. Otsu alone misses the faint fatty rim near the skin line, so the breast then grows into the
       connected pixels above the background level plus ``grow`` times the way from it to the Otsu
       level (``grow=1`` keeps plain Otsu), but only within ``rim`` times the long side of it and never
       into an artifact: film fog cannot carry it to a label across the film.
    5. Holes (dark fat, lesion cores, a dense island ringed by fat) are filled.
    6. Film-edge slivers at the chest wall that stayed joined to the breast go
       (:func:`chest_wall_slivers`).

    ``thumb`` is ``thumbnail(img)`` when the caller already has it.
    """
    t, k = thumbnail(img) if thumb is None else thumb
    t8 = _to_u8(t)
    if int(t8.max()) == 0:
        raise MammoLabError("image is all black: no breast to keep")
    level, binary = cv2.threshold(t8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    bg = _median_below(t8, level)
    art = artifact_mask(t8, level=level, background=bg) | straight_edge_mask(t8)
    is_art = art > 0
    side = max(t8.shape)
    ks = max(3, int(round(kernel * side)) | 1)
    ker = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ks, ks))
    binary[is_art] = 0
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, ker)
    binary[is_art] = 0  # the closing must not bridge over a removed label
    binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, ker)
    n, labels = cv2.connectedComponents(binary, connectivity=8)
    if n <= 1:  # the opening removed everything (tiny or nearly empty image): fall back to the threshold
        binary = ((t8 > level) & ~is_art).astype(np.uint8) * 255
        n, labels = cv2.connectedComponents(binary, connectivity=8)
        if n <= 1:
            raise MammoLabError("no breast found (the image has no region above the Otsu threshold)")
    seed = labels == 1 + int(np.argmax(np.bincount(labels.ravel(), minlength=n)[1:]))
    if grow < 1.0:
        # Within rim * side of the seed: a square neighbourhood (OpenCV dilates by a rectangle in
        # constant time per pixel; a disc this size is 50x slower, a distance transform 5x).
        rs = 2 * int(round(rim * side)) + 1
        rect = cv2.getStructuringElement(cv2.MORPH_RECT, (rs, rs))
        near = cv2.dilate(seed.astype(np.uint8), rect)
        faint = t8 > bg + grow * max(0.0, level - bg)
        # Beyond that, faint tissue (below Otsu: the fat of a dense breast, the axilla) still counts,
        # unless something bright that is not the breast (a label the artifact test let pass, text)
        # is within the same distance: film fog around it must not carry the breast there.
        hi = level + 0.5 * (255.0 - level)
        stray = ((t8 >= hi) & (near == 0)).astype(np.uint8)
        far_ok = (t8 <= level) & (cv2.dilate(stray, rect) == 0) if stray.any() else (t8 <= level)
        low = (faint & ((near > 0) | far_ok) & ~is_art).astype(np.uint8)
        low = cv2.morphologyEx(low, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))
        low[is_art] = 0
        n_low, low_labels = cv2.connectedComponents(low, connectivity=8)
        touching = np.zeros(n_low, bool)  # a lookup table: 20x faster than np.unique + np.isin here
        touching[low_labels[seed]] = True
        touching[0] = False
        mask = touching[low_labels] | seed
    else:
        mask = seed
    mask = mask.astype(np.uint8) * 255
    if fill_holes:
        mask = _fill_holes(mask)
        mask[is_art] = 0  # a label the breast encloses on three sides is no hole of it
    ax, ay, aw, ah = cv2.boundingRect(art)
    if aw:
        # Slivers of a removed label's edge (its anti-aliased rim, a few pixels wide) go as well:
        # what an opening at that scale drops, near an artifact only (a nipple elsewhere stays).
        # Worked on the artifacts' bounding box (plus the kernel), not the whole thumbnail.
        h, w = mask.shape
        y0, y1 = max(0, ay - ks - 4), min(h, ay + ah + ks + 4)
        x0, x1 = max(0, ax - ks - 4), min(w, ax + aw + ks + 4)
        win = mask[y0:y1, x0:x1]
        zone = cv2.dilate(art[y0:y1, x0:x1], ker)
        opened = cv2.morphologyEx(win, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7)))
        win[(zone > 0) & (opened == 0)] = 0
    sliver = chest_wall_slivers(mask, t8)
    if sliver.any():  # film-edge slivers at the chest wall, and what they alone held to the breast
        mask[sliver > 0] = 0
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n > 2:
            mask = np.where(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])), np.uint8(255), np.uint8(0))
    return mask, k


def _median_below(t8: np.ndarray, level: float) -> float:
    """The median of the pixels at or below ``level`` (the film background), from the histogram."""
    hist = np.bincount(t8.ravel(), minlength=256)[: int(level) + 1]
    total = int(hist.sum())
    if total == 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(hist), (total + 1) // 2))


def dark_level_of(t8: np.ndarray, level: float, background: float) -> float:
    """The grey level (of 255) at or below which a thumbnail pixel counts as film background."""
    return background + 0.25 * max(0.0, level - background)


def _to_u8(t: np.ndarray) -> np.ndarray:
    """A thumbnail stretched to 0-255 by its maximum (8- and 16-bit films get the same thresholds)."""
    top = int(t.max())
    if top == 0:
        return t.astype(np.uint8)
    return (t.astype(np.float32) * (255.0 / top)).astype(np.uint8)


def artifact_mask(t8: np.ndarray, *, level: float, background: float, bright: float = 0.5,
                  sharp: float = 0.3, max_area: float = 0.04, min_area: float = 0.0002) -> np.ndarray:
    """Burnt-in labels, markers and film-edge pieces on an 8-bit thumbnail, as a 0/255 mask.

    What tells them from tissue, which can be as bright: tissue fades into the background over the
    skin line (the fatty rim), while a label, a marker or a piece of film edge is a bright patch
    that drops to the film background within three thumbnail pixels on a good part of its outline.
    A candidate is a connected patch at least ``bright`` of the way from the Otsu ``level`` to white,
    and, separately, a near-white (saturated) patch: a label laid on the pectoral muscle is whiter
    than the muscle, so it is a patch of its own there. It is an artifact when at least ``sharp`` of
    the ring 2-3 pixels around it is at or below :func:`dark_level_of`, and its area is between
    ``min_area`` (calcifications are smaller) and ``max_area`` of the thumbnail (a dense breast or the
    pectoral muscle is larger, and is tissue on most of its outline anyway). The found patches are
    filled (a label's text) and widened by three pixels so their anti-aliased edges go too.
    """
    hi = level + bright * (255.0 - level)
    out = np.zeros_like(t8)
    dark = t8 <= dark_level_of(t8, level, background)
    # The black matrix a digitised film is centred in (whole dark rows/columns) is no evidence: tissue
    # at the chest wall meets it with a sharp edge too (95% dark: a stray mark there does not count).
    matrix = (dark.mean(axis=0) >= 0.95)[None, :] | (dark.mean(axis=1) >= 0.95)[:, None]
    h, w = t8.shape
    ring_ker, small_ker = np.ones((7, 7), np.uint8), np.ones((3, 3), np.uint8)
    near_dark, merged = None, False
    for lo in (hi, 247.0):
        if lo != hi and (not merged or hi >= 237.0):
            break  # near-white patches on their own only where a patch was too large to judge
        bright_px = (t8 >= lo).astype(np.uint8)
        # One pixel off first: a label laid against the pectoral muscle is joined to it only across
        # the thin seam between them, and must be judged on its own outline.
        core = cv2.erode(bright_px, small_ker)
        # Labels without OpenCV's stats (4x slower here): areas by bincount, boxes for the few candidates.
        n, labels = cv2.connectedComponents(core, connectivity=4)
        if n <= 1:
            continue
        areas = np.bincount(labels.ravel(), minlength=n)
        merged = bool((areas[1:] > max_area * h * w).any())
        if near_dark is None:  # within 4 pixels of the background: where a ring can be dark at all
            near_dark = cv2.dilate(dark.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        touches = np.bincount(labels[near_dark], minlength=n) > 0
        touches[0] = False
        touches &= (areas >= min_area * h * w) & (areas <= max_area * h * w)
        for i in np.nonzero(touches)[0]:
            x, y, bw, bh = cv2.boundingRect((labels == i).astype(np.uint8))
            x0, y0, x1, y1 = max(0, x - 5), max(0, y - 5), min(w, x + bw + 5), min(h, y + bh + 5)
            comp = cv2.dilate((labels[y0:y1, x0:x1] == i).astype(np.uint8), small_ker) & bright_px[y0:y1, x0:x1]
            # The ring is 2-3 pixels out from the filled patch: the pixel next to it is a mix of both
            # sides at thumbnail scale, and the dark strokes of a label's text are inside, not around.
            filled = _fill_holes(comp * 255)
            ring = (cv2.dilate(filled, ring_ker) > cv2.dilate(filled, small_ker)) & ~matrix[y0:y1, x0:x1]
            if ring.any() and float(dark[y0:y1, x0:x1][ring].mean()) >= sharp:
                out[y0:y1, x0:x1] |= cv2.dilate(filled, ring_ker)
    return out


def straight_edge_mask(t8: np.ndarray, *, max_fraction: float = 0.1, step: float = 20.0, share: float = 0.3,
                       flat_std: float = 3.0) -> np.ndarray:
    """What lies outside a straight edge along the film's sides: tape, film-edge strips, frames (0/255).

    Anatomy has no straight lines: the skin line is curved, the pectoral muscle's edge slanted. A row
    (or column) where at least ``share`` of the film steps by more than ``step`` grey levels (of 255)
    between its two neighbours is the edge of something put on or around the film, so from the
    innermost such line within ``max_fraction`` of a film side, everything towards that side goes.
    The film is where the lines are not flat and dark (standard deviation at least ``flat_std`` or
    mean above 40), so the black matrix that centres a digitised film is skipped, not taken for its side.
    """
    t = t8.astype(np.float32)
    out = np.zeros_like(t8)

    def extent(axis: int) -> tuple[int, int]:
        # A flat line is matrix only when dark: a flat bright one is a film-edge strip, to be cut.
        mean, sq = t.mean(axis=axis), (t * t).mean(axis=axis)
        std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
        idx = np.nonzero((std >= flat_std) | (mean > 40))[0]
        return (int(idx[0]), int(idx[-1]) + 1) if len(idx) else (0, len(mean))

    r0, r1 = extent(1)
    c0, c1 = extent(0)
    if r1 - r0 < 8 or c1 - c0 < 8:
        return out
    film = t[r0:r1, c0:c1]
    for axis, flip_ in ((0, False), (0, True), (1, False), (1, True)):
        lines = film if axis == 0 else film.T
        limit = max(2, int(max_fraction * len(lines)))
        # Only the band within max_fraction of this side (plus the neighbour of its last line).
        lines = lines[max(0, len(lines) - limit - 2):][::-1] if flip_ else lines[:limit + 2]
        frac = (np.abs(lines[2:] - lines[:-2]) > step).mean(axis=1)  # frac[j]: the step across line j+1
        hits = np.nonzero(frac[1:limit] >= share)[0]
        if not len(hits):
            continue
        depth = int(hits[-1]) + 3  # lines 0 .. j+1 (the edge line itself) go
        if axis == 0:
            ys = slice(r0, r0 + depth) if not flip_ else slice(r1 - depth, r1)
            out[ys, c0:c1] = 255
        else:
            xs = slice(c0, c0 + depth) if not flip_ else slice(c1 - depth, c1)
            out[r0:r1, xs] = 255
    return out


def _first_runs(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row of a boolean mask: whether it has any pixel, the first pixel's column ``l``, the end of
    the run starting there (exclusive) and the last pixel's column (-1 for empty rows)."""
    h, w = m.shape
    has = m.any(axis=1)
    first = np.where(has, np.argmax(m, axis=1), w)
    after = m | (np.arange(w)[None, :] < first[:, None])
    end = np.where(after.all(axis=1), w, np.argmax(~after, axis=1))
    last = np.where(has, w - 1 - np.argmax(m[:, ::-1], axis=1), -1)
    return has, first, end, last


def chest_wall_slivers(mask: np.ndarray, t8: np.ndarray, *, max_width: float = 0.08, thin: float = 0.01,
                       min_length: float = 0.02, max_slope: float = 0.35, max_residual: float = 1.5,
                       min_sharp: float = 0.35, min_contrast: float = 1.2, flare_contrast: float = 1.5,
                       flare_width: float = 0.03) -> np.ndarray:
    """Film-edge slivers at the chest wall that ride along with the breast mask, as a 0/255 mask.

    On a digitised film the film's edge at the chest wall is a straight, bright band along the film
    side. Where the breast lies against it the two merge (that part is left alone: tissue at the chest
    wall, the pectoral muscle and lesions there must stay); above or below the breast, or beside it
    across a dark gap, a piece of the band stays joined to the breast and survives the cut. What tells
    it from tissue, which can reach the chest wall below the breast too (the inframammary fold, the
    upper abdomen of an MLO view), is the physics of the film:

    * it lies along the chest-wall side of the mask (the side the mask touches over more rows) and
      starts at that side in every row of it;
    * it is straight: both its edges are lines (median residual of a line fit at most
      ``max_residual`` thumbnail pixels, within ``atan(max_slope)`` of the film side), over at least
      ``min_length`` of the height and twice its width, and it is narrower than ``max_width`` of the
      width;
    * its inner edge is sharp: within two pixels the intensity drops by at least ``min_sharp`` of its
      contrast to the film background (tissue fades over the skin line); or, where the digitiser's
      flare softens that edge, the band is narrower than ``flare_width`` of the width (flare spreads a
      few pixels; the skin of the abdomen below an MLO breast, which also peaks at the chest wall and
      fades inwards, is wider), brightest in its outer half in most rows, fades inwards (its inner
      end below 70% of that peak) and is at least ``flare_contrast`` times as far above the
      background as the breast tissue beside it (evidence required: tissue beside the band must be
      found);
    * it is unexposed film: unless thinner than ``thin`` of the width (no anatomy is a straight line
      that thin), it is at least ``min_contrast`` times as far above the background as the breast
      tissue next to it along the chest wall.

    Rows are walked from each end of the mask inwards while the run at the chest wall keeps its width
    and position (a band above or below the breast), and, anywhere, runs at the chest wall separated
    from the rest of their row by a dark gap are taken as candidates too.
    """
    m = mask > 0
    out = np.zeros_like(mask)
    h, w = m.shape
    if h < 8 or w < 8 or not m.any():
        return out
    cols = np.nonzero(m.any(axis=0))[0]
    c0, c1 = int(cols[0]), int(cols[-1])
    flip = int(m[:, max(0, c1 - 1):c1 + 1].any(axis=1).sum()) > int(m[:, c0:c0 + 2].any(axis=1).sum())
    mm, tt = (m[:, ::-1], t8[:, ::-1]) if flip else (m, t8)
    wall = (w - 1 - c1) if flip else c0
    has, first, end, last = _first_runs(mm)
    run = end - first
    touch = has & (first <= wall + max(2, int(0.02 * w)))
    wmax = max(2, int(max_width * w))
    lmin = max(6, int(min_length * h))
    bg = float(np.median(tt[~mm])) if (~mm).any() else 0.0
    segments: list[tuple[np.ndarray, bool]] = []  # (rows, separated from the breast by a mask gap)
    rows = np.nonzero(has)[0]
    for order in (rows, rows[::-1]):  # a band above / below the breast: from the mask's end inwards
        seg: list[int] = []
        for r in order:
            if not touch[r] or run[r] > wmax:
                break
            if seg:
                med = float(np.median(run[seg[-20:]]))
                if abs(run[r] - med) > max(2.0, 0.5 * med) or abs(int(first[r]) - int(first[seg[-1]])) > 2:
                    break
            seg.append(int(r))
        if len(seg) >= lmin:
            segments.append((np.array(sorted(seg)), False))
    gap = touch & (last >= end) & (run <= wmax)  # beside the breast across a dark gap
    if gap.any():
        edges = np.diff(np.concatenate([[0], gap.astype(np.int8), [0]]))
        for s, e in zip(np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0], strict=True):
            if e - s >= lmin:
                segments.append((np.arange(s, e), True))
    for seg, apart in segments:
        width = float(np.median(run[seg]))
        if len(seg) < 2 * width:
            continue
        inner = (first[seg] + run[seg]).astype(np.float64)
        outer = first[seg].astype(np.float64)
        straight = True
        for edge in (inner, outer):
            p = np.polyfit(seg, edge, 1)
            if abs(p[0]) > max_slope or float(np.median(np.abs(edge - np.polyval(p, seg)))) > max_residual:
                straight = False
        if not straight:
            continue
        if not (apart and width <= thin * w) and not _looks_like_film(
                seg, tt, mm, has, first, end, run, width, bg, min_sharp, min_contrast if width > thin * w else None,
                flare_contrast if width <= flare_width * w else None):
            continue
        target = out[:, ::-1] if flip else out  # a view: writes land in ``out``
        for r in seg:
            target[r, int(first[r]):int(end[r])] = 255
    return out


def _looks_like_film(seg: np.ndarray, tt: np.ndarray, mm: np.ndarray, has: np.ndarray, first: np.ndarray,
                     end: np.ndarray, run: np.ndarray, width: float, bg: float, min_sharp: float,
                     min_contrast: float | None, flare_contrast: float | None = None) -> bool:
    """The sharp-edge (or flare) and brightness tests of :func:`chest_wall_slivers` for the band
    ``[first, end)`` of the rows ``seg`` of the chest-wall-left thumbnail ``tt`` (mask ``mm``):
    ``min_contrast`` None skips the brightness test of a sharp band (a thin one), ``flare_contrast``
    None turns the flare path off."""
    h, w = tt.shape
    x0, x1 = first[seg], end[seg]
    cols = np.arange(w)[None, :]
    block = tt[seg].astype(np.float32)
    in_band = (cols >= x0[:, None]) & (cols < x1[:, None])
    banded = np.where(in_band, block, -1.0)
    peaks = banded.max(axis=1)
    inside = np.where((cols >= np.maximum(x0, x1 - 2)[:, None]) & (cols < x1[:, None]), block, -1.0).max(axis=1)
    beyond = (cols >= x1[:, None]) & (cols < np.minimum(w, x1 + 3)[:, None])
    outside = np.where(x1 < w, np.where(beyond, block, 1e9).min(axis=1), bg)
    sharp = (inside - outside) / np.maximum(1.0, peaks - bg)
    flare = False
    if float(np.median(sharp)) < min_sharp:
        if flare_contrast is None:
            return False
        # A flared film edge: brightest in the half at the film side, fading inwards (its inner end
        # below 70% of that peak).
        at_side = (np.argmax(banded, axis=1) - x0) <= max(2.0, width / 2)
        fades = (inside - bg) <= 0.7 * (peaks - bg)
        if float(np.mean(at_side & fades)) < 0.75:
            return False
        flare, min_contrast = True, flare_contrast
    if min_contrast is None:
        return True
    # The breast tissue beside the band along the chest wall: the rows next to its breast end.
    s0, s1 = int(seg[0]), int(seg[-1])
    before = [r for r in range(max(0, s0 - 12), s0) if has[r] and run[r] > 2 * width + 4]
    beside = before or [r for r in range(s1 + 1, min(h, s1 + 13)) if has[r] and run[r] > 2 * width + 4]
    if not beside:
        return not flare  # a sharp band with nothing to compare is film; a soft one needs the evidence
    c0 = int(np.median(x0))
    span = max(4, int(2 * width + 2))
    near, inm = tt[beside, c0:c0 + span], mm[beside, c0:c0 + span]
    tissue = float(np.median(near[inm])) if inm.any() else bg
    return float(np.median(peaks)) - bg >= min_contrast * max(1.0, tissue - bg)


def segmentation_residue(image: np.ndarray, *, thumb: tuple[np.ndarray, int] | None = None,
                         source: np.ndarray | None = None, min_island: float = 0.001) -> dict[str, Any]:
    """What is left besides the breast in a segmented image (black outside the breast), for reports.

    On a thumbnail: ``islands``, the share of the kept area not connected to its largest piece
    (pieces of at least ``min_island`` of the thumbnail); ``label_like``, the share of the thumbnail
    in bright patches (at least 85% of the maximum, at most 1% of the thumbnail) that drop to black
    or near-black within two pixels on at least 30% of their outline, as burnt-in labels and markers
    do and tissue does not (the black beyond a film side, the matrix a digitised film is centred in, is
    no evidence: tissue at the chest wall meets it with a sharp edge too; :func:`_beyond_film_sides`);
    ``edge``, whether a straight edge along a side is still there (:func:`straight_edge_mask`);
    ``sliver``, the share of the thumbnail in a film-edge sliver along the chest wall
    (:func:`chest_wall_slivers`, with looser settings than the removal uses: a report may point at a
    band of tissue too, a removal must not cut one). ``suspect`` is true when any of them is found, so
    a user can look at those films first instead of at thousands.

    ``source``: the input's thumbnail on the same grid, when the caller has it. On the output alone
    every band's inner edge is sharp (the mask cut it), so the sliver test's sharpness and brightness
    are judged on the input's pixels instead; without it they are judged on the output.
    """
    t, _ = thumbnail(image) if thumb is None else thumb
    t8 = _to_u8(t)
    nz = (t8 > 0).astype(np.uint8)
    area = float(nz.sum())
    out: dict[str, Any] = {"islands": 0.0, "label_like": 0.0, "edge": False, "sliver": 0.0, "suspect": False}
    if area == 0:
        return out
    n, labels, stats, _ = cv2.connectedComponentsWithStats(nz, connectivity=8)
    sizes = stats[1:, cv2.CC_STAT_AREA]
    big = sizes.max()
    islands = sizes[(sizes < big) & (sizes >= min_island * t8.size)].sum() if n > 2 else 0
    out["islands"] = round(float(islands) / area, 5)
    cand = (t8 >= 217).astype(np.uint8)
    n, labels, stats = 0, None, None
    if cv2.countNonZero(cand):
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
    dark = t8 <= 38
    empty = _beyond_film_sides(nz)
    h, w = t8.shape
    ker = np.ones((5, 5), np.uint8)
    label_area = 0
    for i in range(1, n):
        x, y, bw, bh, a = stats[i]
        if a < 4 or a > 0.01 * h * w:
            continue
        x0, y0, x1, y1 = max(0, x - 3), max(0, y - 3), min(w, x + bw + 3), min(h, y + bh + 3)
        comp = (labels[y0:y1, x0:x1] == i).astype(np.uint8)
        ring = (cv2.dilate(comp, ker) > comp) & ~empty[y0:y1, x0:x1]
        if ring.any() and float(dark[y0:y1, x0:x1][ring].mean()) >= 0.3:
            label_area += int(a)
    out["label_like"] = round(label_area / float(t8.size), 5)
    out["edge"] = bool(straight_edge_mask(t8, step=30.0, share=0.4).any())
    judge = t8 if source is None or source.shape != t8.shape else _to_u8(source)
    sliver = chest_wall_slivers(nz, judge, min_sharp=0.3)
    out["sliver"] = round(cv2.countNonZero(sliver) / float(t8.size), 5)
    out["suspect"] = bool(out["islands"] > 0 or label_area > 0 or out["edge"] or out["sliver"] > 0)
    return out


def _beyond_film_sides(nz: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Where a kept region cut straight by a film side meets the matrix beyond it (boolean mask).

    A side of the kept region's bounding box is a film side when the kept pixels cover at least
    ``share`` of that outermost row/column (the breast runs along the film's edge there); everything
    beyond it is the black matrix, not the background around a patch. A label left in a corner only
    reaches the box's side with its own few pixels, so the black around it still counts.
    """
    h, w = nz.shape
    out = np.zeros((h, w), bool)
    rows, cols = np.nonzero(nz.any(axis=1))[0], np.nonzero(nz.any(axis=0))[0]
    if not len(rows):
        return out
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    if nz[r0:r1 + 1, c0].mean() >= share:
        out[:, :c0] = True
    if nz[r0:r1 + 1, c1].mean() >= share:
        out[:, c1 + 1:] = True
    if nz[r0, c0:c1 + 1].mean() >= share:
        out[:r0] = True
    if nz[r1, c0:c1 + 1].mean() >= share:
        out[r1 + 1:] = True
    return out


def segmentation_check(thumb: np.ndarray, mask: np.ndarray, *, max_removed: float = 0.05) -> dict[str, Any]:
    """Per-image figures of a segmentation, on the thumbnail ``thumb`` and its breast ``mask`` (0/255).

    :func:`segmentation_residue` of what is kept (something besides the breast left), plus
    ``tissue_removed``: the share of the largest plain-Otsu region (the breast as a first guess, with
    whatever touches it) that the mask leaves out. A label cut off the breast costs about 1%; more than
    ``max_removed`` means tissue may have gone too, so the image is a ``suspect`` either way.
    The chest-wall sliver look runs on the full thumbnail (a sliver is a few thumbnail pixels wide:
    halved, the short ones vanish); the rest on a half-size copy.
    """
    sliver = chest_wall_slivers(mask, _to_u8(thumb), min_sharp=0.3) if min(thumb.shape) >= 8 else None
    sliver_share = round(cv2.countNonZero(sliver) / float(sliver.size), 5) if sliver is not None else None
    if max(thumb.shape) > THUMB_SIDE // 2 and min(thumb.shape) >= 2:  # half is plenty for a report, 4x cheaper
        size = (thumb.shape[1] // 2, thumb.shape[0] // 2)
        thumb = cv2.resize(thumb[: size[1] * 2, : size[0] * 2], size, interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask[: size[1] * 2, : size[0] * 2], size, interpolation=cv2.INTER_NEAREST)
    t8 = _to_u8(thumb)
    kept = np.where(mask > 0, t8, 0).astype(np.uint8)
    out = segmentation_residue(kept, thumb=(kept, 1), source=t8)
    _, binary = cv2.threshold(t8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    removed = 0.0
    if n > 1:
        i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        tissue = labels == i
        removed = float((tissue & (mask == 0)).sum()) / float(stats[i, cv2.CC_STAT_AREA])
    out["tissue_removed"] = round(removed, 4)
    if sliver_share is not None:
        out["sliver"] = sliver_share
    out["suspect"] = bool(out["islands"] > 0 or out["label_like"] > 0 or out["edge"] or out["sliver"] > 0
                          or removed > max_removed)
    return out


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the image border."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), dtype=np.uint8)
    padded[1:-1, 1:-1] = mask
    flood = padded.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), dtype=np.uint8), (0, 0), 255)
    holes = cv2.bitwise_not(flood)[1:-1, 1:-1]
    return cv2.bitwise_or(mask, holes)


def _upscale_mask(mask: np.ndarray, k: int, shape: tuple[int, int]) -> np.ndarray:
    """A thumbnail mask back at full size (linear, to be thresholded: smooth edges, not k-pixel stairs)."""
    h, w = shape
    th, tw = mask.shape
    big = cv2.resize(mask, (tw * k, th * k), interpolation=cv2.INTER_LINEAR) if k > 1 else mask
    if big.shape != (h, w):  # the thumbnail dropped up to k-1 trailing rows/columns: extend the edge
        big = cv2.copyMakeBorder(big, 0, h - big.shape[0], 0, w - big.shape[1], cv2.BORDER_REPLICATE)
    return big


def _keep_inside(img: np.ndarray, small: np.ndarray, k: int) -> np.ndarray:
    """``img`` with every pixel outside the thumbnail mask ``small`` (0/255, factor ``k``) set to 0.

    The mask is upscaled linearly and thresholded at half (smooth edges, not k-pixel stairs), only
    over the mask's bounding box plus one thumbnail cell: the cells around that window are 0, so the
    upscale is exactly 0 outside it and, inside, the same as upscaling the whole thumbnail (the margin
    cell gives the interpolation the neighbour it would have had). On a mammogram the breast covers
    about half the film, so this halves the full-size work; the 8-bit mask and a masked copy into a
    zeroed image are the cheapest full-size passes OpenCV has for it (measured 2x faster than a 16-bit
    mask and an AND on 16-bit films).
    """
    ys, xs = np.nonzero(small)
    th, tw = small.shape
    h, w = img.shape
    ty0, ty1 = max(0, int(ys.min()) - 1), min(th, int(ys.max()) + 2)
    tx0, tx1 = max(0, int(xs.min()) - 1), min(tw, int(xs.max()) + 2)
    # Image rows/columns of the window; a window on the thumbnail's last cell also covers the up to
    # k-1 trailing pixels the thumbnail dropped (the upscale extends its edge there).
    y0, x0 = ty0 * k, tx0 * k
    y1, x1 = (ty1 * k if ty1 < th else h), (tx1 * k if tx1 < tw else w)
    big = _upscale_mask(small[ty0:ty1, tx0:tx1], k, (y1 - y0, x1 - x0))
    _, big = cv2.threshold(big, 127, 255, cv2.THRESH_BINARY)
    out = np.zeros_like(img)
    cv2.copyTo(img[y0:y1, x0:x1], big, out[y0:y1, x0:x1])  # written in place: no window-sized temporary
    return out


# ------------------------------------------------------------------------------------------- the ops

class Op(StrictModel):
    """Base of every step: its fields are its parameters, ``__call__`` applies it."""

    name: ClassVar[str]

    @abstractmethod
    def __call__(self, sample: Sample) -> Sample:
        """Apply the step; every subclass defines it (pydantic models are ABCs, so one that forgets cannot
        be instantiated)."""


class CropBorder(Op):
    """Cut the black scanner border and the bright film edge.

    ``mode: fixed`` removes ``margin`` of the width/height on every side (the classic 5%);
    ``mode: auto`` finds the border from intensity profiles (see :func:`find_border`), cropping at
    most ``max_fraction`` per side.
    """

    name: ClassVar[str] = "crop_border"
    mode: Literal["auto", "fixed"] = "auto"
    margin: float = Field(0.05, ge=0.0, lt=0.5, description="fixed mode: share cut from each side")
    max_fraction: float = Field(0.1, gt=0.0, lt=0.5, description="auto mode: most cut from one side")
    bright_level: float = Field(0.95, gt=0.0, le=1.0,
                                description="auto: a film-edge pixel, as a share of the edge's own level")
    edge_fraction: float = Field(0.5, gt=0.0, le=1.0,
                                 description="auto: share of the film's length a film edge runs along")

    def __call__(self, sample: Sample) -> Sample:
        h, w = sample.image.shape
        if self.mode == "fixed":
            dx, dy = int(round(w * self.margin)), int(round(h * self.margin))
            x0, y0, x1, y1 = dx, dy, w - dx, h - dy
        else:
            require_min_side(sample.image, "crop_border (mode: auto)")
            x0, y0, x1, y1 = find_border(sample.image, max_fraction=self.max_fraction,
                                         bright_level=self.bright_level, edge_fraction=self.edge_fraction,
                                         thumb=sample_thumbnail(sample))
        out = _crop(sample, x0, y0, x1, y1)
        out.meta["crop"] = [int(x0), int(y0), int(x1), int(y1)]
        return out


class RemoveAnnotations(Op):
    """Keep the breast, blank everything else (burnt-in labels, markers, tape) to 0.

    The breast is found by :func:`breast_mask` on a thumbnail and applied to the full image. With
    ``crop_to_breast`` the image is also cropped to the breast's bounding box (plus ``crop_margin``).
    """

    name: ClassVar[str] = "remove_annotations"
    kernel: float = Field(0.02, gt=0.0, le=0.2, description="closing/opening kernel, share of the long side")
    grow: float = Field(0.3, gt=0.0, le=1.0, description="grow the breast down to this share of background->Otsu")
    fill_holes: bool = True
    crop_to_breast: bool = False
    crop_margin: float = Field(0.02, ge=0.0, le=0.5)

    def __call__(self, sample: Sample) -> Sample:
        require_min_side(sample.image, "remove_annotations")
        small, k = breast_mask(sample.image, kernel=self.kernel, grow=self.grow, fill_holes=self.fill_holes,
                               thumb=sample_thumbnail(sample))
        small = cv2.dilate(small, np.ones((3, 3), np.uint8))  # keep the skin line's partial pixels
        out = sample.replace(_keep_inside(sample.image, small, k))
        # What a report needs to point at a failure, measured on the thumbnail (a few ms, no full-size pass).
        out.meta["segmentation"] = segmentation_check(sample_thumbnail(sample)[0], small)
        if self.crop_to_breast:
            ys, xs = np.nonzero(small)
            h, w = out.image.shape
            mx, my = int(w * self.crop_margin), int(h * self.crop_margin)
            x0, y0 = max(0, xs.min() * k - mx), max(0, ys.min() * k - my)
            x1, y1 = min(w, (xs.max() + 1) * k + mx), min(h, (ys.max() + 1) * k + my)
            out = _crop(out, x0, y0, x1, y1)
            out.meta["breast_crop"] = [int(x0), int(y0), int(x1), int(y1)]
        return out


class Orient(Op):
    """Flip left-right when needed so every breast has its chest wall on the same side.

    The chest wall side is the half with more tissue signal (the breast is anchored there and tapers
    to the nipple), measured on a subsample of about 512 pixels along the long side.
    """

    name: ClassVar[str] = "orient"
    chest_wall: Literal["left", "right"] = "left"

    def __call__(self, sample: Sample) -> Sample:
        # Every k-th pixel of every k-th row (a strided view, no pass over the full image): the two
        # halves' sums differ by whole breast widths, so an area average would only cost time.
        h, w = sample.image.shape
        k = max(1, math.ceil(max(h, w) / THUMB_SIDE))
        col = sample.image[::k, ::k].astype(np.float64).sum(axis=0)
        half = len(col) // 2
        wall_left = col[:half].sum() >= col[len(col) - half:].sum()
        if wall_left == (self.chest_wall == "left"):
            return sample.replace(sample.image, hflip=bool(sample.meta.get("hflip", False)))
        return flip(sample, horizontal=True)


class Denoise(Op):
    """Smooth noise: ``gaussian`` (sigma, 0 = from ksize), ``median`` or edge-keeping ``bilateral``.

    ``ksize`` is the odd window side; ``sigma_color`` of the bilateral filter is a share of full scale
    so one setting works for 8- and 16-bit images.
    """

    name: ClassVar[str] = "denoise"
    method: Literal["gaussian", "median", "bilateral"] = "median"
    ksize: int = Field(3, ge=3, le=31)
    sigma: float = Field(0.0, ge=0.0, le=50.0)
    sigma_color: float = Field(0.1, gt=0.0, le=1.0)
    sigma_space: float = Field(3.0, gt=0.0, le=50.0)

    @field_validator("ksize")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd, got {v}")
        return v

    def __call__(self, sample: Sample) -> Sample:
        img = np.ascontiguousarray(sample.image)
        if self.method == "gaussian":
            out = cv2.GaussianBlur(img, (self.ksize, self.ksize), self.sigma)
        elif self.method == "median":
            if img.dtype == np.uint16 and self.ksize > 5:  # OpenCV's 16-bit median stops at 5x5
                from scipy.ndimage import median_filter

                out = median_filter(img, size=self.ksize, mode="reflect")
            else:
                out = cv2.medianBlur(img, self.ksize)
        else:
            scale = float(_full_scale(img))
            f = cv2.bilateralFilter(img.astype(np.float32) / scale, self.ksize, self.sigma_color, self.sigma_space)
            out = np.clip(np.rint(f * scale), 0, scale).astype(img.dtype)
        return sample.replace(out)


class Clahe(Op):
    """Contrast-limited adaptive histogram equalisation (8- or 16-bit), background kept black."""

    name: ClassVar[str] = "clahe"
    clip_limit: float = Field(2.0, gt=0.0, le=100.0)
    tile_grid: int = Field(8, ge=1, le=64)

    def __call__(self, sample: Sample) -> Sample:
        require_min_side(sample.image, "clahe")
        img = np.ascontiguousarray(sample.image)
        out = cv2.createCLAHE(clipLimit=self.clip_limit, tileGridSize=(self.tile_grid, self.tile_grid)).apply(img)
        # Equalisation must not lift the blanked background back into view (OpenCV: 5x faster than out[img == 0] = 0).
        out = cv2.bitwise_and(out, out, mask=cv2.compare(img, 0, cv2.CMP_GT))
        return sample.replace(out)


class Resize(Op):
    """Resize to ``height`` x ``width``: keeping the aspect ratio (fit, then pad with black) or not.

    ``align`` places a kept-aspect image in the padded canvas; ``start`` (top-left) keeps an oriented
    chest wall on the image edge. ``bit_depth`` converts the output (8: top 8 bits; 16: x257; null:
    unchanged). ``INTER_AREA`` is used to shrink, ``INTER_LINEAR`` to enlarge.
    """

    name: ClassVar[str] = "resize"
    height: int = Field(1024, ge=8, le=16384)
    width: int = Field(640, ge=8, le=16384)
    keep_aspect: bool = True
    align: Literal["center", "start"] = "center"
    bit_depth: Literal[8, 16] | None = None

    def __call__(self, sample: Sample) -> Sample:
        """Any shape gives a valid ``height x width`` output: a thin line stays at least one pixel wide."""
        h, w = sample.image.shape
        src, mask_src = sample.image, sample.mask
        # Shrinking by k >= 2: a first integer INTER_AREA reduction (OpenCV's fast path, after trimming
        # the last < k rows/columns) then INTER_AREA to the target: the same box filter, 2-3x faster
        # than one fractional INTER_AREA pass over a full-size film.
        ratio = max(w / self.width, h / self.height) if self.keep_aspect else min(w / self.width, h / self.height)
        # Never more than the short side: a 1-pixel-high line shrunk by k would have no row left.
        k = min(int(ratio), h, w)
        if k >= 2:
            h, w = h // k * k, w // k * k
            src = src[:h, :w]
            mask_src = None if mask_src is None else mask_src[:h, :w]
        if self.keep_aspect:
            scale = min(self.width / w, self.height / h)
            nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
        else:
            nw, nh = self.width, self.height
        if k >= 2:
            src = cv2.resize(src, (w // k, h // k), interpolation=cv2.INTER_AREA)
        interp = cv2.INTER_AREA if nw < src.shape[1] or nh < src.shape[0] else cv2.INTER_LINEAR
        img = cv2.resize(src, (nw, nh), interpolation=interp)
        img = _to_depth(img, self.bit_depth)
        mask = None
        if mask_src is not None:
            mask = cv2.resize(mask_src, (nw, nh), interpolation=cv2.INTER_NEAREST)
        sx, sy = nw / w, nh / h
        boxes = sample.boxes * np.array([sx, sy, sx, sy]) if len(sample.boxes) else sample.boxes
        ox = oy = 0
        if (nw, nh) != (self.width, self.height):
            ox = (self.width - nw) // 2 if self.align == "center" else 0
            oy = (self.height - nh) // 2 if self.align == "center" else 0
            canvas = np.zeros((self.height, self.width), dtype=img.dtype)
            canvas[oy:oy + nh, ox:ox + nw] = img
            img = canvas
            if mask is not None:
                mcanvas = np.zeros((self.height, self.width), dtype=np.uint8)
                mcanvas[oy:oy + nh, ox:ox + nw] = mask
                mask = mcanvas
            if len(boxes):
                boxes = boxes + np.array([ox, oy, ox, oy], dtype=np.float64)
        boxes = _clip_boxes(boxes, self.width, self.height)
        return Sample(img, mask, boxes, {**sample.meta, "resize": [round(sx, 6), round(sy, 6), ox, oy]})


def _to_depth(img: np.ndarray, bit_depth: int | None) -> np.ndarray:
    if bit_depth is None:
        return img
    if bit_depth == 8:
        return img if img.dtype == np.uint8 else (img >> 8).astype(np.uint8)
    return img if img.dtype == np.uint16 else img.astype(np.uint16) * 257


#: The step registry: config name -> op class. Order here is the order ``--help`` lists them.
OPS: dict[str, type[Op]] = {op.name: op for op in (CropBorder, RemoveAnnotations, Orient, Resize, Denoise, Clahe)}


# ------------------------------------------------------------------------------------ functional API

def _functional(op: type[Op]) -> Callable[..., Sample]:
    def apply(image: np.ndarray | Sample, mask: np.ndarray | None = None,
              boxes: Sequence[Sequence[float]] | np.ndarray | None = None, **params: Any) -> Sample:
        sample = image if isinstance(image, Sample) else Sample(image, mask, _as_boxes(boxes))
        return op(**params)(sample)

    apply.__name__ = op.name
    apply.__doc__ = (f"Apply ``{op.__name__}`` to an image (with optional lesion mask and boxes); "
                     f"keyword arguments are its parameters.\n\n{op.__doc__}")
    return apply


crop_border = _functional(CropBorder)
remove_annotations = _functional(RemoveAnnotations)
orient = _functional(Orient)
denoise = _functional(Denoise)
clahe = _functional(Clahe)
resize = _functional(Resize)
