"""What the commands print (cli/_output.py): rich tables and a progress bar on a terminal, plain lines elsewhere."""

import io

import pytest

import nebula.cli._output as output
from nebula.cli._output import markdown_table, print_tables, progress

RESULTS = "\n".join(
    ["majority class: 40.0%", "", "| method | acc | seconds |", "|---|---|---|", "| nebula FD | 58.6 | 1,027 |"]
    + ["| local | - | 47 |"]
)


@pytest.fixture
def terminal(monkeypatch):
    """Standard output as a 100-column colour terminal, recorded."""
    screen = output.new_console(file=io.StringIO(), force_terminal=True, width=100, record=True)
    monkeypatch.setattr(output, "console", lambda: screen)
    return screen


def test_a_markdown_table_becomes_a_rich_table():
    table = markdown_table(RESULTS.splitlines()[2:])
    assert [c.header for c in table.columns] == ["method", "acc", "seconds"]
    assert [c.justify for c in table.columns] == ["left", "right", "right"]  # numbers right-aligned
    assert table.row_count == 2
    marked = markdown_table(["| model | ms | note |", "|---|---:|---|", "| export | 1.5 | 2 |"])
    assert [c.justify for c in marked.columns] == ["left", "right", "left"]  # the alignment row decides


def test_tables_are_drawn_on_a_terminal(terminal):
    print_tables(RESULTS)
    text = terminal.export_text()
    assert "majority class: 40.0%" in text and "nebula FD" in text and "1,027" in text
    assert "|---|" not in text and "\N{BOX DRAWINGS LIGHT VERTICAL}" in text  # drawn, not Markdown


def test_tables_stay_markdown_in_a_pipe(capsys):
    print_tables(RESULTS)
    assert capsys.readouterr().out == RESULTS + "\n"


def test_progress_lines_in_a_pipe(capsys):
    with progress("rounds", 2) as step:
        step("[round 1/2] a", 1, 2)
        step(None, 2, 2)  # a step without a line prints nothing
    assert capsys.readouterr().out == "[round 1/2] a\n"


def test_progress_bar_and_lines_on_a_terminal(terminal):
    long_line = "[round 1/2] " + "x" * 150  # longer than the terminal: printed whole, never wrapped
    with progress("rounds", 2) as step:
        step(long_line, 1, 2)
        step("[round 2/2] b", 2, 2)
    text = terminal.export_text()
    assert long_line in text and "[round 2/2] b" in text
