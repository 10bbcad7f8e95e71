"""mammolab synth: a CBIS-DDSM-shaped download with the real quirks and a learnable signal."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from mammolab.data.cbis import DownloadIndex, read_case_csv, read_case_csvs
from mammolab.data.synth import (
    CALC_COLUMNS,
    MASS_COLUMNS,
    METADATA_COLUMNS,
    SynthResult,
    draw_lesion,
    make_lesion_patch,
    synthesize,
)
from mammolab.errors import MammoLabError

CSV_NAMES = [f"{k}_case_description_{s}_set.csv" for k in ("mass", "calc") for s in ("train", "test")]
ARGS = {"patients": 10, "image_size": 256, "seed": 0}


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(tmp_path_factory.mktemp("legacy") / "out", layout="legacy", workers=1, **ARGS)


@pytest.fixture(scope="module")
def nbia(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    return synthesize(tmp_path_factory.mktemp("nbia") / "out", layout="nbia", workers=2, **ARGS)


@pytest.fixture(scope="module")
def rows(legacy: SynthResult) -> pd.DataFrame:
    return read_case_csvs(legacy.csv_dir, "all")


def _pixels(path: Path) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "README.txt"}


# ------------------------------------------------------------------------------------------- CSVs

@pytest.mark.parametrize("layout", ["legacy", "nbia"])
def test_csvs_have_official_columns_and_quirks(layout: str, legacy: SynthResult, nbia: SynthResult) -> None:
    res = legacy if layout == "legacy" else nbia
    assert sorted(p.name for p in res.csv_dir.iterdir()) == sorted(CSV_NAMES)
    for name in CSV_NAMES:
        raw = (res.csv_dir / name).read_bytes()
        header = raw.split(b"\r\n", 1)[0].decode()
        expected = MASS_COLUMNS if name.startswith("mass") else CALC_COLUMNS
        assert header.split(",") == list(expected)
        assert ("breast_density" in header) == name.startswith("mass")
        assert ("breast density" in header) == name.startswith("calc")
        lines = raw.count(b"\r\n")
        parsed = list(csv.reader(io.StringIO(raw.decode(), newline="")))
        assert lines == len(parsed), "every record ends in CRLF"
        # The embedded newline sits inside the quotes: mass files in the ROI mask path (last column),
        # calc files in the cropped image path, exactly as in the real CSVs.
        col = 13 if name.startswith("mass") else 12
        assert len(parsed) > 1
        assert all(r[col].endswith("\n") and "\n" not in r[col][:-1] for r in parsed[1:])
        assert raw.count(b'.dcm\n"') == len(parsed) - 1
        df = read_case_csv(res.csv_dir / name)
        assert len(df) == len(parsed) - 1 > 0
        assert set(df["pathology"]) <= {"BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"}
        assert df["mask_file"].str.fullmatch(r"00000[01]\.dcm").all()
        assert (df["crop_series_uid"] == df["mask_series_uid"]).all()
        assert (df["roi_case_id"] == df["case_id"] + "_" + df["abnormality_id"]).all()
        assert set(df["official_split"]) == {"train" if "train" in name else "test"}
        assert df["assessment"].astype(int).between(0, 5).all()
        assert df["subtlety"].astype(int).between(1, 5).all()
        assert df["density"].astype(int).between(1, 4).all()
    a = read_case_csvs(legacy.csv_dir, "all").drop(columns=["csv_file"])
    b = read_case_csvs(nbia.csv_dir, "all").drop(columns=["csv_file"])
    pd.testing.assert_frame_equal(a, b)  # one dataset, two layouts


def test_header_matches_the_real_csvs(legacy: SynthResult, shared_dir: Path) -> None:
    for name in CSV_NAMES:
        real = (shared_dir / "csv" / name).read_bytes().split(b"\r\n", 1)[0]
        ours = (legacy.csv_dir / name).read_bytes().split(b"\r\n", 1)[0]
        assert ours == real, name


def test_dataset_traits(rows: pd.DataFrame) -> None:
    assert set(rows["abnormality"]) == {"mass", "calc"}
    assert (rows["pathology"] == "BENIGN_WITHOUT_CALLBACK").any()
    # Each abnormality in both views under the same id.
    views = rows.groupby(["patient_id", "side", "abnormality", "abnormality_id"])["view"].apply(set)
    assert (views == {"CC", "MLO"}).all()
    assert (rows.groupby("patient_id")["side"].nunique() == 2).any()
    per_image = rows.groupby("case_id")
    assert (per_image.size() >= 2).any() and (per_image.size() >= 3).any()
    malignant = rows["pathology"].eq("MALIGNANT")
    assert (malignant.groupby(rows["case_id"]).nunique() == 2).any(), "an image with benign and malignant"
    # Split by patient, stratified: both classes of masses in train and in test.
    for split in ("train", "test"):
        mass = rows[(rows["official_split"] == split) & (rows["abnormality"] == "mass")]
        assert set(mass["pathology"].eq("MALIGNANT")) == {True, False}
    splits = rows.groupby("patient_id")["official_split"].nunique()
    assert (splits == 2).sum() == 1  # from 10 patients: one patient in Mass-Test and Calc-Training
    quirk = rows[rows["patient_id"] == splits.idxmax()]
    assert set(zip(quirk["abnormality"], quirk["official_split"], strict=True)) == {("mass", "test"),
                                                                                    ("calc", "train")}
    test_patients = rows.loc[rows["official_split"] == "test", "patient_id"].nunique()
    assert 0.15 <= test_patients / rows["patient_id"].nunique() <= 0.4


def test_forty_patients_are_enough_for_five_folds() -> None:
    from mammolab.data.synth import _plan

    plan = _plan(Path("/nonexistent"), 40, 1024, "legacy", 0)
    recs = [r for name, rs in plan.csv_rows.items() if name.startswith("mass") for r in rs]
    df = pd.DataFrame(recs, columns=MASS_COLUMNS)
    df["split"] = ["test" if "Test" in p else "train" for p in df["image file path"]]
    for split, minimum in (("train", 5), ("test", 2)):
        part = df[df["split"] == split]
        per_class = part.groupby(part["pathology"].eq("MALIGNANT"))["patient_id"].nunique()
        assert len(per_class) == 2 and per_class.min() >= minimum, (split, per_class.to_dict())


# ----------------------------------------------------------------------------------------- DICOMs

@pytest.mark.parametrize("layout", ["legacy", "nbia"])
def test_dicoms_match_csv_uids_and_masks_are_binary(layout: str, legacy: SynthResult, nbia: SynthResult) -> None:
    res = legacy if layout == "legacy" else nbia
    df = read_case_csvs(res.csv_dir, "all")
    index = DownloadIndex.build(res.download_dir, metadata=res.metadata)
    assert len(index.table) == res.files
    mask_at = {0: 0, 1: 0}
    wrong = 0
    for _, r in df.iterrows():
        full = index.series_files(r["image_series_uid"])
        assert len(full) == 1
        head = index.header(full[0])
        assert head["patient_id"] == r["case_id"] and head["study_uid"] == r["image_study_uid"]
        assert head["series_description"] == "full mammogram images"
        full_ds = pydicom.dcmread(res.download_dir / full[0])
        assert (full_ds.SOPClassUID, full_ds.Modality) == ("1.2.840.10008.5.1.4.1.1.7", "MG")
        assert full_ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert (full_ds.BitsAllocated, full_ds.BitsStored, full_ds.PhotometricInterpretation) == (16, 16,
                                                                                                   "MONOCHROME2")
        assert full_ds.Laterality == r["side"][0] and full_ds.PatientOrientation == r["view"]
        full_px = full_ds.pixel_array
        assert full_px.shape[0] == 256 and full_px.shape[1] == pytest.approx(0.6 * 256, abs=2)
        roi = index.series_files(r["crop_series_uid"])
        assert len(roi) == 2
        kinds = {}
        for i, rel in enumerate(roi):
            ds = pydicom.dcmread(res.download_dir / rel)
            assert ds.PatientID == r["roi_case_id"] and ds.StudyInstanceUID != r["image_study_uid"]
            px = ds.pixel_array
            if ds.SeriesDescription == "ROI mask images":
                assert px.dtype == np.uint8 and px.shape == full_px.shape
                assert set(np.unique(px)) == {0, 255}
                kinds["mask"] = i
                mask = px > 0
            else:
                assert ds.SeriesDescription == "cropped images"
                assert px.dtype == np.uint16 and len(np.unique(px)) > 50  # a crop, not binary
                kinds["crop"] = i
                crop = px
        assert sorted(kinds) == ["crop", "mask"]
        mask_at[kinds["mask"]] += 1
        wrong += int(r["mask_file"] != f"{kinds['mask']:06d}.dcm")
        # The crop is the full image around the lesion; the lesion is brighter than the tissue around it.
        ys, xs = np.nonzero(mask)
        assert crop.shape[0] > ys.max() - ys.min() and crop.shape[1] > xs.max() - xs.min()
        ring = np.zeros_like(mask)
        ring[max(0, ys.min() - 8):ys.max() + 9, max(0, xs.min() - 8):xs.max() + 9] = True
        assert full_px[mask].mean() > full_px[ring & ~mask].mean()
    assert mask_at[0] > 0 and mask_at[1] > 0, "mask is sometimes the first file, sometimes the second"
    assert wrong > 0, "some CSV rows name the crop as the mask"


def test_folder_layouts(legacy: SynthResult, nbia: SynthResult) -> None:
    leg = sorted(p.relative_to(legacy.download_dir).as_posix() for p in legacy.download_dir.rglob("*.dcm"))
    nb = sorted(p.relative_to(nbia.download_dir).as_posix() for p in nbia.download_dir.rglob("*.dcm"))
    assert len(leg) == len(nb) == legacy.files
    assert all(len(p.split("/")) == 4 and p.split("/")[-1] in ("000000.dcm", "000001.dcm") for p in leg)
    assert all(p.startswith("CBIS-DDSM/") and p.split("/")[-1] in ("1-1.dcm", "1-2.dcm") for p in nb)
    assert any("/1-full mammogram images-" in p for p in leg)
    assert any("/1.000000-full mammogram images-" in p for p in nb)
    descriptions = {p.split("/")[-2].split("-", 1)[1].rsplit("-", 1)[0] for p in leg}
    assert descriptions == {"full mammogram images", "ROI mask images", "cropped images"}
    # Same pixels and headers in both layouts: only the paths differ.
    by_sop_leg = {pydicom.dcmread(legacy.download_dir / p, stop_before_pixels=True).SOPInstanceUID:
                  (legacy.download_dir / p).read_bytes() for p in leg[:12]}
    by_sop_nb = {pydicom.dcmread(nbia.download_dir / p, stop_before_pixels=True).SOPInstanceUID:
                 (nbia.download_dir / p).read_bytes() for p in nb}
    assert all(by_sop_nb[k] == v for k, v in by_sop_leg.items())
    assert legacy.metadata is None and not (legacy.download_dir / "metadata.csv").exists()


def test_nbia_metadata(nbia: SynthResult) -> None:
    assert nbia.metadata == nbia.download_dir / "metadata.csv"
    meta = pd.read_csv(nbia.metadata, dtype=str, keep_default_na=False)
    assert list(meta.columns) == list(METADATA_COLUMNS)
    assert len(meta) == nbia.images + nbia.rois
    for _, m in meta.iterrows():
        assert m["File Location"].startswith(".\\CBIS-DDSM\\") and "/" not in m["File Location"]
        folder = nbia.download_dir / m["File Location"][2:].replace("\\", "/")
        files = sorted(folder.glob("*.dcm"))
        assert len(files) == int(m["Number of Images"]) == (1 if "_CC_" not in m["Subject ID"] and
                                                            "_MLO_" not in m["Subject ID"] else 2)
        assert folder.name.startswith("1.000000-" + m["Series Description"] + "-")
        assert folder.name.endswith(m["Series UID"][-5:])
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        assert ds.SeriesInstanceUID == m["Series UID"] and ds.StudyInstanceUID == m["Study UID"]
        assert ds.PatientID == m["Subject ID"]


def test_full_image_geometry(legacy: SynthResult, rows: pd.DataFrame) -> None:
    """Breast against the chest wall of its side, bright label in the opposite top corner, black background."""
    index = DownloadIndex.build(legacy.download_dir)
    for case, side in rows.groupby("case_id")["side"].first().items():
        img = _pixels(legacy.download_dir / index.case_files(case)[0]).astype(np.float64) / 65535
        h, w = img.shape
        mid = img[h // 4:3 * h // 4]
        chest, far = (mid[:, 4:w // 5], mid[:, -w // 6:]) if side == "LEFT" else (mid[:, -w // 5:-4], mid[:, :w // 6])
        assert chest.mean() > 0.3 and np.median(far) < 0.05, case
        top_far = img[: h // 6, w // 2:] if side == "LEFT" else img[: h // 6, : w // 2]
        assert (top_far > 0.99).sum() > 20, "burnt-in label"
        assert np.median(img[h // 2 - 5:h // 2 + 5, :][:, (slice(-12, -4) if side == "LEFT" else slice(4, 12))]) < 0.05


# --------------------------------------------------------------------------- determinism and re-runs

def test_deterministic(legacy: SynthResult, tmp_path: Path) -> None:
    again = synthesize(tmp_path / "again", layout="legacy", workers=2, **ARGS)
    assert _tree_bytes(again.out) == _tree_bytes(legacy.out)
    other = synthesize(tmp_path / "other", layout="legacy", workers=1, **{**ARGS, "seed": 1})
    a, b = _tree_bytes(legacy.out), _tree_bytes(other.out)
    for name in CSV_NAMES:
        assert a[f"csv/{name}"] != b[f"csv/{name}"]
    assert not set(a.values()) & {v for k, v in b.items() if k.endswith(".dcm")}


def test_rerun_skips_resumes_and_refuses(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = {"patients": 6, "image_size": 160, "seed": 3, "workers": 1}
    first = synthesize(out, **args)
    info = json.loads((out / "synth.json").read_text())
    assert info["complete"] is True and info["args"]["patients"] == 6
    assert "mammolab organize" in (out / "README.txt").read_text()
    before = _tree_bytes(out)
    assert synthesize(out, **args).skipped
    # An interrupted run (no completion marker, a file missing) is resumed to the same bytes.
    victim = next(out.rglob("*.dcm"))
    victim.unlink()
    (out / "synth.json").write_text(json.dumps({**info, "complete": False}))
    again = synthesize(out, **args)
    assert not again.skipped and _tree_bytes(out) == before and again.files == first.files
    with pytest.raises(MammoLabError, match="different arguments.*seed=3 \\(now 4\\)"):
        synthesize(out, **{**args, "seed": 4})
    stranger = tmp_path / "stranger"
    stranger.mkdir()
    (stranger / "notes.txt").write_text("mine")
    with pytest.raises(MammoLabError, match="not a 'mammolab synth' output"):
        synthesize(stranger, **args)
    assert [p.name for p in stranger.iterdir()] == ["notes.txt"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"patients": 5}, "--patients"),
    ({"image_size": 64}, "--film-height"),
    ({"layout": "flat"}, "--layout"),
    ({"seed": -1}, "--seed"),
])
def test_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(MammoLabError, match=match):
        synthesize(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------ lesions

def test_draw_lesion_mask_covers_delta_exactly() -> None:
    rng = np.random.default_rng(0)
    for kind in ("mass", "calc"):
        for malignant in (False, True):
            delta, mask = draw_lesion((120, 100), (50.0, 60.0), 15.0, malignant, kind, rng)
            assert delta.dtype == np.float32 and mask.dtype == bool and mask.shape == (120, 100)
            assert mask.any() and not (delta[~mask]).any()
            if kind == "mass":
                assert (delta[mask] > 0).mean() > 0.95
    # Clipped at the border without error.
    delta, mask = draw_lesion((40, 40), (2.0, 38.0), 10.0, True, "mass", rng)
    assert mask.any() and not delta[~mask].any()
    with pytest.raises(MammoLabError, match="kind"):
        draw_lesion((40, 40), (20.0, 20.0), 5.0, True, "tumour", rng)


def test_malignant_and_benign_patches_separate() -> None:
    """One simple feature each separates the classes: brightness for masses, speck count for calcs."""
    rng = np.random.default_rng(1)
    density, labels, specks = [], [], []
    for i in range(100):
        malignant = bool(i % 2)
        img, (x0, y0, x1, y1) = make_lesion_patch(64, malignant, rng)
        assert img.dtype == np.uint16 and img.shape == (64, 64) and 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 64
        f = img.astype(np.float64) / 65535
        inside = np.zeros(f.shape, bool)
        inside[y0:y1, x0:x1] = True
        density.append(np.percentile(f[inside], 90) - np.median(f[~inside]))
        labels.append(malignant)
        calc, _ = make_lesion_patch(64, malignant, rng, kind="calc")
        c = calc.astype(np.float64) / 65535
        bright = (c > np.median(c) + 0.15).astype(np.uint8)
        specks.append(cv2.connectedComponents(bright)[0] - 1)
    assert roc_auc_score(labels, density) > 0.9  # malignant masses are denser
    assert roc_auc_score(labels, specks) > 0.9  # malignant calcifications are more numerous
    with pytest.raises(MammoLabError, match="size"):
        make_lesion_patch(8, True, rng)


# ---------------------------------------------------------------------------------------------- CLI

def test_cli_synth(tmp_path: Path) -> None:
    from mammolab.cli import app

    runner = CliRunner()
    help_text = runner.invoke(app, ["synth", "--help"], terminal_width=200).output
    for option in ("--patients", "--film-height", "--layout", "--seed", "--workers", "OUT"):
        assert option in help_text
    for words in ("at least 6", "0.6x", "metadata.csv", "same bytes", "in parallel"):
        assert words in " ".join(help_text.split())
    out = tmp_path / "cli"
    res = runner.invoke(app, ["synth", str(out), "--patients", "6", "--film-height", "128", "--layout", "nbia",
                              "--seed", "2", "--workers", "1"], terminal_width=300)
    assert res.exit_code == 0, res.output
    assert "mammolab organize" in res.output and "--metadata" in res.output
    assert json.loads((out / "synth.json").read_text())["args"]["layout"] == "nbia"
    assert (out / "download" / "metadata.csv").is_file()
    res = runner.invoke(app, ["synth", str(out), "--patients", "6", "--film-height", "128", "--layout", "nbia",
                              "--seed", "2"])
    assert res.exit_code == 0 and "skipped" in " ".join(res.output.split())
    res = runner.invoke(app, ["synth", str(tmp_path / "bad"), "--layout", "flat"])
    assert res.exit_code != 0 and isinstance(res.exception, MammoLabError)
