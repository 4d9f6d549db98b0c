"""Unlearning: forget a client on an operator's request, prove it, and lose nothing else.

Modes (one module each, registered by name; ``get_mode(name)``, ``available_modes()``):

===============  ===============================================================
``purge``        delete the client's ledger contributions; tombstones remain
``reaggregate``  purge, then recompute the consensus of every affected round
===============  ===============================================================

``exact-replay`` and ``fast-correction`` (teacher and global student) are not built yet; see
README.md beside this file for what each mode guarantees, and the operator workflow.
Importing this package imports the mode modules (registration) and nothing that needs grpc.
"""

from server.unlearning import purge, reaggregate  # noqa: F401  (registration)
from server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from server.unlearning.registry import available_modes, get_mode, register

__all__ = ["UnlearnContext", "UnlearnMode", "UnlearnOutcome", "available_modes", "get_mode", "register"]
