"""`nebula simulate` checks its data and models before Ray or any node starts (simulation/preflight.py).

Every bad input returns 2 at once with one message on stderr, and the simulation engine is never called;
sizes too large for a user's file that the user did not set are fitted to it.
"""

import csv
import time

import pytest

import nebula.simulation.engine as engine
from nebula.cli.main import main
from nebula.simulation.preflight import MIN_PER_CLIENT


def write_csv(path, rows, header=("text", "label")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def short_texts(n, classes=("neg", "neu", "pos")):
    words = ("good", "bad", "fine", "late", "great", "awful", "okay", "slow")
    return [(f"{words[i % len(words)]} day number {i}", classes[i % len(classes)]) for i in range(n)]


class Reached(Exception):
    """Raised by the stand-in engine: the command got as far as starting the federation."""


@pytest.fixture
def engine_never_called(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("simulation.engine.simulate was called for a bad input")

    monkeypatch.setattr(engine, "simulate", fail)


@pytest.fixture
def config_reaching_engine(tmp_path, monkeypatch):
    """Run ``nebula simulate *argv`` up to the (stand-in) engine; return the config it was handed."""

    def run(*argv):
        reached = {}

        def record(config, **kwargs):
            reached["config"] = config
            raise Reached

        monkeypatch.setattr(engine, "simulate", record)
        with pytest.raises(Reached):
            main(["simulate", *argv, "--output-dir", str(tmp_path / "run"), "--baselines", "none"])
        return reached["config"]

    return run


@pytest.fixture
def small_csv(tmp_path):
    return write_csv(tmp_path / "small.csv", short_texts(300))


def run_bad(tmp_path, capsys, *argv):
    start = time.perf_counter()
    code = main(["simulate", "--output-dir", str(tmp_path / "run"), "--baselines", "none", *argv])
    seconds = time.perf_counter() - start
    captured = capsys.readouterr()
    assert code == 2
    assert seconds < 10
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1  # one message
    assert "Traceback" not in captured.err + captured.out
    assert not (tmp_path / "run").exists()  # nothing was started or written
    return captured.err


@pytest.mark.usefixtures("engine_never_called")
def test_missing_file(tmp_path, capsys):
    err = run_bad(tmp_path, capsys, "--dataset", str(tmp_path / "nope.csv"))
    assert "nope.csv: file not found" in err


@pytest.mark.usefixtures("engine_never_called")
def test_missing_label_column(tmp_path, capsys):
    path = write_csv(tmp_path / "cols.csv", short_texts(300), header=("text", "category"))
    err = run_bad(tmp_path, capsys, "--dataset", str(path))
    assert "missing column 'label'; the header has ['text', 'category']" in err


@pytest.mark.usefixtures("engine_never_called")
def test_one_class_only(tmp_path, capsys):
    path = write_csv(tmp_path / "one.csv", short_texts(300, classes=("pos",)))
    err = run_bad(tmp_path, capsys, "--dataset", str(path))
    assert "only one class ('pos') in 'label'; a classifier needs at least 2" in err


@pytest.mark.usefixtures("engine_never_called")
def test_sizes_set_explicitly_too_large_are_refused_naming_the_flags(tmp_path, capsys, small_csv):
    err = run_bad(tmp_path, capsys, "--dataset", str(small_csv), "--test-size", "200", "--public-size", "150")
    assert "small.csv has 300 examples" in err
    assert "--test-size 200, --public-size 150" in err  # the sizes the user set
    assert "--test-size 60 --public-size 90 --private-size 0" in err  # what would fit


@pytest.mark.usefixtures("engine_never_called")
def test_explicit_private_size_too_large_is_refused(tmp_path, capsys, small_csv):
    err = run_bad(
        tmp_path,
        capsys,
        "--dataset",
        str(small_csv),
        "--test-size",
        "60",
        "--public-size",
        "90",
        "--private-size",
        "200",
    )
    assert "test (60) + public (90) + private (200) = 350 exceeds 300" in err


@pytest.mark.usefixtures("engine_never_called")
def test_too_many_clients_for_the_file(tmp_path, capsys, small_csv):
    err = run_bad(tmp_path, capsys, "--dataset", str(small_csv), "--num-clients", "100")
    assert "too few for 100 clients" in err and "--num-clients" in err


@pytest.mark.usefixtures("engine_never_called")
def test_unknown_local_model_folder(tmp_path, capsys, small_csv):
    err = run_bad(tmp_path, capsys, "--dataset", str(small_csv), "--student", str(tmp_path / "models" / "mine"))
    assert f"--student: model folder '{tmp_path / 'models' / 'mine'}' not found" in err  # the flag, not model.student


@pytest.mark.usefixtures("engine_never_called")
def test_local_folder_without_config_json(tmp_path, capsys, small_csv):
    (tmp_path / "empty-model").mkdir()
    err = run_bad(tmp_path, capsys, "--dataset", str(small_csv), "--teacher", str(tmp_path / "empty-model"))
    assert "--teacher:" in err and "holds no config.json" in err


@pytest.mark.usefixtures("engine_never_called")
@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_hub_id_while_offline(tmp_path, capsys, small_csv, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv(variable, "1")
    err = run_bad(tmp_path, capsys, "--dataset", str(small_csv), "--student-overrides", "1:nebula-test/no-such-model")
    assert (
        "--student-overrides (client 1): model 'nebula-test/no-such-model' is not a builtin "
        f"(minilm-l3, minilm-l6, mpnet) or a local folder, and the Hub is offline ({variable}=1)"
    ) in err


def test_small_csv_gets_fitted_sizes_and_reaches_the_engine(capsys, small_csv, config_reaching_engine):
    config = config_reaching_engine("--dataset", str(small_csv))
    out = capsys.readouterr().out
    data = config.data
    assert (data.test_size, data.public_size, data.private_size) == (60, 90, 0)  # 20%, 30%, the rest
    assert data.test_size + data.public_size + MIN_PER_CLIENT * data.num_clients <= 300
    assert config.federation.public_per_round <= data.public_size
    fitted = [line for line in out.splitlines() if "too few for" in line]
    assert len(fitted) == 1
    assert "using test 60, public 90, private 150 (the rest)" in fitted[0]
    assert "--test-size, --public-size, --private-size" in fitted[0]
    # 150 private rows over 5 clients: 24 training rows (2 steps of 16); 90 public inputs (6 steps)
    train = config.train
    assert (train.local_epochs, train.teacher_epochs, train.student_epochs) == (15, 5, 5)
    assert "using --local-epochs 15, --teacher-epochs 5, --student-epochs 5" in out


def test_epochs_the_user_sets_on_a_small_csv_are_kept(capsys, small_csv, config_reaching_engine):
    train = config_reaching_engine("--dataset", str(small_csv), "--local-epochs", "2").train
    assert (train.local_epochs, train.teacher_epochs) == (2, 5)
    assert "--local-epochs" not in capsys.readouterr().out.split("short epochs")[-1]


def test_sizes_that_fit_are_kept(capsys, small_csv, config_reaching_engine):
    sizes = ["--test-size", "50", "--public-size", "100", "--private-size", "120"]
    data = config_reaching_engine("--dataset", str(small_csv), *sizes).data
    assert (data.test_size, data.public_size, data.private_size) == (50, 100, 120)
    out = capsys.readouterr().out
    assert "too few for" not in out and "short epochs" not in out
