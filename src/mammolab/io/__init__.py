"""Reading and writing images and files: DICOM (VOI LUT, MONOCHROME1), PNG/JPEG/TIFF/PGM, atomic writes."""

from mammolab.io.atomic import atomic_write, atomic_write_bytes, atomic_write_text, write_json
from mammolab.io.images import (
    IMAGE_SUFFIXES,
    is_dicom_file,
    read_dicom_pixels,
    read_image,
    read_image_bytes,
    read_mask,
    to_uint8,
    write_png,
)

__all__ = [
    "IMAGE_SUFFIXES",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_dicom_file",
    "read_dicom_pixels",
    "read_image",
    "read_image_bytes",
    "read_mask",
    "to_uint8",
    "write_json",
    "write_png",
]
