"""PNG write modes: lossless in every mode, stored is raw-sized, rle keeps masks tiny."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from mammolab.errors import MammoLabError
from mammolab.io import read_image, write_png
from mammolab.io.images import PNG_MODES


def _idat_block_types(path: Path) -> set[int]:
    """Deflate block types (0 = stored) of the first block of a PNG's zlib stream."""
    data = path.read_bytes()
    pos, idat = 8, b""
    while pos < len(data):
        n, typ = struct.unpack_from(">I4s", data, pos)
        if typ == b"IDAT":
            idat += data[pos + 8:pos + 8 + n]
        pos += 12 + n
    zlib.decompress(idat)  # a valid stream
    return {(idat[2] >> 1) & 3}


@pytest.mark.parametrize("mode", sorted(PNG_MODES))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_every_mode_round_trips(mode: str, dtype: type, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, np.iinfo(dtype).max, size=(48, 80), dtype=dtype)
    write_png(tmp_path / "a.png", img, mode=mode)
    back = read_image(tmp_path / "a.png")
    assert back.dtype == dtype and np.array_equal(back, img)


def test_stored_is_uncompressed_and_rle_is_small_for_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    film = rng.integers(0, 65535, size=(96, 64), dtype=np.uint16)
    write_png(tmp_path / "stored.png", film, mode="stored")
    # Raw pixels plus one filter byte per row, zlib/PNG framing on top: nothing was compressed.
    raw = film.nbytes + film.shape[0]
    assert raw <= (tmp_path / "stored.png").stat().st_size < raw + 400
    assert _idat_block_types(tmp_path / "stored.png") == {0}
    mask = np.zeros((96, 96), np.uint8)
    mask[30:60, 20:50] = 255
    write_png(tmp_path / "rle.png", mask, mode="rle")
    write_png(tmp_path / "m_stored.png", mask, mode="stored")
    assert (tmp_path / "rle.png").stat().st_size < (tmp_path / "m_stored.png").stat().st_size / 10
    assert np.array_equal(read_image(tmp_path / "rle.png"), mask)


def test_compression_level_overrides_mode_and_bad_mode(tmp_path: Path) -> None:
    img = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    write_png(tmp_path / "l9.png", img, compression=9, mode="stored")
    assert (tmp_path / "l9.png").stat().st_size < img.nbytes / 4  # the level won: compressed
    with pytest.raises(MammoLabError, match="png mode: expected one of"):
        write_png(tmp_path / "x.png", img, mode="lz4")
    assert not (tmp_path / "x.png").exists()
