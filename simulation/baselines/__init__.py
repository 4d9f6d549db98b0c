"""The methods the federation is compared with, on the same split, clients and training budget.

Each method is a class in its own module, registered by name (registry.py): the bounds (local-only,
centralized, the oracle) and the peers (FedAvg of LoRA adapters, plain and tuned, FedProx, FedMD,
DS-FL, FedDF). ``get_method(name).run(data, config, seed=..., on_round=...)`` returns a
:class:`BaselineResult`; ``BASELINES`` maps every name to ``run(config) -> BaselineResult`` with the
default parameters and ``config.data.seed`` (what ``nebula simulate --baselines`` calls).
"""

from functools import partial

from nebula.simulation.baselines import (  # noqa: F401  (each module registers its method)
    centralized,
    dsfl,
    fedavg_lora,
    fedavg_tuned,
    feddf,
    fedmd,
    local_only,
    oracle,
)
from nebula.simulation.baselines.common import BaselineResult
from nebula.simulation.baselines.registry import (
    KINDS,
    Method,
    MethodError,
    available_methods,
    get_method,
    method_kind,
    run_baseline,
)

BASELINES = {name: partial(run_baseline, name) for name in available_methods()}

__all__ = [
    "BASELINES",
    "KINDS",
    "BaselineResult",
    "Method",
    "MethodError",
    "available_methods",
    "get_method",
    "method_kind",
    "run_baseline",
]
