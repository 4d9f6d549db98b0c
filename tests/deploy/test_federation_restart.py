"""A restart of the server side on Flower's deployment engine, on loopback.

A fault test, beside test_federation_unavailable.py.

A SuperLink (TLS, SuperNode authentication, state database), a teacher node and two client
nodes, each with its long-lived local worker (client/worker.py), run the smoke preset for 3
rounds. Once round 1 is finished and a client's worker has started computing its round-2 reply (its
log says "handling train.round ... (round 2)", not yet "handled"), the SuperLink is SIGKILLed with
everything it started (its SuperExec and the ServerApp process), while that client computes. A new
SuperLink starts on the same port and database; the SuperNodes reconnect by themselves, and the
run is submitted again with ``federation.resume=true``: it must finish rounds 2 and 3 under the
same ledger run, with every contribution accepted before the restart still there, byte for byte. The
client that was computing finishes its computation without a SuperLink and takes part in the resumed rounds.
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


def _worker_lines(fed, name: str) -> list[str]:
    """What node ``name``'s worker logged itself (client/worker.py), in order."""
    text = fed.log_path(f"{name}-worker").read_text(errors="replace")
    return [line for line in text.splitlines() if "nebula.client.worker:" in line]


def _computing_round_2(fed) -> str | None:
    """A client whose worker is computing its round-2 reply right now (its last line says it started), or None."""
    for name in ("client0", "client1"):
        lines = _worker_lines(fed, name)
        if lines and "handling train.round" in lines[-1] and lines[-1].endswith("(round 2)"):
            return name
    return None


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
        deadline = time.monotonic() + 120
        while (busy := _computing_round_2(fed)) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert busy is not None, "no client started computing round 2"
        commands = {m.pid: _cmdline(m.pid) for m in fed.family()}
        result["killed"] = fed.kill("superlink")  # SuperLink, its SuperExec and the ServerApp, mid round 2
        # Read after the kill: the client had not finished when the server side went down.
        result["busy"], result["busy_lines"] = busy, len(_worker_lines(fed, busy))
        result["busy_last"] = _worker_lines(fed, busy)[-1]
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


def test_the_kill_came_while_a_client_computed_its_round_2_reply_which_it_finished_without_a_superlink(restarted):
    fed, busy = restarted["fed"], restarted["busy"]
    assert "handling train.round" in restarted["busy_last"] and restarted["busy_last"].endswith("(round 2)")
    after = _worker_lines(fed, busy)[restarted["busy_lines"] :]
    assert after and "handled a message" in after[0], after[:3]  # the computation went on to its end
    resumed = [line for line in after if "handling train.round" in line]
    assert resumed and all(str(restarted["second_run"]) in line for line in resumed)  # then the resumed run's


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
