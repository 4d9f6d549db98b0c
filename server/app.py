"""Nebula ServerApp: discover the nodes, run the rounds, finish.

Deployment (``flwr run``): the run config holds ``preset`` and ``overrides``, a string of
space-separated ``section.field=value`` pairs (``flwr run . CONN --run-config 'preset="smoke"
overrides="federation.rounds=1 data.num_clients=2"'``). Flower 1.41 refuses a ``--run-config``
key that pyproject's ``[tool.flwr.app.config]`` does not declare, and declaring every field there
would override the preset's values, hence one string. Simulation passes a parsed config to
:func:`build_server_app`.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.presets import preset_config
from nebula.server.federation import Federation

log = logging.getLogger(__name__)


def parse_overrides(text: str) -> dict[str, str]:
    """``"federation.rounds=1 data.dataset='bbc'"`` -> ``{"federation.rounds": "1", "data.dataset": "bbc"}``.

    Values stay strings (NebulaConfig coerces them to each field's type); shell-style quotes
    allow spaces. Raises ConfigError naming a pair without ``=``.
    """
    try:
        items = shlex.split(text)
    except ValueError as exc:  # unbalanced quotes
        raise ConfigError(f"run config overrides {text!r}: {exc}") from None
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"run config overrides: {item!r} is not section.field=value")
        pairs[key.strip()] = value
    return pairs


def config_from_run_config(run_config: dict) -> NebulaConfig:
    """The preset, then flat ``section.field`` keys of the run config, then ``overrides``."""
    flat = dict(run_config)
    preset = str(flat.pop("preset", "quick"))
    overrides = parse_overrides(str(flat.pop("overrides", "")))
    return preset_config(preset, {**flat, **overrides})


def build_server_app(
    config: NebulaConfig | None = None,
    *,
    on_round: Callable[[dict], None] | None = None,
    on_done: Callable[[list[dict]], None] | None = None,
) -> ServerApp:
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = config if config is not None else config_from_run_config(dict(context.run_config))
        history = Federation(grid, cfg, on_round=on_round).run()
        if on_done is not None:
            on_done(history)

    return app


app = build_server_app()
