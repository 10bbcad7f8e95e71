"""Bad inputs (issue #14): each is one line naming the file and what was expected, or a reported skip.

Covers: duplicate and conflicting rows in a CBIS CSV, a Latin-1 CSV, a YAML syntax error, a zero-byte
crop DICOM, a zero-byte DICOM, --manifest pointing at a folder or listing a missing file, and
--workers 0 / -1 / 1000.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from fault_tools import run_cli

from mammolab.data.organize import organize
from mammolab.errors import MammoLabError
from mammolab.io.images import read_dicom_pixels
from mammolab.progress import default_workers, parallel_map, resolve_workers


def _copy_csvs(download, tmp: Path) -> Path:
    csv_dir = tmp / "csv"
    shutil.copytree(download.csv_dir, csv_dir)
    return csv_dir


def _train_csv(csv_dir: Path) -> Path:
    return csv_dir / "mass_case_description_train_set.csv"


def test_repeated_csv_row_is_dropped_and_reported(download, tmp_path: Path) -> None:
    csv_dir = _copy_csvs(download, tmp_path)
    path = _train_csv(csv_dir)
    text = path.read_bytes().decode("utf-8")
    nl = "\r\n" if "\r\n" in text else "\n"
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    n_lines = len(raw) + 1
    # Append a copy of the first data row as it is in the file (the quoted ROI path holds a newline).
    first = pd.read_csv(path, dtype=str, keep_default_na=False, nrows=1)
    path.write_bytes((text.rstrip("\r\n") + nl + first.to_csv(index=False, header=False, lineterminator=nl))
                     .encode("utf-8"))
    res = organize(download.download_dir, csv_dir=csv_dir, out=tmp_path / "ds", workers=1)
    dropped = res.quality["duplicate_rows_dropped"]
    assert len(dropped) == 1 and dropped[0].startswith(f"{path.name} line {n_lines + 1}:")
    assert res.manifest["path"].is_unique
    assert "Repeated CSV rows (dropped)" in (tmp_path / "ds" / "quality_report.md").read_text()


def test_conflicting_csv_rows_are_refused_before_writing(download, tmp_path: Path) -> None:
    csv_dir = _copy_csvs(download, tmp_path)
    path = _train_csv(csv_dir)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    copy = raw.iloc[[0]].copy()
    copy["pathology"] = "MALIGNANT" if raw.iloc[0]["pathology"] != "MALIGNANT" else "BENIGN"
    pd.concat([raw, copy]).to_csv(path, index=False)
    out = tmp_path / "ds"
    r = run_cli(["organize", download.download_dir, "--csv-dir", csv_dir, "--out", out, "-j", "1"], tmp=tmp_path)
    assert r.returncode == 2, r.stderr
    assert len(r.error_lines) == 1 and "Traceback" not in r.stderr
    line = r.error_lines[0]
    assert f"{path.name} line 2 and {path.name} line {len(raw) + 2}" in line and "'pathology'" in line
    assert "one row per lesion" in line
    assert not out.exists()  # caught before anything was written


def test_latin1_csv_says_what_is_expected(download, tmp_path: Path) -> None:
    csv_dir = _copy_csvs(download, tmp_path)
    path = _train_csv(csv_dir)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.loc[2, "mass margins"] = "SPICULATED \u00e9"
    raw.to_csv(path, index=False, encoding="latin-1")
    with pytest.raises(MammoLabError) as err:
        organize(download.download_dir, csv_dir=csv_dir, out=tmp_path / "ds", workers=1)
    msg = str(err.value)
    data = path.read_bytes()
    line = data[:data.index(b"\xe9")].count(b"\n") + 1  # the line an editor shows (paths hold newlines)
    assert str(path) in msg and f"line {line} is not UTF-8" in msg and "0xe9" in msg and "expected" in msg
    assert "codec can't decode" not in msg and "\n" not in msg
    assert not (tmp_path / "ds").exists()


def test_yaml_syntax_error_is_one_line_with_line_and_column(lesions, tmp_path: Path) -> None:
    bad = tmp_path / "steps.yaml"
    bad.write_text("steps:\n  - resize: {height: 32, width: 32\n  - clahe: {}\n")
    r = run_cli(["preprocess", lesions, "--out", tmp_path / "pp", "--config", bad], tmp=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.error_lines) == 1, r.stderr
    assert f"{bad}:3:10: not valid YAML" in r.error_lines[0] and "expected" in r.error_lines[0]


def test_zero_byte_dicom_is_named_as_empty(tmp_path: Path) -> None:
    empty = tmp_path / "1-1.dcm"
    empty.write_bytes(b"")
    with pytest.raises(MammoLabError) as err:
        read_dicom_pixels(empty)
    assert str(empty) in str(err.value) and "empty file" in str(err.value)
    assert "Transfer Syntax" not in str(err.value)


def test_zero_byte_crop_dicom_is_named_in_the_report(download, tmp_path: Path) -> None:
    dl = tmp_path / "download"
    shutil.copytree(download.download_dir, dl)
    res0 = organize(dl, csv_dir=download.csv_dir, out=tmp_path / "first", workers=1)
    # Empty one crop DICOM of one lesion: the crop is the non-binary file of an ROI series.
    row = res0.manifest.iloc[0]
    lesion = row["image_id"]
    series = sorted(p for p in dl.rglob("*.dcm") if p.relative_to(dl).parts[0] == lesion)
    crop = next(p for p in series if not _is_mask(p))
    crop.write_bytes(b"")
    res = organize(dl, csv_dir=download.csv_dir, out=tmp_path / "ds", workers=1)
    missing = [m for m in res.quality["crops_missing"] if m.startswith(f"{lesion}:")]
    assert len(missing) == 1
    assert str(crop) in missing[0] and "empty file" in missing[0] and "expected a DICOM" in missing[0]
    assert lesion not in set(res.manifest["image_id"]) and len(res.manifest) == len(res0.manifest) - 1


def _is_mask(path: Path) -> bool:
    arr = read_dicom_pixels(path, keep_range=True)
    return len(set(arr.ravel().tolist()) - {0}) <= 1


def test_manifest_folder_and_missing_file(lesions, tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match=r"--manifest: .* is a folder; expected a CSV file"):
        organize(manifest=tmp_path, out=tmp_path / "out")
    src = pd.read_csv(lesions / "manifest.csv", dtype=str, keep_default_na=False)
    listing = src[["path", "label", "patient_id", "split"]].copy()
    listing["path"] = [str(lesions / p) for p in listing["path"]]
    listing.loc[len(listing)] = [str(tmp_path / "gone.png"), "benign", "P9999", "train"]
    csv = tmp_path / "list.csv"
    listing.to_csv(csv, index=False)
    res = organize(manifest=csv, out=tmp_path / "ds", workers=1)
    assert [m for m in res.quality["files_missing"] if "gone.png" in m]
    assert not [m for m in res.quality.get("unreadable", []) if "gone.png" in m]  # counted once, as missing
    assert len(res.manifest) == len(src)


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_zero_or_negative_is_an_error(lesions, tmp_path: Path, workers: int) -> None:
    r = run_cli(["preprocess", lesions, "--out", tmp_path / "pp", "--workers", str(workers)], tmp=tmp_path) \
        if workers == 0 else None
    if r is not None:
        assert r.returncode == 2 and len(r.error_lines) == 1
        assert "--workers: expected 1 or more worker processes" in r.error_lines[0]
        assert not (tmp_path / "pp").exists()
    with pytest.raises(MammoLabError, match=rf"--workers: expected 1 or more .* got {workers}"):
        parallel_map(abs, [1, 2], workers=workers)


def test_workers_are_capped_at_the_cores() -> None:
    assert resolve_workers(None) == default_workers()
    assert resolve_workers(1000) == default_workers()
    assert resolve_workers(1) == 1
    with pytest.raises(MammoLabError, match="whole number"):
        resolve_workers("2")  # type: ignore[arg-type]
