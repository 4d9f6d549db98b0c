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


# -- nebula unlearn shard: a simulated sharded run ------------------------------------------------


def _sharded_run(folder, *, forgotten=()):
    from nebula.simulation.sharded import Manifest

    assignment = {"client-0": 0, "client-1": 1, "client-2": 0}
    Manifest(
        level="sharded:2",
        seed=0,
        assignment=assignment,
        excluded=[],
        folders=["shard-0", "shard-1"],
        forgotten=list(forgotten),
        config={"federation.rounds": 2},
    ).write(folder)
    return folder


def test_shard_refuses_a_folder_that_is_not_a_sharded_run(tmp_path, capsys):
    assert main(["unlearn", "shard", "client-0", "--run", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "shards.json: not a sharded run's manifest" in err and "--isolation sharded:S" in err
    (tmp_path / "shards.json").write_text('{"level": "sharded:2", "colour": "blue"}')  # another program's file
    assert main(["unlearn", "shard", "client-0", "--run", str(tmp_path)]) == 2
    assert "not a sharded run's manifest" in capsys.readouterr().err


def test_shard_names_the_clients_when_the_client_took_no_part(tmp_path, capsys):
    run = _sharded_run(tmp_path)
    before = (run / "shards.json").read_bytes()
    assert main(["unlearn", "shard", "client-7", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "client-7 took no part in the sharded run" in err and "client-2" in err
    assert (run / "shards.json").read_bytes() == before  # nothing written


def test_shard_runs_forget_and_reports_its_cost(tmp_path, capsys, monkeypatch):
    import nebula.simulation.sharded as sharded

    run, calls = _sharded_run(tmp_path), []

    def fake_forget(run_dir, client_id, *, on_round=None, workers=None):
        calls.append((run_dir, client_id, workers))
        row = dict(round=1, accepted=1, rejected=[], mean_client_acc=0.5, teacher_acc=0.6, student_acc=0.55)
        on_round(0, {**row, "bytes_up_per_client": 100.0, "seconds": 3.0})
        full = {"client_rounds": 6, "seconds": 30.0}
        return dict(exact=True, shard=0, shard_clients=["client-2"], client_rounds=2, seconds=10.0, full_retrain=full,
                    global_student={"student_acc": 0.5})  # fmt: skip

    monkeypatch.setattr(sharded, "forget", fake_forget)
    assert main(["unlearn", "shard", "client-0", "--run", str(run), "--parallel", "1"]) == 0
    out = capsys.readouterr().out
    assert calls == [(run, "client-0", 1)]
    assert "[shard-0] [round 1/2]" in out
    assert "client-0 forgotten (exact: True): shard 0 retrained with 1 clients, 2 client-rounds" in out
    assert "against 6 client-rounds and 30 s to retrain every shard" in out


def test_shard_does_not_forget_twice(tmp_path, capsys, monkeypatch):
    import nebula.simulation.sharded as sharded

    monkeypatch.setattr(sharded, "forget", lambda *a, **k: pytest.fail("forget ran for a forgotten client"))
    run = _sharded_run(tmp_path, forgotten=["client-1"])
    assert main(["unlearn", "shard", "client-1", "--run", str(run)]) == 0
    assert "client-1 was already forgotten" in capsys.readouterr().out
