"""Baselines for the results table, on the same split, clients and training budget.

Each baseline is one module exposing ``run(config) -> BaselineResult``; ``BASELINES``
maps the names used on the command line to them.
"""

from nebula.simulation.baselines import centralized, fedavg_lora, local_only
from nebula.simulation.baselines.common import BaselineResult

BASELINES = {
    "local-only": local_only.run,
    "centralized": centralized.run,
    "fedavg-lora": fedavg_lora.run,
}

__all__ = ["BASELINES", "BaselineResult"]
