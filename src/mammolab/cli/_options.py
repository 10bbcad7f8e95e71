"""Options several commands share: ``--set key=value`` overrides and ``--logger`` trackers.

``--set`` is for every option a command has no flag for (and for nested ones): ``--set lr=3e-4
--set augment.hflip=0 --set head_hidden=[256,64]``. Values are read as YAML scalars or flow lists,
so numbers, booleans, ``null`` and lists need no quoting rules of their own; the result is merged
into the config before validation, so a wrong key or value is the same one-line error as in a YAML
file. Order (later wins): defaults < preset < ``--config`` file < ``--set`` < dedicated flags.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import typer
import yaml

from mammolab.config import deep_merge
from mammolab.errors import MammoLabError

__all__ = ["LOGGER_HELP", "SET_HELP", "deep_merge", "parse_sets", "set_option"]

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
