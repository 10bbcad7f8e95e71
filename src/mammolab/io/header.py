"""An image's size from its header, and the one pixel guard every reader applies before decoding.

A decoder allocates what the header declares: a 1 MB PNG that declares 25000x25000 pixels makes
OpenCV (or our own reader) allocate gigabytes before it finds that the data is short. So every
reader in :mod:`mammolab.io` reads the width and height first (PNG IHDR, JPEG SOF, TIFF IFD, BMP
info header, PGM/PNM/PAM header, DICOM Rows/Columns/NumberOfFrames without its pixel data) and
refuses an image above a pixel limit with one line naming the file and the limit, before a single
pixel is decoded. The limit is, in order: the ``max_pixels`` argument, the environment variable
``MAMMOLAB_MAX_PIXELS``, :data:`DEFAULT_MAX_PIXELS` (100 megapixels: nearly three 5000x7000 films).

The format is judged by content, never by the file name: OpenCV decodes by content too, so a
``.png`` holding a TIFF would otherwise bypass a guard chosen by suffix. Content that is none of the
formats parsed here is refused (``sniff_format`` returns ``None``) rather than handed to a decoder
whose allocation we cannot bound. An empty file or a header cut short is a :class:`MammoLabError`
naming the file, not a decoder's exception.
"""

from __future__ import annotations

import io
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mammolab.errors import MammoLabError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "DEFER_BYTES",
    "EMPTY_FILE",
    "MAX_PIXELS_ENV",
    "ImageHeader",
    "check_pixels",
    "guard_bytes",
    "guard_file",
    "max_pixels_limit",
    "parse_dicom_header",
    "read_header",
    "sniff_file",
    "sniff_format",
]

#: 100 megapixels: far above a 5000x7000 film (35 MP), far below what would exhaust a laptop's memory.
DEFAULT_MAX_PIXELS = 100_000_000
MAX_PIXELS_ENV = "MAMMOLAB_MAX_PIXELS"
#: What a zero-byte file is called, with what was expected (an interrupted copy is the usual cause).
EMPTY_FILE = "empty file (0 bytes); expected a DICOM, PNG, JPEG, TIFF or PGM image (copy the file again)"
_HINT = f"raise the limit with --max-pixels N or the environment variable {MAX_PIXELS_ENV}"

#: ``read_at(offset, n)`` returns at most ``n`` bytes from ``offset`` (fewer at the end of the data).
ReadAt = Callable[[int, int], bytes]


@dataclass(frozen=True)
class ImageHeader:
    """What the header declares: the format (``png``, ``jpeg``, ``tiff``, ``bmp``, ``pnm``, ``dicom``)
    and the size; ``frames`` counts DICOM frames (1 otherwise)."""

    format: str
    width: int
    height: int
    frames: int = 1

    @property
    def pixels(self) -> int:
        return self.width * self.height * self.frames


def max_pixels_limit(value: int | None = None) -> int:
    """The pixel limit in force: ``value`` if given, else ``$MAMMOLAB_MAX_PIXELS``, else the default."""
    if value is not None:
        if int(value) < 1:
            raise MammoLabError(f"--max-pixels: expected a positive number of pixels, got {value}")
        return int(value)
    env = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not env:
        return DEFAULT_MAX_PIXELS
    try:
        limit = int(float(env))
    except ValueError:
        raise MammoLabError(f"{MAX_PIXELS_ENV}: expected a number of pixels, got {env!r}") from None
    if limit < 1:
        raise MammoLabError(f"{MAX_PIXELS_ENV}: expected a positive number of pixels, got {env!r}")
    return limit


def check_pixels(header: ImageHeader, name: str, max_pixels: int | None = None) -> ImageHeader:
    """Raise one line naming ``name`` and the limit when the header declares too many pixels."""
    limit = max_pixels_limit(max_pixels)
    if header.pixels > limit:
        frames = f" x {header.frames} frames" if header.frames > 1 else ""
        raise MammoLabError(
            f"{name}: the {header.format.upper()} header declares {header.width}x{header.height}{frames} pixels "
            f"({header.pixels / 1e6:.0f} megapixels), above the limit of {limit} pixels ({limit / 1e6:g} MP); "
            "refused before decoding", hint=_HINT)
    return header


#: How many leading bytes :func:`sniff_format` needs: DICOM's ``DICM`` ends at byte 132.
SNIFF_BYTES = 132
#: Suffixes that hint at a DICOM when the content alone is not conclusive (the last thing looked at).
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
#: The two-letter value representations of explicit-VR DICOM.
_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT OB OD OF OL OV OW PN SH SL SQ SS ST SV TM UC UI UL UN UR "
                 b"US UT UV".split())


def _bare_dicom(head: bytes, lenient: bool) -> bool:
    """A DICOM data set without preamble: a plausible first element at byte 0 (explicit VR little or big
    endian, or implicit VR little endian). Strictly the groups a data set starts with (0002 file meta,
    0008 identification); with a DICOM suffix as hint, any even group up to 0028 (image pixel)."""
    if len(head) < 8:
        return False
    for order in "<>":
        group, element = struct.unpack(order + "HH", head[:4])
        if group & 1 or not (group in (0x0002, 0x0008) or (lenient and 0x0002 <= group <= 0x0028)):
            continue
        if head[4:6] in _VRS:
            return True
        (length,) = struct.unpack("<I", head[4:8])  # implicit VR is always little endian
        if order == "<" and length < (1 << 16) and (element == 0 and length == 4 or element > 0):
            return True
    return False


def sniff_format(head: bytes, suffix: str = "") -> str | None:
    """THE format decision of every reader (files and uploads alike), by content first.

    ``head`` is the data's first :data:`SNIFF_BYTES` bytes (or all of it when shorter). DICOM comes
    first: ``DICM`` at byte 128, so a dual-personality file whose preamble holds a TIFF header (legal:
    pydicom's ``CT_small.dcm`` is one) is a DICOM; then a DICOM data set without preamble; then PNG,
    JPEG, TIFF, BMP and PNM by their magic numbers. ``suffix`` (the file name's, e.g. ``".dcm"``) is
    only the last hint: it lets a preamble-less DICOM start with a less usual group. Returns png,
    jpeg, tiff, bmp, pnm, dicom or ``None`` (unknown: refused, never handed to a decoder).
    """
    if head[128:132] == b"DICM":
        return "dicom"
    if _bare_dicom(head, lenient=False):
        return "dicom"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head.startswith(b"BM"):
        return "bmp"
    if re.match(rb"P[1-7]\s", head[:3]):
        return "pnm"
    if suffix.lower() in DICOM_SUFFIXES and _bare_dicom(head, lenient=True):
        return "dicom"
    return None


def sniff_file(path: str | Path) -> str | None:
    """:func:`sniff_format` of a file, reading only its first :data:`SNIFF_BYTES` bytes.

    An empty file is a :class:`MammoLabError` naming it; so is one that cannot be opened.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(SNIFF_BYTES)
    except OSError as exc:
        raise MammoLabError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head:
        raise MammoLabError(f"{path}: {EMPTY_FILE}")
    return sniff_format(head, Path(path).suffix)


def _truncated(name: str, fmt: str, what: str) -> MammoLabError:
    return MammoLabError(f"{name}: truncated or damaged {fmt.upper()} file ({what})",
                         hint="copy it again from its source")


def _exact(read_at: ReadAt, offset: int, n: int, name: str, fmt: str, what: str) -> bytes:
    data = read_at(offset, n)
    if len(data) < n:
        raise _truncated(name, fmt, f"the file ends inside the {what}")
    return data


def _png(read_at: ReadAt, name: str) -> ImageHeader:
    head = _exact(read_at, 8, 16, name, "png", "IHDR chunk")
    length, ctype, width, height = struct.unpack(">I4sII", head)
    if ctype != b"IHDR" or length != 13:
        raise _truncated(name, "png", "the first chunk is not a 13-byte IHDR")
    return ImageHeader("png", width, height)


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg(read_at: ReadAt, name: str) -> ImageHeader:
    pos = 2
    while True:
        byte = read_at(pos, 1)
        if not byte:
            raise _truncated(name, "jpeg", "no frame header (SOF) before the end of the file")
        if byte != b"\xff":  # garbage between segments; libjpeg skips it too
            pos += 1
            continue
        marker = read_at(pos + 1, 1)
        if not marker:
            raise _truncated(name, "jpeg", "the file ends inside a marker")
        m = marker[0]
        if m == 0xFF:  # fill byte
            pos += 1
            continue
        if m in (0x00, 0x01, 0xD8) or 0xD0 <= m <= 0xD7:  # no length field
            pos += 2
            continue
        if m in (0xD9, 0xDA):
            raise _truncated(name, "jpeg", "image data starts before any frame header (SOF)")
        (length,) = struct.unpack(">H", _exact(read_at, pos + 2, 2, name, "jpeg", "segment length"))
        if m in _SOF:
            _, height, width = struct.unpack(">BHH", _exact(read_at, pos + 4, 5, name, "jpeg", "frame header"))
            return ImageHeader("jpeg", width, height)
        if length < 2:
            raise _truncated(name, "jpeg", f"segment 0xFF{m:02X} of length {length}")
        pos += 2 + length


def _tiff(read_at: ReadAt, name: str) -> ImageHeader:
    head = read_at(0, 16)
    if len(head) < 8:
        raise _truncated(name, "tiff", "the file ends inside the file header")
    order = "<" if head[:2] == b"II" else ">"
    big = struct.unpack(order + "H", head[2:4])[0] == 43
    if big:
        if len(head) < 16:
            raise _truncated(name, "tiff", "the file ends inside the BigTIFF header")
        (ifd,) = struct.unpack(order + "Q", head[8:16])
        count_fmt, entry_size, value_fmt = "Q", 20, "HHQ"
    else:
        (ifd,) = struct.unpack(order + "I", head[4:8])
        count_fmt, entry_size, value_fmt = "H", 12, "HHI"
    count_size = struct.calcsize(count_fmt)
    (count,) = struct.unpack(order + count_fmt, _exact(read_at, ifd, count_size, name, "tiff", "first IFD"))
    entries = _exact(read_at, ifd + count_size, count * entry_size, name, "tiff", "first IFD")
    size: dict[int, int] = {}
    for k in range(count):
        entry = entries[k * entry_size:(k + 1) * entry_size]
        tag, typ, _ = struct.unpack_from(order + value_fmt, entry)
        if tag in (256, 257):
            value = entry[12:] if big else entry[8:]  # the value field (left-justified), after the count
            if typ == 3:  # SHORT
                size[tag] = struct.unpack_from(order + "H", value)[0]
            elif typ == 4:  # LONG
                size[tag] = struct.unpack_from(order + "I", value)[0]
            elif typ == 16:  # LONG8 (BigTIFF)
                size[tag] = struct.unpack_from(order + "Q", value)[0]
    if 256 not in size or 257 not in size:
        raise _truncated(name, "tiff", "no ImageWidth/ImageLength in the first IFD")
    return ImageHeader("tiff", size[256], size[257])


def _bmp(read_at: ReadAt, name: str) -> ImageHeader:
    head = _exact(read_at, 14, 12, name, "bmp", "info header")
    (info_size,) = struct.unpack_from("<I", head)
    if info_size == 12:  # OS/2 BITMAPCOREHEADER
        width, height = struct.unpack_from("<HH", head, 4)
    else:
        width, height = struct.unpack_from("<ii", head, 4)
    return ImageHeader("bmp", abs(width), abs(height))


def _pnm(read_at: ReadAt, name: str) -> ImageHeader:
    head = read_at(0, 4096)
    if head[:2] == b"P7":  # PAM: WIDTH / HEIGHT lines up to ENDHDR
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT)\s+(\d+)", head, flags=re.M))
        if b"WIDTH" not in fields or b"HEIGHT" not in fields:
            raise _truncated(name, "pnm", "no WIDTH/HEIGHT in the PAM header")
        return ImageHeader("pnm", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]))
    text = re.sub(rb"#[^\n\r]*", b" ", head[2:])  # comments run to the end of their line
    numbers = re.match(rb"\s+(\d+)\s+(\d+)\s", text)
    if numbers is None:
        raise _truncated(name, "pnm", "no width and height after the magic number")
    return ImageHeader("pnm", int(numbers.group(1)), int(numbers.group(2)))


def _dicom(read_at: ReadAt, name: str, source: str | Path | bytes | bytearray | memoryview) -> ImageHeader:
    return dicom_header(parse_dicom_header(source, name), name)


#: DICOM elements larger than this are not read while parsing a header (a huge private blob costs nothing).
DEFER_BYTES = 1 << 20
_DEFLATED_UID = "1.2.840.10008.1.2.1.99"


def parse_dicom_header(source: str | Path | bytes | bytearray | memoryview, name: str) -> object:
    """A DICOM's data set up to its pixel data (``stop_before_pixels``; large elements deferred).

    A deflated data set is inflated by pydicom in one go, so its inflated size is measured first in
    bounded steps against the pixel limit's byte budget: a 1 MB deflate bomb is refused, not inflated.
    """
    import pydicom

    try:
        if _peek_syntax(source) == _DEFLATED_UID:
            _inflated_size_ok(source, name, max_pixels_limit() * 2 + (16 << 20))
        if isinstance(source, (str, Path)):
            return pydicom.dcmread(str(source), stop_before_pixels=True, force=True, defer_size=DEFER_BYTES)
        return pydicom.dcmread(io.BytesIO(bytes(source)), stop_before_pixels=True, force=True)
    except MammoLabError:
        raise
    except Exception as exc:  # pydicom raises many types for corrupt input
        raise MammoLabError(f"{name}: unreadable DICOM header ({exc.__class__.__name__}: {exc})") from None


def _open_meta(source: str | Path | bytes | bytearray | memoryview) -> io.BufferedIOBase:
    if isinstance(source, (str, Path)):
        return open(source, "rb")  # noqa: SIM115 (closed by the caller's with)
    return io.BytesIO(bytes(source))


def _peek_syntax(source: str | Path | bytes | bytearray | memoryview) -> str:
    """The transfer syntax UID from the file meta (group 2) only; empty when there is none."""
    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with _open_meta(source) as fh:
            read_preamble(fh, force=True)
            meta = _read_file_meta_info(fh)
        return str(getattr(meta, "TransferSyntaxUID", "") or "")
    except Exception:  # no meta or damaged: the full parse reports it
        return ""


def _inflated_size_ok(source: str | Path | bytes | bytearray | memoryview, name: str, limit: int) -> None:
    """Refuse a deflated data set that inflates to more than ``limit`` bytes, inflating in 1 MB steps."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble

    with _open_meta(source) as fh:
        read_preamble(fh, force=True)
        _read_file_meta_info(fh)
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        total = 0
        try:
            while total <= limit:
                data = inflater.unconsumed_tail or fh.read(1 << 20)
                if not data:
                    break
                total += len(inflater.decompress(data, 1 << 20))
        except zlib.error as exc:
            raise MammoLabError(f"{name}: damaged deflated DICOM ({exc})") from None
    if total > limit:
        raise MammoLabError(f"{name}: the deflated DICOM inflates to more than {limit / 1e6:.0f} MB, far more than "
                            "the pixel limit allows; refused before inflating it", hint=_HINT)


def dicom_header(ds: object, name: str) -> ImageHeader:
    """Rows, Columns and NumberOfFrames of a parsed DICOM dataset (pixel data not decoded)."""
    try:
        rows, cols = int(getattr(ds, "Rows")), int(getattr(ds, "Columns"))  # noqa: B009 (DICOM keywords)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise MammoLabError(f"{name}: unreadable DICOM (no valid Rows/Columns: no image in it?)") from None
    return ImageHeader("dicom", cols, rows, max(frames, 1))


_PARSERS: dict[str, Callable[[ReadAt, str], ImageHeader]] = {
    "png": _png, "jpeg": _jpeg, "tiff": _tiff, "bmp": _bmp, "pnm": _pnm,
}


def read_header(source: str | Path | bytes | bytearray | memoryview, name: str | None = None) -> ImageHeader | None:
    """The declared size of an image file (a path) or of bytes in memory; ``None`` for an unknown format.

    Reads only the header (a few bytes, or a JPEG's segment headers); an empty file or a header cut
    short is a :class:`MammoLabError` naming ``name`` (the path by default).
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        try:
            with open(path, "rb") as fh:
                return _header_from(fh, name, path)
        except OSError as exc:
            raise MammoLabError(f"{name}: cannot read ({exc.strerror or exc})") from None
    view = memoryview(source)
    name = name or "upload"

    def read_at(offset: int, n: int) -> bytes:
        return bytes(view[offset:offset + n])

    if not len(view):
        raise MammoLabError(f"{name}: {EMPTY_FILE}")
    fmt = sniff_format(read_at(0, SNIFF_BYTES), Path(name).suffix)
    if fmt is None:
        return None
    if fmt == "dicom":
        return _dicom(read_at, name, source)
    return _PARSERS[fmt](read_at, name)


def _header_from(fh: io.BufferedReader, name: str, path: Path) -> ImageHeader | None:
    def read_at(offset: int, n: int) -> bytes:
        fh.seek(offset)
        return fh.read(n)

    head = read_at(0, SNIFF_BYTES)
    if not head:
        raise MammoLabError(f"{name}: {EMPTY_FILE}")
    fmt = sniff_format(head, path.suffix)
    if fmt is None:
        return None
    if fmt == "dicom":
        return _dicom(read_at, name, path)
    return _PARSERS[fmt](read_at, name)


def guard_file(path: str | Path, max_pixels: int | None = None) -> ImageHeader | None:
    """:func:`read_header` then :func:`check_pixels` for a file; ``None`` (no check) for an unknown format."""
    header = read_header(path)
    return None if header is None else check_pixels(header, str(path), max_pixels)


def guard_bytes(data: bytes | bytearray | memoryview, name: str,
                max_pixels: int | None = None) -> ImageHeader | None:
    """:func:`read_header` then :func:`check_pixels` for bytes in memory (an upload)."""
    header = read_header(data, name)
    return None if header is None else check_pixels(header, name, max_pixels)
