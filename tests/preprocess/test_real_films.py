"""The real CBIS-DDSM films in ../shared: the burnt-in "R MLO" label goes, the breast and lesions stay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mammolab.io.images import read_image
from mammolab.preprocess.ops import Sample, crop_border, remove_annotations
from mammolab.preprocess.pipeline import Pipeline, load_preprocess_config

pytestmark = pytest.mark.shared
F = 4  # films are downscaled by 4 for speed (the steps work on a 512-pixel thumbnail anyway)

# Lesion boxes (xmin ymin xmax ymax) from ../shared/README.md, at full size.
FILMS = {
    "Mass-Test_P_00016_LEFT_CC": [(1342, 2589, 1686, 2932)],
    "Mass-Test_P_00116_RIGHT_MLO": [(1196, 1604, 1441, 2046), (1738, 1170, 2194, 1615)],
}


def load(shared_dir: Path, name: str) -> Sample:
    img = read_image(shared_dir / "full-png" / f"{name}_full.png")
    small = cv2.resize(img, (img.shape[1] // F, img.shape[0] // F), interpolation=cv2.INTER_AREA)
    boxes = [[v / F for v in b] for b in FILMS[name]]
    return Sample(small, None, boxes)


def find_label(img: np.ndarray) -> tuple[int, int, int, int]:
    """The burnt-in label: bright blobs outside the breast (not the largest bright component)."""
    _, bright = cv2.threshold(img, 150, 255, cv2.THRESH_BINARY)
    n, _, stats, _ = cv2.connectedComponentsWithStats(bright)
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1] + 1
    h, w = img.shape
    parts = [stats[i] for i in order[1:] if stats[i, cv2.CC_STAT_AREA] > 30
             and stats[i, cv2.CC_STAT_TOP] < h // 4 and stats[i, cv2.CC_STAT_LEFT] < w // 4]
    assert parts, "no label found in the film's top-left corner"
    x0 = min(p[0] for p in parts)
    y0 = min(p[1] for p in parts)
    x1 = max(p[0] + p[2] for p in parts)
    y1 = max(p[1] + p[3] for p in parts)
    return int(x0), int(y0), int(x1), int(y1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_label_removed_lesions_kept_on_real_mlo(shared_dir: Path, dtype: type) -> None:
    s = load(shared_dir, "Mass-Test_P_00116_RIGHT_MLO")
    if dtype == np.uint16:  # the same film as 16-bit, as read from DICOM
        s = Sample(s.image.astype(np.uint16) * 257, None, s.boxes)
    x0, y0, x1, y1 = find_label((s.image >> 8).astype(np.uint8) if dtype == np.uint16 else s.image)
    assert (x1 - x0) * (y1 - y0) > 200  # "R MLO" is a sizeable mark
    out = remove_annotations(s)
    assert out.image.dtype == dtype
    assert out.image[y0:y1, x0:x1].max() == 0
    # Lesion boxes straddle the skin line: every tissue pixel in them is kept exactly.
    level = 30 * (257 if dtype == np.uint16 else 1)
    for bx0, by0, bx1, by1 in (map(int, b) for b in s.boxes):
        before, after = s.image[by0:by1, bx0:bx1], out.image[by0:by1, bx0:bx1]
        assert (before > level).mean() > 0.5
        np.testing.assert_array_equal(after[before > level], before[before > level])
    # The breast (all clearly non-background pixels right of the label) is kept.
    tissue = s.image > 0.15 * s.image.max()
    tissue[:, : x1 + 20] = False
    assert (out.image[tissue] == s.image[tissue]).mean() > 0.995


def test_film_edge_cropped_on_real_cc(shared_dir: Path) -> None:
    s = load(shared_dir, "Mass-Test_P_00016_LEFT_CC")
    saturated = s.image >= 250
    assert saturated[:, -20:].mean() > 0.15  # the bright film edge along the right side
    out = crop_border(s)
    x0, y0, x1, y1 = out.meta["crop"]
    assert (out.image >= 250)[:, -5:].mean() < 0.01
    assert x1 >= s.width - 25  # only the edge went, not the breast
    bx0, by0, bx1, by1 = (int(v) for v in s.boxes[0])
    np.testing.assert_allclose(out.boxes[0], s.boxes[0] - [x0, y0, x0, y0])
    np.testing.assert_array_equal(out.image[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0], s.image[by0:by1, bx0:bx1])


@pytest.mark.parametrize("name", list(FILMS))
def test_default_pipeline_on_real_films(shared_dir: Path, name: str) -> None:
    s = load(shared_dir, name)
    out = Pipeline.from_config(load_preprocess_config(size=(512, 320)))(s)
    assert out.image.shape == (512, 320) and out.image.dtype == np.uint8
    assert len(out.boxes) == len(FILMS[name])
    for (bx0, by0, bx1, by1), b in zip(out.boxes, s.boxes, strict=True):
        patch = out.image[int(by0):int(np.ceil(by1)), int(bx0):int(np.ceil(bx1))]
        src = s.image[int(b[1]):int(b[3]), int(b[0]):int(b[2])]
        # The boxes moved with the image: the output box shows the same lesion (mirrored by orient) ...
        src = cv2.resize(src[:, ::-1], (patch.shape[1], patch.shape[0]), interpolation=cv2.INTER_AREA)
        assert np.corrcoef(src.ravel().astype(float), patch.ravel().astype(float))[0, 1] > 0.9
        # ... still visible, not blanked.
        assert (patch > 0).mean() > 0.7 and patch[patch > 0].mean() > 60
    # Chest wall on the left after orient (both films have it on the right originally).
    assert out.meta["hflip"] is True
    assert out.image[:, :160].astype(float).sum() > 1.5 * out.image[:, 160:].astype(float).sum()
