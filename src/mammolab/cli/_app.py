"""The Typer application object that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="mammolab",
    help="MammoLab: from a raw CBIS-DDSM download to trained, compared and explained "
         "breast-lesion classifiers. Run 'mammolab COMMAND --help' for each step.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
