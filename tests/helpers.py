"""Small helpers shared by tests (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def write_dicom(path: Path, arr: np.ndarray, photometric: str = "MONOCHROME2", **tags: object) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = arr.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = arr.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def png_bomb(width: int = 25000, height: int = 25000, pad_to: int = 1_000_000) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` zeros in about 1 MB (``pad_to``).

    Its zlib stream repeats one fully flushed deflate segment (identical after each flush), so making
    it takes ~0.3 s instead of compressing 625 MB; a tEXt chunk pads it to the size of a real upload.
    Decoding it would allocate width x height bytes: what the pixel guard must refuse first.
    """
    import struct
    import zlib

    row = width + 1
    rows_per_piece = max(1, min(height, 4_000_000 // row))
    piece = bytes(row * rows_per_piece)
    comp = zlib.compressobj(9)
    first = comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)
    again = comp.compress(piece) + comp.flush(zlib.Z_FULL_FLUSH)
    n, rest = divmod(height, rows_per_piece)
    tail = comp.compress(bytes(row * rest)) + comp.flush(zlib.Z_FULL_FLUSH) if rest else b""
    total = row * height
    # Then a final empty block and the Adler-32 of all-zero data (a = 1, b = length), computed here
    # because the repeated segments never went through the compressor.
    stream = first + again * (n - 1) + tail + b"\x03\x00" + struct.pack(">I", ((total % 65521) << 16) | 1)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    pad = max(0, pad_to - len(stream) - 100)
    return (b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"tEXt", b"Comment\0" + b"x" * pad) + chunk(b"IDAT", stream)
            + chunk(b"IEND", b""))


def post_file(url: str, filename: str, data: bytes, timeout: float = 60) -> dict:
    """POST ``data`` as the multipart ``file`` part named ``filename`` over real HTTP; the JSON answer
    (an HTTP error raises ``urllib.error.HTTPError``)."""
    import json
    import urllib.request
    import uuid

    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read())
