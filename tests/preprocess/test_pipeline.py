"""The preprocess stage on a generated dataset: config validation, outputs, resume, bad input, preview, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from pp_films import bbox, make_film, tree_digest, write_dataset
from typer.testing import CliRunner

from mammolab.data import manifest as mf
from mammolab.errors import MammoLabError
from mammolab.io.images import read_image
from mammolab.preprocess.ops import OPS
from mammolab.preprocess.pipeline import (
    CONFIG_NAME,
    PREVIEW_NAME,
    Pipeline,
    PreprocessConfig,
    load_preprocess_config,
    preprocess,
)

SMALL = {"size": (64, 48)}


# ------------------------------------------------------------------------------------------ config

def test_default_config_resolves_every_parameter() -> None:
    cfg = load_preprocess_config()
    names = [next(iter(s)) for s in cfg.steps]
    assert names == ["crop_border", "remove_annotations", "orient", "resize", "denoise", "clahe"]
    assert cfg.steps[3]["resize"] == {"height": 1024, "width": 640, "keep_aspect": True, "align": "center",
                                      "bit_depth": 8}
    assert set(cfg.steps[0]["crop_border"]) == set(OPS["crop_border"].model_fields)
    assert load_preprocess_config("patch").steps[0]["resize"]["height"] == 512
    assert cfg.hash() == load_preprocess_config().hash() != load_preprocess_config("patch").hash()


def test_unknown_step_is_one_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "pp.yaml"
    path.write_text(yaml.safe_dump({"steps": [{"crop_border": {}}, {"blur": {"ksize": 3}}]}))
    with pytest.raises(MammoLabError) as exc:
        load_preprocess_config(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg
    assert "step 2" in msg and "unknown step 'blur'" in msg and "remove_annotations" in msg


@pytest.mark.parametrize("steps,expected", [
    ([{"clahe": {"clip_limit": 500}}], "step 1 'clahe': clip_limit: Input should be less than or equal to 100"),
    ([{"denoise": {"method": "wavelet"}}], "step 1 'denoise': method"),
    ([{"denoise": {"ksize": 4}}], "ksize: Value error, must be odd"),
    ([{"resize": {"height": 2}}], "step 1 'resize': height"),
    ([{"crop_border": {"margin": 0.7}}], "margin"),
    ([{"orient": {"chest_wall": "up"}}], "chest_wall"),
    ([{"clahe": {"tiles": 8}}], "tiles: unknown option"),
    ([{"clahe": 3}], "parameters must be a mapping"),
    ([], "steps"),
])
def test_out_of_range_values_are_one_error_naming_them(steps: list, expected: str) -> None:
    with pytest.raises(MammoLabError) as exc:
        load_preprocess_config({"steps": steps})
    assert expected in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_top_level_key_and_missing_config(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="colour: unknown option"):
        load_preprocess_config({"colour": True})
    with pytest.raises(MammoLabError, match="neither a file nor a preset"):
        load_preprocess_config(str(tmp_path / "nope.yaml"))


def test_size_and_bit_depth_override_or_append_resize() -> None:
    cfg = load_preprocess_config(size=(256, 128), bit_depth=16)
    assert cfg.steps[3]["resize"]["height"] == 256 and cfg.steps[3]["resize"]["bit_depth"] == 16
    cfg2 = load_preprocess_config({"steps": ["clahe"]}, size=(32, 32))
    assert [next(iter(s)) for s in cfg2.steps] == ["clahe", "resize"]
    assert isinstance(Pipeline.from_config(cfg2).ops[1], OPS["resize"])


# ------------------------------------------------------------------------------------------- run

def test_preprocess_writes_same_layout_with_moved_boxes(film_dataset: Path, tmp_path: Path) -> None:
    before = tree_digest(film_dataset)
    out = tmp_path / "pp"
    res = preprocess(film_dataset, out, workers=1, **SMALL)
    assert tree_digest(film_dataset) == before  # the input is never modified
    src = mf.load_manifest(film_dataset)
    df = res.manifest
    assert len(df) == len(src) == 6 and res.processed == 6 and res.reused == 0 and not res.skipped
    assert sorted(df["path"]) == sorted(src["path"])
    assert [c for c in src.columns] == [c for c in df.columns][: len(src.columns)]
    assert {"source_path", "pp_hash", "pp_transform"} <= set(df.columns)
    assert (df["pp_hash"] == res.config_hash).all()
    for _, row in df.iterrows():
        img = read_image(out / row["path"])
        assert img.shape == (64, 48) and img.dtype == np.uint8
        assert (row["width"], row["height"]) == (48, 64)
        assert Path(row["source_path"]) == (film_dataset / row["path"]).resolve()
        mask = read_image(out / row["mask"])
        box = mf.parse_boxes(row["boxes"])[0]
        np.testing.assert_allclose(box, bbox(mask), atol=1.0)
        np.testing.assert_allclose([row[c] for c in mf.BBOX_COLUMNS], box, atol=0.06)
        assert img[mask > 0].min() > 0  # the lesion survived every step
        # Chest wall on the left for every image: more tissue in the left half.
        assert img[:, :24].astype(float).sum() > img[:, 24:].astype(float).sum()
    info = mf.read_info(out)
    assert info["stage"] == "preprocess" and info["config_hash"] == res.config_hash
    assert info["source"]["manifest_hash"] == mf.manifest_hash(film_dataset)
    assert info["classes"] == list(mf.BINARY_CLASSES) and info["labels"] == "binary"
    saved = load_preprocess_config(out / CONFIG_NAME)
    assert saved.hash() == res.config_hash
    q = json.loads((out / mf.QUALITY_JSON).read_text())
    assert q["images"] == 6 and q["skipped"] == [] and q["counts"]["train"] == {"benign": 1, "malignant": 1}
    assert (out / mf.QUALITY_MD).is_file()


def test_rerun_skips_same_config_and_redoes_changed(film_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "pp"
    preprocess(film_dataset, out, workers=1, **SMALL)
    first = out / mf.load_manifest(out)["path"].iloc[0]
    stamp = first.stat().st_mtime_ns
    again = preprocess(film_dataset, out, workers=1, **SMALL)
    assert again.reused == 6 and again.processed == 0
    assert first.stat().st_mtime_ns == stamp
    changed = preprocess(film_dataset, out, workers=1, size=(32, 24))
    assert changed.reused == 0 and changed.processed == 6
    assert read_image(first).shape == (32, 24)
    assert mf.read_info(out)["config_hash"] == changed.config_hash != again.config_hash


def test_bad_images_are_skipped_with_reason(tmp_path: Path) -> None:
    films = [("train", "benign", make_film(10)), ("train", "malignant", make_film(11, "right")),
             ("val", "benign", make_film(12)), ("test", "malignant", make_film(13))]
    src = write_dataset(tmp_path / "bad", films)
    df = mf.load_manifest(src)
    (src / df["path"].iloc[0]).write_bytes(b"not a png at all")  # unreadable
    cv2.imwrite(str(src / df["path"].iloc[1]), np.zeros((192, 128), np.uint16))  # all black
    (src / df["mask"].iloc[2]).write_bytes(b"broken mask")  # image kept, mask reported
    res = preprocess(src, tmp_path / "out", workers=1, **SMALL)
    assert len(res.manifest) == 2
    reasons = dict(res.skipped)
    assert "unreadable image" in reasons[df["path"].iloc[0]]
    assert "all black" in reasons[df["path"].iloc[1]]
    q = json.loads((tmp_path / "out" / mf.QUALITY_JSON).read_text())
    assert len(q["skipped"]) == 2 and len(q["mask_unreadable"]) == 1
    row = res.manifest.set_index("path").loc[df["path"].iloc[2]]
    assert row["mask"] == "" and row["boxes"] != "[]"  # boxes still moved without the mask


def test_nothing_processable_is_one_error(tmp_path: Path) -> None:
    src = write_dataset(tmp_path / "black", [("train", "benign", make_film(14))])
    cv2.imwrite(str(src / mf.load_manifest(src)["path"].iloc[0]), np.zeros((8, 8), np.uint16))
    with pytest.raises(MammoLabError, match="no image .* could be processed.*all black"):
        preprocess(src, tmp_path / "out", workers=1, **SMALL)


def test_output_folder_checks(film_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="overlaps the input"):
        preprocess(film_dataset, film_dataset / "pp", workers=1)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(MammoLabError, match="not a 'mammolab preprocess' output"):
        preprocess(film_dataset, foreign, workers=1)
    with pytest.raises(MammoLabError, match="not a folder"):
        preprocess(tmp_path / "missing", tmp_path / "o2")


def test_preview_contact_sheet_has_one_column_per_step(film_dataset: Path, tmp_path: Path) -> None:
    res = preprocess(film_dataset, tmp_path / "pp", workers=1, preview=2, **SMALL)
    sheet = cv2.imread(str(res.preview), cv2.IMREAD_COLOR)
    assert res.preview == tmp_path / "pp" / PREVIEW_NAME
    assert sheet.shape == (2 * (256 + 22), 7 * 256, 3)  # 2 images x (input + 6 steps)
    # every cell shows an image (not an empty tile)
    for col in range(7):
        assert sheet[22:278, col * 256:(col + 1) * 256].max() > 100


def test_parallel_run_equals_serial_run(film_dataset: Path, tmp_path: Path) -> None:
    a = preprocess(film_dataset, tmp_path / "a", workers=1, **SMALL)
    b = preprocess(film_dataset, tmp_path / "b", workers=2, **SMALL)
    for rel in a.manifest["path"]:
        np.testing.assert_array_equal(read_image(tmp_path / "a" / rel), read_image(tmp_path / "b" / rel))
    cols = [c for c in a.manifest.columns if c != "source_path"]
    pd.testing.assert_frame_equal(a.manifest[cols], b.manifest[cols])


def test_crop_dataset_gets_patch_preset(tmp_path: Path) -> None:
    src = write_dataset(tmp_path / "crops", [("train", "benign", make_film(15)), ("val", "malignant",
                                                                                 make_film(16))], kind="crop")
    res = preprocess(src, tmp_path / "out", workers=1)
    assert [next(iter(s)) for s in res.config.steps] == ["resize", "denoise", "clahe"]
    assert read_image(tmp_path / "out" / res.manifest["path"].iloc[0]).shape == (512, 512)


def test_config_object_and_file_round_trip(film_dataset: Path, tmp_path: Path) -> None:
    cfg = PreprocessConfig(steps=[{"crop_border": {"mode": "fixed"}}, {"resize": {"height": 40, "width": 40}}])
    res = preprocess(film_dataset, tmp_path / "pp", cfg, workers=1)
    assert read_image(tmp_path / "pp" / res.manifest["path"].iloc[0]).dtype == np.uint16  # bit depth kept
    again = preprocess(film_dataset, tmp_path / "pp", tmp_path / "pp" / CONFIG_NAME, workers=1)
    assert again.reused == 6


# -------------------------------------------------------------------------------------------- CLI

def test_cli_preprocess_and_errors(film_dataset: Path, tmp_path: Path) -> None:
    from mammolab.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["preprocess", str(film_dataset), "--out", str(tmp_path / "pp"), "--size", "40x32",
                              "--bit-depth", "16", "--workers", "1"])
    assert res.exit_code == 0, res.output
    df = mf.load_manifest(tmp_path / "pp")
    img = read_image(tmp_path / "pp" / df["path"].iloc[0])
    assert img.shape == (40, 32) and img.dtype == np.uint16
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps:\n  - sharpen: {}\n")
    res = runner.invoke(app, ["preprocess", str(film_dataset), "--out", str(tmp_path / "pp2"), "--config", str(bad)])
    assert isinstance(res.exception, MammoLabError) and "unknown step 'sharpen'" in str(res.exception)
    res = runner.invoke(app, ["preprocess", str(film_dataset), "--out", str(tmp_path / "pp3"), "--size", "big"])
    assert isinstance(res.exception, MammoLabError) and "--size" in str(res.exception)


def test_cli_help_explains_every_step_and_parameter() -> None:
    from mammolab.cli import app

    text = " ".join(CliRunner().invoke(app, ["preprocess", "--help"], terminal_width=200).output.split())
    for opt in ("--out", "--config", "--workers", "--preview", "--size", "--bit-depth"):
        assert opt in text
    for name, op in OPS.items():
        assert name in text
        for param in op.model_fields:
            assert param in text, (name, param)


def test_cli_main_prints_one_line_and_exits_2(film_dataset: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    import sys

    from mammolab.cli import main

    monkeypatch.setattr(sys, "argv", ["mammolab", "preprocess", str(film_dataset), "--out",
                                      str(film_dataset / "inside")])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "overlaps the input" in err and len(err.strip().splitlines()) <= 2
    shutil.rmtree(film_dataset / "inside", ignore_errors=True)
