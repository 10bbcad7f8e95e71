"""organize on the real CBIS-DDSM samples in ../shared (skipped when absent)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mammolab.data.cbis_import import _classify_roi
from mammolab.data.manifest import load_manifest
from mammolab.data.organize import OrganizeConfig, organize_cbis
from mammolab.data.patches import bbox as _bbox
from mammolab.data.patches import is_binary as _is_binary
from mammolab.io import read_dicom_pixels, read_image

pytestmark = pytest.mark.shared


def test_real_roi_dicoms_are_crops_not_masks(shared_dir: Path, tmp_path: Path) -> None:
    """Two of the three sit in 'ROI mask images' folders: content, not names, decides."""
    files = sorted((shared_dir / "dicom").rglob("*.dcm"))
    assert len(files) == 3
    for f in files:
        arr = read_dicom_pixels(f)
        assert arr.dtype == np.uint16 and arr.ndim == 2
        assert not _is_binary(arr), f
    csv = tmp_path / "csv"
    csv.mkdir()
    shutil.copy(shared_dir / "matching_rows_mass_case_description_test_set.csv",
                csv / "mass_case_description_test_set.csv")
    res = organize_cbis(shared_dir / "dicom", csv, tmp_path / "ds", OrganizeConfig(kind="crop", allow_degenerate=True),
                        workers=1)  # two patients, both malignant
    df = load_manifest(tmp_path / "ds")
    assert sorted(df["image_id"]) == ["Mass-Test_P_00016_LEFT_CC_1", "Mass-Test_P_00116_RIGHT_MLO_1",
                                      "Mass-Test_P_00116_RIGHT_MLO_2"]
    assert (df["split"] == "test").all() and (df["label"] == "malignant").all()
    assert res.quality["masks_swapped"] == [] and res.quality["patient_overlap_total"] == 0
    # the saved crop is the DICOM's pixels at 16 bit
    first = df.iloc[0]
    assert read_image(tmp_path / "ds" / first["path"]).shape == (first["height"], first["width"])
    # rows whose files are not in this small sample are reported, not fatal
    assert len(res.quality["files_missing"]) >= 4


def test_real_masks_bounding_boxes(shared_dir: Path) -> None:
    expected = {"P_00016_LEFT_CC_1": (1342, 2589, 1686, 2932), "P_00116_RIGHT_MLO_1": (1196, 1604, 1441, 2046),
                "P_00116_RIGHT_MLO_2": (1738, 1170, 2194, 1615)}
    for name, (x0, y0, x1, y1) in expected.items():
        mask = read_image(shared_dir / "full-png" / f"Mass-Test_{name}_mask.png") > 0
        bx0, by0, bx1, by1 = _bbox(mask)
        # These PNG masks carry a ~30 px outline band (value 19596) around the 255 core; the README's
        # box runs along the middle of that band. Ours (any non-zero pixel, exclusive right/bottom
        # edges) is the outer edge: it must contain the README box and stay within the band.
        assert bx0 <= x0 and by0 <= y0 and bx1 >= x1 + 1 and by1 >= y1 + 1
        assert max(x0 - bx0, y0 - by0, bx1 - x1 - 1, by1 - y1 - 1) <= 20


def test_classify_swapped_roi_files(tmp_path: Path) -> None:
    from mammolab.data.cbis_import import Abnormality

    from helpers import write_dicom

    full = (64, 48)
    mask = np.zeros(full, np.uint8)
    mask[10:20, 10:30] = 255
    crop = (np.random.default_rng(0).random((12, 22)) * 60000).astype(np.uint16)
    d = tmp_path / "Mass-Training_P_1_LEFT_CC_1" / "s"
    d.mkdir(parents=True)
    write_dicom(d / "000000.dcm", mask)
    write_dicom(d / "000001.dcm", crop)
    abn = Abnormality("1", "benign", "BENIGN", "mass", "3", "3", "Mass-Training_P_1_LEFT_CC_1",
                      ["Mass-Training_P_1_LEFT_CC_1/s/000000.dcm", "Mass-Training_P_1_LEFT_CC_1/s/000001.dcm"], 1)
    events: list[dict[str, str]] = []
    m, c, idx = _classify_roi(tmp_path, abn.roi_files, full, events, abn)
    assert idx == 0 and m.sum() == 200 and c.shape == (12, 22)
    assert [e["type"] for e in events] == ["mask_swapped"]
