"""Write the CLI reference from the Typer app itself, so the page cannot drift from ``mammolab --help``.

Used two ways: as a MkDocs hook (``mkdocs.yml`` ``hooks:``), where ``docs/reference/cli.md``'s
``<!-- cli-reference -->`` marker is replaced by the generated Markdown at build time, and by the
tests (``tests/docs``), which walk the same command tree and check that every command and every
option appears in :func:`render`'s output. Typer >= 0.26 vendors its own Click, so the tree is walked
by duck typing (``commands``, ``params``, ``get_help_record``) rather than through ``click.Group``.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from typing import Any

MARKER = "<!-- cli-reference -->"
_ESCAPE = re.compile(r"([*_\[\]`|\\])")


def root_command() -> Any:
    """The Click command behind ``mammolab`` (a group of the 15 commands)."""
    import typer

    from mammolab.cli import app

    return typer.main.get_command(app)


def walk(command: Any, ctx: Any | None = None, path: tuple[str, ...] = ("mammolab",)) -> Iterator[tuple[Any, Any]]:
    """Yield ``(command, context)`` for the root and every command below it, depth first, in help order."""
    import typer

    ctx = ctx or typer.Context(command, info_name=path[-1])
    yield command, ctx
    for name, sub in (getattr(command, "commands", None) or {}).items():
        if getattr(sub, "hidden", False):
            continue
        yield from walk(sub, typer.Context(sub, info_name=name, parent=ctx), (*path, name))


def command_path(ctx: Any) -> str:
    """``mammolab train`` for the context of ``train``."""
    return ctx.command_path


def _text(text: str | None) -> str:
    """Help text as Markdown: paragraphs kept, lines joined, Markdown and HTML characters escaped."""
    if not text:
        return ""
    paragraphs = [" ".join(line.strip() for line in part.strip().splitlines() if line.strip() != "\b")
                  for part in re.split(r"\n\s*\n", text.strip())]
    return "\n\n".join(_ESCAPE.sub(r"\\\1", html.escape(p, quote=False)) for p in paragraphs if p)


def _code(text: str) -> str:
    """An inline code span that survives backticks inside it."""
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def option_records(command: Any, ctx: Any) -> list[tuple[str, str]]:
    """``(signature, help)`` for each visible option, as ``--help`` prints them (choices, default, required)."""
    records = []
    for param in command.params:
        if getattr(param, "param_type_name", "") != "option" or getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record:
            records.append((record[0], record[1] or ""))
    return records


def argument_records(command: Any, ctx: Any) -> list[tuple[str, str]]:
    """``(NAME, help)`` for each positional argument."""
    records = []
    for param in command.params:
        if getattr(param, "param_type_name", "") != "argument" or getattr(param, "hidden", False):
            continue
        name = (param.name or "").upper()
        if getattr(param, "nargs", 1) == -1:
            name += "..."
        if not param.required:
            name = f"[{name}]"
        records.append((name, getattr(param, "help", None) or ""))
    return records


def render(command: Any | None = None, heading_level: int = 2) -> str:
    """The whole reference as Markdown: one section per command with usage, arguments, options and example."""
    command = command or root_command()
    out: list[str] = []
    for cmd, ctx in walk(command):
        level = heading_level + min(len(ctx.command_path.split()) - 1, 1)
        out.append(f"{'#' * level} `{ctx.command_path}`")
        out.append("")
        usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
        out.append(f"Usage: {_code(usage)}")
        out.append("")
        if cmd.help:
            out.append(_text(cmd.help))
            out.append("")
        arguments = argument_records(cmd, ctx)
        if arguments:
            out.append("**Arguments**")
            out.append("")
            out.extend(f"- {_code(name)}: {_text(help_)}" for name, help_ in arguments)
            out.append("")
        options = option_records(cmd, ctx)
        if options:
            out.append("**Options**")
            out.append("")
            out.extend(f"- {_code(sig)}: {_text(help_)}" for sig, help_ in options)
            out.append("")
        if getattr(cmd, "epilog", None):
            out.append(_text(cmd.epilog))
            out.append("")
        subs = [name for name, sub in (getattr(cmd, "commands", None) or {}).items() if not sub.hidden]
        if subs:
            out.append("Commands: " + ", ".join(f"[`{name}`](#mammolab-{name})" for name in subs) + ".")
            out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """MkDocs hook: fill the CLI reference page's marker with the generated reference."""
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
