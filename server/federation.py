"""The rounds of federated distillation (design.md, "One round").

:class:`Federation` builds the messages and interprets the replies; the grid (Flower's
simulation or deployment engine) does the sending. Aggregation is pure math in
``nebula.server.aggregation``; storage is the ledger's.

Rules the operator should know:
* a reply that is missing, an error, or fails validation is logged with its reason,
  recorded in the ledger's ``rejections`` table, and left out;
* with fewer than ``federation.min_replies`` valid replies a round is not aggregated and
  the next round sends no targets (clients still revisit their data);
* if the teacher fails, the consensus itself becomes next round's targets and the round
  is marked ``teacher_ok = false``;
* a round is finished when the ledger holds the targets it produced; with
  ``federation.resume`` a restarted server continues the last run from there (server/resume.py).
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from nebula.common import keys
from nebula.common.config import NebulaConfig
from nebula.common.probabilities import log_probs
from nebula.common.run_folder import RunFolder
from nebula.common.wire import decode_logits, encode_logits
from nebula.server.aggregation import get_rule
from nebula.server.consensus import round_consensus
from nebula.server.exchange import send_and_receive
from nebula.server.exceptions import DiscoveryError, ReplyRejected, ResumeError, TeacherUnavailable, UnlearningError
from nebula.server.ledger import Contribution, Ledger
from nebula.server.metrics_log import MetricsLog
from nebula.server.replies import NodeInfo, parse_describe, read_logits, reply_metrics
from nebula.server.resume import ResumePoint, gathered_consensus as resume_point_gathered, resume_point

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

    def summary(self) -> dict:
        accs = [m["acc_global"] for m in self.client_metrics.values() if "acc_global" in m]
        own = [m["acc_own"] for m in self.client_metrics.values() if "acc_own" in m]
        return {
            "round": self.round,
            "accepted": len(self.accepted),
            "rejected": self.rejected,
            "mean_client_acc": float(np.mean(accs)) if accs else None,
            "min_client_acc": float(np.min(accs)) if accs else None,
            "mean_client_acc_own": float(np.mean(own)) if own else None,
            "teacher_acc": self.teacher_metrics.get("acc_teacher"),
            "student_acc": self.teacher_metrics.get("acc_student"),
            "teacher_ok": self.teacher_ok,
            "bytes_up_per_client": self.bytes_up_per_client,
            "bytes_down_per_client": self.bytes_down_per_client,
            "seconds": self.seconds,
            # Transport overhead = wait minus the compute the nodes report (their "seconds").
            "clients_wait_seconds": self.clients_wait_seconds,
            "teacher_wait_seconds": self.teacher_wait_seconds,
            "teacher_seconds": self.teacher_metrics.get("seconds"),
            "clients": self.client_metrics,
        }


class Federation:
    def __init__(
        self, grid: Grid, config: NebulaConfig, *, on_round: Callable[[dict], None] | None = None
    ) -> None:
        self.grid, self.config = grid, config
        self.folder = RunFolder(Path(config.federation.output_dir))
        self.out = self.folder.root
        self.out.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.folder.ledger)
        self.metrics = MetricsLog(self.folder.metrics)
        self.rule = get_rule(config.federation.aggregation)
        self.run_id = uuid.uuid4().hex[:12]
        self.on_round = on_round or (lambda summary: None)
        self.config_record = ConfigRecord(config.to_flat())
        self.clients: dict[int, NodeInfo] = {}
        self.teacher: NodeInfo | None = None
        self.num_classes = 0
        self.class_counts: list[int] = []  # the federation's label counts: sum of the clients' own
        self.student_state: ArrayRecord | None = None  # the global student, sent to same-model clients

    # -- messages ----------------------------------------------------------------------
    def _message(self, node_id: int, message_type: str, fields: dict, *, student: ArrayRecord | None = None) -> Message:
        fields = {keys.TEACHER_INDEX: self.config.data.num_clients, keys.OUTPUT_DIR: str(self.out), **fields}
        content = RecordDict({keys.CONFIG: self.config_record, keys.ROUND: ConfigRecord(fields)})
        if student is not None:
            content[keys.STUDENT_STATE] = student
            content.config_records[keys.ROUND][keys.STUDENT_MODEL] = self.config.model.student
        return Message(content, dst_node_id=node_id, message_type=message_type)

    def _student_for(self, info: NodeInfo) -> ArrayRecord | None:
        """The global student for clients that run its base model, if clients start from it."""
        if (
            self.config.federation.client_init != "global-student" or info.model != self.config.model.student
            or info.role == keys.ROLE_INFERENCE  # it cannot load weights: answers from its export
        ):
            return None
        return self.student_state

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

    # -- discovery ---------------------------------------------------------------------
    def discover(self, *, wait_seconds: float = 120.0) -> None:
        expected = self.config.data.num_clients + 1
        deadline = time.monotonic() + wait_seconds
        node_ids = list(self.grid.get_node_ids())
        while len(node_ids) < expected and time.monotonic() < deadline:
            time.sleep(1.0)
            node_ids = list(self.grid.get_node_ids())
        replies = self._exchange([self._message(n, keys.MSG_DESCRIBE, {}) for n in node_ids])
        for node_id in node_ids:
            reply = replies.get(node_id)
            if reply is None:
                log.warning("node %s did not answer describe; left out", node_id)
                continue
            try:
                info = parse_describe(reply)
            except ReplyRejected as exc:
                log.warning("%s; left out", exc)
                continue
            if info.role == keys.ROLE_TEACHER:
                if self.teacher is not None:
                    raise DiscoveryError(f"two teacher nodes: {self.teacher.node_id} and {node_id}")
                self.teacher = info
            else:
                self.clients[node_id] = info
        # Client order, not node-id order (node ids are new each run): the consensus sums the replies in this
        # order, and floating-point sums depend on it; this way a repeated run sums them in the same order.
        self.clients = dict(sorted(self.clients.items(), key=lambda item: item[1].client_id))
        # Forgotten before the run: not a client of it, and its label counts reach no one.
        self._drop_forgotten(0)
        if self.teacher is None:
            raise TeacherUnavailable("no node answered as teacher; start one with role='teacher'")
        counts = {len(c.label_counts) for c in self.clients.values()}
        if len(counts) > 1:
            raise DiscoveryError(f"clients disagree on the number of classes: {sorted(counts)}")
        if len(self.clients) < self.config.federation.min_replies:
            raise DiscoveryError(
                f"{len(self.clients)} edge clients answered, federation.min_replies is {self.config.federation.min_replies}"
            )
        self.num_classes = counts.pop()
        self.class_counts = np.sum([c.label_counts for c in self.clients.values()], axis=0).astype(int).tolist()
        if self.config.federation.resume:
            self.run_id = self.ledger.runs()[-1] if self.ledger.runs() else self.run_id  # checked in _resume
        else:
            self.ledger.start_run(self.run_id, self.config.to_flat())
        # Label counts go in the ledger so that unlearning can re-aggregate a round with the same rule.
        self.ledger.record_clients(self.run_id, {i.client_id: i.label_counts for i in self.clients.values()})
        log.info("federation: %d clients, teacher node %s", len(self.clients), self.teacher.node_id)

    # -- rounds ------------------------------------------------------------------------
    def public_ids(self, round_index: int) -> np.ndarray:
        k, pool = self.config.federation.public_per_round, self.config.data.public_size
        return (np.arange((round_index - 1) * k, round_index * k) % pool).astype(np.int64)

    def run(self) -> list[dict]:
        if self.config.federation.unlearn_key:
            self._unlearning()  # a missing or unreadable key fails here, before any node is asked
        self.discover()
        first, targets = self._resume() if self.config.federation.resume else (1, None)
        history = []
        for r in range(first, self.config.federation.rounds + 1):
            targets = self._between_rounds(r, targets)
            report, targets = self.run_round(r, targets)
            summary = report.summary()
            self.metrics.append({"run_id": self.run_id, **summary})
            history.append(summary)
            self.on_round(summary)
        self.finish()
        return history

    def run_round(self, r: int, targets: bytes | None) -> tuple[RoundReport, bytes | None]:
        t0, cfg = time.perf_counter(), self.config
        ids = self.public_ids(r)
        fields = {keys.ROUND_INDEX: r, keys.QUERY_IDS: ids.tolist(), keys.CLASS_COUNTS: self.class_counts}
        if targets is not None:
            fields[keys.TARGET_BLOB] = targets
        self._drop_forgotten(r)
        sent = {n: self._message(n, keys.MSG_ROUND, fields, student=self._student_for(info)) for n, info in self.clients.items()}
        t_send = time.perf_counter()
        replies = self._exchange(list(sent.values()))
        clients_wait = time.perf_counter() - t_send
        accepted: list[Contribution] = []
        decoded_logits: list[np.ndarray] = []
        rejected: dict[str, str] = {}
        rejected_nodes: dict[str, int] = {}
        metrics: dict[str, dict[str, float]] = {}
        for node_id, info in self.clients.items():
            reply = replies.get(node_id)
            try:
                if reply is None:
                    raise ReplyRejected(client=info.client_id, round_index=r, reason="no reply before the timeout")
                decoded, blob = read_logits(
                    reply, who=info.client_id, round_index=r, blob_key=keys.LOGITS_BLOB, expected_ids=ids, num_classes=self.num_classes
                )
            except ReplyRejected as exc:
                log.warning("%s", exc)
                rejected[info.client_id], rejected_nodes[info.client_id] = exc.reason, node_id
                continue
            accepted.append(Contribution(info.client_id, node_id, ids, blob, float(info.num_examples)))
            decoded_logits.append(decoded.logits)
            metrics[info.client_id] = reply_metrics(reply)
        for node_id in set(replies) - set(self.clients):
            log.warning("round %d: reply from unknown node %s ignored", r, node_id)
        report = RoundReport(r, [c.client_id for c in accepted], rejected, metrics, clients_wait_seconds=clients_wait)
        report.bytes_up_per_client = float(np.mean([len(c.payload) for c in accepted])) if accepted else 0.0
        report.bytes_down_per_client = float(np.mean([_payload_bytes(m) for m in sent.values()]))
        support = np.array([self.clients[c.node_id].label_counts for c in accepted], dtype=float)  # (K, C)
        consensus, why_not = round_consensus(
            decoded_logits, [c.weight for c in accepted], rule=self.rule, temperature=cfg.train.temperature,
            min_replies=cfg.federation.min_replies, support=support,
        )  # (N, C) or None
        if consensus is None:
            log.warning("round %d: %s; not aggregated", r, why_not)
        self.ledger.record_round(
            run_id=self.run_id, round_index=r, accepted=accepted, rejected=[(cid, rejected_nodes[cid], why) for cid, why in rejected.items()],
            rule=self.rule.name, consensus_ids=ids if consensus is not None else None, consensus=consensus,
        )
        next_targets = None
        if consensus is not None:
            next_targets = self._teach(r, ids, consensus, report)
        self.ledger.record_targets(self.run_id, r, next_targets, teacher_ok=report.teacher_ok)
        report.seconds = time.perf_counter() - t0
        return report, next_targets

    # -- resume after a restart (server/resume.py) -------------------------------------
    def _resume(self) -> tuple[int, bytes | None]:
        """Restore the teacher, finish a round the restart interrupted; the first round to run and its targets."""
        point = resume_point(self.ledger, self.config.to_flat())
        self.run_id = point.run_id
        log.info("resuming run %s at round %d (teacher restores round %d)", point.run_id, point.next_round, point.restore_round)
        checkpoint = self.folder.checkpoint(point.restore_round) / "teacher.pt"
        states_dir = self._unlearned_states_dir(newer_than=checkpoint if point.restore_round else None)
        if states_dir:
            log.warning("resuming from the models unlearning left in %s (newer than the last checkpoint)", states_dir)
        self._restore_teacher(point, states_dir=states_dir)
        targets = point.targets
        if point.unfinished is not None:
            r = point.unfinished
            stored = self.ledger.consensus(self.run_id, r)
            targets = None
            report = RoundReport(r, [], {}, {})
            if stored is not None:
                ids, consensus = stored
                targets = self._teach(r, ids, consensus.astype(np.float64), report)
            self.ledger.record_targets(self.run_id, r, targets, teacher_ok=report.teacher_ok)
            log.info("round %d: finished after the restart from its recorded consensus (teacher_ok=%s)", r, report.teacher_ok)
        return point.next_round, targets

    def _restore_teacher(self, point: ResumePoint, *, states_dir: str = "", keep_states: bool = False,
                         query_ids: np.ndarray | None = None) -> bytes | None:
        """The teacher restores round ``point.restore_round``'s checkpoint (or the states in ``states_dir``,
        relative to the output folder, or keeps its own) and ``point``'s gathered consensus; with ``query_ids``
        it answers its logits on them (checked like a round's refined targets), returned in wire format."""
        fields: dict = {keys.RESTORE_ROUND: point.restore_round, keys.RESTORE_DIR: states_dir, keys.RESTORE_KEEP: keep_states}
        if point.gathered_ids is not None:
            fields[keys.GATHERED_BLOB] = encode_logits(point.gathered_ids, log_probs(point.gathered_probs), dtype="float32")
        if query_ids is not None:
            fields[keys.QUERY_IDS] = query_ids.tolist()
        reply = self._exchange([self._message(self.teacher.node_id, keys.MSG_RESTORE, fields)]).get(self.teacher.node_id)
        if reply is None or reply.has_error():
            why = reply.error.reason if reply is not None else "no reply before the timeout"
            what = f"the states in {states_dir}" if states_dir else "its own states" if keep_states else \
                f"round {point.restore_round}'s checkpoint"
            raise ResumeError(f"the teacher node could not restore {what} and the gathered consensus: {why}")
        if point.restore_round or states_dir:
            self._keep_student(reply, point.restore_round)
        if query_ids is None:
            return None
        _, refined = read_logits(reply, who="teacher", round_index=point.next_round, blob_key=keys.REFINED_BLOB,
                                 expected_ids=query_ids, num_classes=self.num_classes)
        return refined

    def _drop_forgotten(self, r: int) -> None:
        """Clients an unlearning request removed are never selected again (checked at discovery and every round)."""
        forgotten = self.ledger.forgotten_clients()
        for node_id, info in list(self.clients.items()):
            if info.client_id in forgotten:
                log.warning("%s: %s was forgotten by an unlearning request; not selected", f"round {r}" if r else "discovery", info.client_id)
                del self.clients[node_id]

    def _teach(self, r: int, ids: np.ndarray, consensus: np.ndarray, report: RoundReport) -> bytes:
        """Hand the consensus to the teacher; its refined logits are next round's targets."""
        sent = log_probs(consensus)  # (N, C)
        msg = self._message(self.teacher.node_id, keys.MSG_TEACH, {keys.ROUND_INDEX: r, keys.CONSENSUS_BLOB: encode_logits(ids, sent, dtype="float32")})
        t_send = time.perf_counter()
        reply = self._exchange([msg]).get(self.teacher.node_id)
        report.teacher_wait_seconds = time.perf_counter() - t_send
        try:
            if reply is None:
                raise ReplyRejected(client="teacher", round_index=r, reason="no reply before the timeout")
            _, refined = read_logits(reply, who="teacher", round_index=r, blob_key=keys.REFINED_BLOB, expected_ids=ids, num_classes=self.num_classes)
        except ReplyRejected as exc:
            log.error("%s; the consensus itself becomes next round's targets", exc)
            # Scaled by T so that the clients' softmax(z / T) gives back the consensus.
            return encode_logits(ids, sent * self.config.train.temperature, dtype=self.config.federation.wire_dtype)
        report.teacher_ok = True
        report.teacher_metrics = reply_metrics(reply)
        self._keep_student(reply, r)
        return refined

    def _keep_student(self, reply: Message, r: int) -> None:
        """Accept the teacher's global student if it is finite and shaped like the last one."""
        state = reply.content.array_records.get(keys.STUDENT_STATE)
        problem = None
        if state is None:
            problem = "no global student in the teacher's reply"
        elif self.student_state is not None and {k: a.shape for k, a in state.items()} != {
            k: a.shape for k, a in self.student_state.items()
        }:
            problem = "global student's tensors differ in names or shapes from the previous round's"
        elif not all(np.isfinite(a.numpy()).all() for a in state.values()):
            problem = "global student holds non-finite values"
        if problem:
            log.error("round %d: %s; clients keep the previous one", r, problem)
            return
        self.student_state = state

    # -- unlearning between rounds (server/unlearning/, federation.unlearn_key) ------------
    def _between_rounds(self, r: int, targets: bytes | None) -> bytes | None:
        """With ``federation.unlearn_key``: renew this run's live lease and carry out the stored unlearning
        requests; after any of them the teacher reloads the cleaned consensus and the unlearned states, and
        round ``r``'s targets are answered again by that teacher. Returns the targets round ``r`` sends:
        ``targets`` when no request finished."""
        if not self.config.federation.unlearn_key:
            return targets
        fed = self.config.federation
        self.ledger.mark_live(self.run_id, for_seconds=3 * fed.reply_timeout + 600)
        current_before = self._unlearned_states_dir()
        done = self._unlearning().run_pending()
        for request in done:
            log.warning("before round %d: unlearning request %s (%s, client %s) %s%s", r, request.request_id, request.mode,
                        request.client_id, request.status, f": {request.error}" if request.error else "")
        if not any(request.status == "done" for request in done):
            return targets
        current = self._unlearned_states_dir()
        return self._restore_after_unlearning(r, states_dir=current if current != current_before else "")

    def _unlearning(self):
        if getattr(self, "_executor", None) is None:
            from nebula.server.unlearning.crypto import load_private_key
            from nebula.server.unlearning.executor import Executor
            from nebula.server.unlearning.requests import RequestStore

            key_path = self.config.federation.unlearn_key
            try:
                key = load_private_key(key_path)
            except (OSError, ValueError, TypeError) as exc:
                raise UnlearningError(f"federation.unlearn_key {key_path}: {exc}") from exc
            path = self.folder.ledger
            self._executor = Executor(ledger=Ledger(path), store=RequestStore(path), run_dir=self.out, signing_key=key,
                                      certificates_dir=self.folder.certificates)
        return self._executor

    def _restore_after_unlearning(self, r: int, *, states_dir: str) -> bytes | None:
        """The teacher takes the models a model mode just left current (``states_dir``; "" keeps its own) and the
        consensus as the ledger now holds it, for every round taught so far; the global student comes back.

        Round ``r``'s targets (the teacher's answers on round ``r - 1``'s inputs) were computed before the
        request: the restored teacher answers them again, and they replace round ``r - 1``'s in the ledger
        (so a resumed run sends these). If it cannot, round ``r`` goes without targets rather than with the
        old ones. Returns the new targets, or None when round ``r - 1`` left none."""
        rounds = self.ledger.finished_rounds(self.run_id)
        finished = [k for k, (_, ok) in rounds.items() if ok and k < r]
        gathered = resume_point_gathered(self.ledger, self.run_id, up_to=max(finished, default=0))
        point = ResumePoint(self.run_id, r, None, max(finished, default=0), *gathered, None)
        old_targets = rounds.get(r - 1, (None, False))[0]
        query = None if old_targets is None else decode_logits(old_targets, num_classes=self.num_classes).ids
        try:
            targets = self._restore_teacher(point, states_dir=states_dir, keep_states=not states_dir, query_ids=query)
        except ReplyRejected as exc:
            log.error("%s; round %d goes without targets rather than with those computed before the unlearning request", exc, r)
            self.ledger.record_targets(self.run_id, r - 1, None, teacher_ok=False)
            return None
        if targets is not None:
            self.ledger.record_targets(self.run_id, r - 1, targets, teacher_ok=True)
        return targets

    def _unlearned_states_dir(self, *, newer_than: Path | None = None) -> str:
        """``unlearning/<request id>`` when an unlearning request of this run left its models current (and they
        are newer than ``newer_than``), else ""."""
        request_id = self.folder.current_request(self.run_id)
        if request_id is None:
            return ""
        manifest = self.folder.request_manifest(request_id)
        if newer_than is not None and newer_than.is_file() and newer_than.stat().st_mtime_ns >= manifest.stat().st_mtime_ns:
            return ""
        return self.folder.relative(self.folder.request_dir(request_id))

    def finish(self) -> None:
        if self.config.federation.unlearn_key:
            self.ledger.clear_live(self.run_id)
        nodes = list(self.clients) + [self.teacher.node_id]
        replies = self._exchange([self._message(n, keys.MSG_FINISH, {}) for n in nodes])
        for n in nodes:
            if n not in replies or replies[n].has_error():
                why = replies[n].error.reason if n in replies else "no reply"
                log.warning("node %s could not save its adapters: %s", n, why)
        self.ledger.close()


def _payload_bytes(msg: Message) -> int:
    """Bytes of the payloads a message carries: logits blobs and arrays (config scalars aside)."""
    rec = msg.content.config_records[keys.ROUND]
    blobs = sum(len(v) for v in rec.values() if isinstance(v, bytes))
    arrays = sum(len(a.data) for ar in msg.content.array_records.values() for a in ar.values())
    return blobs + arrays
