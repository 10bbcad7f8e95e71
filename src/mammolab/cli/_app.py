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


def _print_version(value: bool) -> None:
    if value:
        from mammolab import __version__

        typer.echo(f"mammolab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """MammoLab: from a raw CBIS-DDSM download to trained, compared and explained classifiers.

    Typical order: synth (or your download) -> organize -> preprocess -> train -> evaluate -> compare;
    or all of it with 'mammolab run EXPERIMENT.yaml'.
    """
