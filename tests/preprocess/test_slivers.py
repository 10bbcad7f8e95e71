"""Chest-wall film-edge slivers (issue #22 part 4) and a chest-wall crop that keeps tissue.

A digitised film's edge along the chest wall is a straight bright band. Where the breast lies on it
the two merge; above or below the breast a piece of it stays joined to the breast and survived the
cut. Generated films carry such a band below or above the breast at several widths: the band must
go, the breast (and a lesion at the chest wall) must stay, a band of tissue below the breast (the
fold / upper abdomen of an MLO view) must stay, and the report must flag a sliver left behind.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mammolab.preprocess.ops import (
    Sample,
    chest_wall_slivers,
    crop_border,
    remove_annotations,
    segmentation_residue,
)

H, W = 256, 160
MIAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mias-dev"


def film(seed: int, *, where: str = "below", width: int = 4, side: str = "left", band: bool = True,
         tissue_band: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(uint16 image, breast, sliver, chest-wall lesion): a breast against the chest wall over the middle
    rows, the film-edge band along the chest-wall side beyond it (``where``: below / above), a dark
    gap of film base between band and breast. ``tissue_band``: a grey, textured band of tissue under
    the breast instead, fading into the film base (not to be cut)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    base = 1200.0
    cy = 0.45 * H if where == "below" else 0.55 * H
    r2 = (xx / (0.6 * W)) ** 2 + ((yy - cy) / (0.33 * H)) ** 2
    breast = r2 < 1.0
    tex = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 2.0)
    img = np.where(breast, 9000 + 26000 * np.clip(1 - r2, 0, 1) ** 0.7 + 1500 * tex, base)
    lesion = ((xx - 6) ** 2 + (yy - cy) ** 2) < 49  # a lesion against the chest wall
    img[lesion] += 9000
    sliver = np.zeros((H, W), bool)
    if band:
        rows = (yy > cy) if where == "below" else (yy < cy)
        sliver = rows & ~breast & (xx < width)
        img[sliver] = 52000 + rng.normal(0, 300, int(sliver.sum()))
    if tissue_band:
        below = (yy > cy) & ~breast
        fade = np.clip(1 - xx / 18.0, 0, 1)
        img = np.where(below, base + 12000 * fade * (1 + 0.15 * tex), img)
    img = img + rng.normal(0, 120, (H, W))
    out = np.clip(img, 0, 65535).astype(np.uint16)
    if side == "right":
        out, breast, sliver, lesion = (a[:, ::-1].copy() for a in (out, breast, sliver, lesion))
    return out, breast, sliver, lesion


@pytest.mark.parametrize("where", ["below", "above"])
@pytest.mark.parametrize("width", [2, 5, 10])
@pytest.mark.parametrize("side", ["left", "right"])
def test_sliver_is_removed_tissue_and_lesion_kept(where: str, width: int, side: str) -> None:
    src, breast, sliver, lesion = film(width + (where == "above"), where=where, width=width, side=side)
    out = remove_annotations(crop_border(Sample(src)))
    x0, y0, x1, y1 = out.meta["crop"]
    full = np.zeros_like(src)
    full[y0:y1, x0:x1] = out.image
    # The band is gone but for the rows where it meets the breast (the skin line's few pixels).
    assert (full[sliver] > 0).mean() < 0.1, (full[sliver] > 0).mean()
    np.testing.assert_array_equal(full[lesion], src[lesion])  # the chest-wall lesion is whole
    assert (full[breast] == src[breast]).mean() > 0.97
    assert out.meta["segmentation"]["sliver"] == 0.0


def test_the_old_segmentation_kept_such_slivers() -> None:
    """The case is a real one for the rest of the segmentation: without the sliver step, it stays."""
    src, breast, sliver, _ = film(3, width=5)
    from mammolab.preprocess import ops

    keep = ops.chest_wall_slivers
    try:
        ops.chest_wall_slivers = lambda mask, t8, **k: np.zeros_like(mask)  # type: ignore[assignment]
        out = remove_annotations(Sample(src)).image
    finally:
        ops.chest_wall_slivers = keep
    assert (out[sliver] > 0).mean() > 0.5
    # ... and the report flags what is left.
    res = segmentation_residue(out)
    assert res["sliver"] > 0 and res["suspect"] is True


def test_a_band_of_tissue_below_the_breast_is_kept() -> None:
    """The fold / upper abdomen: grey, textured, fading into the film base, no sharp straight edge."""
    src, breast, _, lesion = film(7, band=False, tissue_band=True)
    t8 = cv2.resize((src >> 8).astype(np.uint8), (W, H))
    mask = (src > 2500).astype(np.uint8) * 255
    assert not chest_wall_slivers(mask, t8).any()
    out = remove_annotations(Sample(src)).image
    np.testing.assert_array_equal(out[lesion], src[lesion])
    assert (out[breast] == src[breast]).mean() > 0.97


def test_nothing_fires_on_a_film_without_a_band() -> None:
    src, breast, _, _ = film(9, band=False)
    out = remove_annotations(Sample(src))
    assert out.meta["segmentation"]["sliver"] == 0.0
    assert (out.image[breast] == src[breast]).mean() > 0.97


def test_crop_keeps_a_saturated_pectoral_muscle_at_the_chest_wall() -> None:
    """A pectoral muscle as bright as the film edge covers a corner, not the whole side: its boundary
    runs away from the side, so the chest-wall side is not cut (the earlier crop took 10% of the
    width there, muscle and tissue)."""
    from test_segmentation import H as SH
    from test_segmentation import W as SW
    from test_segmentation import film as mlo_film

    img, breast = mlo_film(2, mlo=True)
    yy, xx = np.mgrid[0:SH, 0:SW]
    pectoral = breast & (xx < 0.5 * SW * (1 - yy / (0.45 * SH)))
    img[pectoral] = 65535
    x0, _, _, _ = crop_border(Sample(np.clip(img, 0, 65535).astype(np.uint16))).meta["crop"]
    assert x0 == 0


# ------------------------------------------------------------------------ real films (../shared)

def _lesions() -> dict[str, list[tuple[int, int, int]]]:
    les: dict[str, list[tuple[int, int, int]]] = {}
    for line in (MIAS / "Info.txt").read_text(errors="replace").splitlines():
        p = line.split()
        if len(p) >= 7 and p[0].startswith("mdb") and p[4].isdigit() and p[5].isdigit():
            les.setdefault(p[0], []).append((int(p[4]), 1024 - int(p[5]), int(p[6])))
    return les


@pytest.mark.shared
def test_dev_films_are_clean_and_keep_lesions_whole() -> None:
    images = sorted((MIAS / "images").glob("*.png"))
    if not images or not (MIAS / "Info.txt").is_file():
        pytest.skip("../shared/data/mias-dev is not here")
    lesions = _lesions()
    slivers, lost, checked = [], [], 0
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        res = remove_annotations(crop_border(Sample(img)))
        x0, y0, x1, y1 = res.meta["crop"]
        full = np.zeros_like(img)
        full[y0:y1, x0:x1] = res.image
        if segmentation_residue(full)["sliver"] > 0:
            slivers.append(path.stem)
        level, _ = cv2.threshold(img[img > 0], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        for x, row, r in lesions.get(path.stem, []):
            src = img[max(0, row - r):row + r + 1, max(0, x - r):x + r + 1]
            dst = full[max(0, row - r):row + r + 1, max(0, x - r):x + r + 1]
            if img[row, x] < 0.5 * level:
                continue  # a centre on the film base, not on the breast
            checked += 1
            tissue = src >= 0.5 * level
            if (dst[tissue] > 0).mean() < 0.95:  # the whole lesion box's tissue, not its centre only
                lost.append(f"{path.stem}@({x},{row})")
    # Measured: 5 of 162 films flagged (by eye: two short pieces left, mdb238 and mdb321; mdb181 and
    # mdb209 are bands of tissue below the breast that the looser report check points at).
    assert len(slivers) <= 0.035 * len(images), slivers
    assert checked >= 50 and lost == [], lost
