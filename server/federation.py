"""The rounds of federated distillation: what the server does in one round, and in what order.

:class:`Federation` builds the messages and interprets the replies; the grid (Flower's
simulation or deployment engine) does the sending. Aggregation is pure math in
``nebula.server.aggregation``; storage is the ledger's.

Rules the operator should know:
* a reply that is missing, an error, or fails validation is logged with its reason,
  recorded in the ledger's ``rejections`` table, and left out;
* with fewer than ``federation.min_replies`` valid replies a round is not aggregated and
  the next round sends no targets (clients still revisit their data);
* if the teacher fails, the consensus itself becomes next round's targets and the round
  is marked ``teacher_ok = false`` (``teacher_error`` in the metrics says why); before it teaches
  again, a teacher that failed or whose node restarted restores its last checkpoint and the
  consensus gathered so far (server/teacher_link.py);
* a round is finished when the ledger holds the targets it produced; with
  ``federation.resume`` a restarted server continues the last run from there (server/resume.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from nebula.common import keys
from nebula.common.config import ConfigError, NebulaConfig
from nebula.common.messages import Envelope, FinishRequest, RoundReply, RoundRequest
from nebula.common.run_folder import RunFolder
from nebula.server.aggregation import get_rule
from nebula.server.consensus import federation_log_prior, round_consensus
from nebula.server.discovery import Cohort, discover, registered_nodes, wait_for_nodes
from nebula.server.exceptions import ReplyRejected
from nebula.server.exchange import send_and_receive
from nebula.server.identity import NodeRegistry
from nebula.server.ledger import Contribution, Ledger
from nebula.server.live_unlearning import LiveUnlearning, unlearned_states_dir
from nebula.server.metrics_log import MetricsLog
from nebula.server.replies import NodeInfo, check_logits, read_reply
from nebula.server.reputation import Reputation
from nebula.server.resume import gathered_consensus, resume_point
from nebula.server.teacher_link import RestorePlan, TeacherLink, TeachOutcome, node_activation
from nebula.server.tracking import TensorBoardLog

log = logging.getLogger(__name__)


@dataclass
class RoundReport:
    round: int
    accepted: list[str]
    rejected: dict[str, str]
    client_metrics: dict[str, dict[str, float]]
    teacher_metrics: dict[str, float] = field(default_factory=dict)
    teacher_ok: bool = False
    bytes_up_per_client: float = 0.0
    bytes_down_per_client: float = 0.0
    seconds: float = 0.0
    clients_wait_seconds: float = 0.0  # wall time of the clients' exchange (send to last reply or timeout)
    teacher_wait_seconds: float = 0.0  # wall time of the teacher's exchange
    teacher_checkpoint: str = ""  # the checkpoint folder the teacher reports it wrote, relative to the run folder
    teacher_error: str = ""  # why the teacher failed the round ("" if it did not, or was not asked)
    reputation: dict[str, dict[str, float]] = field(default_factory=dict)  # client -> agreement, score, trust

    def add_teacher(self, outcome: TeachOutcome | None) -> None:
        """Record how teaching the round went (None: the round was not aggregated)."""
        if outcome is not None:
            self.teacher_ok, self.teacher_metrics = outcome.ok, outcome.metrics
            self.teacher_wait_seconds, self.teacher_checkpoint = outcome.wait_seconds, outcome.checkpoint
            self.teacher_error = outcome.error

    def summary(self) -> dict:
        accs = [m["acc_global"] for m in self.client_metrics.values() if "acc_global" in m]
        own = [m["acc_own"] for m in self.client_metrics.values() if "acc_own" in m]
        f1s = [m["f1_global"] for m in self.client_metrics.values() if "f1_global" in m]
        return {
            "round": self.round,
            "accepted": len(self.accepted),
            "rejected": self.rejected,
            "mean_client_acc": float(np.mean(accs)) if accs else None,
            "min_client_acc": float(np.min(accs)) if accs else None,
            "mean_client_acc_own": float(np.mean(own)) if own else None,
            "mean_client_f1": float(np.mean(f1s)) if f1s else None,
            "teacher_acc": self.teacher_metrics.get("acc_teacher"),
            "student_acc": self.teacher_metrics.get("acc_student"),
            "teacher_f1": self.teacher_metrics.get("f1_teacher"),
            "student_f1": self.teacher_metrics.get("f1_student"),
            "teacher_top_share": self.teacher_metrics.get("top_share_teacher"),
            "student_top_share": self.teacher_metrics.get("top_share_student"),
            "teacher_ok": self.teacher_ok,
            "bytes_up_per_client": self.bytes_up_per_client,
            "bytes_down_per_client": self.bytes_down_per_client,
            "seconds": self.seconds,
            # Transport overhead = wait minus the compute the nodes report (their "seconds").
            "clients_wait_seconds": self.clients_wait_seconds,
            "teacher_wait_seconds": self.teacher_wait_seconds,
            "teacher_seconds": self.teacher_metrics.get("seconds"),
            "teacher_compute_seconds": self.teacher_metrics.get("compute_seconds"),
            "teacher_checkpoint": self.teacher_checkpoint,
            "teacher_error": self.teacher_error,
            "clients": self.client_metrics,
            "reputation": self.reputation,
        }


class Federation:
    """Runs the rounds of one federation over ``grid``; each round's summary goes to ``on_round``."""

    def __init__(self, grid: Grid, config: NebulaConfig, *, on_round: Callable[[dict], None] | None = None) -> None:
        if config.federation.shard_count() is not None:  # S federations, not one: simulation/sharded.py runs them
            raise ConfigError(
                f"federation.isolation {config.federation.isolation!r} is S federations, not one: run it with "
                "`nebula simulate --isolation sharded:S` (simulation/sharded.py); one federation is collaborative "
                "or isolated"
            )
        self.grid, self.config = grid, config
        self.folder = RunFolder(Path(config.federation.output_dir))
        self.folder.root.mkdir(parents=True, exist_ok=True)
        # First: without the tensorboard package this fails before the ledger is opened.
        self.tensorboard = TensorBoardLog(self.folder.tensorboard) if config.federation.tensorboard else None
        self.ledger = Ledger(self.folder.ledger)
        self.metrics = MetricsLog(self.folder.metrics)
        self.rule = get_rule(config.federation.aggregation)
        self.reputation = (
            Reputation(self.ledger, temperature=config.train.temperature) if config.federation.reputation else None
        )
        self.run_id = uuid.uuid4().hex[:12]
        self.on_round = on_round or (lambda summary: None)
        self.envelope = Envelope(config, config.data.num_clients, str(self.folder.root))
        self.live = LiveUnlearning(config, self.folder, self.ledger) if config.federation.unlearn_key else None
        self.cohort: Cohort | None = None
        self.teacher: TeacherLink | None = None

    @property
    def isolated(self) -> bool:
        return self.config.federation.isolation == "isolated"

    @property
    def class_counts(self) -> list[int]:
        return self.cohort.class_counts if self.cohort else []

    @property
    def student_state(self) -> dict[str, np.ndarray] | None:
        return self.teacher.student_state if self.teacher else None

    def _exchange(self, messages: list[Message]) -> dict[int, Message]:
        """Send, wait, and key the replies by the node each request went to.

        The grid gives each message its id when it pushes it. A reply the SuperLink writes
        itself (the node stopped sending heartbeats: "Node Unavailable") comes from the
        SuperLink's node id, not the node's, so replies are matched to requests by id, and
        by sender where a grid sets no ids.
        """
        replies = send_and_receive(self.grid, messages, timeout=self.config.federation.reply_timeout)
        sent_to = {m.metadata.message_id: m.metadata.dst_node_id for m in messages if m.metadata.message_id}
        return {sent_to.get(r.metadata.reply_to_message_id, r.metadata.src_node_id): r for r in replies}

    # -- start -------------------------------------------------------------------------
    def discover(self, *, wait_seconds: float = 120.0) -> None:
        """Find the run's clients and teacher (server/discovery.py) and record the run in the ledger."""
        cfg = self.config
        node_ids = wait_for_nodes(self.grid, cfg.data.num_clients + 1, wait_seconds=wait_seconds)
        identities = None
        if cfg.federation.node_registry:  # a deployment: identity from the authenticated key (server/identity.py)
            identities = registered_nodes(self.grid, node_ids, NodeRegistry.load(cfg.federation.node_registry))
            node_ids = [n for n in node_ids if n in identities]
        self.cohort = discover(
            self._exchange,
            node_ids,
            self.envelope,
            forgotten=self.ledger.forgotten_clients() | cfg.federation.excluded(),
            min_clients=cfg.federation.min_replies,
            identities=identities,
        )
        self.teacher = TeacherLink(
            self._exchange,
            self.cohort.teacher,
            num_classes=self.cohort.num_classes,
            temperature=cfg.train.temperature,
            wire_dtype=cfg.federation.wire_dtype,
            recovery=self._teacher_recovery,
            activation=lambda: node_activation(self.grid, self.cohort.teacher.node_id),
        )
        if cfg.federation.resume:
            self.run_id = self.ledger.runs()[-1] if self.ledger.runs() else self.run_id  # checked in _resume
        else:
            self.ledger.start_run(self.run_id, cfg.to_flat())
        # Label counts go in the ledger so that unlearning can re-aggregate a round with the same rule.
        self.ledger.record_clients(self.run_id, {i.client_id: i.label_counts for i in self.cohort.clients.values()})
        log.info("federation: %d clients, teacher node %s", len(self.cohort.clients), self.cohort.teacher.node_id)

    def public_ids(self, round_index: int) -> np.ndarray:
        k, pool = self.config.federation.public_per_round, self.config.data.public_size
        return (np.arange((round_index - 1) * k, round_index * k) % pool).astype(np.int64)

    def run(self) -> list[dict]:
        if self.live is not None:
            self.live.executor()  # a missing or unreadable key fails here, before any node is asked
        self.discover()
        first, targets = self._resume() if self.config.federation.resume else (1, None)
        history = []
        for r in range(first, self.config.federation.rounds + 1):
            targets = self._between_rounds(r, targets)
            report, targets = self.run_round(r, targets)
            summary = report.summary()
            self.metrics.append({"run_id": self.run_id, **summary})
            if self.tensorboard is not None:
                self.tensorboard.write(summary)
            history.append(summary)
            self.on_round(summary)
        self.finish()
        return history

    # -- a round -----------------------------------------------------------------------
    def _round_request(self, r: int, ids: np.ndarray, targets: bytes | None, info: NodeInfo) -> Message:
        """Round ``r``'s message to the client ``info``: with the global student if it runs its base model and
        clients start from it (an inference node cannot load weights: it answers from its export)."""
        cfg = self.config
        student = None
        counts = tuple(self.cohort.class_counts)
        if self.isolated:  # nothing another client shaped reaches this one: no targets, no student, a uniform prior
            targets, counts = None, (1,) * len(counts)
        elif (
            cfg.federation.client_init == "global-student"
            and info.model == cfg.model.student
            and info.role != keys.ROLE_INFERENCE
        ):
            student = self.teacher.student_state
        request = RoundRequest(
            self.envelope,
            r,
            ids,
            counts,
            targets,
            student,
            cfg.model.student if student is not None else "",
        )
        return Message(request.to_record(), dst_node_id=info.node_id, message_type=request.TYPE)

    def _collect(self, r: int, ids: np.ndarray, replies: dict[int, Message]) -> RoundReplies:
        """The round's replies, validated: accepted contributions with their decoded logits, rejections with reasons."""
        out = RoundReplies()
        for node_id, info in self.cohort.clients.items():
            try:
                answer = read_reply(replies.get(node_id), RoundReply, who=info.client_id, round_index=r)
                decoded = check_logits(
                    answer.logits,
                    who=info.client_id,
                    round_index=r,
                    what=keys.LOGITS_BLOB,
                    expected_ids=ids,
                    num_classes=self.cohort.num_classes,
                )
            except ReplyRejected as exc:
                log.warning("%s", exc)
                out.rejected[info.client_id], out.rejected_nodes[info.client_id] = exc.reason, node_id
                continue
            out.accepted.append(Contribution(info.client_id, node_id, ids, answer.logits, float(info.num_examples)))
            out.logits.append(decoded.logits)
            out.metrics[info.client_id] = answer.metrics
        for node_id in set(replies) - set(self.cohort.clients):
            log.warning("round %d: reply from unknown node %s ignored", r, node_id)
        return out.in_client_order()

    def run_round(self, r: int, targets: bytes | None) -> tuple[RoundReport, bytes | None]:
        t0, cfg = time.perf_counter(), self.config
        ids = self.public_ids(r)
        self.cohort.drop(self.ledger.forgotten_clients(), when=f"round {r}")
        sent = [self._round_request(r, ids, targets, info) for info in self.cohort.clients.values()]
        t_send = time.perf_counter()
        got = self._collect(r, ids, self._exchange(sent))
        report = RoundReport(
            r,
            [c.client_id for c in got.accepted],
            got.rejected,
            got.metrics,
            clients_wait_seconds=time.perf_counter() - t_send,
        )
        report.bytes_up_per_client = float(np.mean([len(c.payload) for c in got.accepted])) if got.accepted else 0.0
        report.bytes_down_per_client = float(np.mean([_payload_bytes(m) for m in sent]))
        support = np.array([self.cohort.clients[c.node_id].label_counts for c in got.accepted], dtype=float)  # (K, C)
        trust = None
        if self.reputation is not None:  # server/reputation.py: trust from agreement across rounds
            judged = self.reputation.assess(self.run_id, r, [c.client_id for c in got.accepted], got.logits)
            trust, report.reputation = judged.trust, judged.table
        consensus, why_not = round_consensus(
            got.logits,
            [c.weight for c in got.accepted],
            rule=self.rule,
            temperature=cfg.train.temperature,
            min_replies=cfg.federation.min_replies,
            support=support,
            trust=trust,
            log_prior=federation_log_prior(self.cohort.class_counts) if self.isolated else None,
        )  # (N, C) or None
        if consensus is None:
            log.warning("round %d: %s; not aggregated", r, why_not)
        self.ledger.record_round(
            run_id=self.run_id,
            round_index=r,
            accepted=got.accepted,
            rejected=[(cid, got.rejected_nodes[cid], why) for cid, why in got.rejected.items()],
            rule=self.rule.name,
            consensus_ids=ids if consensus is not None else None,
            consensus=consensus,
        )
        # The teacher learns the consensus exactly as the ledger keeps it (float32), so that a replay from the
        # ledger (server/unlearning/replay.py) repeats its rounds bit for bit.
        stored = consensus.astype(np.float32).astype(np.float64) if consensus is not None else None
        outcome = self.teacher.teach(self.envelope, r, ids, stored) if stored is not None else None
        report.add_teacher(outcome)
        next_targets = outcome.targets if outcome is not None else None
        self.ledger.record_targets(self.run_id, r, next_targets, teacher_ok=report.teacher_ok)
        report.seconds = time.perf_counter() - t0
        return report, next_targets

    def _teacher_recovery(self, r: int) -> RestorePlan:
        """What the teacher restores before round ``r``'s teaching when it is out of step (server/teacher_link.py):
        the checkpoint of the last round it was taught (or the unlearned states made after it) and the consensus
        of every round before ``r``, those it missed included."""
        taught = max((k for k, (_, ok) in self.ledger.finished_rounds(self.run_id).items() if ok and k < r), default=0)
        ids, probs = gathered_consensus(self.ledger, self.run_id, up_to=r - 1)
        states_dir = unlearned_states_dir(self.folder, self.run_id, checkpoint_round=taught or None)
        return RestorePlan(taught, ids, probs, states_dir=states_dir)

    # -- resume after a restart (server/resume.py) -------------------------------------
    def _resume(self) -> tuple[int, bytes | None]:
        """Restore the teacher, finish a round the restart interrupted; the first round to run and its targets."""
        point = resume_point(self.ledger, self.config.to_flat())
        self.run_id = point.run_id
        log.info(
            "resuming run %s at round %d (teacher restores round %d)",
            point.run_id,
            point.next_round,
            point.restore_round,
        )
        states_dir = unlearned_states_dir(self.folder, self.run_id, checkpoint_round=point.restore_round or None)
        if states_dir:
            log.warning(
                "resuming from the models unlearning left in %s (made after round %d's checkpoint)",
                states_dir,
                point.restore_round,
            )
        plan = RestorePlan(point.restore_round, point.gathered_ids, point.gathered_probs, states_dir=states_dir)
        self.teacher.restore(self.envelope, plan, next_round=point.next_round)
        if point.unfinished is None:
            return point.next_round, point.targets
        r = point.unfinished
        stored = self.ledger.consensus(self.run_id, r)
        outcome = None
        if stored is not None:
            ids, consensus = stored
            outcome = self.teacher.teach(self.envelope, r, ids, consensus.astype(np.float64))
        targets, ok = (outcome.targets, outcome.ok) if outcome is not None else (None, False)
        self.ledger.record_targets(self.run_id, r, targets, teacher_ok=ok)
        log.info("round %d: finished after the restart from its recorded consensus (teacher_ok=%s)", r, ok)
        return point.next_round, targets

    # -- unlearning between rounds (server/live_unlearning.py) -------------------------
    def _between_rounds(self, r: int, targets: bytes | None) -> bytes | None:
        """With ``federation.unlearn_key``: carry out the stored unlearning requests; after any of them the
        teacher reloads the cleaned consensus and the unlearned states, and round ``r``'s targets are answered
        again by that teacher (or, if it cannot, round ``r`` goes without targets rather than with the old ones).
        Returns the targets round ``r`` sends: ``targets`` when no request finished."""
        if self.live is None:
            return targets
        finished, states_dir = self.live.run_pending(self.run_id, r)
        if not finished:
            return targets
        plan = self.live.restore_plan(self.run_id, r, states_dir=states_dir, num_classes=self.cohort.num_classes)
        try:
            new_targets = self.teacher.restore(self.envelope, plan, next_round=r)
        except ReplyRejected as exc:
            log.error(
                "%s; round %d goes without targets rather than with those computed before the unlearning request",
                exc,
                r,
            )
            self.live.replace_targets(self.run_id, r, None)
            return None
        if new_targets is not None:
            self.live.replace_targets(self.run_id, r, new_targets)
        return new_targets

    def finish(self) -> None:
        if self.live is not None:
            self.ledger.clear_live(self.run_id)
        nodes = list(self.cohort.clients) + [self.cohort.teacher.node_id]
        request = FinishRequest(self.envelope)
        replies = self._exchange(
            [Message(request.to_record(), dst_node_id=n, message_type=request.TYPE) for n in nodes]
        )
        for n in nodes:
            if n not in replies or replies[n].has_error():
                why = replies[n].error.reason if n in replies else "no reply"
                log.warning("node %s could not save its adapters: %s", n, why)
        self.ledger.close()


@dataclass
class RoundReplies:
    """A round's replies after validation."""

    accepted: list[Contribution] = field(default_factory=list)
    logits: list[np.ndarray] = field(default_factory=list)  # decoded, one (N, C) per accepted contribution
    rejected: dict[str, str] = field(default_factory=dict)  # client id -> reason
    rejected_nodes: dict[str, int] = field(default_factory=dict)  # client id -> node id
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)

    def in_client_order(self) -> RoundReplies:
        """The accepted contributions sorted by client id, the ledger's order: the consensus is then summed in the
        same order here and when unlearning recomputes it, whatever order the nodes were discovered in."""
        order = sorted(range(len(self.accepted)), key=lambda i: self.accepted[i].client_id)
        self.accepted = [self.accepted[i] for i in order]
        self.logits = [self.logits[i] for i in order]
        return self


def _payload_bytes(msg: Message) -> int:
    """Bytes of the payloads a message carries: logits blobs and arrays (config scalars aside)."""
    rec = msg.content.config_records[keys.ROUND]
    blobs = sum(len(v) for v in rec.values() if isinstance(v, bytes))
    arrays = sum(len(a.data) for ar in msg.content.array_records.values() for a in ar.values())
    return blobs + arrays
