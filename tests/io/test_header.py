"""The pixel guard: sizes read from every header, huge declared images refused before decoding,
empty and truncated files as one clear error naming the file."""

from __future__ import annotations

import struct
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest

from mammolab.errors import MammoLabError
from mammolab.io import read_image, read_image_bytes, read_mask
from mammolab.io.header import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, max_pixels_limit, read_header

from helpers import png_bomb, write_dicom


@pytest.fixture
def img() -> np.ndarray:
    return (np.arange(32 * 48, dtype=np.uint32).reshape(32, 48) * 37 % 250).astype(np.uint8)


def _encode(suffix: str, arr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(suffix, arr)
    assert ok
    return buf.tobytes()


def _tiff_big_endian(width: int, height: int, pixels: bool = True) -> bytes:
    """A minimal big-endian TIFF (OpenCV writes little-endian ones): 8-bit gray, one strip."""
    entries = [(256, 4, 1, width), (257, 3, 1, height << 16), (258, 3, 1, 8 << 16), (259, 3, 1, 1 << 16),
               (262, 3, 1, 1 << 16), (273, 4, 1, 8 + 2 + 8 * 12 + 4), (277, 3, 1, 1 << 16),
               (279, 4, 1, width * height)]
    ifd = struct.pack(">H", len(entries)) + b"".join(struct.pack(">HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"MM\x00*" + struct.pack(">I", 8) + ifd + bytes(width * height if pixels else 64)


def _bigtiff(width: int, height: int) -> bytes:
    entries = [(256, 16, 1, width), (257, 16, 1, height)]
    ifd = struct.pack("<Q", len(entries)) + b"".join(struct.pack("<HHQQ", *e) for e in entries)
    return b"II+\x00" + struct.pack("<HHQ", 8, 0, 16) + ifd + struct.pack("<Q", 0)


def test_sizes_from_every_header(tmp_path: Path, img: np.ndarray) -> None:
    files = {
        "a.png": _encode(".png", img), "a16.png": _encode(".png", img.astype(np.uint16) * 200),
        "a.jpg": _encode(".jpg", img), "a.tif": _encode(".tif", img), "a.bmp": _encode(".bmp", img),
        "a.pgm": b"P5\n# a comment 999 999\n48 32\n255\n" + img.tobytes(),
        "mm.tif": _tiff_big_endian(48, 32), "big.tif": _bigtiff(48, 32),
    }
    for name, data in files.items():
        path = tmp_path / name
        path.write_bytes(data)
        for source in (path, data):
            header = read_header(source, name)
            assert header is not None and (header.width, header.height) == (48, 32), (name, header)
    np.testing.assert_array_equal(read_image(tmp_path / "mm.tif"), np.zeros((32, 48), np.uint8))
    dcm = write_dicom(tmp_path / "a.dcm", img.astype(np.uint16))
    header = read_header(dcm)
    assert header is not None and (header.format, header.width, header.height) == ("dicom", 48, 32)
    assert read_header(b"GIF89a" + bytes(200)) is None


def test_bytes_reader_matches_file_reader(tmp_path: Path, img: np.ndarray) -> None:
    png = tmp_path / "a.png"
    png.write_bytes(_encode(".png", img))
    np.testing.assert_array_equal(read_image_bytes(png.read_bytes(), "a.png"), read_image(png))
    dcm = write_dicom(tmp_path / "a.dcm", img.astype(np.uint16) * 100)
    np.testing.assert_array_equal(read_image_bytes(dcm.read_bytes(), "a.dcm"), read_image(dcm))
    with pytest.raises(MammoLabError, match=r"^notes\.txt: unreadable image .*judged by its content"):
        read_image_bytes(b"hello, not an image", "notes.txt")


def _declaring(fmt: str, width: int, height: int, img: np.ndarray) -> bytes:
    """A small file whose header declares ``width`` x ``height`` pixels (the pixel data does not)."""
    if fmt == "jpeg":
        data = bytearray(_encode(".jpg", img))
        sof = data.index(b"\xff\xc0")
        data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
        return bytes(data)
    if fmt == "tiff":
        return _tiff_big_endian(width, height, pixels=False)
    if fmt == "pgm":
        return f"P5\n{width} {height}\n255\n".encode() + img.tobytes()
    raise AssertionError(fmt)


@pytest.mark.parametrize("fmt", ["jpeg", "tiff", "pgm", "dicom"])
def test_huge_declared_sizes_are_refused_naming_file_and_limit(tmp_path: Path, img: np.ndarray, fmt: str) -> None:
    path = tmp_path / f"bomb.{ {'jpeg': 'jpg', 'tiff': 'tif', 'pgm': 'pgm', 'dicom': 'dcm'}[fmt] }"
    if fmt == "dicom":
        write_dicom(path, img.astype(np.uint16))
        raw = bytearray(path.read_bytes())
        # Rows (0028,0010) and Columns (0028,0011), explicit VR little endian: tag, 'US', length 2, value
        for elem, value in ((0x0010, 60000), (0x0011, 60000)):
            at = raw.index(struct.pack("<HH", 0x0028, elem) + b"US\x02\x00")
            raw[at + 8:at + 10] = struct.pack("<H", value)
        path.write_bytes(bytes(raw))
    else:
        path.write_bytes(_declaring(fmt, 60000, 60000, img))
    with pytest.raises(MammoLabError) as err:
        read_image(path)
    msg = str(err.value)
    assert str(path) in msg and "60000x60000" in msg and f"limit of {DEFAULT_MAX_PIXELS} pixels" in msg
    assert "\n" not in msg and "--max-pixels" in msg
    with pytest.raises(MammoLabError, match="limit of"):
        read_image_bytes(path.read_bytes(), path.name)


def test_png_bomb_is_refused_fast_and_small(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(25000, 25000))
    assert 0.9e6 < bomb.stat().st_size < 1.1e6
    tracemalloc.start()
    start = time.perf_counter()
    for reader in (read_image, read_mask):
        with pytest.raises(MammoLabError, match=r"bomb\.png: the PNG header declares 25000x25000 pixels"):
            reader(bomb)
    with pytest.raises(MammoLabError, match="25000x25000"):
        read_image_bytes(bomb.read_bytes(), "bomb.png")
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 20e6, (elapsed, peak)  # decoding it would take 625 MB


def test_limit_from_argument_and_environment(tmp_path: Path, img: np.ndarray,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_encode(".png", img))  # 48 x 32 = 1536 pixels
    assert read_image(path, max_pixels=1536).shape == (32, 48)
    with pytest.raises(MammoLabError, match="limit of 1535 pixels"):
        read_image(path, max_pixels=1535)
    monkeypatch.setenv(MAX_PIXELS_ENV, "1000")
    assert max_pixels_limit() == 1000
    with pytest.raises(MammoLabError, match="limit of 1000 pixels"):
        read_image(path)
    assert read_image(path, max_pixels=2000).shape == (32, 48)  # the argument wins over the environment
    bomb = tmp_path / "wide.png"
    bomb.write_bytes(png_bomb(3000, 20, pad_to=0))
    monkeypatch.setenv(MAX_PIXELS_ENV, "1e5")
    assert read_image(bomb).shape == (20, 3000)  # under the raised limit it is a normal image
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    with pytest.raises(MammoLabError, match=f"{MAX_PIXELS_ENV}: expected a number of pixels, got 'lots'"):
        read_image(path)


@pytest.mark.parametrize("name", ["e.png", "e.jpg", "e.tif", "e.pgm", "e.dcm"])
def test_empty_file_is_one_error_naming_it(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(MammoLabError, match=rf"{name}: empty file \(0 bytes\)"):
        read_image(path)
    with pytest.raises(MammoLabError, match=rf"{name}: empty file"):
        read_image_bytes(b"", name)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".bmp"])
def test_truncated_file_is_one_error_naming_it(tmp_path: Path, img: np.ndarray, suffix: str) -> None:
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = _encode(suffix, noisy)
    for cut in (12, len(data) // 2):
        path = tmp_path / f"cut{cut}{suffix}"
        path.write_bytes(data[:cut])
        try:
            out = read_image(path)
        except MammoLabError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
        else:  # libjpeg fills a cut-off scan with grey and says so only on stderr: the size still holds
            assert suffix == ".jpg" and cut > 12 and out.shape == (64, 64)
