"""The official CBIS-DDSM CSVs parse with their quirks, and bad CSVs give one clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from mammolab.data.cbis import find_case_csvs, read_case_csv, read_case_csvs
from mammolab.errors import MammoLabError


@pytest.mark.shared
def test_real_csv_counts(shared_dir: Path) -> None:
    csv = shared_dir / "csv"
    mass = read_case_csvs(csv, "mass")
    assert (mass["official_split"] == "train").sum() == 1318
    assert (mass["official_split"] == "test").sum() == 378
    calc = read_case_csvs(csv, "calc")
    assert (calc["official_split"] == "train").sum() == 1546
    assert (calc["official_split"] == "test").sum() == 326
    both = read_case_csvs(csv, "all")
    assert len(both) == 1318 + 378 + 1546 + 326
    # quirks normalised: no whitespace/newline left in paths, both density spellings read
    assert not mass["mask_file"].str.contains(r"\s").any()
    assert mass["mask_file"].isin(["000000.dcm", "000001.dcm"]).all()
    assert calc["density"].isin(list("01234")).all() and mass["density"].isin(list("01234")).all()
    assert (calc["density"] != "").all()  # read from "breast density" (calc) as from "breast_density" (mass)
    assert set(mass["pathology"]) == {"BENIGN", "MALIGNANT", "BENIGN_WITHOUT_CALLBACK"}
    assert set(both["abnormality"]) == {"mass", "calc"}
    # official split is by patient within a type
    tr = set(mass.loc[mass.official_split == "train", "patient_id"])
    te = set(mass.loc[mass.official_split == "test", "patient_id"])
    assert not tr & te


@pytest.mark.shared
def test_real_csv_raw_quirks_present(shared_dir: Path) -> None:
    raw = (shared_dir / "csv" / "mass_case_description_train_set.csv").read_bytes()
    assert b"\r\n" in raw and b'000001.dcm\n"' in raw
    row = read_case_csv(shared_dir / "matching_rows_mass_case_description_test_set.csv").iloc[0]
    assert row["case_id"] == "Mass-Test_P_00016_LEFT_CC" and row["official_split"] == "test"
    assert row["roi_case_id"] == "Mass-Test_P_00016_LEFT_CC_1"


def test_missing_column_is_named(tmp_path: Path) -> None:
    p = tmp_path / "mass_case_description_train_set.csv"
    p.write_text("patient_id,breast_density,left or right breast\nP_1,2,LEFT\n")
    with pytest.raises(MammoLabError, match="missing column 'image view'"):
        read_case_csv(p)


def test_bad_pathology_is_named(tmp_path: Path) -> None:
    cols = ("patient_id,breast_density,left or right breast,image view,abnormality id,abnormality type,"
            "assessment,pathology,subtlety,image file path,cropped image file path,ROI mask file path")
    p = tmp_path / "mass_case_description_train_set.csv"
    p.write_text(cols + "\nP_1,2,LEFT,CC,1,mass,4,MAYBE,3,Mass-Training_P_1_LEFT_CC/1/2/000000.dcm,a/1/2/0.dcm,"
                 "a/1/2/1.dcm\n")
    with pytest.raises(MammoLabError, match="column 'pathology' has \\['MAYBE'\\]"):
        read_case_csv(p)


def test_csv_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="is not a folder"):
        find_case_csvs(tmp_path / "nope")
    with pytest.raises(MammoLabError, match="no case-description CSV"):
        find_case_csvs(tmp_path)
    with pytest.raises(MammoLabError, match="--abnormality"):
        find_case_csvs(tmp_path, "bones")
