"""The interface every unlearning mode implements.

A mode carries out one request on the ledger: it gets an :class:`UnlearnContext` (the ledger,
the request id, the client to forget, a checkpoint callback) and returns an
:class:`UnlearnOutcome` that the certificate is built from.

**Resumable, exactly once.** The process may be killed at any instruction. ``apply`` is therefore
called again, from the start, for a request that was running when the server stopped, and must
then finish the work without doing any step twice. The modes get this from the ledger: each step
is one SQLite transaction that also writes its own journal row (a tombstone, a consensus
revision) keyed by the request id, and a step whose journal row exists is not done again.
``checkpoint(step)`` is called after each committed step (the test suite's fault hook kills the
process there).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from server.ledger import ConsensusRevision, Ledger, Tombstone


def _no_checkpoint(step: str) -> None:
    return None


@dataclass
class UnlearnContext:
    ledger: Ledger
    request_id: str
    client_id: str
    checkpoint: Callable[[str], None] = _no_checkpoint


@dataclass(frozen=True)
class UnlearnOutcome:
    """Everything a request changed, read back from the ledger's journal rows for its id."""

    tombstones: list[Tombstone] = field(default_factory=list)
    revisions: list[ConsensusRevision] = field(default_factory=list)


class UnlearnMode(abc.ABC):
    """One way of forgetting a client. Subclasses set ``name`` and ``summary`` and register themselves."""

    name: ClassVar[str]
    summary: ClassVar[str]  # one line, shown by ``nebula unlearn --help``

    @abc.abstractmethod
    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        """Forget ``ctx.client_id``; resumable as the module docstring says.

        Raises
        ------
        server.exceptions.NebulaServerError, server.aggregation.AggregationError, common.wire.WireFormatError
            When the ledger cannot be changed or holds data that cannot be re-aggregated; every
            committed step stays committed, and the request is marked failed with the message.
        """
