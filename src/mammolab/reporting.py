"""Small helpers shared by the stages' human-readable reports (quality_report.md and friends)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: How many items a Markdown list shows before pointing to the JSON report for the rest.
MARKDOWN_LIST_LIMIT = 200


def markdown_list_sections(report: Mapping[str, Any], sections: Sequence[tuple[str, str]],
                           limit: int = MARKDOWN_LIST_LIMIT) -> list[str]:
    """One ``## Title: count`` heading and bullet list per ``(title, key)``, long lists cut at ``limit``.

    Keeps every stage's report the same shape: a person scans the counts, the JSON has everything.
    """
    lines: list[str] = []
    for title, key in sections:
        items = list(report.get(key, []) or [])
        lines.append(f"## {title}: {len(items)}")
        lines.extend(f"- {x}" for x in items[:limit])
        if len(items) > limit:
            lines.append(f"- ... and {len(items) - limit} more (see quality_report.json)")
        lines.append("")
    return lines
