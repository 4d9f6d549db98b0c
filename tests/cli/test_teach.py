"""`nebula teach` names what is wrong with its input and writes nothing.

The training itself: tests/simulation/test_teach.py.
"""

from nebula.cli.main import main


def test_a_folder_without_a_ledger_exits_2(tmp_path, capsys):
    assert main(["teach", str(tmp_path), "--out", str(tmp_path / "teacher")]) == 2
    assert "no ledger.sqlite" in capsys.readouterr().err
    assert not (tmp_path / "teacher").exists()


def test_zero_epochs_exit_2(tmp_path, capsys):
    assert main(["teach", str(tmp_path), "--out", str(tmp_path / "teacher"), "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
