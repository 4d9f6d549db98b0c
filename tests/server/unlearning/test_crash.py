"""SIGKILL the service in the middle of a request; a restart finishes it exactly once and loses nothing else.

The service runs as ``nebula unlearn serve`` in a subprocess, with the fault hook
(``NEBULA_UNLEARN_PAUSE_AT``) pausing it after a committed step; the test kills it there.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nebula.server.ledger import Ledger
from nebula.server.unlearning.certificate import verify_certificate
from nebula.server.unlearning.client import OperatorClient
from nebula.server.unlearning.requests import RequestStore

from .conftest import PLAN, RUN_A, TARGET, other_rows, reference_consensus, snapshot

REPO = Path(__file__).resolve().parents[3]
TIMEOUT_S = 30.0


class Service:
    """``nebula unlearn serve`` in a subprocess, its output lines read by threads."""

    def __init__(self, material, ledger: Path, **env: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "nebula.cli.main",
            "unlearn",
            "serve",
            "--ledger",
            str(ledger),
            "--port",
            "0",
            *material.serve_args(),
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=lambda s=stream: [self.lines.put(line) for line in s], daemon=True).start()
        self.port = int(self.wait_for(r"unlearning service on 127\.0\.0\.1:(\d+)").group(1))

    def wait_for(self, pattern: str) -> re.Match:
        deadline, seen = time.monotonic() + TIMEOUT_S, []
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            seen.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no line matching {pattern!r}; the service said:\n{''.join(seen)}")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT_S)


# after the purge; after the first of four rounds; after the last round, before the request is marked done
PAUSES = {"purged": 0, "reaggregated": 1, "reaggregated run-b/1": 4}


@pytest.mark.parametrize("pause_at", sorted(PAUSES))
def test_killed_mid_request_resumes_and_finishes_exactly_once(material, ledger_path, pause_at):
    others, removed = other_rows(ledger_path), snapshot(ledger_path, tables=("contributions",))["contributions"]
    removed = [row for row in removed if row[3] == TARGET]
    first = Service(material, ledger_path, NEBULA_UNLEARN_PAUSE_AT=pause_at)
    try:
        with OperatorClient(f"127.0.0.1:{first.port}", ca=material.ca_cert, key=material.operator_key) as api:
            request_id = api.submit(TARGET, reason="art. 17", mode="reaggregate", idempotency_key="crash-1").request_id
        first.wait_for(f"unlearning paused after {pause_at}")
    finally:
        first.kill()

    # killed mid-request: running, purged, and as many of the four rounds revised as the pause says
    store, ledger = RequestStore(ledger_path), Ledger(ledger_path)
    assert store.get(request_id).status == "running"
    assert len(ledger.tombstones(request_id)) == len(removed)
    assert len(ledger.consensus_revisions(request_id)) == PAUSES[pause_at]

    second = Service(material, ledger_path)
    try:
        with OperatorClient(f"127.0.0.1:{second.port}", ca=material.ca_cert, key=material.operator_key) as api:
            deadline = time.monotonic() + TIMEOUT_S
            while (status := api.status(request_id)).status in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert (
                api.submit(TARGET, reason="art. 17", mode="reaggregate", idempotency_key="crash-1").request_id
                == request_id
            )
    finally:
        second.kill()

    assert status.status == "done" and status.attempts == 2, status.error
    cert = verify_certificate(json.loads(status.certificate_json), material.signing_pub)
    assert cert["ledger_rows_removed"]["count"] == len(removed) == len(ledger.tombstones(request_id))  # each row once
    revisions = ledger.consensus_revisions(request_id)
    assert [(v.run_id, v.round) for v in revisions] == [(c["run_id"], c["round"]) for c in cert["consensus"]]
    assert len(revisions) == 4 and len({(v.run_id, v.round) for v in revisions}) == 4  # each round once
    assert other_rows(ledger_path) == others  # no other client's row lost or changed
    for v in revisions:
        ids, after = ledger.consensus(v.run_id, v.round)
        rest = [c for _, c in ledger.contributions(v.run_id, v.round)]
        assert [c.client_id for c in rest] == [c for c in PLAN[v.run_id][v.round] if c != TARGET]
        support = np.array([ledger.label_counts(v.run_id)[c.client_id] for c in rest], dtype=float)
        assert (
            after == reference_consensus([c.payload for c in rest], [c.weight for c in rest], ids, "mean", support)
        ).all()
    assert store.get(request_id).status == "done" and len(store.list()) == 1
    assert ledger.consensus_rounds(contributor=TARGET) == [] and RUN_A in cert["runs"]
