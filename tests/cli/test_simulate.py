"""`nebula simulate` and `nebula benchmark`: options generated from the configuration, errors that name the flag
(exit 2, one line, nothing started), defaults in --help that are the ones the command runs with."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

import nebula.common.config as config_module
import nebula.simulation.engine as engine
from nebula.cli._args import ConfigOptions, command, config_parameters, with_flags
from nebula.cli._output import round_line
from nebula.cli.main import main
from nebula.common.config import _opt
from nebula.common.presets import PRESETS


def _one_error_line(err: str) -> str:
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.usefixtures("engine_never_called")
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rounds", "0"], "--rounds must be > 0, got 0"),
        (["--micro-batch-size", "32"], "--micro-batch-size (32) must be <= --batch-size (16)"),
        (["--num-clients", "1"], "--min-replies (2) exceeds --num-clients (1)"),
    ],
)
def test_bad_values_exit_2_naming_the_flag(argv, message, tmp_path, capsys):
    assert main(["simulate", "--output-dir", str(tmp_path / "run"), *argv]) == 2
    err = _one_error_line(capsys.readouterr().err)
    assert message in err
    assert "federation." not in err and "train." not in err and "data." not in err  # flags, not config keys
    assert not (tmp_path / "run").exists()  # nothing was started or written


@pytest.mark.usefixtures("engine_never_called")
@pytest.mark.parametrize(
    "argv, named",
    [
        (["--aggregation", "nope"], "'--aggregation': 'nope' is not one of 'class-contrast'"),
        (["--partition", "nope"], "'--partition': 'nope' is not one of 'iid', 'dirichlet', 'shards'"),
        (["--wire-dtype", "int4"], "'--wire-dtype': 'int4' is not one of 'float16', 'float32', 'int8'"),
        (["--client-init", "nope"], "'--client-init'"),
        (["--student-inputs", "all"], "'--student-inputs'"),
        (["--preset", "huge"], "'--preset': 'huge' is not one of"),
        (["--logit-adjust", "maybe"], "'--logit-adjust': 'maybe' is not a valid boolean"),
        (["--rounds", "three"], "'--rounds': 'three' is not a valid integer"),
        (["--rnds", "3"], "No such option '--rnds'"),
    ],
)
def test_values_outside_the_choices_are_usage_errors(argv, named, tmp_path, capsys):
    with pytest.raises(SystemExit) as done:
        main(["simulate", "--output-dir", str(tmp_path / "run"), *argv])
    assert done.value.code == 2
    assert named in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.usefixtures("engine_never_called")
def test_an_unknown_baseline_exits_2_before_anything_runs(tmp_path, capsys):
    assert main(["simulate", "--output-dir", str(tmp_path / "run"), "--baselines", "no-such-method"]) == 2
    assert "--baselines: unknown baseline(s) ['no-such-method']; available:" in _one_error_line(capsys.readouterr().err)


def test_only_the_options_given_override_the_preset(reach_engine):
    """The options' defaults are the command's preset; another --preset keeps its own values for the rest."""
    config = reach_engine("simulate", "--preset", "smoke", "--rounds", "1")["config"]
    smoke = PRESETS["smoke"]
    assert config.federation.rounds == 1
    assert config.data.num_clients == smoke["data.num_clients"] and config.data.test_size == smoke["data.test_size"]
    bench = reach_engine("benchmark", "--aggregation", "mean", "--partition", "iid", "--preset", "smoke")["config"]
    assert (bench.federation.aggregation, bench.data.partition) == ("mean", "iid")
    assert bench.federation.rounds == smoke["federation.rounds"]


def test_verbose_after_the_command_as_before_it(reach_engine):
    assert reach_engine("simulate", "--preset", "smoke", "-v")["verbose"] is True
    assert reach_engine("-v", "simulate", "--preset", "smoke")["verbose"] is True
    assert reach_engine("simulate", "--preset", "smoke")["verbose"] is False


def test_parallel_nodes_reach_the_engine(reach_engine):
    assert reach_engine("simulate", "--preset", "smoke", "--parallel", "2")["workers"] == 2


def test_test_hooks_are_hidden_from_help_but_accepted(reach_engine, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    shown = capsys.readouterr().out
    assert "--rounds" in shown and "--faults" not in shown
    assert reach_engine("simulate", "--preset", "smoke", "--faults", "1:nan")["config"].federation.faults == "1:nan"


def _help_line(argv: list[str], flag: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if f" {flag} " in line]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    "argv, preset", [(["simulate"], "quick"), (["benchmark"], "benchmark"), (["unlearn", "benchmark"], "benchmark")]
)
def test_each_command_help_shows_the_defaults_it_runs_with(argv, preset, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # one line per option
    values = {**{k: v for k, v in config_module.NebulaConfig().to_flat().items()}, **PRESETS[preset]}
    for key, flag in (("federation.rounds", "--rounds"), ("data.num_clients", "--num-clients")):
        assert f"[default: {values[key]}]" in _help_line(argv, flag, capsys)
    assert PRESETS["benchmark"]["federation.rounds"] != config_module.FederationConfig.rounds  # the test can fail


def test_the_generated_defaults_are_the_presets_values():
    for preset, values in PRESETS.items():
        params = config_parameters(ConfigOptions(preset=preset))
        for key, value in values.items():
            assert params[key].default == value, (preset, key)


def test_a_new_configuration_field_becomes_an_option(monkeypatch):
    """Another engineer adds a field: a command with configuration options offers it, with its help and choices."""
    wider = dataclasses.make_dataclass(
        "WiderFederation",
        [("sharding", str, _opt("none", "how the server shards the ledger", choices=("none", "by-client")))],
        bases=(config_module.FederationConfig,),
    )
    monkeypatch.setitem(config_module.SECTIONS, "federation", wider)
    probe_app = typer.Typer()

    @command(probe_app, "probe", "a command with the configuration options", config=ConfigOptions(preset="quick"))
    def probe(*, overrides: dict) -> dict:
        return overrides

    probe_command = typer.main.get_command(probe_app)
    option = next(p for p in probe_command.params if "--sharding" in p.opts)
    assert option.help == "how the server shards the ledger" and list(option.type.choices) == ["none", "by-client"]
    assert option.default == "none"
    given = probe_command.main(["--sharding", "by-client", "--rounds", "2"], standalone_mode=False)
    assert given == {"federation.sharding": "by-client", "federation.rounds": 2}
    assert probe_command.main([], standalone_mode=False) == {}  # defaults are not overrides


def test_config_keys_in_messages_become_flags():
    assert with_flags("federation.rounds must be > 0, got 0") == "--rounds must be > 0, got 0"
    assert with_flags("model.student_overrides (client 1): bad") == "--student-overrides (client 1): bad"
    assert with_flags("file runs/data.dataset.csv missing") == "file runs/data.dataset.csv missing"  # a path stays


@pytest.mark.parametrize("argv", [["simulate", "--rounds", "0"], ["unlearn", "benchmark", "--rounds", "0"]])
def test_a_config_error_comes_before_torch_flower_or_transformers_load(argv, tmp_path):
    code = (
        "import sys; from nebula.cli.main import main; code = main(sys.argv[1:]); "
        "heavy = sorted(m for m in ('torch', 'flwr', 'transformers', 'ray') if m in sys.modules); "
        "print(code, heavy)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.stdout.strip() == "2 []", done.stdout + done.stderr
    assert done.stderr.strip() == "error: --rounds must be > 0, got 0"


SUMMARY = {
    "round": 2,
    "accepted": 2,
    "rejected": {},
    "mean_client_acc": 0.4,
    "mean_client_f1": 0.3,
    "min_client_acc": 0.35,
    "mean_client_acc_own": 0.7,
    "teacher_acc": 0.5,
    "teacher_f1": 0.45,
    "teacher_top_share": 0.6,
    "student_acc": 0.38,
    "student_f1": 0.18,
    "student_top_share": 0.98,
    "bytes_up_per_client": 4216.0,
    "bytes_down_per_client": 9000.0,
    "seconds": 12.0,
    "clients": {"client-0": {"top_share": 1.0}, "client-1": {"top_share": 0.5}},
}


def test_progress_line_shows_f1_and_flags_one_class_models():
    line = round_line(SUMMARY, 3)
    assert line.startswith("[round 2/3] 2 replies")
    assert "mean client 40.0% F1 30.0% ONE CLASS: 1/2 clients" in line
    assert "teacher 50.0% F1 45.0% |" in line
    assert "global student 38.0% F1 18.0% ONE CLASS (98.0%)" in line


def test_a_finished_federation_prints_a_line_a_round_then_the_table(tmp_path, monkeypatch, capsys):
    """The engine (stood in for) reports two rounds: two progress lines, then the table, also in results.md."""
    history = [{**SUMMARY, "round": 1}, {**SUMMARY, "round": 2}]

    def two_rounds(config, *, on_round, **kwargs):
        Path(config.federation.output_dir).mkdir(parents=True)  # as the engine makes the run folder
        for summary in history:
            on_round(summary)
        return history

    monkeypatch.setattr(engine, "simulate", two_rounds)
    run = tmp_path / "run"
    argv = ["simulate", "--preset", "smoke", "--rounds", "2", "--baselines", "none", "--output-dir", str(run)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert [line[:12] for line in out.splitlines() if line.startswith("[round")] == ["[round 1/2] ", "[round 2/2] "]
    table = (run / "results.md").read_text()
    assert "| nebula FD (class-contrast) |" in table and table in out  # a pipe gets the Markdown as written
    assert (run / "results.json").exists()
