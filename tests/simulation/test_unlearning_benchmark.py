"""The unlearning benchmark's own pieces (the whole command runs two federations: run it by hand,
`nebula unlearn benchmark --preset smoke`): copying a run folder, choosing the client, refusing bad input."""

import numpy as np
import pytest

from nebula.cli.main import main
from nebula.common.federation_data import build_federation_data
from nebula.common.presets import preset_config
from nebula.server.ledger import Contribution, Ledger
from nebula.simulation.unlearning_benchmark import client_with_most_data, copy_run


def test_a_copied_run_folder_holds_the_ledger_rows_and_checkpoints(tmp_path):
    src, dst = tmp_path / "run", tmp_path / "copy"
    ledger = Ledger(src / "ledger.sqlite")  # left open: its rows may still be in the WAL file
    ledger.start_run("r", {})
    ids = np.arange(2, dtype=np.int64)
    ledger.record_round(
        run_id="r",
        round_index=1,
        accepted=[Contribution("client-0", 1, ids, b"x", 1.0)],
        rejected=[],
        rule="mean",
        consensus_ids=None,
        consensus=None,
    )
    (src / "checkpoints" / "round-001").mkdir(parents=True)
    (src / "checkpoints" / "round-001" / "teacher.pt").write_bytes(b"state")
    copy_run(src, dst)
    ledger.close()
    copied = Ledger(dst / "ledger.sqlite")
    assert [c.client_id for _, c in copied.contributions("r")] == ["client-0"]
    copied.close()
    assert (dst / "checkpoints" / "round-001" / "teacher.pt").read_bytes() == b"state"


def test_the_default_client_is_the_one_with_the_most_training_data():
    config = preset_config("smoke")
    sizes = [len(c.train) for c in build_federation_data(config.data).clients]
    assert client_with_most_data(config) == f"client-{int(np.argmax(sizes))}"


def test_bad_arguments_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as bad_mode:  # --modes takes the registered modes only: a usage error
        main(["unlearn", "benchmark", "--preset", "smoke", "--modes", "forget-harder", "--out", str(tmp_path / "b")])
    assert bad_mode.value.code == 2
    assert "unknown mode(s) ['forget-harder']" in capsys.readouterr().err
    assert (
        main(["unlearn", "benchmark", "--preset", "smoke", "--client", "client-9", "--out", str(tmp_path / "b")]) == 2
    )
    assert "is not one of client-0 .. client-2" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
