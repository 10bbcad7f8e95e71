"""Reading the CSV a user lists their images in (``organize --manifest``): strict parsing, boxes checked.

Kept apart from the import itself (:mod:`mammolab.data.manifest_import`) because its job is to turn any
malformed file into one line naming the file, the line and what was expected, before anything is planned.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from mammolab.data import manifest as mf
from mammolab.errors import MammoLabError
from mammolab.io.images import is_dicom_file

__all__ = ["MANIFEST_HELP", "fit_box", "image_size", "parse_box", "read_manifest_csv"]


#: What a manifest must hold, for the one-line errors that refuse one.
MANIFEST_HELP = "expected at least path, label, patient_id; optional split, mask, bbox_x0..bbox_y1"


def read_manifest_csv(path: Path) -> pd.DataFrame:
    """The manifest as strings, with each row's CSV line in ``_line``; any malformed file is one clear error.

    Python's csv module in strict mode, not pandas: pandas silently shifts a row with one field too many
    into an index and reports quoting errors as a tokenizer traceback.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MammoLabError(f"--manifest: cannot read {path} ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise MammoLabError(f"--manifest: {path} is not UTF-8 text (byte 0x{raw[exc.start]:02x} on line {line}); "
                            "expected a UTF-8 CSV: save it as 'CSV UTF-8' or convert it, e.g. "
                            "iconv -f latin1 -t utf-8") from None
    if not text.strip():
        raise MammoLabError(f"--manifest: {path} is empty ({MANIFEST_HELP})")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    records: list[list[str]] = []
    lines: list[int] = []
    header: list[str] | None = None
    start = 1
    try:
        for fields in reader:
            if not any(f.strip() for f in fields):
                start = reader.line_num + 1
                continue
            if header is None:
                header = [f.strip() for f in fields]
            elif len(fields) != len(header):
                raise MammoLabError(f"--manifest: {path} line {start} has {len(fields)} fields, the header has "
                                    f"{len(header)} (a comma inside a value needs quotes: \"a, b\")")
            else:
                records.append([f.strip() for f in fields])
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        raise MammoLabError(f"--manifest: {path} is not a well-formed CSV: {exc} near line {reader.line_num} "
                            "(check its quotes: a value with a comma or quote is written \"like \"\"this\"\"\")"
                            ) from None
    if header is None:  # only separators and blanks
        raise MammoLabError(f"--manifest: {path} is empty ({MANIFEST_HELP})")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise MammoLabError(f"--manifest: {path} repeats column(s) {dup} in its header")
    df = pd.DataFrame(records, columns=header, dtype=str)
    df["_line"] = lines
    return df


def parse_box(r: pd.Series) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """A row's box as numbers, or why it is unusable (``None, None``: the row gives no box)."""
    raw = [str(r.get(c, "")).strip() for c in mf.BBOX_COLUMNS]
    if not any(raw):
        return None, None
    if not all(raw):
        empty = [c for c, v in zip(mf.BBOX_COLUMNS, raw, strict=True) if not v]
        return None, f"incomplete box ({', '.join(empty)} empty)"
    vals: list[float] = []
    for c, v in zip(mf.BBOX_COLUMNS, raw, strict=True):
        try:
            x = float(v)
        except ValueError:
            return None, f"{c} {v!r} is not a number"
        if not np.isfinite(x):
            return None, f"{c} {v!r} is not a finite number"
        vals.append(x)
    x0, y0, x1, y1 = vals
    if x1 <= x0 or y1 <= y0:
        return None, f"inverted or empty box ({x0:g},{y0:g},{x1:g},{y1:g}: needs x0 < x1 and y0 < y1)"
    return (x0, y0, x1, y1), None


def fit_box(box: tuple[float, float, float, float], width: int,
             height: int) -> tuple[tuple[float, float, float, float] | None, str | None]:
    """``box`` clipped to the image, and a note when it crossed the edge; ``None`` when wholly outside."""
    x0, y0, x1, y1 = box
    c = (max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1))
    if c[2] <= c[0] or c[3] <= c[1]:
        return None, f"box {x0:g},{y0:g},{x1:g},{y1:g} lies wholly outside the {width}x{height} image"
    if c != (x0, y0, x1, y1):
        return c, f"box {x0:g},{y0:g},{x1:g},{y1:g} crosses the edge of the {width}x{height} image; " \
                  f"clipped to {c[0]:g},{c[1]:g},{c[2]:g},{c[3]:g}"
    return c, None


def image_size(path: str) -> tuple[int, int] | None:
    """``(width, height)`` from the file's header only (PIL or the DICOM tags), ``None`` when unknown."""
    try:
        if is_dicom_file(path):
            import pydicom

            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            return int(ds.Columns), int(ds.Rows)
        from PIL import Image

        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # unreadable here: the worker reads it and reports why
        return None

