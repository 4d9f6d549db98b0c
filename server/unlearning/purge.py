"""``purge``: delete the client's contributions from the ledger, leaving tombstones.

One transaction deletes every contribution (raw logits payload, public ids, weight) and the
label counts of the client, writes one tombstone per removed contribution (request id, run,
round, client, sha256 and size of the payload, weight) and marks the client forgotten. Either
all of it is committed or none of it; run again (a resumed request), it finds nothing left to
delete and the tombstones already written under the request id are its outcome.

What it does not do: the round consensus computed with the client's logits stays as it was
(``reaggregate`` recomputes it), and nothing is removed from the teacher, the global student
or other clients (server/unlearning/README.md).
"""

from __future__ import annotations

from typing import ClassVar

from nebula.server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from nebula.server.unlearning.registry import register


@register
class PurgeMode(UnlearnMode):
    name: ClassVar[str] = "purge"
    summary: ClassVar[str] = "delete the client's ledger rows (tombstones remain); consensus and models unchanged"

    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        purge(ctx)
        return UnlearnOutcome(tombstones=ctx.ledger.tombstones(ctx.request_id))


def purge(ctx: UnlearnContext) -> None:
    """The purge step itself, shared with the modes that start with it."""
    ctx.ledger.purge_client(ctx.client_id, request_id=ctx.request_id)
    ctx.checkpoint("purged")
