"""Nebula ServerApp: discover the nodes, run the rounds, finish.

Deployment (``flwr run``): the run config holds ``preset`` plus any flat overrides
(``federation.rounds`` ...). Simulation passes a parsed config to :func:`build_server_app`.
"""

from __future__ import annotations

import logging
from typing import Callable

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.config import NebulaConfig
from common.presets import preset_config
from server.federation import Federation

log = logging.getLogger(__name__)


def config_from_run_config(run_config: dict) -> NebulaConfig:
    flat = dict(run_config)
    return preset_config(str(flat.pop("preset", "quick")), flat)


def build_server_app(
    config: NebulaConfig | None = None, *, on_round: Callable[[dict], None] | None = None,
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
