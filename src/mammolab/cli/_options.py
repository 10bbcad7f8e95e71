"""Options several commands share, defined once: the CLI's vocabulary, and the aliases of old spellings.

One word per idea, the same on every command that has the idea (``tests/test_cli_vocabulary.py``
walks the command tree and holds every command to it):

* ``--overwrite``: redo or replace an output that is already there (never ``--force``);
* ``-j/--workers``: worker *processes* of a stage (organize, preprocess, augment, synth);
  ``--loader-workers`` (train only) is a different idea, the DataLoader's worker processes;
* ``--split``: train, val, test or all (``all`` only where a whole external dataset is read);
* ``--image-size``: the model's input size (train, tune); ``--film-height``: a synthetic film's
  height (synth, as organize's ``--roi-film-height``); ``--size``: the size of the images preprocess
  writes (its resize step's target, the experiment file's ``preprocess.size``), a third idea;
* ``--bit-depth``: 8 or 16, the bit depth of written images (organize, preprocess);
* ``--views``: the model's architecture (train); ``--file-views``: how predict groups its files;
* ``--tta``: flip test-time augmentation, wherever predictions are made;
* ``--checkpoint``: best or last, wherever a run's weights are loaded.

Old spellings (:data:`DEPRECATED`) keep working for one release: :func:`rewrite_deprecated` turns
them into the new ones before a command parses its arguments, with one warning line on stderr each,
so they are in no command's ``--help`` and stdout (``predict --json``) stays clean.

``--set`` is for every option a command has no flag for (and for nested ones): ``--set lr=3e-4
--set augment.hflip=0 --set head_hidden=[256,64]``. Values are read as YAML scalars or flow lists,
so numbers, booleans, ``null`` and lists need no quoting rules of their own; the result is merged
into the config before validation, so a wrong key or value is the same one-line error as in a YAML
file. Order (later wins): defaults < preset < ``--config`` file < ``--set`` < dedicated flags.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import typer
import yaml

from mammolab.config import deep_merge
from mammolab.errors import MammoLabError

__all__ = ["BIT_DEPTHS", "CHECKPOINTS", "DEPRECATED", "LOGGER_HELP", "SET_HELP", "SPLIT_CHOICES", "Alias",
           "bit_depth_option", "check_split", "checkpoint_option", "deep_merge", "overwrite_option", "parse_sets",
           "rewrite_deprecated", "set_option", "split_option", "tta_option", "workers_option"]

SET_HELP = ("Override any config option: KEY=VALUE, repeatable; dotted keys reach nested options "
            "(augment.hflip=0); values are YAML (3e-4, true, null, [256,64]). Applied after --config, "
            "validated like the YAML file.")
LOGGER_HELP = ("Experiment tracker, repeatable: csv (RUN/logs/csv), tensorboard (RUN/tensorboard), mlflow (local "
               "sqlite store RUN/mlflow.db unless --tracking-uri) or wandb (offline without WANDB_API_KEY).")


_EXPONENT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_sets(values: Sequence[str] | None, option: str = "--set") -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}``; a malformed item is a one-line error."""
    out: dict[str, Any] = {}
    for item in values or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise MammoLabError(f"{option} {item!r}: expected KEY=VALUE (e.g. lr=3e-4 or augment.hflip=0)")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw  # not YAML (an unbalanced bracket...): the text itself, validated with the config
        if isinstance(value, str) and _EXPONENT.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 3e-4 (no dot) as text
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise MammoLabError(f"{option} {item!r}: {part} was set to a value above, not a section")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise MammoLabError(f"{option} {item!r}: {key} is a section set key by key above; set one or the other")
        node[parts[-1]] = value
    return out


def set_option() -> Any:
    """The ``--set`` option, the same on every command that has it."""
    return typer.Option(None, "--set", help=SET_HELP, metavar="KEY=VALUE")


# ------------------------------------------------------------------------------ shared options

#: The values of ``--split``; ``all`` (every image) only where a whole external dataset is scored.
SPLIT_CHOICES = ("train", "val", "test", "all")
#: The values of ``--bit-depth``: the written images' depth (what organize and the resize step can write).
BIT_DEPTHS = (8, 16)
#: The values of ``--checkpoint``.
CHECKPOINTS = ("best", "last")


def _choice(option: str, choices: Sequence[Any]) -> Callable[[Any], Any]:
    """A Typer callback that refuses a value outside ``choices`` with one line naming the option."""

    def check(value: Any) -> Any:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"expected one of {', '.join(map(str, choices))}, got {value!r}",
                                     param_hint=option)
        return value

    return check


def check_split(split: str, *, all_ok: bool, where: str = "") -> str:
    """``split`` as a stage reads it: ``all`` only where ``all_ok`` (a whole external dataset)."""
    if split == "all" and not all_ok:
        raise MammoLabError(f"--split all: expected train, val or test{where} (all is for an external dataset: "
                            "evaluate --dataset)")
    return split


def split_option(default: str = "test", help: str = "Split to use.") -> Any:  # noqa: A002
    """``--split``: the same choices (:data:`SPLIT_CHOICES`) and check on every command."""
    return typer.Option(default, "--split", help=help, callback=_choice("--split", SPLIT_CHOICES))


def overwrite_option(help: str) -> Any:  # noqa: A002
    """``--overwrite``: redo or replace an output already there (the one word for it; ``--force`` is gone)."""
    return typer.Option(False, "--overwrite", help=help)


def workers_option(help: str = "Parallel worker processes: 1 or more, capped at the cores. "  # noqa: A002
                   "[default: all cores]") -> Any:
    """``-j/--workers``: the worker processes of a stage, on every command that has them (the stage checks
    the number: one line naming --workers, from :func:`mammolab.progress.resolve_workers`)."""
    return typer.Option(None, "--workers", "-j", help=help)


def bit_depth_option(help: str) -> Any:  # noqa: A002
    """``--bit-depth``: 8 or 16, the same type on organize and preprocess."""
    return typer.Option(None, "--bit-depth", help=help, callback=_choice("--bit-depth", BIT_DEPTHS))


def tta_option(help: str = "Flip test-time augmentation: average the probabilities of the image and its "  # noqa: A002
               "horizontal and vertical flips.") -> Any:
    """``--tta/--no-tta``: on every command that makes predictions."""
    return typer.Option(False, "--tta/--no-tta", help=help)


def checkpoint_option(help: str = "best (default; a run without best.ckpt is refused) or last (the last "  # noqa: A002
                      "epoch's weights).") -> Any:
    """``--checkpoint``: which of a run's weights are loaded."""
    return typer.Option("best", "--checkpoint", help=help, callback=_choice("--checkpoint", CHECKPOINTS))


# ------------------------------------------------------------------------- deprecated spellings


@dataclass(frozen=True)
class Alias:
    """An old spelling of one command and what it now is: ``new`` replaces the old option token.

    ``new`` may carry a value of its own (``--tensorboard`` -> ``--logger tensorboard``); an old
    option that took a value keeps it (``--num-workers 4`` -> ``--loader-workers 4``).
    """

    old: str
    new: tuple[str, ...]

    @property
    def spelled(self) -> str:
        return " ".join(self.new)


def _aliases(*pairs: tuple[str, str]) -> dict[str, Alias]:
    return {old: Alias(old, tuple(new.split())) for old, new in pairs}


#: Command -> old spelling -> alias. Accepted with a warning in the next release (0.2.0), removed in the one after
#: (see CHANGELOG.md).
DEPRECATED: dict[str, dict[str, Alias]] = {
    "evaluate": _aliases(("--force", "--overwrite")),
    "explain": _aliases(("--force", "--overwrite")),
    "train": _aliases(("--num-workers", "--loader-workers"), ("--tensorboard", "--logger tensorboard")),
    "synth": _aliases(("--image-size", "--film-height")),
    "predict": _aliases(("--views", "--file-views")),
}


def deprecation_line(command: str, alias: Alias) -> str:
    """The one warning line an old spelling prints (on stderr)."""
    return (f"warning: mammolab {command} {alias.old} is deprecated and will be removed in the next release; "
            f"use {alias.spelled}")


def rewrite_deprecated(command: str, args: Sequence[str],
                       warn: Callable[[str], None] | None = None) -> list[str]:
    """``args`` of ``command`` with every old spelling replaced by the new one, warning once per spelling.

    Only option tokens are rewritten (``--old`` or ``--old=VALUE``), never what follows ``--``; the
    warning goes to stderr so that JSON on stdout (``predict --json``) stays parseable.
    """
    table = DEPRECATED.get(command)
    if not table:
        return list(args)
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    out: list[str] = []
    warned: set[str] = set()
    rest = iter(args)
    for token in rest:
        if token == "--":
            out += [token, *rest]
            break
        name, eq, value = token.partition("=")
        alias = table.get(name) if token.startswith("--") else None
        if alias is None:
            out.append(token)
            continue
        if alias.old not in warned:
            warned.add(alias.old)
            warn(deprecation_line(command, alias))
        out += [f"{alias.new[0]}={value}", *alias.new[1:]] if eq else list(alias.new)
    return out
