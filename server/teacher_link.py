"""The server's side of the teacher node: hand it a consensus, restore it, keep the global student it sends.

The teacher answers refined targets (the next round's) and the global student's trainable state,
which the server checks (finite, same tensor names and shapes as before) before passing it on to
the clients. If the teacher cannot answer a round, the consensus itself becomes the next targets.

A teacher node keeps what it learned between rounds in its SuperNode's memory (Flower's context
state), so a teacher that failed a round, or whose SuperNode was started again since its last good
answer (a later activation time on the SuperLink), may hold none of it, or more than the ledger
says it learned. Before its next teaching it restores (:class:`RestorePlan`, built by the server
from the ledger) the checkpoint of the last round it was taught and the consensus gathered so far;
if it cannot, that round too goes on with the consensus as its targets, and the next one tries again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message

from nebula.common.messages import Envelope, RestoreReply, RestoreRequest, TeachReply, TeachRequest
from nebula.common.probabilities import log_probs
from nebula.common.wire import encode_logits
from nebula.server.discovery import Exchange
from nebula.server.exceptions import ReplyRejected, ResumeError
from nebula.server.replies import NodeInfo, check_logits, read_reply

log = logging.getLogger(__name__)


@dataclass
class TeachOutcome:
    """What teaching a round gave: the next round's targets (wire format) and how it went."""

    targets: bytes
    ok: bool  # False: the teacher failed and the targets are the consensus itself
    metrics: dict[str, float] = field(default_factory=dict)
    wait_seconds: float = 0.0
    checkpoint: str = ""  # the checkpoint folder the teacher reports it wrote ("" if it failed)
    error: str = ""  # why the teacher failed the round ("" if it did not)


@dataclass(frozen=True)
class RestorePlan:
    """What the teacher restores (see :class:`nebula.common.messages.RestoreRequest`)."""

    restore_round: int
    gathered_ids: np.ndarray | None = None  # (M,)
    gathered_probs: np.ndarray | None = None  # (M, C)
    states_dir: str = ""
    keep_states: bool = False
    query_ids: np.ndarray | None = None  # answer logits on these (the next round's targets)

    def describe(self) -> str:
        if self.states_dir:
            return f"the states in {self.states_dir}"
        return "its own states" if self.keep_states else f"round {self.restore_round}'s checkpoint"


Recovery = Callable[[int], RestorePlan]  # round r -> what a teacher out of step restores before r's teaching


class TeacherLink:
    """Messages to and from the teacher node ``teacher``; holds the last accepted global student.

    ``recovery`` (round -> :class:`RestorePlan`) is what the teacher restores before teaching when it is out
    of step (see the module docstring); without it, it is taught as it is. ``activation`` answers when the
    teacher's SuperNode was last activated ("" when it is not online); without it, only a failed round puts
    the teacher out of step.
    """

    def __init__(
        self,
        exchange: Exchange,
        teacher: NodeInfo,
        *,
        num_classes: int,
        temperature: float,
        wire_dtype: str,
        recovery: Recovery | None = None,
        activation: Callable[[], str] | None = None,
    ) -> None:
        self.exchange, self.teacher, self.num_classes = exchange, teacher, num_classes
        self.temperature, self.wire_dtype = temperature, wire_dtype
        self.recovery, self.activation = recovery, activation
        self.student_state: dict[str, np.ndarray] | None = None  # the global student, sent to same-model clients
        self.lost = ""  # why the teacher's state is not the one the ledger describes ("" when it is)
        self.activated: str | None = None  # its SuperNode's activation time at its last good answer

    def _ask(self, request) -> Message | None:
        msg = Message(request.to_record(), dst_node_id=self.teacher.node_id, message_type=request.TYPE)
        return self.exchange([msg]).get(self.teacher.node_id)

    def _stamp(self) -> str | None:
        return self.activation() if self.activation is not None else None

    def _out_of_step(self, stamp: str | None) -> str:
        """Why the teacher must restore before it is taught again ("" if it need not)."""
        if self.lost:
            return self.lost
        if stamp is not None and self.activated is not None and stamp != self.activated:
            return f"its SuperNode was started again (activated {stamp or 'not online'}, before {self.activated})"
        return ""

    def _recover(self, envelope: Envelope, r: int, why: str) -> None:
        """Restore the teacher before round ``r``'s teaching; ReplyRejected if it cannot."""
        plan = self.recovery(r)
        log.warning("round %d: the teacher is out of step (%s); it restores %s first", r, why, plan.describe())
        try:
            self.restore(envelope, plan, next_round=r)
        except ResumeError as exc:
            raise ReplyRejected(client="teacher", round_index=r, reason=str(exc)) from None
        log.info("round %d: the teacher restored %s", r, plan.describe())

    def teach(self, envelope: Envelope, r: int, ids: np.ndarray, consensus: np.ndarray) -> TeachOutcome:
        """Hand round ``r``'s consensus ``(N, C)`` on public ``ids`` to the teacher (restored first if it is out
        of step); its refined logits are next round's targets, or the consensus itself (scaled by T) if it fails."""
        sent = log_probs(consensus)  # (N, C)
        t_send, stamp = time.perf_counter(), self._stamp()
        why = self._out_of_step(stamp)
        try:
            if why and self.recovery is not None:
                self._recover(envelope, r, why)
            reply = self._ask(TeachRequest(envelope, r, encode_logits(ids, sent, dtype="float32")))
            answer = read_reply(reply, TeachReply, who="teacher", round_index=r)
            check_logits(
                answer.refined,
                who="teacher",
                round_index=r,
                what="refined",
                expected_ids=ids,
                num_classes=self.num_classes,
            )
        except ReplyRejected as exc:
            log.error("%s; the consensus itself becomes next round's targets", exc)
            self.lost = f"it failed round {r}: {exc.reason}"
            # Scaled by T so that the clients' softmax(z / T) gives back the consensus.
            targets = encode_logits(ids, sent * self.temperature, dtype=self.wire_dtype)
            return TeachOutcome(targets, False, wait_seconds=time.perf_counter() - t_send, error=exc.reason)
        self.keep_student(answer.student, r)
        self.lost, self.activated = "", stamp
        return TeachOutcome(answer.refined, True, answer.metrics, time.perf_counter() - t_send, answer.checkpoint)

    def restore(self, envelope: Envelope, plan: RestorePlan, *, next_round: int) -> bytes | None:
        """The teacher restores ``plan``; returns its logits on ``plan.query_ids`` (checked), if asked.

        Raises ResumeError when the teacher cannot restore, ReplyRejected when its logits are malformed.
        """
        gathered = None
        if plan.gathered_ids is not None:
            gathered = encode_logits(plan.gathered_ids, log_probs(plan.gathered_probs), dtype="float32")
        request = RestoreRequest(
            envelope, plan.restore_round, plan.states_dir, plan.keep_states, gathered, plan.query_ids
        )
        reply = self._ask(request)
        try:
            answer = read_reply(reply, RestoreReply, who="teacher", round_index=next_round)
        except ReplyRejected as exc:
            raise ResumeError(
                f"the teacher node could not restore {plan.describe()} and the gathered consensus: {exc.reason}"
            ) from None
        if plan.restore_round or plan.states_dir:
            self.keep_student(answer.student, plan.restore_round)
        self.lost, self.activated = "", self._stamp()
        if plan.query_ids is None:
            return None
        if answer.refined is None:
            raise ReplyRejected(client="teacher", round_index=next_round, reason="no 'refined' payload")
        check_logits(
            answer.refined,
            who="teacher",
            round_index=next_round,
            what="refined",
            expected_ids=plan.query_ids,
            num_classes=self.num_classes,
        )
        return answer.refined

    def keep_student(self, state: dict[str, np.ndarray] | None, r: int) -> None:
        """Accept the teacher's global student if it is finite and shaped like the last one."""
        problem = None
        if state is None:
            problem = "no global student in the teacher's reply"
        elif self.student_state is not None and {k: a.shape for k, a in state.items()} != {
            k: a.shape for k, a in self.student_state.items()
        }:
            problem = "global student's tensors differ in names or shapes from the previous round's"
        elif not all(np.isfinite(a).all() for a in state.values()):
            problem = "global student holds non-finite values"
        if problem:
            log.error("round %d: %s; clients keep the previous one", r, problem)
            return
        self.student_state = state


def node_activation(grid, node_id: int) -> str | None:
    """When the SuperLink last activated node ``node_id`` ("" when it is not online); None from a grid that does
    not say (a scripted test's). Simulation's grid has no activation times: always ""."""
    get_nodes = getattr(grid, "get_nodes", None)
    if get_nodes is None:
        return None
    return next((str(n.last_activated_at or "") for n in get_nodes() if n.node_id == node_id), "")
