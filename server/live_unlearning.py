"""Unlearning between the rounds of a live run (``federation.unlearn_key``).

Before each round the run renews its live lease in the ledger (so ``nebula unlearn serve`` leaves
requests to it) and carries out the stored requests. After any request that finished, the teacher
reloads the consensus as the ledger now holds it and the models a model mode just made current,
and the round's targets are answered again by that teacher.

The executor (and with it the unlearning modes, which load torch only when a model mode runs) is
created on first use: a run without ``federation.unlearn_key`` imports none of it.
"""

from __future__ import annotations

import logging

from nebula.common.config import NebulaConfig
from nebula.common.run_folder import RunFolder
from nebula.common.wire import decode_logits
from nebula.server.exceptions import UnlearningError
from nebula.server.ledger import Ledger
from nebula.server.resume import gathered_consensus
from nebula.server.teacher_link import RestorePlan

log = logging.getLogger(__name__)


class LiveUnlearning:
    """Carries out a live run's unlearning requests between its rounds."""

    def __init__(self, config: NebulaConfig, folder: RunFolder, ledger: Ledger) -> None:
        self.config, self.folder, self.ledger = config, folder, ledger
        self._executor = None

    def executor(self):
        """The request executor, created once; a missing or unreadable key fails here (before any node is asked)."""
        if self._executor is None:
            from nebula.server.unlearning.crypto import load_private_key
            from nebula.server.unlearning.executor import Executor
            from nebula.server.unlearning.requests import RequestStore

            key_path = self.config.federation.unlearn_key
            try:
                key = load_private_key(key_path)
            except (OSError, ValueError, TypeError) as exc:
                raise UnlearningError(f"federation.unlearn_key {key_path}: {exc}") from exc
            path = self.folder.ledger
            self._executor = Executor(
                ledger=Ledger(path),
                store=RequestStore(path),
                run_dir=self.folder.root,
                signing_key=key,
                certificates_dir=self.folder.certificates,
            )
        return self._executor

    def run_pending(self, run_id: str, r: int) -> tuple[bool, str]:
        """Renew the lease and carry out the stored requests before round ``r``: ``(any finished, states_dir)``,
        ``states_dir`` being the models a model mode just made current ("" if none did)."""
        fed = self.config.federation
        self.ledger.mark_live(run_id, for_seconds=3 * fed.reply_timeout + 600)
        current_before = unlearned_states_dir(self.folder, run_id)
        done = self.executor().run_pending()
        for request in done:
            log.warning(
                "before round %d: unlearning request %s (%s, client %s) %s%s",
                r,
                request.request_id,
                request.mode,
                request.client_id,
                request.status,
                f": {request.error}" if request.error else "",
            )
        if not any(request.status == "done" for request in done):
            return False, ""
        current = unlearned_states_dir(self.folder, run_id)
        return True, current if current != current_before else ""

    def restore_plan(self, run_id: str, r: int, *, states_dir: str, num_classes: int) -> RestorePlan:
        """What the teacher reloads after a request before round ``r``.

        Round ``r``'s targets (the teacher's answers on round ``r - 1``'s inputs) were computed before the
        request: the restored teacher answers them again (the plan's ``query_ids``)."""
        rounds = self.ledger.finished_rounds(run_id)
        taught = max((k for k, (_, ok) in rounds.items() if ok and k < r), default=0)
        ids, probs = gathered_consensus(self.ledger, run_id, up_to=taught)
        old_targets = rounds.get(r - 1, (None, False))[0]
        # A ledger's own payload: it may predate wire format v2.
        query = None if old_targets is None else decode_logits(old_targets, num_classes=num_classes, legacy=True).ids
        return RestorePlan(taught, ids, probs, states_dir=states_dir, keep_states=not states_dir, query_ids=query)

    def replace_targets(self, run_id: str, r: int, targets: bytes | None) -> None:
        """Round ``r - 1``'s targets become the restored teacher's (None: the teacher could not answer)."""
        self.ledger.record_targets(run_id, r - 1, targets, teacher_ok=targets is not None)


def unlearned_states_dir(folder: RunFolder, run_id: str, *, checkpoint_round: int | None = None) -> str:
    """``unlearning/<request id>`` when a request of run ``run_id`` left its models current, else "".

    With ``checkpoint_round`` (a restart that would restore that round's checkpoint), only if the request
    came after it: its ``models.json`` records the last round finished when it ran (``after_round``), and a
    checkpoint of a later round already holds the request's models (the teacher reloaded them before that
    round). A request written before ``after_round`` existed counts as the newer.
    """
    request_id = folder.current_request(run_id)
    if request_id is None:
        return ""
    after_round = (folder.finished_request(request_id) or {}).get("after_round")
    if checkpoint_round is not None and after_round is not None and int(after_round) < checkpoint_round:
        return ""
    return folder.relative(folder.request_dir(request_id))
