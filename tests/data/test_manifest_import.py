"""``organize --manifest`` with several rows per file: --kind full|roi|crop, box validation, bad CSVs, splits."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolab.cli import app, main
from mammolab.data.manifest import load_manifest
from mammolab.data.organize import ImportConfig, organize_manifest
from mammolab.errors import MammoLabError

SIZE = 64


def _film(path: Path, seed: int) -> np.ndarray:
    """A 64x64 8-bit 'film': noisy tissue, a bright lesion at rows 20-30, cols 10-22."""
    rng = np.random.default_rng(seed)
    img = (rng.random((SIZE, SIZE)) * 80 + 40).astype(np.uint8)
    img[20:30, 10:22] = 250
    cv2.imwrite(str(path), img)
    return img


def _collection(root: Path, patients: int = 20) -> list[dict[str, str]]:
    """Two films per patient, alternate patients malignant; one lesion row per film with a box."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for p in range(patients):
        for side in ("L", "R"):
            name = f"p{p:02d}{side}.png"
            _film(root / "img" / name, p * 2 + (side == "R"))
            rows.append({"path": f"img/{name}", "label": "malignant" if p % 2 else "benign",
                         "patient_id": f"P{p:02d}", "view": "MLO",
                         "bbox_x0": "10", "bbox_y0": "20", "bbox_x1": "22", "bbox_y1": "30"})
    return rows


def _write(rows: list[dict[str, str]], path: Path) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _main(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The real console entry point (user errors: one line, exit code 2), its exit code and output."""
    monkeypatch.setattr("sys.argv", ["mammolab", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    cap = capsys.readouterr()
    return code, " ".join((cap.out + cap.err).split())


def _run(csv: Path, out: Path, **cfg: object):
    return organize_manifest(csv, out, ImportConfig(folds=2, **cfg), workers=1)


@pytest.fixture
def coll(tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path / "coll"
    return root, _collection(root)


# ------------------------------------------------------------------------------------------------ kinds

def test_full_merges_lesion_rows_of_a_file(coll, tmp_path: Path) -> None:
    root, rows = coll
    rows.append({**rows[0], "bbox_x0": "40", "bbox_y0": "40", "bbox_x1": "50", "bbox_y1": "52"})  # 2nd lesion
    rows.append({**rows[2], "label": "benign", "bbox_x0": "", "bbox_y0": "", "bbox_x1": "", "bbox_y1": ""})
    res = _run(_write(rows, root / "m.csv"), tmp_path / "ds")
    df = load_manifest(tmp_path / "ds")
    assert len(df) == 40 and df["image_id"].is_unique
    assert not any("__" in p for p in df["path"])  # no duplicate image per lesion row
    two = df[df["image_id"] == "p00L"].iloc[0]
    assert json.loads(two["boxes"]) == [[10, 20, 22, 30], [40, 40, 50, 52]]
    assert two["n_abnormalities"] == 2 and (two["bbox_x0"], two["bbox_y1"]) == (10, 52)
    # p01L is malignant in one row, benign in another: one image, malignant, reported with its lines
    conflict = df[df["image_id"] == "p01L"].iloc[0]
    assert conflict["label"] == "malignant" and conflict["path"].split("/")[1] == "malignant"
    assert conflict["conflict"] in (True, "True")
    (line,) = res.quality["conflicting_labels"]
    assert line.startswith("p01L:") and "malignant (line 4), benign (line 43)" in line
    assert "labelled malignant" in line and json.loads(conflict["boxes"]) == [[10, 20, 22, 30]]


def test_roi_one_patch_per_lesion_and_rows_without_box_skipped(coll, tmp_path: Path) -> None:
    root, rows = coll
    rows.append({**rows[0], "bbox_x0": "40", "bbox_y0": "40", "bbox_x1": "50", "bbox_y1": "52"})
    rows.append({**rows[4], "bbox_x0": "", "bbox_y0": "", "bbox_x1": "", "bbox_y1": ""})  # no box, no mask
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[5:15, 30:40] = 255
    cv2.imwrite(str(root / "img" / "m.png"), m)
    rows.append({**rows[6], "bbox_x0": "", "bbox_y0": "", "bbox_x1": "", "bbox_y1": "", "mask": "img/m.png"})
    res = _run(_write(rows, root / "m.csv"), tmp_path / "ds", kind="roi", roi_size=32, roi_margin=0.5)
    df = load_manifest(tmp_path / "ds")
    assert len(df) == 40 + 1 + 1  # every boxed lesion, the extra lesion of p00L, the masked one
    assert set(df.loc[df["image_id"].str.startswith("p00L"), "image_id"]) == {"p00L_lesion1", "p00L_lesion2"}
    assert (df["width"] == 32).all() and (df["height"] == 32).all()
    first = df[df["image_id"] == "p00L_lesion1"].iloc[0]
    patch = cv2.imread(str(tmp_path / "ds" / first["path"]), cv2.IMREAD_UNCHANGED)
    x0, y0, x1, y1 = (int(round(first[c])) for c in ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"))
    assert patch[y0 + 2:y1 - 2, x0 + 2:x1 - 2].min() > 250 * 257 * 0.9  # the lesion sits inside its box
    masked = df[df["mask"] != ""]
    assert len(masked) == 1 and masked.iloc[0]["image_id"] == "p03L_lesion2"
    assert cv2.imread(str(tmp_path / "ds" / masked.iloc[0]["mask"]), cv2.IMREAD_UNCHANGED).max() == 255
    (skipped,) = res.quality["rows_skipped"]
    assert skipped.startswith("img/p02L.png (line 43)") and "no box and no mask" in skipped


def test_crop_is_the_box_itself(coll, tmp_path: Path) -> None:
    root, rows = coll
    rows[0].update(bbox_x0="8.5", bbox_y0="18", bbox_x1="24", bbox_y1="33")
    _run(_write(rows, root / "m.csv"), tmp_path / "ds", kind="crop", bit_depth=8)
    df = load_manifest(tmp_path / "ds")
    assert len(df) == 40
    r = df[df["image_id"] == "p00L_lesion1"].iloc[0]
    crop = cv2.imread(str(tmp_path / "ds" / r["path"]), cv2.IMREAD_UNCHANGED)
    film = cv2.imread(str(root / "img" / "p00L.png"), cv2.IMREAD_UNCHANGED)
    assert crop.shape == (15, 16) and np.array_equal(crop, film[18:33, 8:24])
    assert json.loads(r["boxes"]) == [[0.5, 0, 16, 15]]
    other = df[df["image_id"] == "p00R_lesion1"].iloc[0]
    assert (other["width"], other["height"]) == (12, 10)


def test_cli_kind_roi_with_manifest(coll, tmp_path: Path, monkeypatch, capsys) -> None:
    root, rows = coll
    res = CliRunner().invoke(app, ["organize", "--manifest", str(_write(rows, root / "m.csv")), "--out",
                                   str(tmp_path / "c"), "--kind", "roi", "--roi-size", "24", "--workers", "1",
                                   "--folds", "2"])
    assert res.exit_code == 0, res.output
    df = load_manifest(tmp_path / "c")
    assert len(df) == 40 and (df["width"] == 24).all()
    code, output = _main(monkeypatch, capsys, "organize", "--manifest", str(root / "m.csv"), "--out",
                         str(tmp_path / "d"), "--bwc", "drop")
    assert code == 2 and "--bwc applies to CBIS-DDSM" in output


# ------------------------------------------------------------------------------------------------ boxes

def test_bad_boxes_reported_skipped_clipped(coll, tmp_path: Path) -> None:
    root, rows = coll
    bad = {  # film index -> (box, what the report must say)
        0: (("50", "50", "80", "70"), "clipped to 50,50,64,64"),
        2: (("100", "100", "120", "120"), "lies wholly outside the 64x64 image"),
        4: (("nan", "1", "5", "5"), "bbox_x0 'nan' is not a finite number"),
        6: (("1", "inf", "5", "5"), "bbox_y0 'inf' is not a finite number"),
        8: (("1", "1", "abc", "5"), "bbox_x1 'abc' is not a number"),
        10: (("30", "1", "5", "5"), "inverted or empty box"),
        12: (("1", "1", "5", ""), "incomplete box (bbox_y1 empty)"),
    }
    for i, (box, _) in bad.items():
        rows[i].update(zip(("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1"), box, strict=True))
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["organize", "--manifest", str(_write(rows, root / "m.csv")), "--out", str(out),
                                   "--workers", "1", "--folds", "2"])
    assert res.exit_code == 0, res.output
    assert "manifest rows skipped: 6" in res.output and "boxes clipped to the image: 1" in res.output
    q = json.loads((out / "quality_report.json").read_text())
    assert len(q["rows_skipped"]) == 6
    for i, (_, says) in bad.items():
        where = f"{rows[i]['path']} (line {i + 2})"
        section = q["boxes_clipped"] if i == 0 else q["rows_skipped"]
        assert any(s.startswith(where) and says in s for s in section), (where, says, section)
    df = load_manifest(out)
    assert len(df) == 40 - 6  # a skipped row was the film's only row: that film is not imported
    assert not df["boxes"].str.contains("nan|inf|Infinity", case=False).any()
    clipped = df[df["image_id"] == "p00L"].iloc[0]
    assert json.loads(clipped["boxes"]) == [[50, 50, 64, 64]]
    md = (out / "quality_report.md").read_text()
    assert "## Manifest rows skipped: 6" in md and "line 12" in md
    for cbis_only in ("swapped", "Crops missing", "BENIGN_WITHOUT_CALLBACK", "official test split"):
        assert cbis_only not in md


# ---------------------------------------------------------------------------------------- bad manifests

@pytest.mark.parametrize(("content", "says"), [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b",,\n , ,\n", "is empty"),
    (b"path,label,patient_id\n", "lists no image"),
    ("path,label,patient_id\nimg/p00L.png,bénin,P00\n".encode("latin-1"),
     "is not UTF-8 text (byte 0xe9 on line 2); expected a UTF-8 CSV"),
    (b'path,label,patient_id\nimg/p00L.png,"benign,P00\nimg/p00R.png,benign,P00\n', "is not a well-formed CSV"),
    (b'path,label,patient_id\n"img/p00L.png"x,benign,P00\n', "is not a well-formed CSV"),
    (b"path,label,patient_id\nimg/p00L.png,benign,P00,extra\n", "line 2 has 4 fields, the header has 3"),
    (b"path,label,patient_id\nimg/p00L.png,benign,P00\nimg/p00R.png,benign,\nimg/p01L.png,benign, \n",
     "empty patient_id on line(s) 3, 4"),
    (b"path,label\nimg/p00L.png,benign\n", "has no column 'patient_id'"),
])
def test_bad_csv_is_one_line_and_writes_nothing(coll, tmp_path: Path, content: bytes, says: str,
                                                monkeypatch, capsys) -> None:
    root, _ = coll
    csv = root / "bad.csv"
    csv.write_bytes(content)
    out = tmp_path / "never"
    with pytest.raises(MammoLabError) as exc:
        organize_manifest(csv, out, workers=1)
    assert says in str(exc.value) and "\n" not in str(exc.value)
    code, output = _main(monkeypatch, capsys, "organize", "--manifest", str(csv), "--out", str(out))
    assert code == 2 and output.startswith("error: --manifest:") and says in output
    assert "Traceback" not in output
    assert not out.exists()


def test_no_usable_row_says_why(coll, tmp_path: Path) -> None:
    root, rows = coll
    bad = [{**r, "bbox_x0": "abc"} for r in rows[:2]]
    with pytest.raises(MammoLabError, match=r"m.csv: no usable row \(e.g. img/p00L.png \(line 2\): bbox_x0 'abc' "
                                            "is not a number; row skipped; img/p00R.png"):
        _run(_write(bad, root / "m.csv"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_utf8_bom_and_quoted_commas_are_fine(coll, tmp_path: Path) -> None:
    root, rows = coll
    df = pd.DataFrame(rows)
    df["view"] = "MLO, left"
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + df.to_csv(index=False).encode())
    _run(root / "bom.csv", tmp_path / "ds")
    assert set(load_manifest(tmp_path / "ds")["view"]) == {"MLO, left"}


def test_out_beside_the_csv_is_fine_but_not_over_the_images(coll, tmp_path: Path) -> None:
    root, rows = coll
    csv = _write(rows, root / "m.csv")
    res = _run(csv, root / "dataset")  # the CSV's own folder holds the output
    assert len(res.manifest) == 40
    assert len(_run(csv, root / "img" / "ds").manifest) == 40  # beside the images is fine too
    with pytest.raises(MammoLabError, match="overlaps the input"):
        _run(csv, root / "img")  # this folder holds the images: refused


def test_rerun_reuses_and_redoes_a_changed_file(coll, tmp_path: Path) -> None:
    root, rows = coll
    csv = _write(rows, root / "m.csv")
    _run(csv, tmp_path / "ds")
    res = _run(csv, tmp_path / "ds")
    assert res.skipped_units == 40
    rows.append({**rows[0], "bbox_x0": "40", "bbox_y0": "40", "bbox_x1": "50", "bbox_y1": "52"})
    res = _run(_write(rows, csv), tmp_path / "ds")
    assert (res.skipped_units, res.processed_units) == (39, 1)
    assert res.manifest.set_index("image_id").loc["p00L", "n_abnormalities"] == 2


# --------------------------------------------------------------------------------------------- splits

def test_val_without_a_class_is_refused_then_allowed(coll, tmp_path: Path, monkeypatch, capsys) -> None:
    root, rows = coll
    for r in rows:  # val: only benign patients; test and train both classes
        p = int(r["patient_id"][1:])
        r["split"] = "val" if p in (0, 2, 4) else "test" if p in (6, 7, 9) else "train"
    csv = _write(rows, root / "m.csv")
    out = tmp_path / "ds"
    code, msg = _main(monkeypatch, capsys, "organize", "--manifest", str(csv), "--out", str(out), "--workers", "1")
    assert code == 2 and "the val split has no malignant patient (patients per class: benign=3, " \
        "malignant=0)" in msg and "--allow-degenerate" in msg
    assert not out.exists()
    res = CliRunner().invoke(app, ["organize", "--manifest", str(csv), "--out", str(out), "--workers", "1",
                                   "--allow-degenerate"])
    assert res.exit_code == 0, res.output
    assert "warning: the val split has no malignant patient" in " ".join(res.output.split())
    assert "warning: test split: fewer than 2 patients of benign" in " ".join(res.output.split())
    q = json.loads((out / "quality_report.json").read_text())
    assert q["split_warnings"][0].startswith("the val split has no malignant patient")
    # recorded with the config, though outside its hash (it changes no pixel, label or split)
    assert json.loads((out / "mammolab.json").read_text())["config"]["allow_degenerate"] is True


def test_few_patients_of_a_class_warns_only(coll, tmp_path: Path) -> None:
    root, rows = coll
    for r in rows:
        p = int(r["patient_id"][1:])
        r["split"] = "val" if p in (0, 2, 1) else "test" if p in (4, 3, 5) else "train"
    res = _run(_write(rows, root / "m.csv"), tmp_path / "ds")
    assert res.quality["split_warnings"] == [
        "val split: fewer than 2 patients of malignant (patients per class: benign=2, malignant=1)",
        "test split: fewer than 2 patients of benign (patients per class: benign=1, malignant=2)"]
    assert "## Splits with too few patients of a class: 2" in (tmp_path / "ds" / "quality_report.md").read_text()
