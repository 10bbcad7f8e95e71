"""Image reading: every format and bit depth, DICOM VOI/MONOCHROME1, atomic writes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mammolab.errors import MammoLabError
from mammolab.io import atomic_write_text, read_image, to_uint8, write_png

from helpers import write_dicom


@pytest.fixture
def ramp16() -> np.ndarray:
    return (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 37 % 60000).astype(np.uint16)


def test_png_jpeg_tiff_pgm_keep_depth(tmp_path: Path, ramp16: np.ndarray) -> None:
    img8 = to_uint8(ramp16)
    for suffix, arr in ((".png", ramp16), (".tif", ramp16), (".pgm", ramp16), (".png", img8), (".pgm", img8)):
        p = tmp_path / f"a{arr.dtype}{suffix}"
        assert cv2.imwrite(str(p), arr)
        out = read_image(p)
        assert out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
    jpg = tmp_path / "a.jpg"
    cv2.imwrite(str(jpg), cv2.cvtColor(img8, cv2.COLOR_GRAY2BGR))
    out = read_image(jpg)
    assert out.ndim == 2 and out.dtype == np.uint8 and np.abs(out.astype(int) - img8).mean() < 8


def test_dicom_monochrome2_stretched_to_16bit(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = read_image(write_dicom(tmp_path / "a.dcm", arr))
    assert out.dtype == np.uint16
    assert out[0, 0] == 0 and out[1, 1] == 65535
    assert out[0, 1] < out[1, 0] < out[1, 1]


def test_dicom_monochrome1_is_inverted_after_voi(tmp_path: Path) -> None:
    arr = np.array([[0, 1000], [2000, 4000]], dtype=np.uint16)
    out = read_image(write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1"))
    assert out[0, 0] == 65535 and out[1, 1] == 0
    # A window that clips: 1000 and below black, 3000 and above white, then inverted.
    win = read_image(write_dicom(tmp_path / "w.dcm", arr, photometric="MONOCHROME1",
                                 WindowCenter=2000, WindowWidth=2000))
    assert win[1, 1] == 0 and win[0, 0] == 65535 and win[0, 1] == 65535


def test_dicom_window_applied(tmp_path: Path) -> None:
    arr = np.array([[0, 1500], [2500, 4000]], dtype=np.uint16)
    out = read_image(write_dicom(tmp_path / "w.dcm", arr, WindowCenter=2000, WindowWidth=2000))
    assert out[0, 0] == 0 and out[1, 1] == 65535
    assert 0 < out[0, 1] < out[1, 0] < 65535


def test_dicom_without_suffix_detected_by_magic(tmp_path: Path, ramp16: np.ndarray) -> None:
    p = write_dicom(tmp_path / "x.dcm", ramp16)
    q = tmp_path / "noext"
    q.write_bytes(p.read_bytes())
    assert read_image(q).shape == ramp16.shape


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(MammoLabError, match="missing.png: file not found"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MammoLabError, match="bad.png: unreadable image"):
        read_image(bad)
    corrupt = tmp_path / "c.dcm"
    corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"garbage")
    with pytest.raises(MammoLabError, match="c.dcm: unreadable DICOM"):
        read_image(corrupt)
    odd = tmp_path / "a.xyz"
    odd.write_text("x")
    with pytest.raises(MammoLabError, match="unsupported file type '.xyz'"):
        read_image(odd)


def test_write_png_atomic_and_roundtrip(tmp_path: Path, ramp16: np.ndarray) -> None:
    p = tmp_path / "sub" / "o.png"
    write_png(p, ramp16)
    np.testing.assert_array_equal(read_image(p), ramp16)
    assert [f.name for f in p.parent.iterdir()] == ["o.png"]  # no temp file left behind
    with pytest.raises(MammoLabError, match="uint8 or uint16"):
        write_png(tmp_path / "f.png", ramp16.astype(np.float32))


def test_atomic_write_keeps_old_content_on_failure(tmp_path: Path) -> None:
    from mammolab.io import atomic_write

    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    with pytest.raises(RuntimeError), atomic_write(p, "w") as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]


def test_read_json_is_none_for_missing_or_half_written(tmp_path: Path) -> None:
    from mammolab.io.atomic import read_json, write_json

    write_json(tmp_path / "ok.json", {"a": [1, 2]})
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
    (tmp_path / "half.json").write_text('{"a": [1,', encoding="utf-8")
    assert read_json(tmp_path / "half.json") is None
    assert read_json(tmp_path / "missing.json") is None
    assert read_json(tmp_path) is None  # a folder
