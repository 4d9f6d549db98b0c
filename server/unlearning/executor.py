"""Carrying out stored requests: one at a time, oldest first, resuming what a stopped process left.

:meth:`Executor.run_pending` is the one entry point, for both schedules the service offers: a
worker thread calls it as soon as a request is stored when no run is live, and a live
federation calls it between two rounds (``UnlearningServer.run_pending``).

Exactly once: a request is marked ``running`` (``attempts + 1``) before its mode starts, and
``done`` with its signed certificate in one commit at the end. A process killed in between
leaves it ``running``; the next :meth:`run_pending` (in this or a new process) calls the mode
again, which skips the steps it had committed (server/unlearning/base.py). A mode that raises
marks the request ``failed`` with the error, keeping the steps it committed; a new request
(new idempotency key) for the same client completes them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula.common.run_folder import certificate_file
from nebula.server.ledger import Ledger
from nebula.server.unlearning.base import UnlearnContext, UnlearnMode
from nebula.server.unlearning.certificate import build_certificate, sign_certificate
from nebula.server.unlearning.registry import get_mode
from nebula.server.unlearning.requests import RequestStore, UnlearnRequest

log = logging.getLogger(__name__)

PAUSE_AT_ENV = "NEBULA_UNLEARN_PAUSE_AT"
PAUSE_SECONDS_ENV = "NEBULA_UNLEARN_PAUSE_S"


class Executor:
    """Runs the modes of stored requests against a ledger and signs their certificates.

    Parameters
    ----------
    ledger : the ledger to change (its own connection: the executor may run in a worker thread).
    store : where the requests are.
    signing_key : the server's Ed25519 key, which signs certificates.
    checkpoint : called with a step name after each committed step (fault injection in tests).
    certificates_dir : where a copy of each certificate is written as ``<request_id>.json``; the
        request store keeps the original either way.
    modes : mode instances to use by name instead of the registry's defaults (e.g. a fast correction
        with another budget); other names come from :func:`get_mode`.
    run_dir : the run folder whose checkpoints the model modes read and write (default: the ledger's folder).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        store: RequestStore,
        signing_key: Ed25519PrivateKey,
        checkpoint: Callable[[str], None] | None = None,
        certificates_dir: str | Path | None = None,
        modes: Mapping[str, UnlearnMode] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.ledger, self.store, self.signing_key = ledger, store, signing_key
        self.modes = dict(modes or {})
        self.run_dir = Path(run_dir) if run_dir else None
        self.checkpoint = checkpoint or (lambda step: None)
        self.certificates_dir = Path(certificates_dir) if certificates_dir else None
        self._lock = threading.Lock()

    def run_pending(self) -> list[UnlearnRequest]:
        """Carry out every running (resumed) and queued request that no other live executor holds; returns
        them as they ended."""
        with self._lock:
            done = []
            for pending in self.store.pending():
                claimed = self.store.claim(pending.request_id)
                if claimed is None:
                    log.info("unlearning %s: held by another executor; left to it", pending.request_id)
                    continue
                done.append(self._execute(claimed))
            return done

    def _execute(self, request: UnlearnRequest) -> UnlearnRequest:
        log.info(
            "unlearning %s: %s client %s (attempt %d)",
            request.request_id,
            request.mode,
            request.client_id,
            request.attempts,
        )
        try:
            context = UnlearnContext(self.ledger, request.request_id, request.client_id, self.checkpoint, self.run_dir)
            mode = self.modes.get(request.mode) or get_mode(request.mode)
            outcome = mode.apply(context)
            certificate = sign_certificate(
                build_certificate(request, outcome, created_at=time.time()), self.signing_key
            )
        except Exception as exc:
            log.exception("unlearning %s failed", request.request_id)
            return self.store.mark_failed(request.request_id, f"{type(exc).__name__}: {exc}")
        text = json.dumps(certificate, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        done = self.store.mark_done(request.request_id, text)
        if self.certificates_dir is not None:
            self.certificates_dir.mkdir(parents=True, exist_ok=True)
            path = certificate_file(self.certificates_dir, request.request_id)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(path)
        log.info(
            "unlearning %s done: %d ledger rows removed, %d rounds re-aggregated%s",
            request.request_id,
            len(outcome.tombstones),
            len(outcome.revisions),
            "" if outcome.models is None else f", models in {outcome.models.get('output')}",
        )
        return done


def checkpoint_from_env(environ: Mapping[str, str] = os.environ) -> Callable[[str], None] | None:
    """Test fault hook: ``NEBULA_UNLEARN_PAUSE_AT=purged,reaggregated`` pauses after every step whose name
    starts with one of these, ``NEBULA_UNLEARN_PAUSE_S`` seconds (default 3600), after printing
    ``unlearning paused after STEP`` to stderr, so that a test can SIGKILL the process there."""
    prefixes = tuple(p.strip() for p in environ.get(PAUSE_AT_ENV, "").split(",") if p.strip())
    if not prefixes:
        return None
    seconds = float(environ.get(PAUSE_SECONDS_ENV, "3600"))

    def pause(step: str) -> None:
        if step.startswith(prefixes):
            print(f"unlearning paused after {step}", file=sys.stderr, flush=True)
            time.sleep(seconds)

    return pause
