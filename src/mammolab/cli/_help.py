"""How every command's ``--help`` reads: choices and defaults where typer would print type names.

Typer labels each option with its Python type (``<bool>``, ``<str>``, ``<list[Path]>``), which tells a
user nothing they can type. :class:`MammoGroup` polishes a command the first time its help is shown:

* a flag (``--overwrite``) shows no value at all; ``--x/--no-x`` keeps both spellings;
* an option whose name is a field of the command's config model (``TrainConfig`` for ``train`` and
  ``tune``, the organize options for ``organize``...) shows the field's choices (``mass|calc|all``)
  and its default when the flag's own default is "unset" (``None``), and the field's description
  when the flag has no help of its own: the model is the one place these facts live;
* other values show a plain word (``PATH``, ``INTEGER``, ``NUMBER``, ``TEXT``, ``PATH ...``);
* a literal ``[default: X]`` in a help text is kept (rich markup would swallow it as a style tag).

The config models are imported only when a command's help is rendered, so ``mammolab --help`` and
every command's normal run stay as fast as before.
"""

from __future__ import annotations

import importlib
import re
import typing
from typing import Any

import typer.core

from mammolab.cli._options import rewrite_deprecated
from mammolab.train.options import literal_values, train_options

__all__ = ["CONFIG_MODELS", "MammoGroup", "field_choices", "polish_command"]

#: Command name -> the config models (``module:Class``) whose fields its options set.
CONFIG_MODELS: dict[str, tuple[str, ...]] = {
    "train": ("mammolab.train.config:TrainConfig",),
    "tune": ("mammolab.train.config:TrainConfig",),
    "organize": ("mammolab.data.organize:OrganizeConfig", "mammolab.data.organize:ImportConfig"),
}
#: Options with a fixed set of values that no config model holds: (command or "*", option) -> the
#: constant (``module:NAME``) the stage itself checks against.
OPTION_CHOICES: dict[tuple[str, str], str] = {
    ("synth", "layout"): "mammolab.data.synth:LAYOUTS",
    ("synth", "difficulty"): "mammolab.data.synth:DIFFICULTIES",
    ("explain", "method"): "mammolab.explain.methods:METHODS",
    ("predict", "method"): "mammolab.explain.methods:METHODS",
    ("serve", "method"): "mammolab.explain.methods:METHODS",
    ("export", "fmt"): "mammolab.evaluate.export:FORMATS",
    ("*", "split"): "mammolab.cli._options:SPLIT_CHOICES",
    ("*", "bit_depth"): "mammolab.cli._options:BIT_DEPTHS",
    ("*", "checkpoint"): "mammolab.cli._options:CHECKPOINTS",
}
#: Flags whose name differs from the config field they set.
FIELD_ALIASES = {"logger": "loggers", "accumulate": "accumulate_grad_batches", "loader_workers": "num_workers"}
_DEFAULT_TAG = re.compile(r"(?<!\\)\[(default: [^\]]*)\]")


def _load(target: str) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)




def field_choices(model: Any, name: str) -> list[str] | None:
    """The allowed values of a config field with a ``Literal`` type, as strings (None when free)."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    values = literal_values(field.annotation)
    return [str(v) for v in values] if values else None


def _plain_type(param: Any) -> str | None:
    desc = getattr(param, "type_descriptor", None)
    if desc is None:
        return None
    if getattr(desc, "is_path", False):
        word = "PATH"
    else:
        annotation = desc.annotation
        inner = typing.get_args(annotation)[0] if typing.get_origin(annotation) is list else annotation
        word = {int: "INTEGER", float: "NUMBER", str: "TEXT", bool: "BOOLEAN"}.get(inner, "VALUE")
    return f"{word} ..." if getattr(desc, "is_list", False) else word


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(str, value)) + "]" if value else "none"
    return str(value)


def polish_command(name: str, command: Any, ctx: Any = None) -> None:
    """Give every option of ``command`` a readable value label, choices, default and help (once)."""
    if getattr(command, "_mammolab_polished", False):
        return
    command._mammolab_polished = True
    models = [_load(t) for t in CONFIG_MODELS.get(name, ())]
    for param in (command.get_params(ctx) if ctx is not None else command.params):
        help_text = getattr(param, "help", None) or ""
        key = FIELD_ALIASES.get(param.name or "", param.name or "")
        field = next((m.model_fields[key] for m in models if key in m.model_fields), None)
        if field is not None and not help_text and field.description:
            help_text = field.description[0].upper() + field.description[1:] + "."
        label: str | None
        if getattr(param, "is_flag", False) or getattr(param, "count", False):
            label = None  # a switch: nothing to type after it
        else:
            choices = next((c for m in models if (c := field_choices(m, key))), None) if key else None
            target = OPTION_CHOICES.get((name, param.name or "")) or OPTION_CHOICES.get(("*", param.name or ""))
            if choices is None and target:
                try:
                    choices = [str(c) for c in _load(target)]
                except ModuleNotFoundError:  # the light runtime: the constant's module needs torch; no list
                    choices = None
            param._mammolab_choices = choices
            label = "|".join(choices) if choices else _plain_type(param)
            if choices and getattr(param.type_descriptor, "is_list", False):
                label += " ..."
        if (field is not None and param.default is None and "default" not in help_text.lower()
                and not field.is_required()):
            default = field.get_default(call_default_factory=True)
            if default is not None:
                help_text = f"{help_text} [default: {_show(default)}]".strip()
        if hasattr(param, "help"):
            param.help = _DEFAULT_TAG.sub(r"\\[\1]", help_text) if help_text else param.help
        param._mammolab_label = label
    if "mammolab.train.config:TrainConfig" in CONFIG_MODELS.get(name, ()):
        command.epilog = (command.epilog or "").rstrip() + "\n\n" + train_options_epilog()


def train_options_epilog() -> str:
    """Every TrainConfig option with its choices, default and description, for ``--help``."""
    from rich.markup import escape

    lines = [f"[bold]{escape(o.key)}[/bold] ({escape(o.accepts)}; default {escape(o.default)}): "
             f"{escape(o.description)}" for o in train_options()]
    return ("Every training option (--set KEY=VALUE, a --config YAML, or train: in an experiment file):\n\n"
            + "\n\n".join(lines))


def _display_type_rich(self: Any, ctx: Any) -> str | None:
    label = getattr(self, "_mammolab_label", False)
    return _ORIGINAL[type(self)](self, ctx) if label is False else label


def _shell_complete(self: Any, ctx: Any, incomplete: str) -> list[Any]:
    choices = getattr(self, "_mammolab_choices", None)
    if choices:
        from click.shell_completion import CompletionItem

        return [CompletionItem(c) for c in choices if c.startswith(incomplete)]
    return _ORIGINAL_COMPLETE[type(self)](self, ctx, incomplete)


_ORIGINAL = {cls: cls.display_type_rich for cls in (typer.core.TyperOption, typer.core.TyperArgument)}
_ORIGINAL_COMPLETE = {cls: cls.shell_complete for cls in _ORIGINAL}
for _cls in _ORIGINAL:
    _cls.display_type_rich = _display_type_rich  # type: ignore[method-assign]
    _cls.shell_complete = _shell_complete  # type: ignore[method-assign]


class _PolishedCommand(typer.core.TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # old spellings (mammolab.cli._options.DEPRECATED) become the new ones, one warning line each
        return super().parse_args(ctx, rewrite_deprecated(self.name or "", args))

    def format_help(self, ctx: Any, formatter: Any) -> None:
        polish_command(self.name or "", self, ctx)
        super().format_help(ctx, formatter)


class MammoGroup(typer.core.TyperGroup):
    """The root command group: each command's help is polished when it is shown (see the module docstring)."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if type(command) is typer.core.TyperCommand:
            command.__class__ = _PolishedCommand
        if command is not None and ctx.resilient_parsing:  # shell completion: offer the config's choices
            polish_command(cmd_name, command)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        polish_command("", self, ctx)
        super().format_help(ctx, formatter)
