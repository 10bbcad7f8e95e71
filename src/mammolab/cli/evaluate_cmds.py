"""CLI commands: evaluate_cmds."""

from __future__ import annotations

from mammolab.cli._app import app  # noqa: F401
