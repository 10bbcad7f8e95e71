"""Breast segmentation on what real digitised films carry (issue 13).

Generated films reproduce the cases that the earlier segmentation got wrong on real collections: a
burnt-in label touching the breast or laid against the pectoral muscle, a film-edge strip or a tape
band along a side touching the breast, a frame. Each must go while the breast stays. A dense island
in the fatty rim and the nipple must stay (they guard against removing too much). The mini-MIAS dev
films in ``../shared`` (skipped when absent) check the rates the README states.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pp_films import Film, bbox, write_dataset

from mammolab.data import manifest as mf
from mammolab.preprocess.ops import (
    Sample,
    crop_border,
    remove_annotations,
    segmentation_check,
    segmentation_residue,
    thumbnail,
)
from mammolab.preprocess.pipeline import SUSPECTS_NAME, preprocess

H, W = 240, 160
MIAS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mias-dev"


def film(seed: int = 0, *, base: float = 1500.0, mlo: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A float film: grey film base with grain, a breast anchored on the left chest wall whose tissue
    fades smoothly to a faint fatty rim at the skin line (as on film). ``mlo``: the breast runs up to
    the film's top edge, as the axillary tail does in an MLO view. Returns (image, breast)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cy, b = (0.42 * H, 0.5 * H) if mlo else (H / 2, 0.38 * H)
    r2 = (xx / (0.62 * W)) ** 2 + ((yy - cy) / b) ** 2
    breast = r2 < 1.0
    tex = cv2.GaussianBlur(rng.normal(0, 1, (H, W)).astype(np.float32), (0, 0), 2.0)
    tissue = 9000 + 27000 * np.clip(1 - r2, 0, 1) ** 0.7 + 1500 * tex
    img = np.where(breast, tissue, base) + rng.normal(0, 150, (H, W))
    return img.astype(np.float32), breast


def u16(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 65535).astype(np.uint16)


def label_plate(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """Burn in a white label plate with dark text; returns its mask."""
    mask = np.zeros(img.shape, bool)
    mask[y0:y1, x0:x1] = True
    img[mask] = 60000
    text = np.zeros(img.shape, np.uint8)
    cv2.putText(text, "LM", (x0 + 3, y1 - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 255, 1)
    img[(text > 0) & mask] = 3000
    return mask


def top_of_breast(breast: np.ndarray, x: int) -> int:
    return int(np.nonzero(breast[:, x])[0][0])


def assert_breast_kept(out: np.ndarray, src: np.ndarray, breast: np.ndarray, spare: np.ndarray,
                       share: float = 0.97) -> None:
    """The breast away from ``spare`` (where an artifact lies on it) is kept pixel for pixel."""
    keep = breast & ~spare
    assert (out[keep] == src[keep]).mean() > share


def near(mask: np.ndarray, px: int) -> np.ndarray:
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * px + 1, 2 * px + 1), np.uint8)) > 0


# ------------------------------------------------------------------------------- what must go

def test_label_touching_the_breast_is_removed() -> None:
    img, breast = film(1)
    x0 = 70
    y_top = top_of_breast(breast, x0)
    lab = label_plate(img, x0, y_top - 24, x0 + 34, y_top + 3)  # overlaps the skin line by 3 rows
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    assert out[lab & ~breast].max() == 0  # the earlier segmentation kept the whole plate
    assert_breast_kept(out, src, breast, near(lab, 6))


def test_label_against_the_pectoral_muscle_is_removed() -> None:
    img, breast = film(2, mlo=True)
    yy, xx = np.mgrid[0:H, 0:W]
    pectoral = breast & (xx < 0.55 * W - 0.9 * yy)  # a bright wedge in the upper chest-wall corner
    img[pectoral] = 52000 + (img[pectoral] - img[pectoral].mean()) * 0.1
    # The plate lies on the top edge where the muscle ends, partly on the breast, whiter than both.
    x0 = int(np.nonzero(pectoral[0])[0].max()) + 1
    lab = label_plate(img, x0, 0, x0 + 30, 26)
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    assert out[lab & ~breast].max() == 0
    muscle = pectoral & ~near(lab, 6)
    assert (out[muscle] == src[muscle]).mean() > 0.95  # the muscle is breast and stays
    assert_breast_kept(out, src, breast, near(lab, 6))


def test_film_edge_strip_along_the_chest_wall_is_removed() -> None:
    img, breast = film(3)
    img[:, :6] = 45000  # not the brightest thing on the film (the label is), so no crop_border case
    label_plate(img, 120, 8, 150, 30)
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    assert out[:, :6].max() == 0
    assert_breast_kept(out, src, breast, np.pad(np.ones((H, 9), bool), ((0, 0), (0, W - 9))))


def test_tape_band_across_the_top_touching_the_breast_is_removed() -> None:
    img, breast = film(4, mlo=True)
    band = int(0.08 * H)  # over the breast's upper part, which reaches the top edge
    rng = np.random.default_rng(0)
    img[:band] = 22000 + rng.normal(0, 1500, (band, W))  # grey, textured, tissue-bright
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    assert out[: band - 1].max() == 0
    rows = np.zeros((H, W), bool)
    rows[: band + 2] = True
    assert_breast_kept(out, src, breast, rows)


def test_frame_around_the_film_is_removed() -> None:
    img, breast = film(5)
    frame = np.zeros((H, W), bool)
    frame[4:H - 4, 4:W - 4] = True
    frame[7:H - 7, 7:W - 7] = False
    img[frame] = 50000
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    assert out[frame].max() == 0
    assert_breast_kept(out, src, breast, near(frame, 3))


def test_crop_then_remove_on_a_grey_base_with_label_and_strip() -> None:
    """The default pair of steps on a film with everything at once, 8-bit as from a scanner."""
    img, breast = film(6, base=4000)
    img[:, :5] = 65535  # saturated film edge: crop_border's job
    y_top = top_of_breast(breast, 60)
    lab = label_plate(img, 60, y_top - 22, 92, y_top + 2)
    src = (u16(img) >> 8).astype(np.uint8)
    cropped = crop_border(Sample(src))
    x0, y0, _, _ = cropped.meta["crop"]
    out = remove_annotations(cropped).image
    full = np.zeros_like(src)
    full[y0:y0 + out.shape[0], x0:x0 + out.shape[1]] = out
    assert full[lab & ~breast].max() == 0 and full[:, :5].max() == 0
    assert_breast_kept(full, src, breast, near(lab, 6) | (np.arange(W) < 8)[None, :], share=0.95)


# ------------------------------------------------------------------------------- what must stay

def test_dense_island_in_the_fatty_rim_and_the_nipple_are_kept() -> None:
    img, breast = film(7)
    yy, xx = np.mgrid[0:H, 0:W]
    tip = int(np.nonzero(breast[H // 2])[0].max())
    # A dense island out in the fat (18 pixels in from the skin line), brighter than anything near it,
    # with a steep edge.
    island = ((xx - (tip - 24)) ** 2 + (yy - (H // 2 - 30)) ** 2) <= 36
    img[island] = 50000
    # The nipple: a small bump of tissue beyond the skin line at the tip.
    nipple = (((xx - tip) ** 2 + (yy - H // 2) ** 2) <= 25) & ~breast
    img[nipple] = 9000
    src = u16(img)
    out = remove_annotations(Sample(src)).image
    np.testing.assert_array_equal(out[island], src[island])
    assert (out[nipple] > 0).mean() > 0.8
    assert_breast_kept(out, src, breast, np.zeros((H, W), bool))
    # Nothing was flagged as left over or cut away.
    check = segmentation_check(thumbnail(src)[0], np.where(out > 0, 255, 0).astype(np.uint8))
    assert check["suspect"] is False and check["tissue_removed"] < 0.05


def test_residue_metric_sees_a_label_left_and_an_island() -> None:
    img, breast = film(8)
    clean = np.where(breast, u16(img), 0).astype(np.uint16)
    assert segmentation_residue(clean)["suspect"] is False
    left = clean.copy()
    left[10:24, 120:136] = 60000  # a label plate kept on black (0.6% of the film, as on real ones)
    res = segmentation_residue(left)
    assert res["suspect"] is True and res["label_like"] > 0 and res["islands"] > 0


# ------------------------------------------------------------------ the report points at failures

def taped_film() -> Film:
    """A film whose tape band over the breast's upper part takes breast tissue with it when cut."""
    img, breast = film(4, mlo=True)
    img[: int(0.08 * H)] = 22000 + np.random.default_rng(0).normal(0, 1500, (int(0.08 * H), W))
    yy, xx = np.mgrid[0:H, 0:W]
    lesion = ((((xx - 40) / 6.0) ** 2 + ((yy - 130) / 8.0) ** 2) < 1).astype(np.uint8) * 255
    img[lesion > 0] += 8000
    return Film(u16(img), lesion, bbox(lesion), breast, (0, 0, 0, 0), (0, 0), "left")


def test_preprocess_lists_suspects_and_shows_them(tmp_path: Path, film_dataset: Path) -> None:
    clean = preprocess(film_dataset, tmp_path / "clean", workers=1, size=(96, 64))
    quality = json.loads((clean.out / mf.QUALITY_JSON).read_text())
    assert quality["segmentation_suspect"] == []
    assert not (clean.out / SUSPECTS_NAME).exists()
    assert "Segmentation suspects" in (clean.out / mf.QUALITY_MD).read_text()

    src = write_dataset(tmp_path / "taped", [("train", "benign", taped_film())])
    res = preprocess(src, tmp_path / "out", workers=1, size=(96, 64))
    quality = json.loads((res.out / mf.QUALITY_JSON).read_text())
    rel = str(res.manifest["path"].iloc[0])
    assert len(quality["segmentation_suspect"]) == 1
    assert quality["segmentation_suspect"][0].startswith(f"{rel}: ")
    assert "of the first-guess breast removed" in quality["segmentation_suspect"][0]
    report = (res.out / mf.QUALITY_MD).read_text()
    assert "Segmentation suspects" in report and f"- {rel}: " in report
    sheet = cv2.imread(str(res.out / SUSPECTS_NAME))
    assert sheet is not None and sheet.shape == (256 + 22, 2 * 256, 3)  # one row: input | output
    assert "segmentation" not in str(res.manifest["pp_transform"].iloc[0])  # the recipe stays the recipe
    # A re-run reuses the image and still reports it; a clean re-run would drop the stale sheet.
    again = preprocess(src, tmp_path / "out", workers=1, size=(96, 64))
    assert again.reused == 1
    assert json.loads((again.out / mf.QUALITY_JSON).read_text())["segmentation_suspect"] == \
        quality["segmentation_suspect"]


# ------------------------------------------------------------------------ real films (../shared)

@pytest.fixture(scope="module")
def mias_results() -> list[tuple[str, np.ndarray, np.ndarray, dict]]:
    images = sorted((MIAS / "images").glob("*.png"))
    if not images or not (MIAS / "Info.txt").is_file():
        pytest.skip("../shared/data/mias-dev is not here")
    out = []
    for path in images:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        res = remove_annotations(crop_border(Sample(img)))
        x0, y0, x1, y1 = res.meta["crop"]
        full = np.zeros_like(img)
        full[y0:y1, x0:x1] = res.image
        out.append((path.stem, img, full, res.meta["segmentation"]))
    return out


def _lesions(root: Path) -> dict[str, list[tuple[int, int, int]]]:
    les: dict[str, list[tuple[int, int, int]]] = {}
    for line in (root / "Info.txt").read_text(errors="replace").splitlines():
        p = line.split()
        if len(p) >= 7 and p[0].startswith("mdb") and p[4].isdigit() and p[5].isdigit():
            les.setdefault(p[0], []).append((int(p[4]), 1024 - int(p[5]), int(p[6])))
    return les


@pytest.mark.shared
def test_every_lesion_on_tissue_is_kept_on_the_dev_films(mias_results: list) -> None:
    lesions = _lesions(MIAS)
    checked, lost = 0, []
    for name, img, out, _ in mias_results:
        if name not in lesions:
            continue
        level, _ = cv2.threshold(img[img > 0], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        for x, row, r in lesions[name]:
            h = max(1, r // 2)
            src = img[max(0, row - h):row + h + 1, max(0, x - h):x + h + 1]
            dst = out[max(0, row - h):row + h + 1, max(0, x - h):x + h + 1]
            tissue = src >= 0.5 * level  # not the film base, nor the black matrix around the film
            if not tissue.any():
                continue  # a centre given on the film base (one film): nothing there to keep
            checked += 1
            if (dst[tissue] > 0).mean() < 0.95:
                lost.append(f"{name}@({x},{row})")
    assert checked >= 50
    assert lost == []


@pytest.mark.shared
def test_residue_and_removed_tissue_are_rare_on_the_dev_films(mias_results: list) -> None:
    n = len(mias_results)
    # Labels, islands and side edges (film-edge slivers at the chest wall: test_slivers.py).
    residue = [name for name, _, out, _ in mias_results
               if (lambda r: r["islands"] > 0 or r["label_like"] > 0 or r["edge"])(segmentation_residue(out))]
    cut = [name for name, _, _, seg in mias_results if seg["tissue_removed"] > 0.05]
    # Measured: 0 of 162 flagged by the estimate (3 before tissue against the matrix stopped counting as
    # a label's dark ring; by eye the dark "5 0" plate on mdb274's skin line is left and not seen by
    # it); 2 tape cuts over the pectoral.
    assert len(residue) <= 0.02 * n, residue
    assert len(cut) <= 0.03 * n, cut
