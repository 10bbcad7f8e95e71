"""Damaged images (issue #14): a zero-byte PNG and a PNG whose header declares more than OpenCV's 2**30
pixels are reported and skipped by preprocess, train and predict; the rest is done. And a compressed,
row-filtered PNG is handed to OpenCV before MammoLab's reader inflates it.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from fault_tools import huge_png, run_in_process

import mammolab.io.png as png_mod
from mammolab.data.manifest import load_manifest
from mammolab.io.images import PNG_MODES, read_image
from mammolab.preprocess.pipeline import preprocess


def test_preprocess_skips_and_reports_them(bad_lesions, tmp_path: Path) -> None:
    out = tmp_path / "pp"
    res = preprocess(bad_lesions.root, out, "patch", size=(32, 32), workers=1)
    skipped = dict(res.skipped)
    assert set(skipped) == {bad_lesions.empty, bad_lesions.huge}
    assert "empty" in skipped[bad_lesions.empty] or "0 bytes" in skipped[bad_lesions.empty]
    assert "40000" in skipped[bad_lesions.huge]
    total = len(load_manifest(bad_lesions.root))
    assert len(res.manifest) == total - 2 and res.processed == total - 2
    quality = json.loads((out / "quality_report.json").read_text())
    assert bad_lesions.empty in json.dumps(quality) and bad_lesions.huge in json.dumps(quality)


def test_train_skips_and_reports_them(trained) -> None:
    info = json.loads((trained.run / "run.json").read_text())
    assert info["status"] == "complete" and info["epochs_run"] == 2
    assert set(info["skipped_images"]) == {trained.data.empty, trained.data.huge}
    assert "skipped (unreadable)" in trained.result.stderr and "Traceback" not in trained.result.stderr


def test_predict_reports_the_bad_file_and_predicts_the_rest(trained, tmp_path: Path) -> None:
    zero, huge, good = tmp_path / "zero.png", tmp_path / "huge.png", tmp_path / "good.png"
    zero.write_bytes(b"")
    huge.write_bytes(huge_png())
    cv2.imwrite(str(good), (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8))
    r = run_in_process(["predict", trained.run, zero, huge, good, "--json"], tmp=tmp_path)
    assert r.returncode == 1, r.stderr  # some files failed; the others were predicted
    assert "Traceback" not in r.stderr
    results = {Path(x["path"]).name: x for x in json.loads(r.stdout)}
    assert "error" in results["zero.png"] and "zero.png" in results["zero.png"]["error"]
    assert "error" in results["huge.png"] and "40000" in results["huge.png"]["error"]
    assert 0.0 <= results["good.png"]["prob"] <= 1.0 and "error" not in results["good.png"]


def test_compressed_filtered_png_is_declined_before_inflating(monkeypatch: pytest.MonkeyPatch,
                                                               tmp_path: Path) -> None:
    """What ``--png fast`` writes (OpenCV's defaults filter every row) goes to OpenCV untouched: the
    whole-stream inflate and the CRC pass are never reached (the speed row of the issue; the figures
    are in benchmarks/preprocess.py)."""
    img = (np.random.default_rng(1).random((64, 48)) * 60000).astype(np.uint16)
    path = tmp_path / "fast.png"
    path.write_bytes(cv2.imencode(".png", img, PNG_MODES["fast"])[1].tobytes())

    def forbidden(*args: object, **kw: object) -> None:
        raise AssertionError("inflated or CRC-checked a file it then declined")

    monkeypatch.setattr(png_mod, "_zlib_inflate", forbidden)
    monkeypatch.setattr(png_mod, "_crc32", forbidden)
    assert png_mod.decode_plain_png(path.read_bytes(), str(path)) is None
    assert np.array_equal(read_image(path), img)  # and OpenCV reads it
    # A run-length coded mask (compressed, rows unfiltered) is still read by the fast path.
    monkeypatch.undo()
    mask = np.zeros((40, 30), np.uint8)
    mask[5:20, 3:9] = 255
    data = cv2.imencode(".png", mask, PNG_MODES["rle"])[1].tobytes()
    called = []
    real = png_mod._zlib_inflate
    monkeypatch.setattr(png_mod, "_zlib_inflate", lambda *a: called.append(1) or real(*a))
    assert np.array_equal(png_mod.decode_plain_png(data), mask) and called
