"""A fast path for reading the plain grayscale PNGs MammoLab writes; everything else goes to OpenCV.

``mammolab organize`` writes full-size films as *stored* PNGs (zlib level 0, no row filter) and masks
run-length coded without row filters (see :data:`mammolab.io.images.PNG_MODES`). A stored film's
pixels are in the file as they are, so reading one is bookkeeping, not decompression; yet libpng
(behind ``cv2.imread``) spends 40-55 ms on a 3000x5000 16-bit film: it checks the zlib stream's
Adler-32 on top of every chunk's CRC-32 and swaps the big-endian samples one byte at a time. This
reader checks every chunk's CRC-32 (libdeflate's, 7x faster than zlib's), copies the stored blocks
out and swaps bytes with one vectorised cast: 17-25 ms for the same film; a run-length coded mask
takes ~5 ms against ~20 ms. Pixels are identical (tested against OpenCV on every layout it accepts).
It declines (returns ``None``) on anything outside that narrow case: colour, palette, transparency,
interlacing, bit depths below 8, row filters other than NONE; ``read_image`` then uses OpenCV. It
declines as early as it can, so a file it does not read costs next to nothing on top of OpenCV: on
the IHDR chunk for an unsupported header, and after inflating only the first rows of a compressed
stream whose rows are filtered (what ``--png fast`` and most other writers produce).

The Adler-32 of a stored stream is not recomputed: a stored stream's bytes are chunk data that the
CRC-32 checks already cover, and CRC-32 is the stronger of the two checks. Compressed streams go
through libdeflate (the ``deflate`` package; zlib without it), which checks their Adler-32.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

import numpy as np

from mammolab.errors import MammoLabError

__all__ = ["PNG_SIGNATURE", "decode_plain_png", "plain_png_pixels", "read_file"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Ancillary chunks that change how pixels are to be read; a file with one goes to OpenCV.
_DECLINE = {b"tRNS", b"PLTE", b"sBIT"}
_HINT = "the file is damaged: copy it again from its source, or re-run the step that wrote it"


def _damaged(message: str) -> MammoLabError:
    """The error for a damaged PNG, with what to do about it."""
    return MammoLabError(message, hint=_HINT)


#: Larger images are left to OpenCV, whose CV_IO_MAX_IMAGE_PIXELS default is the same 2**30.
_MAX_PIXELS = 1 << 30

try:  # libdeflate: measured 7x faster CRC-32 and 6x faster inflate than zlib on films and masks
    import deflate as _libdeflate

    _crc32 = _libdeflate.crc32

    def _decompress(stream: bytes | memoryview, size: int) -> bytes | bytearray:
        """Exactly ``size`` bytes out of the zlib stream (its Adler-32 checked), else an error."""
        raw = _libdeflate.zlib_decompress(stream, size)  # errors when the stream holds more than size
        if len(raw) != size:
            raise zlib.error(f"it holds {len(raw)} bytes")
        return raw

    _DECOMPRESS_ERRORS: tuple[type[Exception], ...] = (_libdeflate.DeflateError, zlib.error)
except ImportError:  # pragma: no cover - deflate is a dependency; this keeps a --no-deps install working
    _crc32 = zlib.crc32

    def _decompress(stream: bytes | memoryview, size: int) -> bytes | bytearray:
        raw = zlib.decompress(stream, bufsize=size + 1)  # one output buffer, no regrowing
        if len(raw) != size:
            raise zlib.error(f"it holds {len(raw)} bytes")
        return raw

    _DECOMPRESS_ERRORS = (zlib.error,)


def decode_plain_png(data: bytes | bytearray | memoryview, name: str = "PNG") -> np.ndarray | None:
    """Decode an 8/16-bit grayscale, non-interlaced PNG whose rows are all unfiltered; else ``None``.

    Returns a C-contiguous 2-D ``uint8``/``uint16`` array. A file that claims to be such a PNG but is
    damaged (bad CRC, truncated, wrong length) is a :class:`MammoLabError` naming ``name``.
    """
    pixels = plain_png_pixels(data, name)
    if pixels is None:
        return None
    if pixels.dtype == np.uint8:
        return pixels.copy()  # always a copy: the rows may live in a reused scratch buffer
    # One cast does the byte swap (PNG stores big-endian) and the copy out of the filter-byte rows.
    return pixels.astype(np.uint16)


def plain_png_pixels(data: bytes | bytearray | memoryview, name: str = "PNG") -> np.ndarray | None:
    """Like :func:`decode_plain_png` but returns a *view* of the raw rows: ``uint8`` or big-endian
    ``>u2``, valid only until this thread's next read. For callers that transform the pixels anyway
    (``read_mask`` binarises them), so the copy is their transform's output."""
    view = memoryview(data)
    if len(view) < 8 + 25 or bytes(view[:8]) != PNG_SIGNATURE:
        return None
    pos, n = 8, len(view)
    header: tuple[int, ...] | None = None
    idat: list[memoryview] = []
    chunks: list[tuple[int, int, bytes]] = []  # CRCs are checked once the file is known to be ours
    while pos + 12 <= n:
        length, ctype = struct.unpack_from(">I4s", view, pos)
        end = pos + 8 + length
        if end + 4 > n:
            raise _damaged(f"{name}: truncated PNG (chunk {ctype!r} runs past the end of the file)")
        chunks.append((pos, end, ctype))
        body = view[pos + 8:end]
        if ctype == b"IHDR":
            if length != 13:
                raise _damaged(f"{name}: malformed PNG (IHDR chunk of {length} bytes, expected 13)")
            header = struct.unpack(">IIBBBBB", body)
            if not _supported(header):  # give up now: no CRCs, no inflating, OpenCV reads it
                return None
        elif ctype == b"IDAT":
            idat.append(body)
        elif ctype == b"IEND":
            break
        elif ctype in _DECLINE or not (ctype[0] & 0x20):  # unknown critical chunk: not ours to read
            return None
        pos = end + 4
    else:
        raise _damaged(f"{name}: truncated PNG (no IEND chunk)")
    if header is None or not idat:
        raise _damaged(f"{name}: malformed PNG (no IHDR or no image data)")
    width, height, depth = header[:3]
    row = 1 + width * depth // 8
    if not _first_rows_unfiltered(idat, row, height):
        return None  # filtered rows: OpenCV's job, found before any CRC or inflating of the whole stream
    for start, end, ctype in chunks:
        if _crc32(view[start + 4:end]) != struct.unpack_from(">I", view, end)[0]:
            raise _damaged(f"{name}: corrupt PNG (CRC mismatch in chunk {ctype.decode('latin-1')!r})")
    rows = _inflate(idat, height * row, name).reshape(height, row)
    if rows[:, 0].any():  # a filtered row: OpenCV undoes filters far faster than numpy could
        return None
    return rows[:, 1:] if depth == 8 else rows[:, 1:].view(">u2")


def _supported(header: tuple[int, ...]) -> bool:
    """Whether the IHDR describes what this reader decodes: 8/16-bit grayscale, not interlaced, at most
    OpenCV's pixel limit (beyond it OpenCV's own limit and error apply)."""
    width, height, depth, color, compression, filt, interlace = header
    return (color == 0 and depth in (8, 16) and not (compression or filt or interlace) and width > 0 and height > 0
            and width * height <= _MAX_PIXELS)


#: How many rows' filter bytes are looked at before a compressed stream is inflated whole.
_PROBE_ROWS = 8


def _first_rows_unfiltered(idat: list[memoryview], row: int, height: int) -> bool:
    """Inflate only the first few rows of the stream and say whether all are unfiltered.

    Why: a compressed PNG written by OpenCV or libpng (``--png fast``, most outside files) filters
    every row. Inflating the whole stream first (~130 ms on a 30 MB film) only to find that and hand
    the file to OpenCV made the read slower than OpenCV alone; a few rows cost well under a
    millisecond (a stored stream's rows cost a copy of a few kilobytes). A damaged stream says True
    here: the CRC checks and the full inflate then report it properly.
    """
    want = min(height, _PROBE_ROWS) * row
    d = zlib.decompressobj()
    got = bytearray()
    try:
        for part in idat:
            data: bytes | memoryview = part
            while data and len(got) < want:
                got += d.decompress(data, want - len(got))
                data = d.unconsumed_tail
            if len(got) >= want or d.eof:
                break
    except zlib.error:
        return True
    whole = len(got) // row * row
    return not np.frombuffer(bytes(got[:whole]), dtype=np.uint8)[::row].any()


# Per-thread scratch buffers (the file's bytes, the raw rows), reused from file to file: a fresh
# 30 MB buffer per film costs more in page faults than the copy into it.
_scratch = threading.local()


def _buffer(size: int) -> np.ndarray:
    buf = getattr(_scratch, "rows", None)
    if buf is None or buf.size < size:
        buf = _scratch.rows = np.empty(size, dtype=np.uint8)
    return buf[:size]


def read_file(path: str | Path) -> memoryview:
    """The file's bytes in this thread's reusable buffer: valid until the thread's next call."""
    with open(path, "rb", buffering=0) as fh:
        size = os.fstat(fh.fileno()).st_size
        buf = getattr(_scratch, "file", None)
        if buf is None or len(buf) < size:
            buf = _scratch.file = bytearray(size)
        view = memoryview(buf)[:size]
        got = 0
        while got < size:
            n = fh.readinto(view[got:])
            if not n:
                break
            got += n
    return view[:got]


class _Stream:
    """The zlib stream, read across IDAT chunk boundaries without joining the chunks first."""

    def __init__(self, parts: list[memoryview]) -> None:
        self.parts = [np.frombuffer(p, dtype=np.uint8) for p in parts if len(p)]
        self.i, self.pos = 0, 0

    def read(self, n: int, out: np.ndarray | None = None) -> np.ndarray | None:
        """The next ``n`` bytes (into ``out`` when given); ``None`` when the stream ends first."""
        got = 0
        pieces = []
        while got < n:
            if self.i >= len(self.parts):
                return None
            part = self.parts[self.i]
            take = min(n - got, len(part) - self.pos)
            piece = part[self.pos:self.pos + take]
            if out is not None:
                out[got:got + take] = piece
            else:
                pieces.append(piece)
            got += take
            self.pos += take
            if self.pos == len(part):
                self.i, self.pos = self.i + 1, 0
        if out is not None:
            return out
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)


def _inflate(idat: list[memoryview], size: int, name: str) -> np.ndarray:
    """The zlib stream's ``size`` bytes: stored blocks copied directly, anything else via zlib."""
    stream = _Stream(idat)
    head = stream.read(2)
    if head is None or (head[0] & 0x0F) != 8 or (int(head[0]) << 8 | int(head[1])) % 31 or head[1] & 0x20:
        raise _damaged(f"{name}: corrupt PNG (bad zlib header)")
    out = _buffer(size)
    filled = 0
    while True:
        block = stream.read(5)
        if block is None:
            raise _damaged(f"{name}: truncated PNG (image data ends early)")
        if block[0] & 0x06:  # a compressed block: let zlib do the whole stream (it checks the Adler-32)
            return _zlib_inflate(idat, size, name)
        length, nlength = int(block[1]) | int(block[2]) << 8, int(block[3]) | int(block[4]) << 8
        if length ^ nlength != 0xFFFF or filled + length > size:
            raise _damaged(f"{name}: corrupt PNG (bad stored block in the image data)")
        if stream.read(length, out[filled:filled + length]) is None:
            raise _damaged(f"{name}: truncated PNG (image data ends early)")
        filled += length
        if block[0] & 0x01:  # the final block
            break
    if filled != size:
        raise _damaged(f"{name}: corrupt PNG (image data has {filled} bytes, the header implies {size})")
    return out


def _zlib_inflate(idat: list[memoryview], size: int, name: str) -> np.ndarray:
    stream = idat[0] if len(idat) == 1 else b"".join(idat)
    try:
        raw = _decompress(stream, size)
    except _DECOMPRESS_ERRORS as exc:  # corrupt, or not the number of bytes the header implies
        raise _damaged(f"{name}: corrupt PNG (image data does not inflate to the {size} bytes the header "
                            f"implies: {exc})") from None
    return np.frombuffer(raw, dtype=np.uint8)
