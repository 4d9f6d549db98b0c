"""End to end on Flower's deployment engine, on loopback: the whole deployment story, in one deployment.

A SuperLink with TLS, SuperNode authentication and a state database; a registered teacher node
and two registered client nodes running the smoke preset for 2 rounds; a fourth SuperNode whose
key was never registered. Round 1 runs with both clients; in round 2 client1's node (SuperNode,
its SuperExec and the ClientApp computing its answer) is SIGKILLed once it has received the
round's message, and the run must complete with client0 alone (``federation.min_replies=1``).
Then everything is stopped by process id and no process of it may remain.
"""

import json
import time

import pytest

from nebula.deploy.local import NodeSpec
from nebula.deploy.processes import is_running
from nebula.server.ledger import Ledger

pytestmark = pytest.mark.e2e

ROUND = "Receiving: train.round"  # what a SuperNode logs when a round's message reaches it


def _count(path, text) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def deployment(tmp_path_factory, smoke_federation):
    result: dict = {"t0": time.perf_counter()}
    fed, run_id = smoke_federation(
        tmp_path_factory.mktemp("deploy"),
        extra_nodes=["rogue"],
        overrides={"federation.rounds": 2, "federation.min_replies": 1, "federation.reply_timeout": 120},
    )
    try:
        result["started"] = time.perf_counter() - result["t0"]
        rogue = fed.start_supernode(NodeSpec("rogue", partition=1, num_partitions=2, registered=False))
        result["rogue_code"] = rogue.popen.wait(timeout=120)
        client1_log = fed.log_path("client1")
        deadline = time.monotonic() + 600
        while _count(client1_log, ROUND) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _count(client1_log, ROUND) == 2, "client1 never received round 2"
        result["killed"] = [m.pid for m in fed.kill("client1")]
        result["status"] = fed.wait_run(run_id, timeout=900)
        result["seconds"] = time.perf_counter() - result["t0"]
        result["supernodes"] = fed.supernodes()  # id -> status, as the SuperLink lists them
        result["family"] = fed.family()  # everything still running, before stopping it
        result["killed_alive"] = [p for p in result["killed"] if any(m.pid == p for m in result["family"])]
    finally:
        started = [(p.name, p.pid, p.start) for p in fed.processes]
        result["survivors"] = fed.stop()
    result.update(fed=fed, run_id=run_id, started_processes=started, rogue_log=fed.log_path("rogue"))
    return result


def _metrics(fed):
    return [json.loads(line) for line in fed.run_folder.metrics.read_text().splitlines()]


def test_run_completes(deployment):
    assert deployment["status"]["status"] == "finished:completed", deployment["status"]


def test_round_1_holds_both_clients_contributions(deployment):
    fed = deployment["fed"]
    metrics = _metrics(fed)
    assert [m["round"] for m in metrics] == [1, 2]
    assert metrics[0]["accepted"] == 2 and metrics[0]["rejected"] == {}
    assert set(metrics[0]["clients"]) == {"client0", "client1"}  # ids come from the nodes' node config
    ledger = Ledger(fed.run_folder.ledger)
    try:
        rows = ledger.contributions(metrics[0]["run_id"])
        round1 = sorted(c.client_id for r, c in rows if r == 1)
        assert round1 == ["client0", "client1"]
        assert all(len(c.public_ids) == 24 and len(c.payload) > 0 for _, c in rows)  # smoke: 24 public inputs a round
        ids, probs = ledger.consensus(metrics[0]["run_id"], 1)
        assert probs.shape == (24, 3)
    finally:
        ledger.close()


def test_client_killed_mid_round_leaves_the_round_to_the_other(deployment):
    fed = deployment["fed"]
    assert deployment["killed"], "nothing of client1 was running when it was to be killed"
    assert deployment["killed_alive"] == []  # SIGKILL took the SuperNode and its helpers
    round2 = _metrics(fed)[1]
    assert round2["accepted"] == 1 and set(round2["clients"]) == {"client0"}
    assert set(round2["rejected"]) == {"client1"}
    # The SuperLink answers for a node that missed its heartbeats (30 s interval x 2 in Flower 1.41),
    # well before federation.reply_timeout (120 s): the server does not wait out the timeout.
    assert "Node Unavailable" in round2["rejected"]["client1"]
    assert round2["clients_wait_seconds"] < 110
    assert round2["teacher_ok"]
    ledger = Ledger(fed.run_folder.ledger)
    try:
        run_id = round2["run_id"]
        assert sorted(c.client_id for r, c in ledger.contributions(run_id) if r == 2) == ["client0"]
        assert [(r, cid) for r, cid, _ in ledger.rejections(run_id)] == [(2, "client1")]
    finally:
        ledger.close()


def test_unregistered_node_is_refused(deployment):
    fed = deployment["fed"]
    assert deployment["rogue_code"] == 1  # the SuperNode gives up and exits (Flower's exit code 305, status 1)
    log = deployment["rogue_log"].read_text()
    assert "Exit Code: 305" in log and "Failed to activate SuperNode" in log
    assert "No SuperNode found with the given public key" in fed.log_path("superlink").read_text()
    # The SuperLink lists only the three registered nodes: the rogue never joined.
    assert set(deployment["supernodes"]) == set(fed.node_ids.values()) and len(fed.node_ids) == 3


def test_everything_stopped_by_process_id(deployment):
    assert deployment["survivors"] == []
    left = [(name, pid) for name, pid, start in deployment["started_processes"] if is_running(pid, start)]
    assert left == []
    assert not any(is_running(m.pid, m.start) for m in deployment["family"])
    assert len(deployment["family"]) >= 6  # SuperLink + SuperExec, two live SuperNodes + their SuperExecs
