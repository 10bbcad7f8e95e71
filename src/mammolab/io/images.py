"""Image reading for every format a mammography user brings, returning plain numpy arrays.

``read_image`` returns a 2-D ``uint8`` or ``uint16`` array (grayscale) whatever the source:
DICOM gets its Modality/VOI LUT or window applied and MONOCHROME1 inverted *after* VOI (the order
the standard prescribes), and keeps its dynamic range rescaled to the full 16-bit range; PNG, JPEG,
TIFF and PGM are read by OpenCV with their bit depth unchanged. All failures are a
:class:`MammoLabError` naming the file, so a long loop can log and skip it: an empty or truncated
file too, never a decoder's own exception.

Every reader here applies the one pixel guard of :mod:`mammolab.io.header` first: the size the
header declares is checked against the pixel limit before any pixel is decoded, so a small file
declaring a huge image costs microseconds, not gigabytes. ``read_image_bytes`` does the same for
bytes in memory (an upload), judging the format by content.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from mammolab.errors import MammoLabError
from mammolab.io.atomic import atomic_write_bytes
from mammolab.io.dicom import decode_dicom, read_dataset
from mammolab.io.header import (
    DICOM_SUFFIXES,
    EMPTY_FILE,
    SNIFF_BYTES,
    ImageHeader,
    check_pixels,
    read_header,
    sniff_file,
    sniff_format,
)
from mammolab.io.png import decode_plain_png, plain_png_pixels, read_file

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".pgm", ".pnm", ".bmp"}
_KNOWN = "expected DICOM, PNG, JPEG, TIFF or PGM; judged by its content, not its name"


def is_dicom_file(path: str | Path) -> bool:
    """True when :func:`mammolab.io.header.sniff_format` (the one format decision) calls the file a DICOM."""
    try:
        return sniff_file(path) == "dicom"
    except MammoLabError:
        return False


def _scale_to_uint16(arr: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    arr = arr.astype(np.float64, copy=False)
    lo = float(arr.min()) if lo is None else lo
    hi = float(arr.max()) if hi is None else hi
    if hi <= lo:
        return np.zeros(arr.shape, dtype=np.uint16)
    out = (np.clip(arr, lo, hi) - lo) * (65535.0 / (hi - lo))
    return np.rint(out).astype(np.uint16)


def read_dicom_pixels(path: str | Path, *, keep_range: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """Read a DICOM's pixels as displayed: Modality LUT, VOI LUT/window, MONOCHROME1 inverted.

    With ``keep_range`` the stored unsigned 8/16-bit values are returned untouched when no LUT or
    window applies (useful for binary ROI masks); otherwise the displayed range is stretched to
    ``uint16`` so every DICOM comes out on the same scale. Rows x Columns x frames is checked against
    the pixel limit (``max_pixels``, see :mod:`mammolab.io.header`) before the pixel data is decoded.
    """
    return _dicom_pixels(str(path), str(path), keep_range=keep_range, max_pixels=max_pixels)


def _dicom_pixels(source: str | bytes | bytearray | memoryview, name: str, *, keep_range: bool = False,
                  max_pixels: int | None = None) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    # The header, the decoded size and every compressed frame's own header are checked before decoding.
    ds = read_dataset(source, name, max_pixels)
    raw = decode_dicom(ds, name)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    has_voi = "VOILUTSequence" in ds or "WindowCenter" in ds
    has_modality = "ModalityLUTSequence" in ds or "RescaleSlope" in ds or "RescaleIntercept" in ds
    if keep_range and not has_voi and not has_modality and raw.dtype in (np.uint8, np.uint16):
        arr = raw
        if photometric == "MONOCHROME1":
            arr = np.iinfo(arr.dtype).max - arr
        return np.ascontiguousarray(arr)
    arr = apply_modality_lut(raw, ds) if has_modality else raw
    if has_voi:
        arr = apply_voi_lut(arr, ds, index=0)
    # A linear stretch of the displayed values to the full 16-bit range: no level is merged, and
    # every source (12-, 14- or 16-bit scanners) lands on the same scale.
    out = _scale_to_uint16(arr)
    if photometric == "MONOCHROME1":
        out = 65535 - out
    return out


def read_image(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read any supported image as a 2-D ``uint8``/``uint16`` grayscale array.

    The format is decided from the file's first bytes only (:func:`mammolab.io.header.sniff_format`),
    and its header is checked against the pixel limit (``max_pixels``, else ``$MAMMOLAB_MAX_PIXELS``,
    else 100 megapixels) before the rest of the file is read or anything is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise MammoLabError(f"{path}: file not found")
    fmt = sniff_file(path)
    if fmt == "dicom":
        return read_dicom_pixels(path, max_pixels=max_pixels)
    if fmt is None:
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES or suffix in DICOM_SUFFIXES:
            raise MammoLabError(f"{path}: unreadable image (the content is not a {suffix[1:].upper()} file; {_KNOWN})")
        raise MammoLabError(f"{path}: unsupported file type {suffix!r} ({_KNOWN})")
    header = check_pixels(_raster_header(read_header(path), path), str(path), max_pixels)  # header bytes only
    return _decode_raster(_file_bytes(path), str(path), max_pixels, header)


def _raster_header(header: ImageHeader | None, path: Path) -> ImageHeader:
    if header is None:  # pragma: no cover - sniff_file said it was a raster format
        raise MammoLabError(f"{path}: unreadable image ({_KNOWN})")
    return header


def read_image_bytes(data: bytes | bytearray | memoryview, name: str = "upload", *,
                     max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` for bytes in memory (an upload): the same format decision, the same guard.

    ``name`` is what error messages call the data (the uploaded file's name); its suffix is only the
    last hint of :func:`mammolab.io.header.sniff_format`.
    """
    view = memoryview(data)
    if not len(view):
        raise MammoLabError(f"{name}: {EMPTY_FILE}")
    if sniff_format(bytes(view[:SNIFF_BYTES]), Path(name).suffix) == "dicom":
        return _dicom_pixels(view, name, max_pixels=max_pixels)
    return _decode_raster(view, name, max_pixels)


def _decode_raster(data: bytes | bytearray | memoryview, name: str, max_pixels: int | None,
                   header: ImageHeader | None = None) -> np.ndarray:
    """PNG, JPEG, TIFF, BMP or PNM bytes to a grayscale array, after the header's pixel check."""
    if header is None:
        header = read_header(data, name)
        if header is None or header.format == "dicom":
            raise MammoLabError(f"{name}: unreadable image (expected PNG, JPEG, TIFF or PGM; judged by its content)")
        check_pixels(header, name, max_pixels)
    try:
        arr = decode_plain_png(data, name) if header.format == "png" else None
        if arr is None:
            arr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:  # OpenCV raises on some damaged files instead of returning None
        raise MammoLabError(f"{name}: unreadable {header.format.upper()} image "
                            f"({str(exc).strip().splitlines()[-1]})") from None
    if arr is None:
        raise MammoLabError(f"{name}: unreadable {header.format.upper()} image (truncated or damaged; "
                            "expected PNG, JPEG, TIFF or PGM)")
    if arr.ndim == 3:
        code = cv2.COLOR_BGRA2GRAY if arr.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        arr = cv2.cvtColor(arr, code)
    if arr.dtype not in (np.uint8, np.uint16):
        arr = _scale_to_uint16(arr)
    return arr


def _file_bytes(path: Path) -> memoryview:
    """The file's bytes (in the thread's reused buffer, see :func:`mammolab.io.png.read_file`)."""
    try:
        return read_file(path)
    except OSError as exc:
        raise MammoLabError(f"{path}: cannot read ({exc.strerror or exc}); check the file's permissions") from None


def read_mask(path: str | Path, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a lesion mask as ``uint8`` 0/255: any non-zero pixel is lesion, whatever the format or depth.

    An 8-bit plain PNG (what organize and preprocess write) is binarised straight from the file's
    rows, one pass instead of a decode and then a threshold (after the same pixel check).
    """
    path = Path(path)
    if path.suffix.lower() == ".png" and path.is_file():
        data = _file_bytes(path)
        header = read_header(data, str(path))
        if header is not None and header.format == "png":
            check_pixels(header, str(path), max_pixels)
            pixels = plain_png_pixels(data, str(path))
            if pixels is not None and pixels.dtype == np.uint8:
                return cv2.compare(pixels, 0, cv2.CMP_GT)
    return cv2.compare(read_image(path, max_pixels=max_pixels), 0, cv2.CMP_GT)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Convert a uint16 (or uint8) image to uint8 by the full-range scale, not by clipping."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.uint16:
        return (arr >> 8).astype(np.uint8)
    raise MammoLabError(f"expected a uint8 or uint16 image, got {arr.dtype}")


#: How a PNG is encoded; every mode is lossless and any PNG reader opens it. Measured with OpenCV 5
#: on one 3000x5000 16-bit film with film grain (24-30 MB) and its lesion mask (``benchmarks/preprocess.py``):
#:
#: * ``fast``: OpenCV's own defaults. Film: 23.8 MB, encode ~400 ms, decode ~260 ms.
#: * ``stored``: zlib level 0 and no row filter, i.e. the raw pixels in PNG chunks. Film: 30.1 MB
#:   (the size of the DICOM pixel data it came from), encode ~65 ms, decode ~25 ms by
#:   :mod:`mammolab.io.png` (~40-50 ms by OpenCV): ten times faster to read, which every later pass
#:   (preprocess, the training cache) pays per image.
#: * ``rle``: run-length zlib strategy and no row filter, for binary masks. Mask: 16 kB, decode
#:   ~15 ms, against 25 kB and ~58 ms with the defaults (which still inflate every row).
PNG_MODES: dict[str, list[int]] = {
    "fast": [],
    # 1 MiB IDAT chunks (OpenCV's largest) instead of 8 KiB: measured ~25% faster to encode.
    "stored": [cv2.IMWRITE_PNG_COMPRESSION, 0, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE,
               cv2.IMWRITE_PNG_ZLIBBUFFER_SIZE, 1 << 20],
    "rle": [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE, cv2.IMWRITE_PNG_FILTER,
            cv2.IMWRITE_PNG_FILTER_NONE],
}


def write_png(path: str | Path, arr: np.ndarray, *, compression: int | None = None, mode: str = "fast") -> None:
    """Encode ``arr`` (uint8/uint16, 2-D) as PNG and write it atomically.

    ``mode`` is one of :data:`PNG_MODES` (``fast`` by default). ``compression`` (a zlib level, 0-9)
    overrides it: naming a level switches OpenCV from its fast strategy to zlib's default one with
    adaptive filters, which on a full-size 16-bit mammogram was measured 2.6x slower to encode and
    1.7x slower to decode than ``fast``, for files no smaller.
    """
    if arr.dtype not in (np.uint8, np.uint16):
        raise MammoLabError(f"{path}: can only write uint8 or uint16 images, got {arr.dtype}")
    if mode not in PNG_MODES:
        raise MammoLabError(f"png mode: expected one of {', '.join(PNG_MODES)}, got {mode!r}")
    params = PNG_MODES[mode] if compression is None else [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(arr), params)
    if not ok:
        raise MammoLabError(f"{path}: PNG encoding failed")
    atomic_write_bytes(path, buf.tobytes())
