"""organize on generated CBIS-DDSM downloads: layouts, kinds, labels, quirks, resume, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mammolab.cli import app
from mammolab.data.cbis import read_case_csvs
from mammolab.data.manifest import MANIFEST_COLUMNS, load_manifest, read_info
from mammolab.data.organize import OrganizeConfig, organize, organize_cbis
from mammolab.errors import MammoLabError
from mammolab.io import read_image


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _run(synth, out: Path, **kw) -> object:
    return organize_cbis(synth.download_dir, synth.csv_dir, out, OrganizeConfig(**kw), metadata=synth.metadata,
                         workers=1)


@pytest.mark.parametrize("layout", ["legacy", "nbia"])
def test_both_layouts_give_the_same_dataset(layout: str, synth_legacy, synth_nbia, tmp_path: Path) -> None:
    synth = synth_legacy if layout == "legacy" else synth_nbia
    before = _digest(synth.out)
    res = _run(synth, tmp_path / "ds", abnormality="all", kind="crop")
    df = load_manifest(tmp_path / "ds")
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    rows = read_case_csvs(synth.csv_dir, "all")
    dropped = res.quality["dropped_for_patient_overlap"]["rows"]
    assert len(df) == len(rows) - dropped and res.quality["files_missing"] == []
    assert res.quality["patient_overlap_total"] == 0 and res.quality["unreadable"] == []
    # masks were found swapped somewhere and told apart by content
    assert res.quality["masks_swapped"]
    assert (df["mask"] != "").all()
    for _, r in df.iterrows():
        img = read_image(tmp_path / "ds" / r["path"])
        assert img.dtype == np.uint16 and img.shape == (r["height"], r["width"])
        mask = read_image(tmp_path / "ds" / r["mask"]) > 0
        ys, xs = np.nonzero(mask)
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (r["bbox_x0"], r["bbox_y0"], r["bbox_x1"],
                                                                     r["bbox_y1"])
    assert _digest(synth.out) == before  # nothing under the inputs was written


def test_layouts_agree(synth_legacy, synth_nbia, tmp_path: Path) -> None:
    a = _run(synth_legacy, tmp_path / "a", kind="roi", roi_size=48).manifest
    b = _run(synth_nbia, tmp_path / "b", kind="roi", roi_size=48).manifest
    cols = ["path", "split", "fold", "label", "bbox_x0", "bbox_y1"]
    pd.testing.assert_frame_equal(a[cols], b[cols])
    assert _digest(tmp_path / "a" / "train") == _digest(tmp_path / "b" / "train")


def test_full_kind_image_level_labels_and_conflicts(synth_legacy, tmp_path: Path) -> None:
    res = _run(synth_legacy, tmp_path / "full", kind="full", abnormality="all")
    df = res.manifest
    rows = read_case_csvs(synth_legacy.csv_dir, "all")
    per_image = rows.groupby("case_id")["pathology"].apply(lambda s: "MALIGNANT" in set(s))
    for _, r in df.iterrows():
        assert (r["label"] == "malignant") == per_image[r["image_id"]]
    multi = df[df["n_abnormalities"] > 1]
    assert len(multi) and all(len(eval(b)) == n for b, n in zip(multi["boxes"], multi["n_abnormalities"], strict=True))
    conflicting = df[df["conflict"].astype(str) == "True"]
    assert len(conflicting) and (conflicting["label"] == "malignant").all()
    assert sorted(res.quality["conflicting_labels"]) == sorted(conflicting["image_id"])
    assert (df["width"] > 100).all()  # whole mammograms


def test_roi_kind_square_patches_with_box(synth_legacy, tmp_path: Path) -> None:
    df = _run(synth_legacy, tmp_path / "roi", kind="roi", roi_size=64, roi_margin=0.5).manifest
    assert (df["width"] == 64).all() and (df["height"] == 64).all()
    w = df["bbox_x1"] - df["bbox_x0"]
    h = df["bbox_y1"] - df["bbox_y0"]
    # the lesion's longer side is half the patch (margin 0.5 each side), centred
    assert np.allclose(np.maximum(w, h), 32, atol=2)
    assert np.allclose((df["bbox_x0"] + df["bbox_x1"]) / 2, 32, atol=2)


def test_roi_film_height_cuts_every_patch_at_one_scale(synth_legacy, tmp_path: Path) -> None:
    """--roi-film-height 128 on 256-px films: 32-px patches of 64 source px, lesions at half their film size."""
    from mammolab.data.patches import roi_patch as _roi_patch
    from mammolab.infer.apply import cut_roi
    from mammolab.recipe import build_recipe

    out = tmp_path / "fixed"
    df = _run(synth_legacy, out, kind="roi", roi_size=32, roi_film_height=128).manifest
    boxes = _run(synth_legacy, tmp_path / "full", kind="full", allow_degenerate=True).manifest
    assert (df["width"] == 32).all() and (df["height"] == 32).all()
    w, h = df["bbox_x1"] - df["bbox_x0"], df["bbox_y1"] - df["bbox_y0"]
    assert w.max() < 32 and (np.maximum(w, h) < 31).any()  # not stretched to fill the patch as by default
    # each patch's lesion box is the film's box at scale 32/64: one scale for every lesion
    film_side = {}
    for _, r in boxes.iterrows():
        for x0, y0, x1, y1 in json.loads(r["boxes"]):
            film_side.setdefault(r["image_id"], []).append(max(x1 - x0, y1 - y0))
    for _, r in df.iterrows():
        sides = film_side[r["image_id"].rsplit("_", 1)[0]]
        assert min(abs(max(r["bbox_x1"] - r["bbox_x0"], r["bbox_y1"] - r["bbox_y0"]) - s / 2) for s in sides) <= 1.5
    # a lesion larger than the fixed field of view gets a patch just containing its box
    big, _, pbox = _roi_patch(np.ones((256, 150), np.uint16), np.zeros((256, 150), bool), (10, 10, 110, 60), 32, 0.5,
                              film_height=128)
    assert big.shape == (32, 32) and pbox[2] - pbox[0] == pytest.approx(32, abs=0.5)
    # the recipe cuts the patch organize cut (predict --box on a film gives the training pixels)
    recipe = build_recipe(out, name="r", model="mammocnn", classes=("benign", "malignant"), num_outputs=1,
                          image_size=32, resize="stretch", mean=0.5, std=0.25)
    assert recipe.source.roi_film_height == 128
    for _, row in df.head(4).iterrows():
        film_row = boxes[boxes["image_id"] == row["image_id"].rsplit("_", 1)[0]].iloc[0]
        film = read_image(tmp_path / "full" / film_row["path"])
        patch = read_image(out / row["path"])
        cuts = [cut_roi(recipe, film, tuple(int(v) for v in b)) for b in json.loads(film_row["boxes"])]
        assert any(c.shape == patch.shape and np.array_equal(c, patch) for c in cuts)
    # a dataset made without the option keeps its config hash (and recipes theirs)
    plain = OrganizeConfig(kind="roi", roi_size=32)
    assert plain.content_hash("organize") != OrganizeConfig(kind="roi", roi_size=32,
                                                            roi_film_height=128).content_hash("organize")
    from mammolab.config import config_hash

    dump = plain.model_dump(exclude={"png", "allow_degenerate", "allow_duplicates", "roi_film_height",
                                     "roi_background"})
    assert plain.content_hash("organize") == config_hash({"stage": "organize", **dump})


def test_bwc_switch_and_4class(synth_legacy, tmp_path: Path) -> None:
    rows = read_case_csvs(synth_legacy.csv_dir, "mass")
    n_bwc = int((rows["pathology"] == "BENIGN_WITHOUT_CALLBACK").sum())
    assert n_bwc > 0
    keep = _run(synth_legacy, tmp_path / "keep", bwc="benign")
    drop = _run(synth_legacy, tmp_path / "drop", bwc="drop", allow_degenerate=True)  # test: no benign left
    assert keep.quality["bwc_relabelled_benign"] == n_bwc and drop.quality["bwc_dropped"] == n_bwc
    assert "BENIGN_WITHOUT_CALLBACK" not in set(drop.manifest["pathology"])
    assert len(keep.manifest) - len(drop.manifest) == n_bwc
    four = _run(synth_legacy, tmp_path / "four", labels="4class", abnormality="all", allow_degenerate=True)
    labels = set(four.manifest["label"])
    assert labels == {"benign_calc", "benign_mass", "malignant_calc", "malignant_mass"}
    assert read_info(tmp_path / "four")["classes"] == ["benign_calc", "benign_mass", "malignant_calc",
                                                        "malignant_mass"]
    for lab in labels:
        assert (tmp_path / "four" / "train" / lab).is_dir() or (tmp_path / "four" / "test" / lab).is_dir()
    t = four.manifest
    assert (t["target"] == t["label"].map({c: i for i, c in enumerate(sorted(labels))})).all()


def test_splits_by_patient_official_test_untouched(synth_legacy, tmp_path: Path) -> None:
    res = _run(synth_legacy, tmp_path / "ds", abnormality="all", folds=3)
    df = res.manifest
    rows = read_case_csvs(synth_legacy.csv_dir, "all")
    test_ids = set(rows.loc[rows["official_split"] == "test", "roi_case_id"])
    assert set(df.loc[df["split"] == "test", "image_id"]) == test_ids
    assert (df.groupby("patient_id")["split"].nunique() == 1).all()
    assert set(df["split"]) == {"train", "val", "test"}
    train = df[df["split"] != "test"]
    assert train["fold"].notna().all() and set(train["fold"]) == {0, 1, 2}
    assert (train.groupby("patient_id")["fold"].nunique() == 1).all()
    # the patient in both Mass-Test and Calc-Training lost their training rows, not their test rows
    moved = res.quality["dropped_for_patient_overlap"]
    assert moved["rows"] > 0 and set(moved["patients"]) <= set(df.loc[df["split"] == "test", "patient_id"])


def test_rerun_same_bytes_no_duplicates_and_config_change(synth_legacy, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = _run(synth_legacy, out)
    snap = _digest(out)
    again = _run(synth_legacy, out)
    assert again.processed_units == 0 and again.skipped_units == first.processed_units
    assert _digest(out) == snap
    assert not list(out.rglob("*.tmp"))
    # a changed config is refused without --overwrite, and redone with it
    with pytest.raises(MammoLabError, match="organized with other options"):
        _run(synth_legacy, out, kind="roi")
    redo = organize_cbis(synth_legacy.download_dir, synth_legacy.csv_dir, out, OrganizeConfig(kind="roi",
                         roi_size=32), workers=1, overwrite=True)
    assert (redo.manifest["width"] == 32).all()
    assert len(list((out / "train").rglob("*.png"))) == int((redo.manifest["split"] == "train").sum())


def test_interrupted_run_resumes(synth_legacy, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    first = _run(synth_legacy, out)
    # simulate a kill: the manifest was never written and some outputs are gone
    (out / "manifest.csv").unlink()
    lost = sorted((out / "train").rglob("*.png"))[:3]
    for p in lost:
        p.unlink()
    res = _run(synth_legacy, out)
    assert all(p.is_file() for p in lost)
    assert res.processed_units >= 1 and res.skipped_units >= 1
    pd.testing.assert_frame_equal(res.manifest, first.manifest)


def test_corrupt_dicom_is_reported_and_skipped(synth_legacy, tmp_path: Path) -> None:
    dl = tmp_path / "dl"
    shutil.copytree(synth_legacy.download_dir, dl)
    victim = sorted(p for p in dl.rglob("*full mammogram*/*.dcm") if "Mass-Training" in str(p))[0]
    victim.write_bytes(victim.read_bytes()[:400])
    res = organize_cbis(dl, synth_legacy.csv_dir, tmp_path / "ds", OrganizeConfig(kind="full", allow_degenerate=True),
                       workers=1)
    assert len(res.quality["unreadable"]) == 1 and victim.parts[-4] in res.quality["unreadable"][0]
    assert victim.parts[-4] not in set(res.manifest["image_id"])
    assert len(res.manifest) >= 5


def test_bad_inputs_one_clear_error(synth_legacy, tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="DOWNLOAD: .* is not a folder"):
        organize_cbis(tmp_path / "nope", synth_legacy.csv_dir, tmp_path / "o")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MammoLabError, match="no .dcm files"):
        organize_cbis(empty, synth_legacy.csv_dir, tmp_path / "o")
    # a wrong root that has DICOMs but none of the listed ones
    other = tmp_path / "other"
    shutil.copytree(next(synth_legacy.download_dir.iterdir()), other / "x")
    for p in other.rglob("*.dcm"):
        import pydicom

        ds = pydicom.dcmread(p)
        ds.SeriesInstanceUID = "1.2.3"
        ds.save_as(p)
    with pytest.raises(MammoLabError, match="none of the .* images listed in the CSVs was found"):
        organize_cbis(other, synth_legacy.csv_dir, tmp_path / "o2")
    bad_csv = tmp_path / "csv"
    bad_csv.mkdir()
    src = (synth_legacy.csv_dir / "mass_case_description_train_set.csv").read_text()
    (bad_csv / "mass_case_description_train_set.csv").write_text(src.replace("pathology", "diagnosis"))
    with pytest.raises(MammoLabError, match="missing column 'pathology'"):
        organize_cbis(synth_legacy.download_dir, bad_csv, tmp_path / "o3")
    with pytest.raises(MammoLabError, match="overlaps the input"):
        organize_cbis(synth_legacy.download_dir, synth_legacy.csv_dir, synth_legacy.download_dir / "out")
    with pytest.raises(MammoLabError, match="kind"):
        organize(synth_legacy.download_dir, csv_dir=synth_legacy.csv_dir, out=tmp_path / "o4", kind="whole")
    with pytest.raises(MammoLabError, match="give either DOWNLOAD"):
        organize(synth_legacy.download_dir, csv_dir=synth_legacy.csv_dir, out=tmp_path / "o5",
                 manifest=tmp_path / "m.csv")


def test_cli_end_to_end_and_error_exit_code(synth_nbia, tmp_path: Path) -> None:
    import subprocess
    import sys

    out = tmp_path / "cli"
    cmd = [sys.executable, "-m", "mammolab", "organize", str(synth_nbia.download_dir), "--csv-dir",
           str(synth_nbia.csv_dir), "--metadata", str(synth_nbia.metadata), "--out", str(out), "--kind", "roi",
           "--roi-size", "32", "--workers", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "patient overlap between splits: 0" in res.stderr + res.stdout
    assert (out / "quality_report.md").read_text().startswith("# Quality report")
    res = subprocess.run([sys.executable, "-m", "mammolab", "organize", str(tmp_path / "missing"), "--csv-dir",
                          str(synth_nbia.csv_dir), "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert res.returncode == 2 and "error:" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 2
    runner = CliRunner()
    assert runner.invoke(app, ["organize", "--help"]).exit_code == 0


def test_png_encoding_option(synth_legacy, tmp_path: Path) -> None:
    stored = _run(synth_legacy, tmp_path / "stored", kind="full", allow_degenerate=True)  # 12 patients
    _run(synth_legacy, tmp_path / "fast", kind="full", png="fast", allow_degenerate=True)
    row = stored.manifest.iloc[0]
    a, b = tmp_path / "stored" / row["path"], tmp_path / "fast" / row["path"]
    img = read_image(a)
    # Default: uncompressed (16-bit pixels + one filter byte per row); 'fast' compresses. Same pixels.
    assert img.dtype == np.uint16 and a.stat().st_size >= img.nbytes + img.shape[0] > b.stat().st_size
    assert np.array_equal(img, read_image(b))
    masks = [tmp_path / "stored" / m for m in stored.manifest["mask"] if isinstance(m, str) and m]
    assert masks and all(m.stat().st_size < 0.2 * read_image(m).nbytes for m in masks)  # run-length coded
    # The encoding changes bytes, not pixels: it is not part of the config hash, so either output is reused.
    assert read_info(tmp_path / "stored")["config_hash"] == read_info(tmp_path / "fast")["config_hash"]
    before = a.stat().st_mtime_ns
    again = _run(synth_legacy, tmp_path / "stored", kind="full", png="fast", allow_degenerate=True)
    assert again.processed_units == 0 and again.skipped_units > 0 and a.stat().st_mtime_ns == before
