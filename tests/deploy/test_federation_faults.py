"""Nodes that fail in the middle of a run on Flower's deployment engine, on loopback: a client and the teacher.

A fault test, beside test_federation_restart.py (the server side restarted) and test_federation_unavailable.py.

One deployment of the smoke preset (TLS, SuperNode authentication, fleet gate, a long-lived worker per node),
4 rounds, ``federation.min_replies = 1``, a reply timeout of :data:`TIMEOUT` seconds:

* round 1 runs as usual;
* round 2: the teacher's worker is stopped (SIGSTOP) before the round's teaching reaches it: its SuperNode
  keeps sending heartbeats but the teacher does not answer at all. Once the teaching is sent, client1's
  SuperNode and worker are killed (SIGKILL, a device losing power); shortly before the reply timeout the
  teacher's are killed too, late enough that the timeout comes first. Round 2 must finish with the
  consensus itself as round 3's targets, "no reply before the timeout" in its metrics;
* round 3: client1 and the teacher are down (the SuperLink answers "Node Unavailable" for them). The round
  goes on with client0 alone; client1's absence is in the ledger with its reason, and the teacher, which must
  restore before it teaches again (server/teacher_link.py), cannot: round 3's targets are its consensus too;
* once round 3's messages are out, client1 is started again (same key, same node config); once round 3 is
  finished, the teacher is. client0's worker is held (SIGSTOP) until each is back, so that no round races
  ahead of a restart: a slow client, not a fault;
* round 4: client1 takes part again, under the SuperNode id it had; the restarted teacher (its SuperNode's
  memory gone) restores round 1's checkpoint and the consensus of rounds 1-3, then teaches; the run finishes
  with the global student saved.

Flower keeps a killed SuperNode online for up to 60 s (2 missed heartbeats), and refuses the same key until
then (deploy/local.py): most of this test's time is that wait.
"""

import json
import signal
import sqlite3
import time

import numpy as np
import pytest

from nebula.common.presets import preset_config
from nebula.common.probabilities import softmax
from nebula.common.run_folder import RunFolder, adapter_dirs
from nebula.common.wire import decode_logits
from nebula.deploy.processes import is_running
from nebula.server.ledger import Ledger

pytestmark = pytest.mark.e2e

TIMEOUT = 90  # > the longest hold of client0 (a node's restart: about 45 s on a loaded machine) + its compute
ROUND_SENT = 5  # seconds from a round's metrics row to the next round's messages being out (well under 1 s idle)
# Flower's SuperLink declares a killed SuperNode offline 2 heartbeat intervals after its last heartbeat; it sends one
# every 21-27 s, so at least 33 s after the kill. Killing the teacher this long before the reply timeout lets the
# timeout come first.
KILL_BEFORE_TIMEOUT = 28
OVERRIDES = {"federation.rounds": 4, "federation.min_replies": 1, "federation.reply_timeout": TIMEOUT}


def _metrics(fed) -> list[dict]:
    path = fed.run_folder.metrics
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _replies_recorded(fed) -> int:
    """The last round whose clients' replies are in the ledger (read-only: the server is writing it)."""
    path = fed.run_folder.ledger
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        (last,) = db.execute(
            "SELECT MAX(round) FROM (SELECT round FROM contributions UNION SELECT round FROM rejections)"
        ).fetchone()
    except sqlite3.OperationalError:  # the server has not created its tables yet
        return 0
    finally:
        db.close()
    return last or 0


def _wait(condition, what: str, timeout: float = 300.0) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not after {timeout:.0f} s"
        time.sleep(0.3)
    return time.monotonic()


def _faults(fed) -> dict:
    """Drive the faults through rounds 2-4 (the module docstring); the times they happened at.

    client0's worker is held (SIGSTOP) twice, so that no round can finish before the node it needs is back:
    from round 2's replies until client1 runs again (else, on a slow machine, round 3 finished and round 4 was
    sent to client1 before its restart was done: a second rejection), and from round 3's replies until the
    teacher runs again (else round 4 would reach its teaching before the teacher is back).
    """
    t = {"start": time.monotonic()}
    t["round 1"] = _wait(lambda: len(_metrics(fed)) >= 1, "round 1", 600)
    fed.kill("teacher0-worker", signal.SIGSTOP)  # the teacher goes silent before round 2's teaching
    teach_sent = _wait(lambda: _replies_recorded(fed) >= 2, "round 2's replies")
    fed.kill_node("client1")
    t["client1 killed"] = time.monotonic()
    fed.kill("client0-worker", signal.SIGSTOP)  # round 3 cannot finish before client1 is back
    try:
        time.sleep(max(0.0, teach_sent + TIMEOUT - KILL_BEFORE_TIMEOUT - time.monotonic()))
        fed.kill_node("teacher0")
        t["teacher killed"] = time.monotonic()
        t["round 2"] = _wait(lambda: len(_metrics(fed)) >= 2, "round 2", 2 * TIMEOUT)
        time.sleep(ROUND_SENT)  # round 3's messages are out: client1's found it offline
        fed.restart_node("client1")
        t["client1 back"] = time.monotonic()
    finally:
        fed.kill("client0-worker", signal.SIGCONT)
    t["round 3 replies"] = _wait(lambda: _replies_recorded(fed) >= 3, "round 3's replies", 2 * TIMEOUT)
    fed.kill("client0-worker", signal.SIGSTOP)  # round 4 waits for client0 until the teacher is back
    try:
        t["round 3"] = _wait(lambda: len(_metrics(fed)) >= 3, "round 3", 2 * TIMEOUT)
        fed.restart_node("teacher0")
        t["teacher back"] = time.monotonic()
    finally:
        fed.kill("client0-worker", signal.SIGCONT)
    return t


def _ledger(fed) -> dict:
    ledger = Ledger(fed.run_folder.ledger)
    try:
        [run] = ledger.runs()
        return {
            "run": run,
            "contributions": [(r, c.client_id, c.node_id) for r, c in ledger.contributions(run)],
            "rejections": ledger.rejections(run),
            "targets": ledger.finished_rounds(run),
            "consensus": {r: ledger.consensus(run, r) for r in ledger.consensus_round_indices(run)},
        }
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, smoke_federation):
    fed, run_id = smoke_federation(tmp_path_factory.mktemp("faults"), overrides=OVERRIDES, workers=True)
    result: dict = {"fed": fed, "run_id": run_id}
    try:
        result["times"] = _faults(fed)
        result["status"] = fed.wait_run(run_id, timeout=600)
        result["times"]["finished"] = time.monotonic()
        result["metrics"], result["ledger"] = _metrics(fed), _ledger(fed)
    finally:
        for name in ("teacher0-worker", "client0-worker"):
            fed.kill(name, signal.SIGCONT)  # a stopped process would wait out stop()'s grace
        result["started"] = [(p.name, p.pid, p.start) for p in fed.processes]
        result["survivors"] = fed.stop()
    t = result["times"]
    print("\nfault test timeline (s from the start):", {k: round(v - t["start"], 1) for k, v in t.items()})
    return result


def _worker_log(fed, name: str) -> list[list[str]]:
    """Node ``name``'s worker log, one list of lines per worker process (each starts with "worker ready")."""
    runs: list[list[str]] = []
    for line in fed.log_path(f"{name}-worker").read_text(errors="replace").splitlines():
        if "worker ready" in line:
            runs.append([])
        elif runs and "nebula.client.worker" in line:
            runs[-1].append(line)
    return runs


def test_the_run_completes_every_round(faulty):
    assert faulty["status"]["status"] == "finished:completed", faulty["status"]
    assert [m["round"] for m in faulty["metrics"]] == [1, 2, 3, 4]


def test_a_killed_client_is_left_out_with_its_reason_and_takes_part_again_after_its_restart(faulty):
    ledger = faulty["ledger"]
    assert len(ledger["rejections"]) == 1, ledger["rejections"]  # more: a reply late under load (TIMEOUT)
    [(r, who, why)] = ledger["rejections"]
    assert (r, who) == (3, "client1") and "Node Unavailable" in why, why
    assert faulty["metrics"][2]["rejected"] == {"client1": why}
    rounds = {c: sorted(r for r, cid, _ in ledger["contributions"] if cid == c) for c in ("client0", "client1")}
    assert rounds == {"client0": [1, 2, 3, 4], "client1": [1, 2, 4]}
    node_ids = {node for r, cid, node in ledger["contributions"] if cid == "client1"}
    assert len(node_ids) == 1  # the restarted SuperNode is the one registered: same key, same SuperNode id


def test_the_rounds_without_a_teacher_go_on_with_the_consensus_as_targets(faulty):
    metrics, ledger = faulty["metrics"], faulty["ledger"]
    assert [m["teacher_ok"] for m in metrics] == [True, False, False, True]
    silent, down = metrics[1], metrics[2]
    assert "no reply before the timeout" in silent["teacher_error"], silent["teacher_error"]
    assert silent["teacher_wait_seconds"] >= TIMEOUT - 1  # it did not answer at all: the server waited it out
    assert "could not restore round 1's checkpoint" in down["teacher_error"], down["teacher_error"]
    assert "Node Unavailable" in down["teacher_error"]
    temperature = preset_config("smoke").train.temperature
    server_log = faulty["fed"].log_path(f"run-{faulty['run_id']}").read_text()  # `flwr log`: the ServerApp's
    assert "round 2: reply of teacher rejected: no reply before the timeout; the consensus itself" in server_log
    assert "round 3: reply of teacher rejected: the teacher node could not restore" in server_log
    for r in (2, 3):
        targets, ok = ledger["targets"][r]
        ids, consensus = ledger["consensus"][r]
        got = decode_logits(targets)
        assert not ok
        np.testing.assert_array_equal(got.ids, ids)
        np.testing.assert_allclose(softmax(got.logits, temperature=temperature), consensus, atol=2e-3)


def test_the_restarted_teacher_restores_before_it_teaches_and_the_run_ends_with_a_global_student(faulty):
    fed = faulty["fed"]
    first, restarted = _worker_log(fed, "teacher0")
    assert not any("train.teach" in line and "(round 2)" in line for line in first)  # held, then killed
    handled = [line.split("handling ")[1] for line in restarted if "handling " in line]
    teach = handled.index(next(h for h in handled if h.startswith("train.teach")))
    assert teach > 0 and all(h.startswith("train.restore") for h in handled[:teach]), handled
    assert handled[teach].endswith("(round 4)") and faulty["metrics"][3]["teacher_error"] == ""
    server_log = fed.log_path(f"run-{faulty['run_id']}").read_text()
    assert "round 4: the teacher is out of step (it failed round 3" in server_log
    assert "it restores round 1's checkpoint first" in server_log
    folder = RunFolder(fed.node_dir("teacher0"))
    assert folder.checkpoint_rounds() == [1, 4]  # no round taught while the ledger says it was not
    student = adapter_dirs(folder.models)[1]
    assert (student / "adapter_config.json").is_file(), sorted(p.name for p in folder.models.rglob("*"))
    assert faulty["metrics"][3]["student_acc"] is not None


def test_everything_stopped_by_process_id(faulty):
    assert faulty["survivors"] == []
    assert not [(n, pid) for n, pid, start in faulty["started"] if is_running(pid, start)]
