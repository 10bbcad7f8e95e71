"""The fenced Python blocks of the docs pages, as the tests execute them.

A block is a fence opened by a line of exactly ```` ```python ````; the line just before it may say
``<!-- test: skip (why) -->`` for an example that needs what a test cannot have (a real download, a
trained run on disk). Skipped blocks are counted so a page cannot skip its way to green.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
SKIP = re.compile(r"<!--\s*test:\s*skip\b.*-->")


@dataclass
class Block:
    """One fenced Python block: where it is and its source."""

    page: Path
    line: int
    code: str
    skipped: bool


def python_blocks(page: Path) -> list[Block]:
    """Every ```` ```python ```` block of ``page`` in order (fences inside other fences are not nested)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("```"):
            fence_is_python = stripped == "```python"
            start = i
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            if fence_is_python:
                previous = lines[start - 1] if start else ""
                blocks.append(Block(page, start + 1, "\n".join(body) + "\n", bool(SKIP.search(previous))))
        i += 1
    return blocks


def pages() -> list[Path]:
    """Every Markdown page of the site, and the README."""
    return sorted(DOCS.rglob("*.md")) + [ROOT / "README.md"]
