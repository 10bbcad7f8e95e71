"""A pydicom decoding plug-in backed by imagecodecs, for the JPEG syntaxes the permissive plug-ins miss.

Why: 12-bit JPEG extended (1.2.840.10008.1.2.4.51) is decoded by no permissively licensed pydicom
plug-in: GDCM and Pillow refuse 12-bit samples, and the only one that reads them, pylibjpeg-libjpeg,
is GPL-3. imagecodecs (BSD-3-Clause) bundles libjpeg-turbo 3, which decodes 8/12-bit lossy and
lossless JPEG, grey or colour. pydicom's plug-in interface (``is_available``, ``DECODER_DEPENDENCIES`` and a frame
decoding function) lets it sit behind pydicom's own decoders, after the plug-ins pydicom ships, so
pydicom still does the bookkeeping (pixel representation, byte order, shapes). Registered by
:func:`register` (idempotent); :mod:`mammolab.io.dicom` calls it before decoding.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DECODER_DEPENDENCIES", "LABEL", "is_available", "register"]

LABEL = "imagecodecs"
_UIDS = ("1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70")
DECODER_DEPENDENCIES = {uid: ("imagecodecs>=2024.1",) for uid in _UIDS}


def is_available(uid: str) -> bool:
    """Whether imagecodecs with its libjpeg-turbo codec is importable (pydicom asks per syntax)."""
    if uid not in _UIDS:
        return False
    try:
        import imagecodecs
    except ImportError:
        return False
    return bool(getattr(imagecodecs, "JPEG8", None) and imagecodecs.JPEG8.available)


def _decode_frame(src: bytes, runner: Any) -> bytes:
    """One JPEG frame to little-endian samples of the runner's pixel type, colour-by-pixel for 3 samples.

    As pydicom's own plug-ins do, the samples come back as stored: no YCbCr -> RGB transform here
    (libjpeg-turbo's input and output colour spaces are set equal), so pydicom's later conversion,
    driven by Photometric Interpretation, is applied once and only once.
    """
    import imagecodecs
    import numpy as np

    samples = runner.samples_per_pixel
    if samples == 1:
        arr = imagecodecs.jpeg8_decode(src)
        expected: tuple[int, ...] = (runner.rows, runner.columns)
    elif samples == 3:
        space = imagecodecs.JPEG8.CS.YCbCr
        arr = imagecodecs.jpeg8_decode(src, colorspace=space, outcolorspace=space)
        expected = (runner.rows, runner.columns, 3)
    else:
        raise ValueError(f"Samples per Pixel is {samples}; a DICOM JPEG frame has 1 (grey) or 3 (colour)")
    if arr.shape != expected:
        raise ValueError(f"the JPEG frame decodes to {arr.shape}, expected {expected}")
    if samples == 3:
        runner.set_option("planar_configuration", 0)  # JPEG's samples are colour-by-pixel
    dtype = np.dtype(f"<u{runner.bits_allocated // 8}")
    return arr.astype(dtype, copy=False).tobytes()


_registered = False


def register() -> None:
    """Add this plug-in to pydicom's decoders of the syntaxes above, after pydicom's own plug-ins."""
    global _registered
    if _registered:
        return
    _registered = True
    from pydicom.pixels import get_decoder

    for uid in _UIDS:
        try:
            get_decoder(uid).add_plugin(LABEL, (__name__, "_decode_frame"))
        except ValueError:  # already there (registered by another copy of this module)
            continue
