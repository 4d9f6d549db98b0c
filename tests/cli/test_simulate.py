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
