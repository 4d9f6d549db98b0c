"""The interface every unlearning mode implements.

A mode carries out one request on the ledger: it gets an :class:`UnlearnContext` (the ledger,
the request id, the client to forget, a checkpoint callback, the run folder) and returns an
:class:`UnlearnOutcome` that the certificate is built from. Modes that change the teacher and
the global student (``changes_models``) also read the run's checkpoints beside the ledger and
write their new states under ``unlearning/<request_id>/`` there (server/unlearning/models.py).

**Resumable, exactly once.** The process may be killed at any instruction. ``apply`` is therefore
called again, from the start, for a request that was running when the server stopped, and must
then finish the work without doing any step twice. The modes get this from the ledger: each step
is one SQLite transaction that also writes its own journal row (a tombstone, a consensus
revision) keyed by the request id, and a step whose journal row exists is not done again.
``checkpoint(step)`` is called after each committed step (the test suite's fault hook kills the
process there). The model modes' step is the request's model folder: its ``models.json`` is
written last, and a request whose ``models.json`` exists does not train again.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from nebula.server.ledger import ConsensusRevision, Ledger, Tombstone


def _no_checkpoint(step: str) -> None:
    return None


@dataclass
class UnlearnContext:
    ledger: Ledger
    request_id: str
    client_id: str
    checkpoint: Callable[[str], None] = _no_checkpoint
    run_dir: Path | None = None  # the run folder (checkpoints/, unlearning/); None: the ledger's folder

    @property
    def run_folder(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else self.ledger.path.parent


@dataclass(frozen=True)
class UnlearnOutcome:
    """Everything a request changed, read back from the ledger's journal rows for its id."""

    tombstones: list[Tombstone] = field(default_factory=list)
    revisions: list[ConsensusRevision] = field(default_factory=list)
    models: dict[str, Any] | None = (
        None  # the certificate's ``models`` field (server/unlearning/models.py); None: unchanged
    )


class UnlearnMode(abc.ABC):
    """One way of forgetting a client. Subclasses set ``name`` and ``summary`` and register themselves."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown by ``nebula unlearn --help``
    changes_models: ClassVar[bool] = False  # True: acts on the teacher and global student, not only the ledger

    @abc.abstractmethod
    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        """Forget ``ctx.client_id``; resumable as the module docstring says.

        Raises
        ------
        nebula.server.exceptions.NebulaServerError
        nebula.server.aggregation.AggregationError
        nebula.common.wire.WireFormatError
            When the ledger cannot be changed or holds data that cannot be re-aggregated; every
            committed step stays committed, and the request is marked failed with the message.
        """
