"""Small output helpers shared by the ``nebula`` commands (:mod:`nebula.cli.main`, :mod:`nebula.cli.unlearn`)."""

from __future__ import annotations

import logging

NOISY_LIBRARIES = ("flwr", "ray", "transformers", "httpx", "matplotlib", "alembic")


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal (``0.873`` -> ``"87.3%"``), ``"-"`` for None."""
    return "-" if value is None else f"{100 * value:.1f}%"


def quiet_libraries(verbose: bool) -> None:
    """Keep the libraries' own logs to warnings unless ``--verbose``.

    Call it again after importing flwr: importing it resets its logger to DEBUG.
    """
    if not verbose:
        for noisy in NOISY_LIBRARIES:
            logging.getLogger(noisy).setLevel(logging.WARNING)
