"""Why files were unreadable, grouped: the distinct reasons of many one-line errors, with their counts.

Why: a loop over thousands of DICOMs that skips the undecodable ones used to print only "unreadable,
skipped: N"; the reason (e.g. a transfer syntax whose decoder is not installed, and the package that
decodes it) sat in a report file. The readers' messages start with the file's name, so stripping it
leaves a reason that many files share.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = ["distinct_reasons"]

#: "<...>/name.dcm: " or "<...>/name.dcm (frame 2): " at the start of a reader's message.
_FILE_PREFIX = re.compile(r"^.*?\.(?:dcm|dicom|dic|png|jpe?g|tiff?|pgm|pnm|bmp)(?: \(frame \d+\))?: ", re.I)


def reason_of(message: str) -> str:
    """The reason in a reader's one-line message, without the file names in front of it."""
    reason = message
    while True:  # "item: path.dcm: reason" -> "reason"
        stripped = _FILE_PREFIX.sub("", reason, count=1)
        if stripped == reason:
            return reason.strip()
        reason = stripped


def distinct_reasons(messages: Iterable[str]) -> list[tuple[str, int]]:
    """``(reason, count)`` pairs, most frequent first."""
    return Counter(reason_of(m) for m in messages).most_common()
