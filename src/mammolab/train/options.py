"""Every training option with its choices, default and description, read from the config models.

:class:`~mammolab.train.config.TrainConfig` is the one place an option is described; ``mammolab
train --help``, ``mammolab tune --help`` and the wizard list them from here, so a new field shows up
everywhere once it has its ``description`` (a test checks that every field has one).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

__all__ = ["TrainOption", "literal_values", "option_lines", "train_options"]


@dataclass(frozen=True)
class TrainOption:
    """One option: dotted key, what it accepts, its default and what it does."""

    key: str
    accepts: str
    default: str
    description: str


def literal_values(annotation: Any) -> list[Any] | None:
    """The values of a ``Literal[...]`` inside ``annotation`` (also ``Literal | None``, ``list[Literal]``).

    It lives here, below the CLI, so that both the CLI's help and this module read choices from the
    config models without the CLI and training importing each other.
    """
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation) or ():
        if arg is type(None):
            continue
        found = literal_values(arg)
        if found:
            return found
    return None


def _accepts(annotation: Any) -> str:
    values = literal_values(annotation)
    if values:
        return "|".join(map(str, values))
    text = str(annotation).replace("typing.", "")
    return getattr(annotation, "__name__", text) if isinstance(annotation, type) else text


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)


def train_options(model: type[BaseModel] | None = None, prefix: str = "") -> list[TrainOption]:
    """The options of ``model`` (default :class:`TrainConfig`), nested sections expanded (``augment.hflip``)."""
    if model is None:
        from mammolab.train.config import TrainConfig

        model = TrainConfig
    out: list[TrainOption] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += train_options(ann, f"{prefix}{name}.")
            continue
        default = "required" if field.is_required() else _show(field.get_default(call_default_factory=True))
        out.append(TrainOption(f"{prefix}{name}", _accepts(ann), default, field.description or ""))
    return out


def option_lines(width: int = 100) -> list[str]:
    """``key (accepts; default X): description`` per option, wrapped to ``width`` with an indent."""
    import textwrap

    lines = []
    for o in train_options():
        head = f"{o.key} ({o.accepts}; default {o.default}): "
        lines += textwrap.wrap(head + o.description, width=width, subsequent_indent="    ")
    return lines
