"""The `nebula` command agrees with itself: one meaning per flag, no flag twice, -v and -h everywhere,
typos answered with a suggestion."""

import click
import pytest

from nebula.cli.main import main

from .conftest import all_commands


@pytest.fixture(scope="module")
def commands():
    return all_commands()


def _options(command):
    return [p for p in command.params if isinstance(p, click.Option)]


def test_every_command_is_found(commands):
    expected = {"simulate", "benchmark", "setup", "teach", "worker", "export", "predict", "flywheel", "certs"}
    expected |= {"distill-benchmark"}
    expected |= {"fleet-gate"}
    expected |= {"deploy up", "deploy down"} | {f"unlearn {c}" for c in ("submit", "status", "list", "verify")}
    assert expected | {"unlearn serve", "unlearn benchmark"} <= set(commands)


def test_no_flag_twice_and_verbose_everywhere(commands):
    for name, command in commands.items():
        flags = [flag for p in command.params for flag in [*p.opts, *p.secondary_opts] if flag.startswith("-")]
        assert len(flags) == len(set(flags)), (name, sorted(f for f in flags if flags.count(f) > 1))
        assert {"-v", "--verbose"} <= set(flags), name


def test_teacher_names_the_teachers_base_model_in_every_command(commands):
    seen = []
    for name, command in commands.items():
        for option in _options(command):
            if "--teacher" in option.opts and not option.hidden:
                seen.append(name)
                assert "base model" in option.help, (name, option.help)
    assert {"simulate", "benchmark", "teach", "unlearn benchmark"} <= set(seen)


def test_workers_are_the_long_lived_local_workers_in_every_command(commands):
    seen = []
    for name, command in commands.items():
        for option in _options(command):
            if "--workers" in option.opts:
                seen.append(name)
                assert option.is_flag and "nebula worker" in option.help, (name, option.help)
    assert seen == ["deploy up"]
    assert "--parallel" in {f for o in _options(commands["simulate"]) for f in o.opts}


def test_unlearn_benchmark_has_one_output_option(commands):
    flags = {f for o in _options(commands["unlearn benchmark"]) for f in o.opts}
    assert "--out" in flags and "--output-dir" not in flags
    assert "--output-dir" in {f for o in _options(commands["simulate"]) for f in o.opts}


@pytest.mark.parametrize("argv", [["simulate", "-h"], ["unlearn", "-h"], ["deploy", "up", "-h"], ["-h"]])
def test_short_help_everywhere(argv, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0 and "Usage: nebula" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, suggestion",
    [(["simulat"], "Did you mean 'simulate'?"), (["unlern", "list"], "Did you mean 'unlearn'?")],
)
def test_unknown_commands_get_a_suggestion(argv, suggestion, capsys):
    with pytest.raises(SystemExit) as done:
        main(argv)
    err = capsys.readouterr().err
    assert done.value.code == 2 and err.startswith("error: No such command") and err.count(suggestion) == 1


def test_deploy_up_takes_the_old_teacher_spelling_with_a_warning(tmp_path, capsys):
    """`deploy up --teacher NAME` was renamed `--teacher-node`; the old spelling still works (hidden)."""
    argv = ["deploy", "up", str(tmp_path / "run"), "--certs", str(tmp_path / "none"), "--clients", "c0"]
    assert main([*argv, "--teacher", "t9"]) == 2
    err = capsys.readouterr().err
    assert "--teacher is now --teacher-node" in err and "--nodes t9,c0" in err
    assert main([*argv, "--teacher-node", "t8"]) == 2
    err = capsys.readouterr().err
    assert "now" not in err and "--nodes t8,c0" in err


def test_deploy_up_checks_its_config_overrides_before_starting(tmp_path, capsys):
    from nebula.deploy.pki import write_deployment_material

    certs = tmp_path / "certs"
    write_deployment_material(certs, nodes=["teacher0", "client0", "client1"])
    argv = ["deploy", "up", str(tmp_path / "run"), "--certs", str(certs)]
    assert main([*argv, "--set", "federation.rounds=0"]) == 2
    assert "(--preset quick, 2 client node(s), --set): federation.rounds must be > 0" in capsys.readouterr().err
    assert main([*argv, "--set", "federation.nope=1"]) == 2
    assert "unknown configuration key 'federation.nope'" in capsys.readouterr().err
    assert main([*argv, "--clients", "client0"]) == 2  # quick needs 2 replies a round
    assert "federation.min_replies (2) exceeds data.num_clients (1)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        main([*argv, "--preset", "huge"])
    assert done.value.code == 2
    assert not (tmp_path / "run").exists()


def test_export_takes_the_old_teacher_spelling_with_a_warning(tmp_path, capsys):
    """`export --teacher ADAPTER_DIR` was renamed `--teacher-adapter`; the old spelling still works (hidden)."""
    argv = ["export", str(tmp_path), "--out", str(tmp_path / "out")]
    assert main([*argv, "--teacher", str(tmp_path / "teacher")]) == 2
    err = capsys.readouterr().err
    assert "--teacher is now --teacher-adapter" in err and "no adapter_config.json" in err
    assert main([*argv, "--teacher-adapter", str(tmp_path / "teacher")]) == 2
    assert "now" not in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(set(all_commands()) - {"distill-benchmark"}))  # its script's help: below
def test_every_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as done:
        main([*name.split(), "--help"])
    assert done.value.code == 0
    assert f"Usage: nebula {name} " in " ".join(capsys.readouterr().out.split())


def test_arguments_show_their_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["teach", "--help"])
    assert "folder of a finished run (holds ledger.sqlite)" in capsys.readouterr().out


def test_distill_benchmark_passes_its_options_to_the_script(capsys):
    from nebula.cli.main import main

    assert main(["distill-benchmark", "--variants", "nope"]) == 2
    err = capsys.readouterr().err
    assert "usage: nebula distill-benchmark" in err and "unknown variants ['nope']" in err
    assert main(["distill-benchmark", "--help"]) == 0
    assert "--teacher-epochs" in capsys.readouterr().out
