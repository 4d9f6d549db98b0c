"""Nebula ServerApp: discover the nodes, run the rounds, finish.

The run config holds two keys, ``preset`` and ``overrides`` (pyproject.toml's
``[tool.flwr.app.config]``): a preset's name and a string of space-separated
``section.field=value`` pairs over it, e.g. ``flwr run . CONN --run-config 'preset="smoke"
overrides="federation.rounds=1 data.num_clients=2"'``. It is the one spelling for every way a
federation starts: ``flwr run`` by hand, ``nebula simulate`` (simulation/engine.py writes it with
:func:`run_config_for`) and ``nebula deploy``. Flower 1.41 refuses a ``--run-config`` key that
``[tool.flwr.app.config]`` does not declare, and declaring every field there would override the
preset's values, hence one string.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Mapping

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.presets import preset_config
from nebula.server.federation import Federation

log = logging.getLogger(__name__)

RUN_CONFIG_KEYS = ("preset", "overrides")  # pyproject.toml, [tool.flwr.app.config]
BASE_PRESET = "quick"  # what a run config without ``preset`` starts from


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


def format_overrides(pairs: Mapping[str, object]) -> str:
    """The inverse of :func:`parse_overrides`: ``section.field=value`` pairs, values quoted where needed."""
    return " ".join(f"{key}={shlex.quote(str(value))}" for key, value in pairs.items())


def config_from_run_config(run_config: Mapping) -> NebulaConfig:
    """The preset, then ``overrides``; a key other than ``preset`` and ``overrides`` is a ConfigError."""
    unknown = sorted(set(run_config) - set(RUN_CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"run config keys {unknown}: the run config holds only {' and '.join(RUN_CONFIG_KEYS)}; "
            "put section.field=value pairs in overrides"
        )
    overrides = parse_overrides(str(run_config.get("overrides", "")))
    return preset_config(str(run_config.get("preset", BASE_PRESET)), overrides)


def run_config_for(config: NebulaConfig) -> dict[str, str]:
    """The run config that :func:`config_from_run_config` reads back as ``config``: the base preset and
    the fields that differ from it."""
    base = preset_config(BASE_PRESET).to_flat()
    changed = {key: value for key, value in config.to_flat().items() if value != base[key]}
    return {"preset": BASE_PRESET, "overrides": format_overrides(changed)}


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    Federation(grid, config_from_run_config(dict(context.run_config))).run()
