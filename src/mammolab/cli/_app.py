"""The Typer application object that every command module registers on."""

from __future__ import annotations

import typer

from mammolab.cli._help import MammoGroup

app = typer.Typer(
    cls=MammoGroup,
    name="mammolab",
    help="MammoLab: from a raw CBIS-DDSM download to trained, compared and explained "
         "breast-lesion classifiers. Run 'mammolab COMMAND --help' for each step.",
    no_args_is_help=True,
    add_completion=True,  # mammolab --install-completion / --show-completion (bash, zsh, fish, PowerShell)
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
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or messages, only errors and "
                               "requested output (same as MAMMOLAB_QUIET=1)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, show_default=False,
                                help="More detail: -v logs each step (INFO), -vv everything (DEBUG) and "
                                "prints the traceback of an error."),
) -> None:
    """MammoLab: from a raw CBIS-DDSM download to trained, compared and explained classifiers.

    Typical order: synth (or your download) -> organize -> preprocess -> train -> evaluate -> compare;
    or all of it with 'mammolab run EXPERIMENT.yaml'.
    """
    set_verbosity(quiet=quiet, verbose=verbose)


def set_verbosity(*, quiet: bool = False, verbose: int = 0) -> None:
    """Apply -q / -v for this process (and its workers, through the environment)."""
    import logging
    import os

    from mammolab.progress import console

    if quiet and verbose:
        raise typer.BadParameter("give -q or -v, not both", param_hint="-q/-v")
    if quiet:
        os.environ["MAMMOLAB_QUIET"] = "1"
        console.quiet = True
    if verbose:
        os.environ["MAMMOLAB_VERBOSE"] = str(verbose)
        from rich.logging import RichHandler

        logging.basicConfig(level=logging.DEBUG if verbose > 1 else logging.INFO, format="%(name)s: %(message)s",
                            handlers=[RichHandler(console=console, show_path=False)], force=True)
