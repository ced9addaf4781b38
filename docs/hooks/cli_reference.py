"""mkdocs hook: the CLI reference, generated from the Typer app at build time.

A page holding the line ``<!-- cli-reference -->`` gets, in its place, every command of
``compresskit.cli.main:app`` (walked through typer's click command, sub-groups included): the
command's help, its usage line and a table of its arguments and options with the help text, type and
default that ``compresskit COMMAND --help`` prints (each parameter's ``get_help_record``). A command
added to the app appears on the next build; nothing here lists commands by name.

`render` takes the app as an argument and imports no mkdocs, so tests/docs checks it directly.
"""
from __future__ import annotations

import html
import re
from typing import Any, Iterator

MARKER = "<!-- cli-reference -->"
PROG = "compresskit"


def _commands(group: Any, ctx: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """``(path, command, context)`` for every visible command under ``group``, depth first, in the
    group's own order."""
    import click

    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if cmd is None or getattr(cmd, "hidden", False):
            continue
        sub_ctx = click.Context(cmd, info_name=name, parent=ctx)
        if hasattr(cmd, "list_commands"):  # a sub-group (typer.Typer added with add_typer)
            yield from _commands(cmd, sub_ctx, path + (name,))
        else:
            yield path + (name,), cmd, sub_ctx


def _cell(text: str) -> str:
    """Table-cell text on one line: HTML escaped (help text holds ``<dataset>``), pipes escaped, and
    brackets escaped (``hf:NAME[:CONFIG][:SPLIT]`` would otherwise read as a reference link)."""
    text = html.escape(" ".join(text.split()), quote=False)
    return re.sub(r"([|\[\]])", r"\\\1", text)


def _code_cell(text: str) -> str:
    # pipes inside a code span still split a table row: write them as an HTML entity in <code>
    return "<code>" + html.escape(text, quote=False).replace("|", "&#124;") + "</code>"


def _anchor(path: tuple[str, ...]) -> str:
    return "-".join(path)


def _help_text(cmd: Any) -> str:
    text = (cmd.help or "").strip()
    # the docstrings wrap at the source's width: keep paragraphs, join their lines
    return "\n\n".join(" ".join(p.split()) for p in text.split("\n\n"))


def _params_table(cmd: Any, ctx: Any) -> list[str]:
    rows = []
    for param in cmd.get_params(ctx):
        if param.name == "help":
            continue
        record = param.get_help_record(ctx)
        if record is None:  # hidden
            continue
        names, help_text = record
        kind = "argument" if param.param_type_name == "argument" else "option"
        rows.append(f"| {_code_cell(names)} | {kind} | {_cell(help_text)} |")
    if not rows:
        return ["No options."]
    return ["| name | kind | help |", "|---|---|---|", *rows]


def render(app: Any = None, prog: str = PROG) -> str:
    """Markdown for every command of ``app`` (default: compresskit's)."""
    import click
    import typer

    if app is None:
        from compresskit.cli.main import app
    root = typer.main.get_command(app)
    root_ctx = click.Context(root, info_name=prog)
    commands = list(_commands(root, root_ctx, ()))
    out = [_help_text(root), "", "| command | what it does |", "|---|---|"]
    for path, cmd, _ in commands:
        summary = cmd.get_short_help_str(limit=120)
        out.append(f"| [`{prog} {' '.join(path)}`](#{_anchor(path)}) | {_cell(summary)} |")
    for path, cmd, ctx in commands:
        usage = " ".join([prog, *path, *cmd.collect_usage_pieces(ctx)])
        out += ["", f"## `{prog} {' '.join(path)}` {{ #{_anchor(path)} }}", "", _help_text(cmd), "",
                "```text", usage, "```", "", *_params_table(cmd, ctx)]
    return "\n".join(out) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, render())
    return markdown
