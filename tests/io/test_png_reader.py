"""The plain-PNG fast reader: the same pixels as OpenCV on everything it accepts, declines the rest,
and a damaged file is a clear error, never wrong pixels."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from mammolab.errors import MammoLabError
from mammolab.io import read_image, read_mask, write_png
from mammolab.io.png import decode_plain_png, read_file


def _cv2(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)


def _encode(img: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(".png", img, params)
    assert ok
    return buf.tobytes()


STORED_SMALL_CHUNKS = [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
                       cv2.IMWRITE_PNG_ZLIBBUFFER_SIZE, 1000]  # blocks straddle IDAT chunk boundaries


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (33, 65), (96, 80), (250, 300)])
@pytest.mark.parametrize("mode", ["stored", "rle", "small-chunks"])
def test_same_pixels_as_opencv(dtype: type, shape: tuple[int, int], mode: str) -> None:
    rng = np.random.default_rng(shape[0] * 1000 + shape[1])
    img = rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype)
    img[: shape[0] // 2] = 0  # runs, so the rle stream has real back-references
    if mode == "small-chunks":
        data = _encode(img, STORED_SMALL_CHUNKS)
    else:
        from mammolab.io.images import PNG_MODES

        data = _encode(img, PNG_MODES[mode])
    out = decode_plain_png(data)
    assert out is not None, "a plain grayscale PNG must take the fast path"
    assert out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable
    assert np.array_equal(out, _cv2(data)) and np.array_equal(out, img)


def test_result_survives_the_next_read(tmp_path: Path) -> None:
    """The scratch buffers are reused; what a call returned must not change afterwards."""
    a = np.full((40, 30), 1000, np.uint16)
    b = np.full((40, 30), 2, np.uint16)
    write_png(tmp_path / "a.png", a, mode="stored")
    write_png(tmp_path / "b.png", b, mode="stored")
    first = read_image(tmp_path / "a.png")
    read_image(tmp_path / "b.png")
    assert np.array_equal(first, a)


@pytest.mark.parametrize("case", ["filtered", "colour", "palette", "bilevel", "trns", "not-png"])
def test_declines_what_it_does_not_handle(case: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, size=(20, 24), dtype=np.uint8)
    if case == "filtered":  # OpenCV's defaults use row filters
        data = _encode(np.tile(np.arange(24, dtype=np.uint8), (20, 1)), [])
    elif case == "colour":
        data = _encode(np.dstack([gray, gray, gray]), [])
    elif case == "bilevel":
        data = _encode((gray > 127).astype(np.uint8) * 255, [cv2.IMWRITE_PNG_BILEVEL, 1])
    elif case in ("palette", "trns"):
        buf = io.BytesIO()
        im = Image.fromarray(gray).convert("P") if case == "palette" else Image.fromarray(gray)
        im.save(buf, format="PNG", transparency=0, compress_level=0)
        data = buf.getvalue()
    else:
        data = b"GIF89a" + bytes(100)
    assert decode_plain_png(data) is None
    if case != "not-png":  # read_image still reads it, through OpenCV, as gray
        (tmp_path / "x.png").write_bytes(data)
        expected = _cv2(data)
        if expected.ndim == 3:
            code = cv2.COLOR_BGRA2GRAY if expected.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            expected = cv2.cvtColor(expected, code)
        assert np.array_equal(read_image(tmp_path / "x.png"), expected)


def _chunks(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 8
    while pos < len(data):
        n, typ = struct.unpack_from(">I4s", data, pos)
        out.append((pos, typ))
        pos += 12 + n
    return out


def test_damaged_files_are_clear_errors(tmp_path: Path) -> None:
    img = np.random.default_rng(2).integers(0, 65535, size=(50, 40), dtype=np.uint16)
    data = _encode(img, STORED_SMALL_CHUNKS)
    idat = next(pos for pos, typ in _chunks(data) if typ == b"IDAT")
    flipped = bytearray(data)
    flipped[idat + 8 + 100] ^= 0x10  # one bit of pixel data
    with pytest.raises(MammoLabError, match=r"film\.png: corrupt PNG \(CRC mismatch in chunk 'IDAT'\)"):
        decode_plain_png(bytes(flipped), "film.png")
    with pytest.raises(MammoLabError, match="truncated PNG"):
        decode_plain_png(data[: len(data) // 2], "film.png")
    # A consistent file (CRCs right) whose stream holds fewer rows than the header says.
    short = _encode(img[:30], STORED_SMALL_CHUNKS)
    ihdr = struct.pack(">IIBBBBB", 40, 50, 16, 0, 0, 0, 0)
    pos = _chunks(short)[0][0]
    patched = short[:pos + 8] + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr)) + short[pos + 25:]
    with pytest.raises(MammoLabError, match="image data has 2430 bytes, the header implies 4050"):
        decode_plain_png(patched, "film.png")
    (tmp_path / "bad.png").write_bytes(bytes(flipped))
    with pytest.raises(MammoLabError, match=r"bad\.png: corrupt PNG"):
        read_image(tmp_path / "bad.png")


def test_read_file_reuses_its_buffer_and_reads_everything(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(bytes(range(256)) * 1000)
    (tmp_path / "small").write_bytes(b"abc")
    big = bytes(read_file(tmp_path / "big"))
    assert big == bytes(range(256)) * 1000
    assert bytes(read_file(tmp_path / "small")) == b"abc"


@pytest.mark.parametrize("kind", ["rle-0-255", "stored-0-1", "uint16", "filtered", "tiff"])
def test_read_mask_is_0_255_from_any_mask(kind: str, tmp_path: Path) -> None:
    truth = np.zeros((37, 53), bool)
    truth[5:20, 10:40] = True
    truth[30, 52] = True
    path = tmp_path / ("m.tif" if kind == "tiff" else "m.png")
    if kind == "rle-0-255":
        write_png(path, truth.astype(np.uint8) * 255, mode="rle")
    elif kind == "stored-0-1":
        write_png(path, truth.astype(np.uint8), mode="stored")
    elif kind == "uint16":
        write_png(path, truth.astype(np.uint16) * 7, mode="stored")
    elif kind == "filtered":
        cv2.imwrite(str(path), truth.astype(np.uint8) * 200)
    else:
        cv2.imwrite(str(path), truth.astype(np.uint8) * 255)
    mask = read_mask(path)
    assert mask.dtype == np.uint8 and mask.flags.c_contiguous
    np.testing.assert_array_equal(mask, truth.astype(np.uint8) * 255)
    read_mask(path)  # the scratch buffer is reused: the first result must not change
    np.testing.assert_array_equal(mask, truth.astype(np.uint8) * 255)
    with pytest.raises(MammoLabError, match="file not found"):
        read_mask(tmp_path / "missing.png")


def _rewrite_chunk(data: bytes, ctype: bytes, body: bytes) -> bytes:
    """``data`` with the first chunk of type ``ctype`` replaced by ``body`` (its CRC made right)."""
    for pos, typ in _chunks(data):
        if typ == ctype:
            n = struct.unpack_from(">I", data, pos)[0]
            new = struct.pack(">I4s", len(body), ctype) + body + struct.pack(">I", zlib.crc32(ctype + body))
            return data[:pos] + new + data[pos + 12 + n:]
    raise AssertionError(ctype)


def test_damaged_compressed_stream_is_a_clear_error() -> None:
    """A run-length coded mask whose chunks are intact (CRCs right) but whose stream is not."""
    from mammolab.io.images import PNG_MODES

    mask = np.zeros((60, 40), np.uint8)
    mask[10:30, 5:25] = 255
    data = _encode(mask, PNG_MODES["rle"])
    assert decode_plain_png(data) is not None
    idat = next(pos for pos, typ in _chunks(data) if typ == b"IDAT")
    body = bytearray(data[idat + 8:idat + 8 + struct.unpack_from(">I", data, idat)[0]])
    body[-2] ^= 0xFF  # inside the Adler-32 trailer
    with pytest.raises(MammoLabError, match=r"m\.png: corrupt PNG \(image data does not inflate"):
        decode_plain_png(_rewrite_chunk(data, b"IDAT", bytes(body)), "m.png")
    taller = struct.pack(">IIBBBBB", 40, 61, 8, 0, 0, 0, 0)  # one row more than the stream holds
    with pytest.raises(MammoLabError, match="does not inflate to the 2501 bytes the header implies"):
        decode_plain_png(_rewrite_chunk(data, b"IHDR", taller), "m.png")


def test_zlib_fallback_without_libdeflate() -> None:
    """With the ``deflate`` package missing, the reader falls back to zlib: same pixels, same errors."""
    import subprocess
    import sys
    import textwrap

    probe = textwrap.dedent("""
        import sys
        sys.modules["deflate"] = None  # import deflate -> ImportError
        import numpy as np, cv2
        from mammolab.errors import MammoLabError
        from mammolab.io import png
        from mammolab.io.images import PNG_MODES
        assert png._crc32.__module__ == "zlib"
        mask = np.zeros((60, 40), np.uint8); mask[10:30, 5:25] = 255
        for mode in ("rle", "stored"):
            data = cv2.imencode(".png", mask, PNG_MODES[mode])[1].tobytes()
            assert np.array_equal(png.decode_plain_png(data), mask)
        try:
            png._zlib_inflate([memoryview(cv2.imencode(".png", mask, PNG_MODES["rle"])[1].tobytes())[41:-16]],
                              10, "m.png")
        except MammoLabError as exc:
            print("error:", exc)
    """)
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout
    assert "error: m.png: corrupt PNG (image data does not inflate to the 10 bytes" in out


def test_malformed_header_and_absurd_size() -> None:
    img = np.zeros((8, 8), np.uint8)
    data = _encode(img, STORED_SMALL_CHUNKS)
    with pytest.raises(MammoLabError, match=r"malformed PNG \(IHDR chunk of 12 bytes"):
        decode_plain_png(_rewrite_chunk(data, b"IHDR", struct.pack(">IIBBBB", 8, 8, 8, 0, 0, 0)), "x.png")
    huge = struct.pack(">IIBBBBB", 1 << 16, 1 << 15, 8, 0, 0, 0, 0)  # 2**31 pixels: left to OpenCV
    assert decode_plain_png(_rewrite_chunk(data, b"IHDR", huge)) is None
