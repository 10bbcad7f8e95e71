"""Training input sizes: one integer (a square) or height x width (a rectangle, e.g. whole films).

Whole mammograms are about 1.3 times as tall as wide: the whole-image recipes of the literature
train at 1152x896 (height x width). Padding such a film to a 1152x1152 square spends ~29% of the
compute and memory on black bars, so a size may be a rectangle. A square stays an ``int``
everywhere it is stored (config.yaml, run.json, recipe.json, the cache key): runs made before
rectangles existed keep their config hash, and ``224x224`` is the same run as ``224``. A rectangle
is stored as ``[H, W]`` (JSON/YAML list), always height first, as numpy and torch index images.

Accepted spellings (:func:`parse_image_size`): ``224``, ``"224"``, ``"1152x896"`` (also with ``X``
or spaces around the ``x``), ``[1152, 896]`` / ``(1152, 896)``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeAlias

from mammolab.errors import MammoLabError

__all__ = ["ImageSize", "as_hw", "check_min_size", "parse_image_size", "size_text", "size_value"]

#: A training input size: an int (square) or ``(height, width)``.
ImageSize: TypeAlias = int | tuple[int, int]

_HXW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")
_INT = re.compile(r"^\s*(\d+)\s*$")


def _expected(option: str, value: Any, minimum: int) -> MammoLabError:
    return MammoLabError(f"{option}: expected N or HxW (height x width) with integers of at least {minimum}, "
                         f"got {value!r}")


def size_value(height: int, width: int) -> ImageSize:
    """The canonical stored form: an int for a square, ``(height, width)`` otherwise."""
    return int(height) if int(height) == int(width) else (int(height), int(width))


def parse_image_size(value: Any, option: str = "--image-size", minimum: int = 1) -> ImageSize:
    """``224``, ``"224"``, ``"1152x896"``, ``[1152, 896]`` -> ``224`` or ``(1152, 896)``; else one-line error.

    A square given as a pair collapses to its int, so it hashes and caches as the int always did.
    """
    if isinstance(value, bool):
        raise _expected(option, value, minimum)
    if isinstance(value, int):
        h = w = value
    elif isinstance(value, str):
        m, one = _HXW.match(value), _INT.match(value)
        if m:
            h, w = int(m.group(1)), int(m.group(2))
        elif one:
            h = w = int(one.group(1))
        else:
            raise _expected(option, value, minimum)
    elif isinstance(value, Sequence) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        h, w = int(value[0]), int(value[1])
    else:
        raise _expected(option, value, minimum)
    if h < minimum or w < minimum:
        raise _expected(option, value, minimum)
    return size_value(h, w)


def as_hw(size: ImageSize | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` of a size in any accepted form (an int is a square)."""
    if isinstance(size, int) and not isinstance(size, bool):
        return int(size), int(size)
    if isinstance(size, str):
        return as_hw(parse_image_size(size))
    h, w = size  # type: ignore[misc]
    return int(h), int(w)


def size_text(size: ImageSize | Sequence[int]) -> str:
    """``"224"`` for a square, ``"1152x896"`` (height x width) for a rectangle: for messages and names."""
    h, w = as_hw(size)
    return str(h) if h == w else f"{h}x{w}"


def check_min_size(size: ImageSize, minimum: int, model: str, option: str = "--image-size") -> None:
    """A model's smallest input applies to both sides of a rectangle."""
    h, w = as_hw(size)
    if min(h, w) < minimum:
        side = "" if h == w else (" (height)" if h < minimum and w >= minimum else
                                  " (width)" if w < minimum and h >= minimum else " (both sides)")
        raise MammoLabError(f"{option}: {model} needs at least {minimum} px on each side, got "
                            f"{size_text(size)}{side}")
