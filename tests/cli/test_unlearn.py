"""`nebula unlearn CLIENT ...` is `nebula unlearn submit CLIENT ...`, but a typo of a subcommand is an error
with a suggestion (cli/unlearn.py, UnlearnGroup). The service's own tests: tests/server/unlearning/."""

import pytest

from nebula.cli.main import main


@pytest.mark.parametrize(
    "argv, runs",
    [
        (["unlearn", "client-3"], "unlearn submit"),
        (["unlearn", "jetson-01"], "unlearn submit"),
        (["-v", "unlearn", "client-3"], "unlearn submit"),
        (["unlearn", "submit", "status"], "unlearn submit"),  # a client named like a subcommand: explicit submit
        (["unlearn", "status", "abc"], "unlearn status"),
        (["unlearn", "list"], "unlearn list"),
        (["unlearn", "benchmark"], "unlearn benchmark"),
    ],
)
def test_which_command_runs(argv, runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    assert f"Usage: nebula {runs} " in capsys.readouterr().out


@pytest.mark.parametrize("typo, meant", [("lst", "list"), ("stat", "status"), ("verfy", "verify"), ("sever", "serve")])
def test_a_typo_is_an_error_with_a_suggestion_not_a_client(typo, meant, capsys):
    with pytest.raises(SystemExit) as done:
        main(["unlearn", typo, "--server", "h:1", "--ca", "c", "--key", "k"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: No such command '{typo}'.") and err.count(f"Did you mean '{meant}'?") == 1


def test_a_bad_mode_names_the_choices(capsys):
    with pytest.raises(SystemExit) as done:
        main(["unlearn", "client-3", "--reason", "r", "--mode", "forget-harder"])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "'--mode': 'forget-harder' is not one of" in err and "'purge'" in err


def test_benchmark_refuses_bad_modes_and_clients_before_anything_runs(tmp_path, capsys):
    out = ["--out", str(tmp_path / "b")]
    with pytest.raises(SystemExit) as done:
        main(["unlearn", "benchmark", "--preset", "smoke", "--modes", "purge,forget-harder", *out])
    assert done.value.code == 2
    assert "unknown mode(s) ['forget-harder']" in capsys.readouterr().err
    assert main(["unlearn", "benchmark", "--preset", "smoke", "--client", "client-9", *out]) == 2
    assert "is not one of client-0 .. client-2" in capsys.readouterr().err
    assert main(["unlearn", "benchmark", "--preset", "smoke", "--num-clients", "1", *out]) == 2
    assert "--min-replies (2) exceeds --num-clients (1)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
