"""``reaggregate``: purge, then recompute the consensus of every round the client took part in.

For each stored round consensus whose contributors include the client, the consensus is
recomputed from the contributions that remain, exactly as ``server/federation.py`` computed it:
``softmax(z / T)`` of each decoded payload, the round's aggregation rule, the contributions'
weights, and the clients' label counts as support when the ledger's ``clients`` table holds them
for every remaining client (otherwise none: ``class-support`` and ``class-contrast`` then take
their documented ``support=None`` fallback). With fewer than ``federation.min_replies``
contributions left, or only weightless ones, the federation would not have aggregated the round,
so its consensus is deleted.

Each round is one transaction that stores the new consensus and a revision row (request id,
hashes before and after, contributors before and after); a resumed request skips rounds whose
consensus no longer lists the client. Rounds are found from the consensus rows, not from the
client's contributions, so ``reaggregate`` after an earlier ``purge`` of the same client still
cleans every consensus that client reached.

What it does not do: the teacher, the global student and the other clients have already learnt
from the old consensus (server/unlearning/README.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from nebula.common.config import ConfigError, NebulaConfig
from nebula.server.aggregation import get_rule
from nebula.server.consensus import federation_log_prior
from nebula.server.exceptions import LedgerError
from nebula.server.ledger import ConsensusRevision
from nebula.server.reputation import Reputation
from nebula.server.unlearning.arithmetic import consensus_sha256, recompute_consensus, support_matrix
from nebula.server.unlearning.base import UnlearnContext, UnlearnMode, UnlearnOutcome
from nebula.server.unlearning.purge import purge
from nebula.server.unlearning.registry import register

RUN_KEYS = ("train.temperature", "federation.min_replies", "data.num_clients")


@dataclass(frozen=True)
class RunSettings:
    """What re-aggregating a run's rounds needs from the configuration it was started with."""

    temperature: float
    min_replies: int
    isolated: bool = False  # federation.isolation = isolated: the consensus adds the federation's log prior
    reputation: bool = False  # federation.reputation: clients weighted by their trust (server/reputation.py)

    @classmethod
    def from_flat(cls, flat: dict, *, run_id: str) -> RunSettings:
        missing = [k for k in RUN_KEYS if k not in flat]
        if missing:
            raise LedgerError(f"run {run_id}: the stored configuration lacks {missing}; cannot re-aggregate its rounds")
        try:
            config = NebulaConfig.from_flat({k: flat[k] for k in RUN_KEYS})
        except ConfigError as exc:
            raise LedgerError(f"run {run_id}: stored configuration: {exc}") from exc
        isolation = flat.get("federation.isolation", "collaborative")  # runs from before the field: collaborative
        return cls(
            temperature=config.train.temperature,
            min_replies=config.federation.min_replies,
            isolated=isolation == "isolated",
            reputation=str(flat.get("federation.reputation", False)).lower() in ("1", "true", "yes"),
        )


@register
class ReaggregateMode(UnlearnMode):
    name: ClassVar[str] = "reaggregate"
    summary: ClassVar[str] = (
        "purge, then recompute every affected round's consensus without the client; models unchanged"
    )

    def apply(self, ctx: UnlearnContext) -> UnlearnOutcome:
        purge(ctx)
        settings: dict[str, RunSettings] = {}
        for run_id, round_index, rule, contributors in ctx.ledger.consensus_rounds(contributor=ctx.client_id):
            if run_id not in settings:
                settings[run_id] = RunSettings.from_flat(ctx.ledger.run_config(run_id), run_id=run_id)
            _revise_round(ctx, run_id, round_index, rule, contributors, settings[run_id])
            ctx.checkpoint(f"reaggregated {run_id}/{round_index}")
        return UnlearnOutcome(
            tombstones=ctx.ledger.tombstones(ctx.request_id), revisions=ctx.ledger.consensus_revisions(ctx.request_id)
        )


def _revise_round(
    ctx: UnlearnContext, run_id: str, round_index: int, rule: str, contributors: list[str], settings: RunSettings
) -> None:
    stored = ctx.ledger.consensus(run_id, round_index)
    if stored is None:  # listed a moment ago: only another writer could have removed it
        raise LedgerError(f"run {run_id} round {round_index}: consensus vanished while re-aggregating")
    ids, before = stored
    remaining = [c for _, c in ctx.ledger.contributions(run_id, round_index)]
    who = [c.client_id for c in remaining]
    counts = ctx.ledger.label_counts(run_id)
    support, support_kind = support_matrix(who, counts)
    log_prior = None
    if settings.isolated:  # the prior of the clients that remain, as a federation without the client had it
        forgotten = ctx.ledger.forgotten_clients() | {ctx.client_id}
        log_prior = federation_log_prior(np.sum([c for cid, c in counts.items() if cid not in forgotten], axis=0))
    trust = None
    if settings.reputation:  # the trust the federation would have given the remaining clients without this one
        judged = Reputation(ctx.ledger, temperature=settings.temperature).trust_at(run_id, round_index)
        trust = [judged.get(cid, 1.0) for cid in who]
    after = recompute_consensus(
        [c.payload for c in remaining],
        [c.weight for c in remaining],
        ids=ids,
        num_classes=before.shape[1],
        rule=get_rule(rule),
        temperature=settings.temperature,
        min_replies=settings.min_replies,
        support=support,
        log_prior=log_prior,
        trust=trust,
    )
    revision = ConsensusRevision(
        request_id=ctx.request_id,
        run_id=run_id,
        round=round_index,
        before_sha256=consensus_sha256(ids, before),
        after_sha256=None if after is None else consensus_sha256(ids, after),
        contributors_before=sorted(contributors),
        contributors_after=sorted(who) if after is not None else [],
        support=support_kind,
    )
    ctx.ledger.revise_consensus(revision, consensus_ids=ids, consensus=after)
