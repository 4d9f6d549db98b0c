"""`nebula export` then `nebula predict`, through nebula.cli.main.main."""

import csv

import pytest

from nebula.cli.main import main
from nebula.common.flywheel import PredictionLog, select


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


def test_the_flywheel_logs_predictions_and_picks_rows_to_label(cli_export, tmp_path, capsys, tweets):
    _, out = cli_export
    log, sheet = tmp_path / "log.jsonl", tmp_path / "annotate.csv"
    texts = [str(t) for t in tweets["test"][:6]]
    assert main(["predict", str(out), *texts, "--log", str(log)]) == 0
    assert len(log.read_text().splitlines()) == 6
    assert main(["flywheel", str(log), "--out", str(sheet), "--k", "2", "--strategy", "uncertainty"]) == 0
    with sheet.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    records = PredictionLog(log).read().records
    picked = [records[i].text for i in select(records, 2, strategy="uncertainty")]
    assert [row["text"] for row in rows] == picked and all(row["label"] == "" for row in rows)
    assert main(["flywheel", str(log), "--out", str(sheet), "--k", "2"]) == 2  # never overwrites labels
    assert "exists" in capsys.readouterr().err


def test_the_flywheel_picks_typical_rows_in_the_embedders_space(cli_export, tmp_path, capsys, tweets):
    _, out = cli_export
    log, sheet, own = tmp_path / "log.jsonl", tmp_path / "typical.csv", tmp_path / "own.csv"
    texts = [str(t) for t in tweets["test"][:8]]
    assert main(["predict", str(out), *texts, "--log", str(log)]) == 0
    argv = ["flywheel", str(log), "--out", str(sheet), "--k", "3", "--strategy", "typical"]
    assert main(argv) == 2 and "needs --embedder" in capsys.readouterr().err
    assert not sheet.exists()
    records = PredictionLog(log).read().records
    own.write_text("text,label\n" + f'"{texts[0]}",{records[0].label_name}\n', encoding="utf-8")
    assert main([*argv, "--embedder", "minilm-l3", "--labelled", str(own)]) == 0
    with sheet.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and len({r["text"] for r in rows}) == 3 and {r["text"] for r in rows} <= set(texts)


def test_export_prune_refuses_a_bad_spec_naming_the_entry(adapter_dir, tmp_path, capsys):
    argv = ["export", str(adapter_dir), "--out", str(tmp_path / "out"), "--dataset", "tweets"]
    assert main([*argv, "--prune", "heads:0.5,layer:2"]) == 2
    assert "export.prune: bad entry 'layer:2': unknown name 'layer'" in capsys.readouterr().err
    assert main(["export", str(adapter_dir), "--out", str(tmp_path / "out"), "--prune", "layers:2"]) == 2
    assert "export.prune needs unlabelled texts" in capsys.readouterr().err  # no --dataset, no --prune-vocab-from
    assert not (tmp_path / "out").exists()


def test_export_prune_writes_a_pruned_int8_package_that_predicts(adapter_dir, pruned_corpus, tmp_path, capsys):
    out = tmp_path / "pruned"
    argv = ["export", str(adapter_dir), "--out", str(out), "--labels", "neg,neu,pos", "--prune-vocab-from"]
    argv += [str(pruned_corpus), "--prune", "heads:0.5,ffn:0.5,layers:2", "--prune-texts", "16"]
    assert main(argv) == 0  # cpu-int8, one recovery epoch (the defaults), texts from the corpus
    printed = " ".join(capsys.readouterr().out.split())  # the console wraps long lines
    assert "structured pruning heads:0.5,ffn:0.5,layers:2 (magnitude importance on 16 texts of" in printed
    assert "layers 2 of 3, heads 6 of 12 per layer, FFN 768 of 1536" in printed
    assert "recovered by 1 epoch(s) of distillation from the unpruned model (1 step)" in printed
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "vocab_map.npy", "manifest.json", "pruning-record.json"}
    assert main(["predict", str(out), "what a lovely day"]) == 0
    assert capsys.readouterr().out.split("\t")[0] in ("neg", "neu", "pos")
