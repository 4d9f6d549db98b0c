"""What the ``nebula`` commands print: rich tables and progress, one-line errors, quiet libraries.

Results are written to files as Markdown (simulation/report.py, server/unlearning/verification.py,
deploy/export/report.py: ``results.md``, ``unlearning.md``, ``report.md``); :func:`print_tables` shows
the same text on the terminal with each Markdown table drawn as a :class:`rich.table.Table`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console
from rich.table import Table

from nebula.common.metrics import one_class

NOISY_LIBRARIES = ("flwr", "ray", "transformers", "httpx", "matplotlib", "alembic")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@functools.cache
def console() -> Console:
    """Standard output as rich sees it (:func:`new_console`), written to ``sys.stdout`` as it is at each call."""
    return new_console()


def new_console(**options: Any) -> Console:
    """A rich console that prints our text as it is: no markup or highlighting, lines never wrapped (a progress
    line stays one line in a log file); ``options``: more :class:`rich.console.Console` arguments."""
    return Console(highlight=False, soft_wrap=True, markup=False, **options)


def say(line: str) -> None:
    """Print one line of progress or result, at once."""
    console().print(line)
    sys.stdout.flush()


def fail(message: str, code: int = 2) -> int:
    """``error: message`` on stderr; returns ``code`` (2: bad input, 1: the work itself failed)."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.873`` -> ``"87.3%"``), ``"-"`` for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def configure_logging(verbose: bool) -> None:
    """INFO logs of nebula's own modules on stderr; the libraries' own logs only with ``--verbose``."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
    quiet_libraries(verbose)


def quiet_libraries(verbose: bool) -> None:
    """Keep the libraries' own logs to warnings unless ``--verbose``.

    Call it again after importing flwr: importing it resets its logger to DEBUG.
    """
    if not verbose:
        for noisy in NOISY_LIBRARIES:
            logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def progress(what: str, total: int | None = None) -> Iterator[Callable[[str | None, int, int], None]]:
    """``with progress("rounds") as step: step(line, done, of)`` prints ``line`` (if any): ``done`` steps of ``of``.

    On a terminal a rich progress bar (``what``, done of total, elapsed time) stays below the lines while the
    work runs and disappears after; elsewhere (a pipe, a log file, a test) only the lines are printed.
    """
    out = console()
    if not out.is_terminal:
        yield lambda line, done, total: say(line) if line is not None else None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=True, refresh_per_second=2) as bar:
        task = bar.add_task(what, total=total)

        def step(line: str | None, done: int, of: int) -> None:
            bar.update(task, completed=done, total=of)
            if line is not None:
                bar.console.print(line)

        yield step


def print_tables(markdown: str) -> None:
    """Print Markdown text; on a terminal each of its tables (``|``-delimited lines) is drawn by rich.

    Elsewhere (a pipe, ``tee``, a log file) the text is printed as it is: a Markdown table is the plain-text form
    that stays readable there, where rich would squeeze a wide table into 80 columns.
    """
    out = console()
    if not out.is_terminal:
        out.print(markdown)
        sys.stdout.flush()
        return
    block: list[str] = []
    for line in [*markdown.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            out.print(markdown_table(block))
            block = []
        out.print(line)


def markdown_table(lines: list[str]) -> Table:
    """A Markdown table (header, ``|---|---:|`` alignment row, body rows) as a :class:`rich.table.Table`.

    Columns are right-aligned where the alignment row says so (``---:``), or, without any alignment marks,
    where every body cell is a number (``58.6``, ``4,216``, ``-``).
    """
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
    header, body = rows[0], rows[1:]
    marks = body[0] if body and all(set(cell) <= set(":-") for cell in body[0]) else []
    body = body[1:] if marks else body
    table = Table(header_style="bold")
    for i, title in enumerate(header):
        column = [row[i] for row in body if i < len(row)]
        right = marks[i].endswith(":") if any(m.endswith(":") for m in marks) else all(map(_numeric, column))
        table.add_column(title, justify="right" if right and column else "left", overflow="fold")
    for row in body:
        table.add_row(*row)
    return table


def _numeric(cell: str) -> bool:
    """A number as the tables print it: ``58.6``, ``4,216``, ``87.3%``, ``64.0\N{DAGGER}``, or ``-`` for none."""
    text = cell.replace(",", "").rstrip("%\N{DAGGER}").strip()
    return text == "-" or re.fullmatch(r"[+-]?\d+(\.\d+)?", text) is not None


def _scored(acc: float | None, f1: float | None, share: float | None = None) -> str:
    """``45.0% F1 40.1%``, plus ``ONE CLASS (97%)`` for a model that answers (nearly) one class."""
    flag = f" ONE CLASS ({pct(share)})" if one_class(share) else ""
    return pct(acc) + (f" F1 {pct(f1)}" if f1 is not None else "") + flag


def round_line(s: dict, total_rounds: int) -> str:
    """One round's progress line from its summary (a row of the run folder's metrics.jsonl)."""
    rejected = f" ({len(s['rejected'])} left out: {', '.join(s['rejected'])})" if s["rejected"] else ""
    shares = [m["top_share"] for m in s.get("clients", {}).values() if "top_share" in m]
    flagged = sum(one_class(x) for x in shares)
    clients_flag = f" ONE CLASS: {flagged}/{len(shares)} clients" if flagged else ""
    return (
        f"[round {s['round']}/{total_rounds}] {s['accepted']} replies{rejected}"
        f" | mean client {_scored(s['mean_client_acc'], s.get('mean_client_f1'))}{clients_flag}"
        f" | teacher {_scored(s['teacher_acc'], s.get('teacher_f1'), s.get('teacher_top_share'))}"
        f" | global student {_scored(s['student_acc'], s.get('student_f1'), s.get('student_top_share'))}"
        f" | up {s['bytes_up_per_client']:,.0f} B/client | {s['seconds']:.0f} s"
    )
