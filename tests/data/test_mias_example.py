"""examples/mias_to_manifest.py: mini-MIAS's Info.txt to a manifest, then organize --kind roi on it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from mammolab.data.manifest import load_manifest
from mammolab.data.organize import ImportConfig, organize_manifest

REPO = Path(__file__).resolve().parents[2]
MIAS_DEV = REPO.parent / "shared" / "data" / "mias-dev"


def _example():
    spec = importlib.util.spec_from_file_location("mias_to_manifest", REPO / "examples" / "mias_to_manifest.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


INFO = """MAMMOGRAPHIC IMAGE ANALYSIS SOCIETY
some free text: 1st column: MIAS database reference number.
mdb001 G CIRC B 20 70 6
mdb002 G NORM
mdb003 D CALC M *NOTE 3*
mdb004 F SPIC M 60 20 5
mdb004 F SPIC M 20 15 4
mdb005 F ARCH B 70 50 12
mdb006 D NORM
"""


@pytest.fixture
def mini(tmp_path: Path) -> Path:
    """Six 96x80 (WxH) films; each listed lesion is a bright disc at (X, H - Y)."""
    root = tmp_path / "mias"
    (root / "images").mkdir(parents=True)
    (root / "Info.txt").write_text(INFO, encoding="latin-1")
    rng = np.random.default_rng(0)
    for n in range(1, 7):
        img = (rng.random((80, 96)) * 60 + 40).astype(np.uint8)
        for line in INFO.splitlines():
            f = line.split()
            if f and f[0] == f"mdb{n:03d}" and len(f) == 7:
                x, y, r = int(f[4]), int(f[5]), int(f[6])
                cv2.circle(img, (x, 80 - y), r, 250, -1)
        cv2.imwrite(str(root / "images" / f"mdb{n:03d}.png"), img)
    return root


def test_info_to_roi_manifest_and_patches(mini: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ex = _example()
    out = tmp_path / "work" / "manifest.csv"
    assert ex.main([str(mini), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(
        "4 rows (2 malignant) from 3 films of 3 patients; left out: 1 no coordinates, 2 normal films")
    df = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(df["path"]) == ["../mias/images/mdb001.png"] + ["../mias/images/mdb004.png"] * 2 + \
        ["../mias/images/mdb005.png"]
    # centre (X, H - Y), radius R: mdb001 at X=20, Y=70 in an 80-row film -> row 10
    assert df.loc[0, ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].tolist() == ["14", "4", "26", "16"]
    assert list(df["patient_id"]) == ["mias001", "mias002", "mias002", "mias003"]  # (n + 1) // 2
    assert list(df["side"]) == ["R", "L", "L", "R"] and list(df["label"]) == ["benign", "malignant",
                                                                               "malignant", "benign"]
    # organize cuts one patch per lesion; each patch's box holds its bright disc (so the y flip is right)
    df.assign(split=df["patient_id"].map({"mias001": "train", "mias002": "val", "mias003": "test"})) \
        .to_csv(out, index=False)  # three women: too few to split at random
    res = organize_manifest(out, tmp_path / "work" / "ds", ImportConfig(kind="roi", roi_size=32, folds=2,
                                                                          allow_degenerate=True), workers=1)
    ds = load_manifest(tmp_path / "work" / "ds")
    assert sorted(ds["image_id"]) == ["mdb001_lesion1", "mdb004_lesion1", "mdb004_lesion2", "mdb005_lesion1"]
    assert res.quality["rows_skipped"] == [] and res.quality["boxes_clipped"] == []
    for _, r in ds.iterrows():
        patch = cv2.imread(str(tmp_path / "work" / "ds" / r["path"]), cv2.IMREAD_UNCHANGED) >> 8
        cx, cy = int((r["bbox_x0"] + r["bbox_x1"]) / 2), int((r["bbox_y0"] + r["bbox_y1"]) / 2)
        assert patch[cy - 1:cy + 2, cx - 1:cx + 2].min() >= 240, r["image_id"]
    # --kind full: every film, NORM films as benign, the two lesions of mdb004 on one image
    assert ex.main([str(mini), "--out", str(tmp_path / "full.csv"), "--kind", "full"]) == 0
    full = pd.read_csv(tmp_path / "full.csv", dtype=str, keep_default_na=False)
    assert len(full) == 7 and set(full.loc[full["abnormality"] == "norm", "label"]) == {"benign"}
    assert full.loc[full["path"].str.endswith("mdb003.png"), "bbox_x0"].tolist() == [""]


def test_missing_info_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _example().main([str(tmp_path), "--out", str(tmp_path / "m.csv")]) == 2
    assert "Info.txt not found" in capsys.readouterr().err


def test_mias_dev_films_roi(tmp_path: Path) -> None:
    """The real dev films (../shared, skipped when absent): every located lesion gets its own patch."""
    if not (MIAS_DEV / "Info.txt").is_file():
        pytest.skip("../shared/data/mias-dev is not present (only in the developers' checkout and CI)")
    ex = _example()
    rows = ex.parse_info((MIAS_DEV / "Info.txt").read_text(encoding="latin-1"))
    located = [r for r in rows if r.x is not None and (MIAS_DEV / "images" / f"{r.ref}.png").is_file()]
    out = tmp_path / "manifest.csv"
    assert ex.main([str(MIAS_DEV), "--out", str(out)]) == 0
    res = organize_manifest(out, tmp_path / "ds", ImportConfig(kind="roi", roi_size=64), workers=1)
    df = load_manifest(tmp_path / "ds")
    assert len(df) == len(located) and df["image_id"].is_unique and res.quality["rows_skipped"] == []
    assert (df["width"] == 64).all() and res.quality["patient_overlap_total"] == 0
    for s in ("train", "val", "test"):  # the default split keeps both classes everywhere on these films
        assert set(df.loc[df["split"] == s, "label"]) == {"benign", "malignant"}
    # both films of a woman share a split; mdb001 is the published X=535 Y=425 R=197 lesion
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    src = pd.read_csv(out)
    assert src.loc[src["path"].str.endswith("mdb001.png"), ["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]] \
        .iloc[0].tolist() == [338, 402, 732, 796]
