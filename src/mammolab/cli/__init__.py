"""The ``mammolab`` command line: a thin layer over the stage APIs.

Each command module below registers its commands on one Typer app and holds no logic of its own:
it parses options, calls the stage's Python API and prints where the result is. Heavy libraries
(torch, timm) are imported inside the commands so ``mammolab --help`` stays instant.
"""

from __future__ import annotations

import os
import sys

from rich.console import Console

from mammolab.cli import (  # noqa: F401  (imports register the commands)
    app_cmds,
    data_cmds,
    evaluate_cmds,
    organize_cmds,
    preprocess_cmds,
    train_cmds,
    tune_cmds,
)
from mammolab.cli._app import app
from mammolab.errors import MammoLabError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point: user errors become one red line and exit code 2."""
    try:
        app()
    except MammoLabError as exc:
        if int(os.environ.get("MAMMOLAB_VERBOSE", "0") or 0) > 1:  # -vv: where it came from, too
            import traceback

            traceback.print_exc()
        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except PermissionError as exc:  # a folder or file the user cannot touch: theirs to fix, no traceback
        where = exc.filename or "a file"
        Console(stderr=True).print(f"[bold red]error:[/] {where}: permission denied; expected a file or folder "
                                   "this user can read and write (check its owner and mode)",
                                   highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("[yellow]interrupted[/]: finished work is kept; re-run to resume.")
        sys.exit(130)
    except ModuleNotFoundError as exc:
        # The light runtime (mammolab-runtime) has no training stack: a command that needs it says so in one
        # line instead of a traceback. Any other missing module is a broken install: the traceback stays.
        root = (exc.name or "").split(".")[0]
        if root not in TRAINING_STACK:
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "this command")
        Console(stderr=True).print(f"[bold red]error:[/] mammolab {command} needs {root} (the training stack), "
                                   "which this install does not have (the light runtime predicts and serves "
                                   "exported ONNX models only); install everything: pip install mammolab",
                                   highlight=False, soft_wrap=True)
        sys.exit(2)


#: Top-level modules of the full install that the light runtime (``pyproject.toml``'s runtime extra) leaves out.
TRAINING_STACK = frozenset({"torch", "torchvision", "timm", "lightning", "lightning_fabric", "pytorch_lightning",
                            "torchmetrics", "pytorch_grad_cam", "optuna", "optuna_integration", "sqlalchemy",
                            "sklearn", "scipy", "matplotlib", "safetensors", "onnx", "onnxscript"})
