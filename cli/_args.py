"""Options every ``nebula`` command shares, built on typer (:mod:`nebula.cli.main` and the commands' modules).

:func:`command` registers a function as a command and adds to it:

* ``-v/--verbose`` (also accepted before the command: ``nebula -v simulate``),
* with a :class:`ConfigOptions`, one option per configuration field, generated from the dataclasses of
  common/config.py (:func:`~nebula.common.config.command_line_options`): the field's flag, type, help text
  and choices, the command's preset's value as the default shown in ``--help``. The function receives the
  fields given on the command line as ``overrides`` (flat keys, e.g. ``{"federation.rounds": 4}``); a field
  added to a dataclass becomes an option of every such command without a change here.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import click
import typer
from click.core import ParameterSource
from rich.markup import escape
from typer.core import TyperCommand
from typer.models import ArgumentInfo

from nebula.cli._output import configure_logging
from nebula.common.config import CommandLineOption, command_line_options
from nebula.common.presets import PRESETS

Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="show Flower's and Ray's own logs (also as nebula -v COMMAND)")
]
Preset = Annotated[str, typer.Option(click_type=click.Choice(sorted(PRESETS)), help="starting configuration")]
KINDS = {bool: click.BOOL, int: click.INT, float: click.FLOAT, str: click.STRING}


@dataclass(frozen=True)
class ConfigOptions:
    """The configuration options of a command: defaults of ``preset``, all fields but ``exclude``.

    ``choices``: the values of fields that common/config.py cannot list (the aggregation rules are
    registered in the server package), by flat key.
    """

    preset: str
    exclude: frozenset[str] = frozenset()
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)


def command(app: typer.Typer, name: str, text: str, *, config: ConfigOptions | None = None, passthrough: bool = False):
    """Decorator: register the function as command ``name`` of ``app``, with help ``text``.

    Adds ``-v/--verbose`` (passed on as ``verbose`` if the function takes it) and, with ``config``, the
    configuration options (passed on as ``overrides``). The function returns the exit code. ``passthrough``:
    options the command does not know (``--help`` too) reach its arguments unparsed, for a script's own parser.
    """
    settings = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}

    def register(func: Callable[..., int]) -> Callable[..., int]:
        app.command(name, help=text, cls=_with_argument_help(func), context_settings=settings if passthrough else None)(
            _with_shared_options(func, config)
        )
        return func

    return register


def _with_argument_help(func: Callable[..., int]) -> type[TyperCommand]:
    """A command class that shows the help of ``func``'s arguments.

    typer 0.20 sets an argument's help before calling click's ``Parameter.__init__``, which since click 8.5
    takes ``help`` itself and resets it: the class puts the texts of the ``typer.Argument(help=...)`` back.
    """
    signature = inspect.signature(func, eval_str=True)
    texts = {
        name: info.help
        for name, p in signature.parameters.items()
        for info in getattr(p.annotation, "__metadata__", ())
        if isinstance(info, ArgumentInfo) and info.help
    }

    class Command(TyperCommand):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            for param in self.params:
                if isinstance(param, click.Argument) and not getattr(param, "help", None):
                    param.help = texts.get(param.name or "")

    return Command


def _with_shared_options(func: Callable[..., int], config: ConfigOptions | None) -> Callable[..., int]:
    """``func`` behind a signature typer reads: its own parameters, then the configuration options and -v."""
    own = inspect.signature(func, eval_str=True)
    generated = config_parameters(config) if config else {}
    verbose = inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Verbose)
    extra = [*generated.values()] + ([] if "verbose" in own.parameters else [verbose])

    def run(**kwargs: Any) -> int:
        ctx = click.get_current_context()
        given = kwargs.pop("verbose") or bool(ctx.find_root().params.get("verbose"))
        configure_logging(given)
        if "verbose" in own.parameters:
            kwargs["verbose"] = given
        if config is not None:
            values = {key: kwargs.pop(p.name) for key, p in generated.items()}
            kwargs["overrides"] = {k: v for k, v in values.items() if _typed(ctx, generated[k].name)}
        return func(**kwargs)

    kept = [p for p in own.parameters.values() if p.name != "overrides"]
    run.__signature__ = own.replace(parameters=kept + extra)  # type: ignore[attr-defined]
    run.__name__, run.__qualname__, run.__doc__ = func.__name__, func.__qualname__, func.__doc__
    return run


def _typed(ctx: click.Context, name: str) -> bool:
    """Whether option ``name`` was given on the command line (not its default)."""
    return ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE


def config_parameters(config: ConfigOptions) -> dict[str, inspect.Parameter]:
    """One keyword parameter per configuration option, by flat key; its default is the preset's value."""
    preset = PRESETS[config.preset]
    params = {}
    for option in command_line_options():
        if option.key in config.exclude:
            continue
        choices = tuple(config.choices.get(option.key, option.choices))
        section = option.key.partition(".")[0]
        info = typer.Option(
            option.flag,
            help=escape(option.help),
            click_type=click.Choice(choices) if choices else KINDS.get(option.kind, click.STRING),
            metavar=None if choices else option.kind.__name__.upper(),
            hidden=option.hidden,
            show_default=option.default != "",
            rich_help_panel=f"Configuration: {section}",
        )
        default = preset.get(option.key, option.default)
        name = option.key.replace(".", "__")  # the click parameter's name, a Python identifier
        params[option.key] = inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[Any, info]
        )
    return params


def with_flags(message: str, options: Sequence[CommandLineOption] | None = None) -> str:
    """``message`` with each configuration key replaced by its flag (``federation.rounds`` -> ``--rounds``).

    The configuration names its fields by key (common/config.py serves the Flower run config too); on the
    command line the user typed flags, so an error names the flag.
    """
    flags = {o.key: o.flag for o in (options if options is not None else command_line_options())}
    keys = "|".join(re.escape(k) for k in sorted(flags, key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])({keys})(?![\w-])", lambda m: flags[m.group(1)], message)


class CommaList(click.ParamType):
    """A comma list of names; ``none`` or an empty string is the empty list.

    With ``choices``, a name outside them is a usage error; with None the command checks the names itself
    (the baselines: listing them loads torch, which parsing must not wait for).
    """

    name = "list"

    def __init__(self, choices: Sequence[str] | None, what: str) -> None:
        self.choices, self.what = (tuple(choices) if choices is not None else None), what

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.choices) + "],..." if self.choices else "NAME,..."

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, ...]:
        if isinstance(value, tuple):
            return value
        names = tuple(n for n in (x.strip() for x in str(value).split(",")) if n and n != "none")
        unknown = [n for n in names if self.choices is not None and n not in self.choices]
        if unknown:
            self.fail(f"unknown {self.what}(s) {unknown}; available: {', '.join(self.choices)}", param, ctx)
        return names
