"""Schemathesis against a live ``mammolab serve``: every check, a bounded number of cases (the long run is
scripts/schemathesis.sh). Clean means no 5xx, every status and content type declared, every body as declared."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mammolab.app.serve import MammoServer, make_server

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
ST = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")


@pytest.fixture(scope="module")
def server(trained_run: Path) -> Iterator[MammoServer]:
    srv = make_server(trained_run, port=0, queue_timeout=5, request_timeout=30).start()
    yield srv
    srv.stop()


@pytest.mark.skipif(ST is None, reason="needs schemathesis (the dev extra)")
def test_schemathesis_all_checks_find_nothing(server: MammoServer) -> None:
    r = subprocess.run([ST, "--config-file", str(SCRIPTS / "schemathesis.toml"), "run",
                        f"{server.url}/openapi.json", "--checks", "all", "--continue-on-failure", "-n", "40",
                        "--workers", "1", "--generation-deterministic"],
                       capture_output=True, text=True, timeout=300)
    out: Any = r.stdout + r.stderr
    counts = re.search(r"(\d+) generated, (\d+) passed", out)
    assert r.returncode == 0 and counts, out[-4000:]
    assert int(counts.group(1)) >= 40 and counts.group(1) == counts.group(2), out[-4000:]
