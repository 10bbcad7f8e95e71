"""CLI commands of the data stage: ``synth`` and ``organize``."""

from __future__ import annotations

from mammolab.cli._app import app  # noqa: F401
