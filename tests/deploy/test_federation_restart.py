"""A restart of the server side on Flower's deployment engine, on loopback.

A fault test, beside test_federation_unavailable.py.

A SuperLink (TLS, SuperNode authentication, state database), a teacher node and two client
nodes, each with its long-lived local worker (client/worker.py), run the smoke preset for 3
rounds. Once round 1 is finished, the SuperLink is SIGKILLed with
everything it started (its SuperExec and the ServerApp process), in the middle of round 2. A new
SuperLink starts on the same port and database; the SuperNodes reconnect by themselves, and the
run is submitted again with ``federation.resume=true``: it must finish rounds 2 and 3 under the
same ledger run, with every contribution accepted before the restart still there, byte for byte.
"""

import json
import time

import pytest

from nebula.deploy.processes import is_running
from nebula.server.ledger import Ledger

pytestmark = pytest.mark.e2e

OVERRIDES = {"federation.rounds": 3, "federation.min_replies": 1, "federation.reply_timeout": 120}


def _metrics(fed) -> list[dict]:
    path = fed.run_folder.metrics
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ledger_rows(fed) -> tuple[list[str], list[tuple]]:
    ledger = Ledger(fed.run_folder.ledger)
    try:
        runs = ledger.runs()
        rows = [
            (r, c.client_id, c.public_ids.tobytes(), c.payload, c.weight)
            for run in runs
            for r, c in ledger.contributions(run)
        ]
        return runs, rows
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, smoke_federation):
    fed, first_run = smoke_federation(tmp_path_factory.mktemp("restart"), overrides=OVERRIDES, workers=True)
    result: dict = {"fed": fed, "first_run": first_run}
    try:
        deadline = time.monotonic() + 600
        while not _metrics(fed) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _metrics(fed), "round 1 never finished"
        commands = {m.pid: _cmdline(m.pid) for m in fed.family()}
        result["killed"] = fed.kill("superlink")  # SuperLink, its SuperExec and the ServerApp, mid round 2
        result["killed_commands"] = [commands.get(m.pid, "") for m in result["killed"]]
        deadline = time.monotonic() + 30
        while any(is_running(m.pid, m.start) for m in result["killed"]) and time.monotonic() < deadline:
            time.sleep(0.2)
        result["killed_alive"] = [m for m in result["killed"] if is_running(m.pid, m.start)]
        result["runs_before"], result["rows_before"] = _ledger_rows(fed)
        result["metrics_before"] = _metrics(fed)
        fed.start_superlink(port=fed.port)
        fed.wait_online(["teacher0", "client0", "client1"], timeout=180)
        result["second_run"] = fed.submit(
            preset="smoke", overrides={"data.num_clients": 2, **OVERRIDES, "federation.resume": "true"}
        )
        result["status"] = fed.wait_run(result["second_run"], timeout=900)
        result["runs_after"], result["rows_after"] = _ledger_rows(fed)
        result["metrics_after"] = _metrics(fed)
    finally:
        result["started"] = [(p.name, p.pid, p.start) for p in fed.processes]
        result["survivors"] = fed.stop()
    return result


def test_the_kill_took_the_server_side_mid_run(restarted):
    commands = restarted["killed_commands"]
    assert any("flower-superlink" in c for c in commands) and any("flwr-serverapp" in c for c in commands), commands
    assert restarted["killed_alive"] == []
    assert [m["round"] for m in restarted["metrics_before"]] in ([1], [1, 2])  # killed before round 3


def test_the_resumed_run_completes_the_rounds_under_the_same_ledger_run(restarted):
    assert restarted["status"]["status"] == "finished:completed", restarted["status"]
    assert restarted["runs_after"] == restarted["runs_before"] and len(restarted["runs_after"]) == 1
    rounds = [m["round"] for m in restarted["metrics_after"]]
    assert rounds[-1] == 3 and sorted(set(rounds)) == [1, 2, 3]
    assert len(rounds) == len(set(rounds))  # no round ran twice
    assert {m["run_id"] for m in restarted["metrics_after"]} == set(restarted["runs_after"])


def test_every_contribution_from_before_the_restart_is_kept(restarted):
    before, after = restarted["rows_before"], restarted["rows_after"]
    assert before and all(row in after for row in before)
    assert sorted({(r, cid) for r, cid, *_ in after}) == [(r, c) for r in (1, 2, 3) for c in ("client0", "client1")]


def test_the_workers_computed_the_messages(restarted):
    fed = restarted["fed"]
    for name in ("teacher0", "client0", "client1"):
        handled = fed.log_path(f"{name}-worker").read_text().count("handled a message")
        assert handled >= 4, (name, handled)  # describe x2, rounds or teach steps, finish


def test_everything_stopped_by_process_id(restarted):
    assert restarted["survivors"] == []
    assert not [(n, pid) for n, pid, start in restarted["started"] if is_running(pid, start)]
