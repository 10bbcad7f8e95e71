"""DICOM pixels: every transfer syntax used for mammograms, guarded before decoding, colour to grey.

Why this module exists:

* **Decoders are named, not guessed.** pydicom decodes uncompressed, deflated and RLE data itself; the
  compressed syntaxes need plug-ins. A syntax with no installed plug-in is one line naming the file,
  the transfer syntax by name and UID, and the package that decodes it (:data:`DECODER_PACKAGES`),
  instead of pydicom's list of missing plug-ins. What the default install ships and why is in
  ``docs/guide/dicom.md``.
* **The pixel guard sees inside compressed frames.** Rows/Columns are only what the header says; an
  encapsulated frame carries its own size (JPEG SOFn, JPEG-LS SOF55, JPEG 2000 / HTJ2K SIZ, also
  inside a JP2 box wrapper; RLE's segment table). :func:`check_frames` reads those few bytes of every
  frame, without decoding, and refuses a frame that disagrees with the header, so a 3 KB upload whose
  header says 64x64 cannot make a decoder allocate 13000x13000. Decoded bytes (rows x columns x
  samples x bytes per sample) are counted against the limit for every codec.
* **The file is read in two steps.** The header is parsed with ``stop_before_pixels`` and checked
  first; only then is the pixel data read (a deflated file is inflated against the same budget first).
* **Colour is converted, never truncated.** RGB (8/16 bit, either planar configuration), palette
  colour and YBR_FULL/YBR_FULL_422 become grey as ITU-R BT.601 luma at the source bit depth
  (Y = 0.299 R + 0.587 G + 0.114 B, the Y that JPEG's YCbCr stores); other colour models are refused
  in one line.
"""

from __future__ import annotations

import io
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mammolab.errors import MammoLabError
from mammolab.io.header import (
    DEFER_BYTES,
    EMPTY_FILE,
    check_pixels,
    dicom_header,
    max_pixels_limit,
    parse_dicom_header,
)

__all__ = [
    "DECODER_PACKAGES",
    "FrameSize",
    "check_frames",
    "codestream_size",
    "decode_dicom",
    "decoder_status",
    "missing_decoder_message",
    "read_dataset",
    "to_grey",
]

#: The package (PyPI) that decodes each compressed transfer syntax in the default install, by UID.
#: Every one is permissively licensed (see docs/guide/dicom.md); pylibjpeg-libjpeg (GPL-3) is not needed:
#: 12-bit JPEG goes through imagecodecs (BSD-3) by the plug-in in :mod:`mammolab.io.dicom_plugin`.
DECODER_PACKAGES: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "python-gdcm (or pillow)",  # JPEG baseline 8 bit
    "1.2.840.10008.1.2.4.51": "imagecodecs",  # JPEG extended 12 bit (GDCM and Pillow read only 8-bit ones)
    "1.2.840.10008.1.2.4.57": "python-gdcm",  # JPEG lossless, process 14
    "1.2.840.10008.1.2.4.70": "python-gdcm",  # JPEG lossless, process 14 SV1
    "1.2.840.10008.1.2.4.80": "pyjpegls (or python-gdcm)",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls (or python-gdcm)",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg pylibjpeg-openjpeg (or python-gdcm)",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg pylibjpeg-rle",  # RLE lossless (pydicom decodes it too, unbounded)
}

_JPEG_UIDS = {f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64,
                                                     65, 66, 70, 80, 81)}
_J2K_UIDS = {f"1.2.840.10008.1.2.4.{n}" for n in (90, 91, 92, 93, 201, 202, 203)}
_RLE_UID = "1.2.840.10008.1.2.5"
_DEFLATED_UID = "1.2.840.10008.1.2.1.99"
#: Bytes of decoded pixel data the pixel limit allows: a 16-bit grey image of ``max_pixels`` pixels.
_BYTES_PER_LIMIT_PIXEL = 2
_HINT = "raise the limit with --max-pixels N or the environment variable MAMMOLAB_MAX_PIXELS"


@dataclass(frozen=True)
class FrameSize:
    """What a frame's own codestream declares: ``codec`` (jpeg, jpeg-ls, j2k, rle), its size, the
    number of components (RLE: segments) and the sample precision in bits (0 when not declared)."""

    codec: str
    width: int
    height: int
    components: int
    bits: int


# ------------------------------------------------------------------------------------------ decoders

def decoder_status(uid: str) -> tuple[bool, str]:
    """``(available, package hint)`` for a transfer syntax UID in this environment."""
    from pydicom.pixels import get_decoder

    from mammolab.io.dicom_plugin import register

    register()
    try:
        return bool(get_decoder(uid).is_available), DECODER_PACKAGES.get(str(uid), "")
    except NotImplementedError:
        return False, ""


def missing_decoder_message(name: str, uid: Any) -> str:
    """One line: the file, the transfer syntax by name and UID, and what to install."""
    from pydicom.uid import UID

    syntax = UID(str(uid))
    label = syntax.name if syntax.is_valid and syntax.name != str(syntax) else "an unknown transfer syntax"
    package = DECODER_PACKAGES.get(str(syntax))
    if package:
        return (f"{name}: cannot decode its pixel data: transfer syntax {label} ({syntax}) needs a decoder that is "
                f"not installed; pip install {package}")
    return (f"{name}: cannot decode its pixel data: transfer syntax {label} ({syntax}) has no decoder in pydicom "
            "or its plug-ins (convert the file to an uncompressed or JPEG 2000 syntax, e.g. with dcmdjpeg or gdcmconv)")


# -------------------------------------------------------------------------------------- codestreams

def _jpeg_sof(data: bytes) -> FrameSize | None:
    """The frame header of a JPEG or JPEG-LS codestream: SOF0-15 (SOF3 lossless) or SOF55 (0xFFF7)."""
    pos, n = 2, len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            pos += 1  # stray bytes between segments: decoders skip them too
            continue
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker in (0xD9, 0xDA):
            return None
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 10 > n:
                return None
            bits, height, width, comps = struct.unpack_from(">BHHB", data, pos + 4)
            return FrameSize("jpeg-ls" if marker == 0xF7 else "jpeg", width, height, comps, bits)
        if length < 2:
            return None
        pos += 2 + length
    return None


def _j2k_siz(data: bytes) -> FrameSize | None:
    """The SIZ marker segment of a JPEG 2000 / HTJ2K codestream (after a JP2 box wrapper if any)."""
    if data[:4] == b"\x00\x00\x00\x0c" and data[4:8] == b"jP  ":
        pos = 0
        while pos + 8 <= len(data):  # walk the top-level boxes to the contiguous codestream box
            length, kind = struct.unpack_from(">I4s", data, pos)
            header = 8
            if length == 1:
                if pos + 16 > len(data):
                    return None
                (length,) = struct.unpack_from(">Q", data, pos + 8)
                header = 16
            if kind == b"jp2c":
                return _j2k_siz(data[pos + header:])
            if length == 0 or length < header:
                return None
            pos += length
        return None
    if data[:4] != b"\xff\x4f\xff\x51" or len(data) < 4 + 38 + 3:
        return None
    xsiz, ysiz, xo, yo = struct.unpack_from(">IIII", data, 8)
    (comps,) = struct.unpack_from(">H", data, 40)
    bits = (data[42] & 0x7F) + 1 if len(data) > 42 else 0
    return FrameSize("j2k", xsiz - xo, ysiz - yo, comps, bits)


def _rle_header(data: bytes, name: str, rows: int, cols: int) -> FrameSize:
    """RLE's 64-byte header: segment count and offsets; each segment must fit ``rows x cols`` bytes."""
    if len(data) < 64:
        raise MammoLabError(f"{name}: damaged RLE frame ({len(data)} bytes, shorter than its 64-byte header)")
    count, *offsets = struct.unpack_from("<16I", data)
    offsets = offsets[:count]
    bounds = [*offsets, len(data)]
    if not 1 <= count <= 15 or offsets[0] != 64 or any(b <= a for a, b in zip(bounds, bounds[1:], strict=False)):
        raise MammoLabError(f"{name}: damaged RLE frame (segment table {count} segments at {offsets})")
    return FrameSize("rle", cols, rows, count, 8)


def codestream_size(frame: bytes, uid: str, name: str = "frame", rows: int = 0, cols: int = 0) -> FrameSize | None:
    """What the frame's own codestream declares, read from its first bytes; ``None`` for a syntax that
    is not encapsulated. A codestream whose header cannot be found is a :class:`MammoLabError`."""
    uid = str(uid)
    if uid == _RLE_UID:
        return _rle_header(frame, name, rows, cols)
    if uid in _JPEG_UIDS:
        size = _jpeg_sof(frame) if frame[:2] == b"\xff\xd8" else None
        what = "JPEG frame header (SOF)"
    elif uid in _J2K_UIDS:
        size = _j2k_siz(frame)
        what = "JPEG 2000 image header (SIZ)"
    else:
        return None
    if size is None:
        raise MammoLabError(f"{name}: damaged compressed frame (no {what} in its first bytes); refused before decoding")
    return size


def _frames(ds: Any, nframes: int) -> list[bytes]:
    """Each frame's codestream bytes, split out of the encapsulated pixel data without decoding."""
    from pydicom.encaps import generate_frames

    extended = None
    if "ExtendedOffsetTable" in ds and "ExtendedOffsetTableLengths" in ds:
        extended = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
    return list(generate_frames(ds.PixelData, number_of_frames=nframes, extended_offsets=extended))


def _rle_decoded_length(segment: bytes, cap: int) -> int:
    """How many bytes an RLE segment decodes to, stopping once past ``cap`` (pure Python: only used when
    pylibjpeg-rle, which decodes into a buffer of the expected size, is not installed)."""
    pos, out, n = 0, 0, len(segment)
    while pos < n and out <= cap:
        header = segment[pos]
        pos += 1
        if header > 128:
            out += 257 - header
            pos += 1
        elif header < 128:
            out += header + 1
            pos += header + 1
    return out


def check_frames(ds: Any, name: str, max_pixels: int | None = None) -> None:
    """Refuse (one line) a compressed frame whose own header disagrees with Rows/Columns/SamplesPerPixel/
    BitsAllocated, before any decoder sees it. Native pixel data must be the size the header implies."""
    uid = str(ds.file_meta.TransferSyntaxUID)
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    nframes = max(int(getattr(ds, "NumberOfFrames", 1) or 1), 1)
    says = f"the header says {cols}x{rows}, {spp} sample(s) of {bits} bits"
    elem = ds.get_item(0x7FE00010)
    if elem is None:
        raise MammoLabError(f"{name}: unreadable DICOM (no pixel data: no image in it?)")
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        expected = (rows * cols * nframes * spp * bits + 7) // 8
        # A deferred element (a file's) still has its length from the tag: checked before it is read.
        length = elem.length if hasattr(elem, "length") else len(elem.value or b"")
        if length != 0xFFFFFFFF and length > expected + expected // 2 + 1024:
            raise MammoLabError(f"{name}: pixel data of {length} bytes where {says} ({expected} bytes); "
                                "refused before reading it")
        return
    frames = _frames(ds, nframes)
    if len(frames) > nframes:
        raise MammoLabError(f"{name}: {len(frames)} compressed frames where the header says {nframes}; refused")
    for k, frame in enumerate(frames):
        where = f"{name}" if nframes == 1 else f"{name} (frame {k + 1})"
        size = codestream_size(frame, uid, where, rows, cols)
        if size is None:
            continue
        if size.codec == "rle":
            if size.components != spp * ((bits + 7) // 8):
                raise MammoLabError(f"{where}: the RLE frame has {size.components} segment(s) where {says} "
                                    f"({spp * ((bits + 7) // 8)} segments); refused before decoding")
            if not _has_bounded_rle():
                _check_rle_segments(frame, where, rows * cols, says)
            continue
        bad = (size.width, size.height) != (cols, rows) or size.components != spp or size.bits > bits
        if bad:
            raise MammoLabError(
                f"{where}: {says} but its {size.codec.upper()} codestream declares {size.width}x{size.height}, "
                f"{size.components} component(s) of {size.bits} bits; refused before decoding",
                hint="the file is damaged or crafted; re-export it from its source")
    del max_pixels  # the decoded size is the header's, checked by the caller against the limit


def _check_rle_segments(frame: bytes, where: str, cap: int, says: str) -> None:
    count, *offsets = struct.unpack_from("<16I", frame)
    bounds = [*offsets[:count], len(frame)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        if _rle_decoded_length(frame[a:b], cap) > cap:
            raise MammoLabError(f"{where}: an RLE segment decodes to more than the {cap} bytes {says} allows; "
                                "refused")


_bounded_rle: bool | None = None


def _has_bounded_rle() -> bool:
    """Whether pylibjpeg-rle (decodes into a buffer of the expected size) is installed and usable."""
    global _bounded_rle
    if _bounded_rle is None:
        try:
            import rle  # noqa: F401  (pylibjpeg-rle)
            _bounded_rle = "pylibjpeg" in _plugins(_RLE_UID)
        except ImportError:
            _bounded_rle = False
    return _bounded_rle


def _plugins(uid: str) -> tuple[str, ...]:
    from pydicom.pixels import get_decoder

    try:
        return tuple(get_decoder(uid).available_plugins)
    except NotImplementedError:
        return ()


# ------------------------------------------------------------------------------------------- reading

def _budget_check(ds: Any, name: str, max_pixels: int | None) -> None:
    """The header's pixels and its decoded bytes against the limit; a multi-frame image is refused."""
    header = check_pixels(dicom_header(ds, name), name, max_pixels)
    if header.frames > 1:
        raise MammoLabError(f"{name}: expected a single 2-D image, got {header.frames} frames "
                            "(tomosynthesis or a multi-frame series); refused before decoding")
    spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    bits = int(getattr(ds, "BitsAllocated", 16) or 16)
    if not 1 <= spp <= 4 or bits not in (1, 8, 16, 32, 64):
        raise MammoLabError(f"{name}: unsupported pixel layout (SamplesPerPixel {spp}, BitsAllocated {bits}); "
                            "expected 1 or 3 samples of 8 or 16 bits")
    decoded = header.pixels * spp * max(bits, 8) // 8
    limit = max_pixels_limit(max_pixels) * _BYTES_PER_LIMIT_PIXEL
    if decoded > limit:
        raise MammoLabError(f"{name}: decoding would take {decoded / 1e6:.0f} MB ({header.width}x{header.height}, "
                            f"{spp} sample(s) of {bits} bits), above the {limit / 1e6:.0f} MB the pixel limit "
                            "allows; refused before decoding", hint=_HINT)


def _transfer_syntax(ds: Any) -> str:
    meta = getattr(ds, "file_meta", None)
    return str(getattr(meta, "TransferSyntaxUID", "") or "")


def read_dataset(source: str | Path | bytes | bytearray | memoryview, name: str,
                 max_pixels: int | None = None) -> Any:
    """Parse a DICOM, guarded: the header first (``stop_before_pixels``), its size and decoded bytes
    against the limit, then the pixel data, then every compressed frame's own header
    (:func:`check_frames`). Returns the dataset, pixel data not yet decoded."""
    import pydicom

    if isinstance(source, (str, Path)):
        if not os.path.getsize(source):
            raise MammoLabError(f"{name}: {EMPTY_FILE}")
    elif not len(source):
        raise MammoLabError(f"{name}: {EMPTY_FILE}")
    head = parse_dicom_header(source, name)
    _budget_check(head, name, max_pixels)
    try:
        if isinstance(source, (str, Path)):
            ds = pydicom.dcmread(str(source), force=True, defer_size=DEFER_BYTES)
        else:
            ds = pydicom.dcmread(io.BytesIO(bytes(source)), force=True)
    except Exception as exc:
        raise MammoLabError(f"{name}: unreadable DICOM ({exc.__class__.__name__}: {exc})") from None
    if not _transfer_syntax(ds):
        ds.file_meta = getattr(ds, "file_meta", None) or pydicom.dataset.FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian if ds.is_implicit_VR else (
            pydicom.uid.ExplicitVRLittleEndian if ds.is_little_endian else pydicom.uid.ExplicitVRBigEndian)
    try:
        check_frames(ds, name, max_pixels)
    except MammoLabError:
        raise
    except Exception as exc:  # damaged encapsulation (item tags, offsets)
        raise MammoLabError(f"{name}: damaged compressed pixel data ({exc.__class__.__name__}: {exc})") from None
    return ds


# ------------------------------------------------------------------------------------------- decoding

#: ITU-R BT.601 luma weights (what JPEG's YCbCr Y and YBR_FULL store).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)


def to_grey(arr: np.ndarray, photometric: str, name: str) -> np.ndarray:
    """A decoded colour image (rows x cols x 3) to grey luma at the source bit depth, or one-line refusal.

    YBR_FULL / YBR_FULL_422 / YBR_ICT already store luma in their first channel; RGB is weighted
    (BT.601); the result keeps the source dtype (uint8 stays uint8, 16-bit stays 16-bit).
    """
    photometric = photometric.upper()
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise MammoLabError(f"{name}: expected 3 colour samples per pixel for {photometric}, got shape {arr.shape}")
    if photometric in ("YBR_FULL", "YBR_FULL_422", "YBR_ICT"):
        return np.ascontiguousarray(arr[..., 0])
    if photometric != "RGB":
        raise MammoLabError(f"{name}: colour model {photometric} is not supported (expected MONOCHROME1/2, RGB, "
                            "PALETTE COLOR or YBR_FULL/YBR_FULL_422); convert the file to greyscale")
    luma = arr.astype(np.float64) @ _LUMA
    if arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(luma), info.min, info.max).astype(arr.dtype)
    return luma.astype(arr.dtype)


def decode_dicom(ds: Any, name: str) -> np.ndarray:
    """The first frame's stored values as a 2-D array (colour converted to grey by :func:`to_grey`).

    A syntax without an installed decoder is one line from :func:`missing_decoder_message`.
    """
    from pydicom.pixels import get_decoder
    from pydicom.pixels.processing import apply_color_lut

    from mammolab.io.dicom_plugin import register

    register()  # imagecodecs behind pydicom's own plug-ins: 12-bit JPEG without a GPL decoder
    uid = ds.file_meta.TransferSyntaxUID
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise MammoLabError(missing_decoder_message(name, uid)) from None
    if not decoder.is_available:
        raise MammoLabError(missing_decoder_message(name, uid))
    plugin = "pylibjpeg" if str(uid) == _RLE_UID and _has_bounded_rle() else ""
    try:
        arr, meta = decoder.as_array(ds, index=0, as_rgb=False, decoding_plugin=plugin)
    except BaseException as exc:  # a damaged codestream: every plug-in raises its own type (Rust ones panic)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        text = " ".join(str(exc).split())[:300]
        raise MammoLabError(f"{name}: cannot decode its {uid.name} pixel data ({exc.__class__.__name__}: {text})",
                            hint="the file is damaged; copy it again from its source") from None
    photometric = str(meta.get("photometric_interpretation", getattr(ds, "PhotometricInterpretation", "")))
    if photometric.upper() == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:
            raise MammoLabError(f"{name}: unusable palette colour lookup table ({exc})") from None
        photometric = "RGB"
    if arr.ndim == 3:
        arr = to_grey(arr, photometric, name)
    elif arr.ndim != 2:
        raise MammoLabError(f"{name}: expected a single 2-D image, got pixel array of shape {arr.shape}")
    ds.PhotometricInterpretation = photometric if arr.ndim == 2 and photometric.startswith("MONO") else "MONOCHROME2"
    return arr
