"""``organize --manifest``: any lab's image list (DICOM/PNG/JPEG/TIFF/PGM, 8/16 bit) to a dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.data.manifest import MANIFEST_COLUMNS, load_manifest
from mammolab.data.organize import ImportConfig, organize_manifest
from mammolab.errors import MammoLabError

from helpers import write_dicom


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and ".mammolab" not in p.parts}


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    """A small lab dataset in mixed formats, 24 patients, with masks for some images."""
    root = tmp_path / "lab"
    (root / "img").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    fmts = [".png", ".jpg", ".tif", ".pgm", ".dcm"]
    for p in range(24):
        for v, view in enumerate(("CC", "MLO")):
            label = "malignant" if p % 2 else "benign"
            arr16 = (rng.random((40, 32)) * 30000 + 1000).astype(np.uint16)
            fmt = fmts[(p + v) % len(fmts)]
            path = root / "img" / f"p{p}_{view}{fmt}"
            if fmt == ".dcm":
                write_dicom(path, arr16)
            elif fmt == ".jpg":
                cv2.imwrite(str(path), (arr16 >> 8).astype(np.uint8))
            else:
                cv2.imwrite(str(path), arr16 if fmt != ".pgm" or p % 3 else (arr16 >> 8).astype(np.uint8))
            mask = ""
            if p % 4 == 0:
                m = np.zeros((40, 32), np.uint8)
                m[10:20, 5:15] = 255
                cv2.imwrite(str(root / "img" / f"p{p}_{view}_mask.png"), m)
                mask = f"img/p{p}_{view}_mask.png"
            rows.append({"path": f"img/{path.name}", "label": "1" if label == "malignant" else "0",
                         "patient_id": f"L{p:03d}", "view": view, "mask": mask})
    pd.DataFrame(rows).to_csv(root / "list.csv", index=False)
    return root


def test_import_mixed_formats_split_by_patient(lab: Path, tmp_path: Path) -> None:
    before = _digest(lab)
    res = organize_manifest(lab / "list.csv", tmp_path / "ds", ImportConfig(folds=3), workers=1)
    df = load_manifest(tmp_path / "ds")
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert len(df) == 48 and set(df["split"]) == {"train", "val", "test"}
    assert res.quality["patient_overlap_total"] == 0
    assert set(df["label"]) == {"benign", "malignant"}
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    for _, r in df.iterrows():
        img = cv2.imread(str(tmp_path / "ds" / r["path"]), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == (40, 32)
        assert r["path"].startswith(f"{r['split']}/{r['label']}/")
    masked = df[df["mask"] != ""]
    assert len(masked) == 12
    assert (masked[["bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"]].to_numpy() == [5, 10, 15, 20]).all()
    assert _digest(lab) == before  # the input is never modified


def test_import_rerun_same_bytes_and_given_splits_kept(lab: Path, tmp_path: Path) -> None:
    organize_manifest(lab / "list.csv", tmp_path / "ds", workers=1)
    first = _digest(tmp_path / "ds")
    res = organize_manifest(lab / "list.csv", tmp_path / "ds", workers=1)
    assert res.skipped_units == 48 and _digest(tmp_path / "ds") == first
    src = pd.read_csv(lab / "list.csv", dtype=str, keep_default_na=False)
    src["split"] = ["test" if int(p[1:]) < 6 else "train" for p in src["patient_id"]]
    src.to_csv(lab / "split.csv", index=False)
    organize_manifest(lab / "split.csv", tmp_path / "ds2", workers=1)
    df = load_manifest(tmp_path / "ds2")
    assert set(df.loc[df["split"] == "test", "patient_id"]) == {f"L{p:03d}" for p in range(6)}
    assert (df["split"] == "val").any()


def test_import_errors(lab: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": ["a.png"], "label": ["x"]}).to_csv(bad, index=False)
    with pytest.raises(MammoLabError, match="no column 'patient_id'"):
        organize_manifest(bad, tmp_path / "o1")
    pd.DataFrame({"path": ["a.png"], "label": ["maybe"], "patient_id": ["p"]}).to_csv(bad, index=False)
    with pytest.raises(MammoLabError, match="column 'label' has \\['maybe'\\]"):
        organize_manifest(bad, tmp_path / "o2")
    # an unreadable file and an all-black one are skipped and reported; the rest is written
    src = pd.read_csv(lab / "list.csv", dtype=str, keep_default_na=False)
    (lab / "img" / "broken.png").write_bytes(b"nope")
    cv2.imwrite(str(lab / "img" / "black.png"), np.zeros((8, 8), np.uint8))
    extra = pd.DataFrame([{"path": "img/broken.png", "label": "0", "patient_id": "L000", "view": "CC", "mask": ""},
                          {"path": "img/black.png", "label": "1", "patient_id": "L001", "view": "CC", "mask": ""}])
    pd.concat([src, extra]).to_csv(lab / "with_bad.csv", index=False)
    res = organize_manifest(lab / "with_bad.csv", tmp_path / "o3", workers=1)
    assert len(res.manifest) == 48
    assert any("broken" in u and "unreadable image" in u for u in res.quality["unreadable"])
    assert any("black" in u and "all black" in u for u in res.quality["unreadable"])


def test_import_refuses_foreign_nonempty_out(lab: Path, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "thesis.docx").write_text("precious")
    with pytest.raises(MammoLabError, match="not empty and is not a MammoLab dataset"):
        organize_manifest(lab / "list.csv", out)
    assert (out / "thesis.docx").read_text() == "precious"


def test_cli_manifest_and_one_line_errors(lab: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["organize", "--manifest", str(lab / "list.csv"), "--out", str(tmp_path / "c"),
                              "--workers", "1", "--folds", "3"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "manifest.csv").is_file() and (tmp_path / "c" / "quality_report.md").is_file()
    res = runner.invoke(app, ["organize", "--manifest", str(lab / "list.csv"), "--out", str(tmp_path / "d"),
                              "--abnormality", "calc"])
    assert res.exit_code == 2 and "applies to CBIS-DDSM" in " ".join(res.output.split())
    help_text = runner.invoke(app, ["organize", "--help"], terminal_width=200).output
    for opt in ("--csv-dir", "--out", "--metadata", "--abnormality", "--labels", "--bwc", "--kind", "--roi-size",
                "--val-fraction", "--folds", "--bit-depth", "--seed", "--workers", "--overwrite", "--manifest"):
        assert opt in help_text
