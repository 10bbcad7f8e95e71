"""The one exception type for mistakes a user can make.

The CLI prints a :class:`MammoLabError` as a single line and exits non-zero; any other exception is
a bug and keeps its traceback. Messages name the file, column or option at fault and say what was
expected, so the user can fix the input without reading our code.
"""

from __future__ import annotations


class MammoLabError(Exception):
    """A user-caused error (bad input, bad option, missing file) with a one-line explanation."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class OutputError(MammoLabError):
    """A user-caused error that must stop the whole run, not just skip one item: the output folder
    cannot be written (permissions, read-only file system, disk full). Loops that skip failing items
    (:func:`mammolab.progress.parallel_map`) let this one through."""
