"""`nebula simulate` refuses bad settings before anything starts, with a clear error and exit code 2."""

import pytest

from nebula.cli.main import main


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--aggregation", "nope"], "unknown aggregation rule 'nope'; available: class-contrast"),
        (["--baselines", "oracle"], "unknown baseline(s) ['oracle']"),
        (["--rounds", "0"], "federation.rounds must be > 0"),
        (["--logit-adjust", "maybe"], "train.logit_adjust must be a boolean"),
    ],
)
def test_bad_settings_exit_2_naming_the_field(argv, message, tmp_path, capsys):
    assert main(["simulate", "--output-dir", str(tmp_path / "run"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing was started or written


def _squash(text: str) -> str:
    return " ".join(text.split())


def test_each_command_help_shows_its_own_presets_defaults(capsys):
    from nebula.common.presets import PRESETS

    with pytest.raises(SystemExit):
        main(["benchmark", "--help"])
    help_text = _squash(capsys.readouterr().out)
    bench = PRESETS["benchmark"]
    assert f"federation rounds (default: {bench['federation.rounds']}, preset benchmark)" in help_text
    assert f"number of edge clients (default: {bench['data.num_clients']}, preset benchmark)" in help_text
    assert f"(default: {bench['data.dirichlet_alpha']}, preset benchmark)" in help_text
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "federation rounds (default: 3)" in _squash(capsys.readouterr().out)


def test_progress_line_shows_f1_and_flags_one_class_models(capsys):
    from nebula.cli.main import _progress

    summary = {
        "round": 2,
        "accepted": 2,
        "rejected": {},
        "mean_client_acc": 0.4,
        "mean_client_f1": 0.3,
        "teacher_acc": 0.5,
        "teacher_f1": 0.45,
        "teacher_top_share": 0.6,
        "student_acc": 0.38,
        "student_f1": 0.18,
        "student_top_share": 0.98,
        "bytes_up_per_client": 4216.0,
        "seconds": 12.0,
        "clients": {"client-0": {"top_share": 1.0}, "client-1": {"top_share": 0.5}},
    }
    _progress(3)(summary)
    line = capsys.readouterr().out
    assert "mean client 40.0% F1 30.0% ONE CLASS: 1/2 clients" in line
    assert "teacher 50.0% F1 45.0% |" in line
    assert "global student 38.0% F1 18.0% ONE CLASS (98.0%)" in line
