"""The Python examples of the docs run: every ```python block of a page, in order, in one namespace.

Each page runs in an empty folder, so examples that write (a tiny generated study on the API page)
leave nothing behind. A block marked ``<!-- test: skip (why) -->`` is not run; the API page may skip
none.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from blocks import DOCS, pages, python_blocks

RUNNABLE = [page for page in pages() if any(not b.skipped for b in python_blocks(page))]


@pytest.mark.slow
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_page_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAMMOLAB_QUIET", "1")
    namespace: dict = {"__name__": "__docs__"}
    for block in python_blocks(page):
        if block.skipped:
            continue
        code = compile(block.code, f"{page}:{block.line}", "exec")
        exec(code, namespace)  # noqa: S102  (the docs' own examples)


def test_api_page_runs_every_example() -> None:
    blocks = python_blocks(DOCS / "reference" / "api.md")
    assert len(blocks) >= 10
    assert not [b.line for b in blocks if b.skipped]


def test_skip_marker_is_recognised(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("<!-- test: skip (needs a run) -->\n```python\nraise SystemExit\n```\n\n```python\nx = 1\n```\n"
                    "```bash\nnot python\n```\n")
    blocks = python_blocks(page)
    assert [(b.skipped, b.code) for b in blocks] == [(True, "raise SystemExit\n"), (False, "x = 1\n")]
    assert os.path.samefile(blocks[0].page, page)
