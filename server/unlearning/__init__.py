"""Unlearning: forget a client on an operator's request, prove it, and lose nothing else.

Modes (one module each, registered by name; ``get_mode(name)``, ``available_modes()``):

===================  ===========================================================================
``purge``            delete the client's ledger contributions; tombstones remain
``reaggregate``      purge, then recompute the consensus of every affected round
``exact-replay``     reaggregate, then restore the teacher and global student to the checkpoint
                     before the client's first round and replay every later round from the ledger
``fast-correction``  reaggregate, then a bounded corrective distillation of the current teacher and
                     global student toward the cleaned consensus
===================  ===========================================================================

See README.md beside this file for what each mode guarantees, and the operator workflow.
Importing this package imports no mode: the registry imports the built-in ones on first use
(:mod:`nebula.server.unlearning.registry`), and the model modes import torch only when they run.
"""

from nebula.server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from nebula.server.unlearning.registry import available_modes, get_mode, register

__all__ = ["UnlearnContext", "UnlearnMode", "UnlearnOutcome", "available_modes", "get_mode", "register"]
