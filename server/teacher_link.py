"""The server's side of the teacher node: hand it a consensus, restore it, keep the global student it sends.

The teacher answers refined targets (the next round's) and the global student's trainable state,
which the server checks (finite, same tensor names and shapes as before) before passing it on to
the clients. If the teacher cannot answer a round, the consensus itself becomes the next targets.
"""

from __future__ import annotations

import logging
import time
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


class TeacherLink:
    """Messages to and from the teacher node ``teacher``; holds the last accepted global student."""

    def __init__(
        self, exchange: Exchange, teacher: NodeInfo, *, num_classes: int, temperature: float, wire_dtype: str
    ) -> None:
        self.exchange, self.teacher, self.num_classes = exchange, teacher, num_classes
        self.temperature, self.wire_dtype = temperature, wire_dtype
        self.student_state: dict[str, np.ndarray] | None = None  # the global student, sent to same-model clients

    def _ask(self, request) -> Message | None:
        msg = Message(request.to_record(), dst_node_id=self.teacher.node_id, message_type=request.TYPE)
        return self.exchange([msg]).get(self.teacher.node_id)

    def teach(self, envelope: Envelope, r: int, ids: np.ndarray, consensus: np.ndarray) -> TeachOutcome:
        """Hand round ``r``'s consensus ``(N, C)`` on public ``ids`` to the teacher; its refined logits are next
        round's targets, or the consensus itself (scaled by T) if the teacher fails."""
        sent = log_probs(consensus)  # (N, C)
        t_send = time.perf_counter()
        reply = self._ask(TeachRequest(envelope, r, encode_logits(ids, sent, dtype="float32")))
        wait = time.perf_counter() - t_send
        try:
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
            # Scaled by T so that the clients' softmax(z / T) gives back the consensus.
            return TeachOutcome(
                encode_logits(ids, sent * self.temperature, dtype=self.wire_dtype), False, wait_seconds=wait
            )
        self.keep_student(answer.student, r)
        return TeachOutcome(answer.refined, True, answer.metrics, wait, answer.checkpoint)

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
