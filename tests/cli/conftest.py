"""Fixtures of the command-line tests: the `nebula` command tree, and a stand-in for the simulation engine."""

import pytest
import typer

import nebula.simulation.engine as engine
from nebula.cli.main import app, main


class Reached(Exception):
    """Raised by the stand-in engine: the command got as far as starting the federation."""


@pytest.fixture
def reach_engine(tmp_path, monkeypatch):
    """``run(*argv)``: ``nebula *argv`` up to the (stand-in) engine; returns what the engine was handed.

    Nothing is simulated: the stand-in records the configuration and keyword arguments and raises.
    """

    def run(*argv):
        reached = {}

        def record(config, **kwargs):
            reached.update(config=config, **kwargs)
            raise Reached

        monkeypatch.setattr(engine, "simulate", record)
        with pytest.raises(Reached):
            main([*argv, "--output-dir", str(tmp_path / "run"), "--baselines", "none"])
        return reached

    return run


@pytest.fixture
def engine_never_called(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("simulation.engine.simulate was called for a bad input")

    monkeypatch.setattr(engine, "simulate", fail)


def all_commands():
    """``{"simulate": click command, "unlearn submit": ..., ...}``: every command, the lazily loaded ones too."""
    import click

    root = typer.main.get_command(app)
    found = {}

    def walk(group, path, ctx):
        for name in group.list_commands(ctx):
            command = group.get_command(ctx, name)
            if isinstance(command, click.Group):
                walk(command, [*path, name], click.Context(command, parent=ctx, info_name=name))
            else:
                found[" ".join([*path, name])] = command

    walk(root, [], click.Context(root, info_name="nebula"))
    return found
