"""`nebula export` then `nebula predict`, through nebula.cli.main.main."""

import pytest

from nebula.cli.main import main


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory, adapter_dir, pruned_corpus):
    out = tmp_path_factory.mktemp("cli") / "edge"
    rc = main(
        [
            "export",
            str(adapter_dir),
            "--out",
            str(out),
            "--target",
            "cpu-int8",
            "--labels",
            "neg,neu,pos",
            "--prune-vocab-from",
            str(pruned_corpus),
        ]
    )
    return rc, out


def test_export_writes_a_package(cli_export, capsys):
    rc, out = cli_export
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "tokenizer.json", "vocab_map.npy", "manifest.json"}


def test_predict_prints_label_and_probabilities_per_line(cli_export, tmp_path, capsys, tweets):
    _, out = cli_export
    texts = tmp_path / "texts.txt"
    texts.write_text(f"{tweets['test'][0]}\n\n{tweets['test'][1]}\n")
    assert main(["predict", str(out), "what a lovely day", "--file", str(texts)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    label, scores, text = lines[0].split("\t")
    assert label in ("neg", "neu", "pos") and text == "what a lovely day"
    probs = dict(s.split("=") for s in scores.split())
    assert set(probs) == {"neg", "neu", "pos"} and abs(sum(map(float, probs.values())) - 1) < 2e-3
    assert label == max(probs, key=lambda k: float(probs[k]))


def test_predict_on_a_folder_that_is_no_package(tmp_path, capsys):
    assert main(["predict", str(tmp_path), "hello"]) == 2
    assert "manifest.json: missing" in capsys.readouterr().err


def test_export_of_a_folder_that_is_no_adapter(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert "no adapter_config.json" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_report_needs_a_dataset(adapter_dir, tmp_path, capsys):
    assert main(["export", str(adapter_dir), "--out", str(tmp_path / "out"), "--report"]) == 2
    assert "--report needs --dataset" in capsys.readouterr().err
