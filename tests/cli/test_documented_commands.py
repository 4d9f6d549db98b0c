"""Every `nebula ...` line of the guides parses as written: the command exists, each flag exists, each value has
the type and is one of the choices (parsing only: nothing runs; tests/test_docs_commands.py runs the cheap ones).

The lines are read from the guides, not copied: fenced code blocks, and inline `nebula ...` spans without
placeholders (``...``, ``[...]``, ``|``).
"""

import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from nebula.cli.main import app

ROOT = Path(__file__).resolve().parents[2]
GUIDES = ("README.md", "deploy/README.md", "server/unlearning/README.md", "deploy/export/README.md")
PREFIX = re.compile(r"^(?:\S*/)?nebula (.*)$")


def documented() -> list[tuple[str, str, bool]]:
    """``(guide, command line after "nebula ", whole)`` for every command the guides name.

    ``whole``: a line of a fenced code block, to be run as written; otherwise an inline mention (``nebula
    deploy up --workers``), whose command and flags must exist but which may leave out required options.
    """
    found = set()
    for guide in GUIDES:
        text = (ROOT / guide).read_text(encoding="utf-8")
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            for line in re.sub(r"\\\n\s*", " ", block).splitlines():
                match = PREFIX.match(line.split("  #")[0].strip().rstrip("&").strip())
                if match:
                    found.add((guide, match.group(1), True))
        for span in re.findall(r"`nebula ([^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S)):
            if not re.search(r"\.\.\.|\[|\||\bCOMMAND\b", span):
                found.add((guide, " ".join(span.split()), False))
    return sorted(found)


def command_of(words: list[str]) -> tuple[click.Command, list[str]]:
    """The command (or group) that ``nebula *words`` names, and the words after its name."""
    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="nebula")
    command, rest = group, list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):  # `nebula unlearn`: a group
        name, command, rest = command.resolve_command(ctx, rest)
        ctx = click.Context(command, parent=ctx, info_name=name)
    return command, rest


def parse(argv: list[str]) -> tuple[str, dict]:
    """Parse ``nebula *argv`` as far as the command's own options; ``(command path, its parameters)``."""
    group = typer.main.get_command(app)
    ctx = group.make_context("nebula", list(argv))
    command = group
    while isinstance(command, click.Group):
        name, command, rest = command.resolve_command(ctx, [*ctx._protected_args, *ctx.args])
        ctx = command.make_context(name, rest, parent=ctx)
    return ctx.command_path, ctx.params


def test_the_guides_name_commands():
    whole = [line for _, line, complete in documented() if complete]
    assert len(whole) >= 20
    assert {line.split()[0] for line in whole} >= {"simulate", "unlearn", "deploy", "export", "certs", "predict"}


@pytest.mark.parametrize("guide, line, whole", documented())
def test_a_documented_command_parses_as_written(guide, line, whole):
    if not whole:
        command, rest = command_of(shlex.split(line))
        flags = {f for p in command.params for f in p.opts} | {"--help", "-h"}
        named = [w.split("=")[0] for w in rest if w.startswith("--")]
        assert set(named) <= flags, f"{guide}: nebula {line}: no {sorted(set(named) - flags)}"
        return
    try:
        path, _ = parse(shlex.split(line))
    except click.exceptions.Exit as done:  # --help
        assert done.exit_code == 0
        return
    except click.ClickException as exc:
        pytest.fail(f"{guide}: nebula {line}\n{exc.format_message()}")
    if line.startswith("unlearn client-"):
        assert path == "nebula unlearn submit"
