"""Render the measured figures in ``docs/figures/*.json`` into the pages, so the docs quote what a script wrote.

Each JSON file is written by a script under ``scripts/figures/`` and carries a ``stamp`` (machine, date,
MammoLab version and git commit). In a page:

- ``<!-- figure: demo -->`` becomes the file's table (``columns`` and ``rows``) followed by its stamp;
- ``<!-- value: demo runs.resnet18_cft.auc -->`` becomes one value (a dotted path into the JSON).

A missing file or key raises, which fails the strict build rather than printing a stale number.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

FIGURES = Path(__file__).resolve().parent.parent / "figures"
_FIGURE = re.compile(r"<!--\s*figure:\s*([\w-]+)\s*-->")
_VALUE = re.compile(r"<!--\s*value:\s*([\w-]+)\s+([\w.+-]+)\s*-->")


def load(name: str, folder: Path = FIGURES) -> dict[str, Any]:
    """The JSON figure ``name``; a missing or broken file is an error naming it."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such figure file; run the script under scripts/figures/ that writes it")
    return json.loads(path.read_text(encoding="utf-8"))


def lookup(data: dict[str, Any], dotted: str) -> Any:
    """``data["a"]["b"]`` for ``"a.b"``; list items by index."""
    value: Any = data
    for key in dotted.split("."):
        if isinstance(value, list):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise KeyError(f"figure key {dotted!r}: {key!r} not found")
    return value


def stamp_line(stamp: dict[str, Any]) -> str:
    """One sentence saying where and when a figure was measured."""
    machine = stamp.get("machine", {})
    cpu = machine.get("cpu", "unknown CPU")
    cores = machine.get("cores", "?")
    gpu = machine.get("gpu") or "no GPU"
    commit = stamp.get("git_commit", "unknown")[:10]
    return (f"*Measured {stamp.get('date', '?')} on {cpu} ({cores} cores, {gpu}), "
            f"MammoLab {stamp.get('mammolab_version', '?')} at commit `{commit}`.*")


def table(data: dict[str, Any]) -> str:
    """The figure's table as Markdown, then its stamp and notes."""
    columns = data["columns"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in data["rows"]]
    lines += ["", stamp_line(data["stamp"])]
    lines += [f"{note}" for note in data.get("notes", [])]
    return "\n".join(lines)


def render(markdown: str, folder: Path = FIGURES) -> str:
    """Replace every figure and value marker in ``markdown``."""
    markdown = _FIGURE.sub(lambda m: table(load(m.group(1), folder)), markdown)
    return _VALUE.sub(lambda m: str(lookup(load(m.group(1), folder), m.group(2))), markdown)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """MkDocs hook: render the figure markers of every page."""
    return render(markdown)
