"""Run Nebula's ServerApp and ClientApp on Flower's simulation engine (Ray backend).

Virtual nodes 0..num_clients-1 are edge clients; node ``num_clients`` is the teacher.
Flower's runtime never installs packages here (``run_simulation`` runs the apps
in-process), and Ray's session files go to a private temporary folder that is removed
afterwards, so nothing keeps running or is left in the home folder.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from nebula.common.config import NebulaConfig

log = logging.getLogger(__name__)


@contextmanager
def _private_runtime_dirs() -> Iterator[None]:
    """Keep Ray and Flower state in a temporary folder; restore the environment after."""
    # Ray's socket paths must stay short (< 108 bytes), hence /tmp and a short prefix.
    tmp = tempfile.mkdtemp(prefix="nbl-")
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "FLWR_HOME", "RAY_DEDUP_LOGS", "TOKENIZERS_PARALLELISM")}
    os.environ.update(
        {
            "RAY_TMPDIR": tmp,
            "FLWR_HOME": os.path.join(tmp, "flwr"),
            "RAY_DEDUP_LOGS": "0",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(tmp, ignore_errors=True)


def simulate(
    config: NebulaConfig,
    *,
    on_round: Callable[[dict], None] | None = None,
    workers: int | None = None,
    verbose: bool = False,
) -> list[dict]:
    """Run the federation and return the per-round summaries.

    Parameters
    ----------
    workers : int, optional
        Parallel Ray actors (default: one per CPU core, at most the number of nodes).
        Each gets ``cores / workers`` torch threads unless ``train.threads`` is set.
    verbose : bool
        Forward the workers' own logs. Off by default: a client's failure still reaches
        the server as an error reply with its reason, which the server logs.
    """
    from flwr.simulation import run_simulation  # heavy import, only when simulating

    from nebula.client.app import app as client_app
    from nebula.server.app import build_server_app

    cores = os.cpu_count() or 1
    nodes = config.data.num_clients + 1
    workers = max(1, min(workers or cores, nodes, cores))
    if config.train.threads == 0:
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, threads=max(1, cores // workers)))
    history: list[dict] = []
    server_app = build_server_app(config, on_round=on_round, on_done=history.extend)
    backend_config = {
        "client_resources": {"num_cpus": max(1, cores // workers), "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cores,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": verbose,
        },
    }
    started = time.perf_counter()
    with _private_runtime_dirs():
        run_simulation(
            server_app=server_app, client_app=client_app, num_supernodes=nodes, backend_config=backend_config
        )
    last = history[-1]["round"] if history else None
    if (
        (len(history) != config.federation.rounds)
        if not config.federation.resume
        else (history and last != config.federation.rounds)
    ):
        raise RuntimeError(f"the simulation ended after round {last} of {config.federation.rounds}; see the log above")
    log.info("simulation finished in %.1f s", time.perf_counter() - started)
    return history
