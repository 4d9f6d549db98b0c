"""The live-run lease in the ledger: a run that carries out unlearning requests itself, for a while."""

from nebula.server.ledger import Ledger


def test_a_lease_names_the_live_run_until_cleared_or_expired(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        assert ledger.live_run() is None
        ledger.mark_live("run-a", for_seconds=60)
        assert ledger.live_run() == "run-a"
        ledger.clear_live("run-a")
        assert ledger.live_run() is None
        ledger.mark_live("run-b", for_seconds=-1)  # a server that died: its lease ran out
        assert ledger.live_run() is None
    finally:
        ledger.close()
