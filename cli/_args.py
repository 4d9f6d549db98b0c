"""Small argparse helpers shared by the ``nebula`` commands (:mod:`nebula.cli.main`, :mod:`nebula.cli.unlearn`,
:mod:`nebula.cli.deploy`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def add_command(
    sub: argparse._SubParsersAction, name: str, text: str, func: Callable[[argparse.Namespace], int], *, more: str = ""
) -> argparse.ArgumentParser:
    """Subcommand ``name``, run by ``func``: ``text`` is its help and, followed by ``more``, its description."""
    p = sub.add_parser(name, help=text, description=text + more)
    p.set_defaults(func=func)
    return p


def add_required(parser: argparse.ArgumentParser, *options: tuple[str, str, str]) -> None:
    """Required options, each given as ``(flag, metavar, help)``."""
    for flag, metavar, text in options:
        parser.add_argument(flag, required=True, metavar=metavar, help=text)
