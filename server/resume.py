"""Where a restarted server picks a run up again: the ledger's finished rounds and the teacher's last checkpoint.

A round is *finished* once the ledger holds its targets row (``Ledger.record_targets``, written
after the teacher answered, or with no targets when the round was not aggregated). A restart
(SuperLink, ServerApp, or the whole server machine) with ``federation.resume = true`` continues
the last run of ``federation.output_dir``'s ledger:

* the rounds up to the last finished one are kept as they are: their contributions, consensus
  and targets stay in the ledger and nothing is asked of the clients again;
* a round whose contributions were recorded but whose teaching did not finish is taught again
  from its stored consensus (no client is asked again);
* the teacher restores the checkpoint of the last round it was taught (``checkpoints/round-NNN``,
  written before it answered) and the consensus gathered up to that round, read back from the
  ledger; it sends the global student back, so clients start the next round from it;
* the next round's targets are the last finished round's, read back from the ledger.

Not carried over: an edge client's own adapter when ``federation.client_init = own`` (a new
Flower run gives every node a fresh context; with the default ``global-student`` every client
starts each round from the global student anyway).

The configuration must be the one the run was started with, except the keys in :data:`MAY_DIFFER`
(more rounds, another timeout, the run folder moved or copied elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nebula.common.config import NebulaConfig
from nebula.common.probabilities import gather_consensus
from nebula.server.exceptions import ResumeError
from nebula.server.ledger import Ledger

# federation.output_dir: everything in a run folder is found relative to it, so a moved or copied folder resumes.
MAY_DIFFER = frozenset(
    {
        "federation.resume",
        "federation.rounds",
        "federation.reply_timeout",
        "federation.faults",
        "federation.adversaries",  # simulated attacks, like faults (client/adversary.py)
        "federation.output_dir",
        "federation.node_registry",
        "federation.tensorboard",  # tracking only
    }
)


@dataclass(frozen=True)
class ResumePoint:
    run_id: str
    next_round: int  # the first round to run
    targets: bytes | None  # the last finished round's targets (what round ``next_round`` sends unless ``unfinished``)
    restore_round: int  # the teacher's checkpoint to restore (0: its initial state)
    gathered_ids: np.ndarray | None  # (M,) the consensus the teacher had gathered by ``restore_round``
    gathered_probs: np.ndarray | None  # (M, C)
    unfinished: (
        int | None
    )  # a recorded round whose teaching did not finish: finished first (taught again if aggregated)


def gathered_consensus(ledger: Ledger, run_id: str, *, up_to: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(ids, probs)`` of the consensus of rounds ``<= up_to`` as the teacher gathers it (None, None: no round)."""

    return gather_consensus(ledger.consensus(run_id, r) for r in ledger.consensus_round_indices(run_id) if r <= up_to)


def resume_point(ledger: Ledger, flat_config: dict) -> ResumePoint:
    """The point to resume the last run of ``ledger`` from; ``flat_config`` is the restarted server's."""
    runs = ledger.runs()
    if not runs:
        raise ResumeError(f"federation.resume is set but the ledger {ledger.path} holds no run to resume")
    run_id = runs[-1]
    stored = ledger.run_config(run_id)
    # A key the stored configuration lacks is a setting added after the run started: the run had its default.
    defaults = NebulaConfig().to_flat()
    differ = sorted(
        k
        for k in set(stored) | set(flat_config)
        if k not in MAY_DIFFER and stored.get(k, defaults.get(k)) != flat_config.get(k, defaults.get(k))
    )
    if differ:
        shown = ", ".join(f"{k}: {stored.get(k)!r} -> {flat_config.get(k)!r}" for k in differ[:5])
        raise ResumeError(f"run {run_id} was started with another configuration ({shown}); resume it with its own")
    finished = ledger.finished_rounds(run_id)
    last = max(finished, default=0)
    if sorted(finished) != list(range(1, last + 1)):
        raise ResumeError(f"run {run_id}: finished rounds {sorted(finished)} have gaps; the ledger was changed")
    later = [r for r in ledger.recorded_rounds(run_id) if r > last]
    if later not in ([], [last + 1]):
        raise ResumeError(f"run {run_id}: rounds {later} are recorded after the last finished round {last}")
    taught = [r for r, (_, ok) in finished.items() if ok]
    restore = max(taught, default=0)
    ids, probs = gathered_consensus(ledger, run_id, up_to=restore)
    unfinished = later[0] if later else None
    return ResumePoint(
        run_id=run_id,
        next_round=(unfinished or last) + 1,
        targets=finished[last][0] if last else None,
        restore_round=restore,
        gathered_ids=ids,
        gathered_probs=probs,
        unfinished=unfinished,
    )
