"""The device flywheel (common/flywheel.py): the prediction log, selection on small cases with known answers,
and the annotation round trip into the device's own data."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nebula.common.data import load_labelled_files
from nebula.common.flywheel import (
    ANNOTATION_COLUMNS,
    FlywheelError,
    Prediction,
    PredictionLog,
    disagreement,
    k_center,
    read_annotations,
    select,
    uncertainty,
    write_annotation_file,
    write_labelled,
)

NAMES = ("negative", "neutral", "positive")


def _records(probs, texts=None) -> list[Prediction]:
    probs = np.asarray(probs, dtype=np.float64)
    texts = texts or [f"text {i}" for i in range(len(probs))]
    return [Prediction(t, int(p.argmax()), float(p.max()), tuple(p), 0.0) for t, p in zip(texts, probs)]


# --- the log ---------------------------------------------------------------------------------


def test_log_round_trip(tmp_path):
    log = PredictionLog(tmp_path / "device" / "predictions.jsonl")
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.3, 0.2]], dtype=np.float32)
    assert log.append(["great, day", 'he said "no"\nthen left'], probs, label_names=NAMES, timestamp=12.5) == 2
    log.append(["meh"], np.array([[0.3, 0.4, 0.3]]))
    contents = log.read()
    assert contents.corrupt == []
    first, second, third = contents.records
    assert (first.text, first.label, first.label_name, first.timestamp) == ("great, day", 2, "positive", 12.5)
    assert first.confidence == pytest.approx(0.7) and first.probs == pytest.approx((0.1, 0.2, 0.7))
    assert second.text == 'he said "no"\nthen left' and second.label == 0
    assert third.label == 1 and third.label_name is None and third.timestamp > 1e9
    assert len(log.path.read_text(encoding="utf-8").splitlines()) == 3  # one line per record


def test_a_corrupt_line_is_named_by_its_number(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl")
    log.append(["a", "b"], np.eye(2))
    with log.path.open("a", encoding="utf-8") as handle:
        handle.write('{"text": "c", "label": 0, "confi')  # a write cut short: no newline
    log.append(["d"], np.array([[0.2, 0.8]]))  # starts on a fresh line
    with pytest.raises(FlywheelError, match=r"p\.jsonl:3: not JSON"):
        log.read()
    contents = log.read(strict=False)
    assert [r.text for r in contents.records] == ["a", "b", "d"]
    assert [line for line, _ in contents.corrupt] == [3]


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"text": "x", "label": 0, "confidence": 0.5, "probs": [0.5, 0.6], "timestamp": 1}, "sum to 1"),
        ({"text": "x", "label": 2, "confidence": 0.5, "probs": [0.5, 0.5], "timestamp": 1}, r"class index in \[0, 2\)"),
        ({"text": 3, "label": 0, "confidence": 0.5, "probs": [0.5, 0.5], "timestamp": 1}, "text must be a string"),
        ({"text": "x", "label": 0, "probs": [0.5, 0.5], "timestamp": 1}, r"missing \['confidence'\]"),
        ({"text": "x", "label": 0, "confidence": 0.5, "probs": [0.5, 0.5], "timestamp": "now"}, "timestamp must be"),
        ({"text": "x", "label": 0, "confidence": 1, "probs": [1.0, 0.0, 0.0], "timestamp": 1}, "earlier lines have 2"),
    ],
)
def test_malformed_records_are_refused_with_their_line(tmp_path, record, match):
    log = PredictionLog(tmp_path / "p.jsonl")
    log.append(["ok"], np.array([[0.5, 0.5]]))
    with log.path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    with pytest.raises(FlywheelError, match=f"p.jsonl:2: .*{match}"):
        log.read()


def test_append_refuses_bad_probabilities(tmp_path):
    log = PredictionLog(tmp_path / "p.jsonl")
    with pytest.raises(FlywheelError, match="row 1: probabilities must be"):
        log.append(["a", "b"], np.array([[0.5, 0.5], [2.0, -1.0]]))
    with pytest.raises(FlywheelError, match=r"must be \(N, C\) for 3 texts"):
        log.append(["a", "b", "c"], np.eye(2))
    assert not log.path.exists()  # nothing written


# --- selection: known answers ----------------------------------------------------------------


def test_uncertainty_picks_the_least_sure_rows():
    probs = [[0.9, 0.05, 0.05], [0.34, 0.33, 0.33], [0.6, 0.3, 0.1], [0.45, 0.44, 0.11], [0.98, 0.01, 0.01]]
    assert select(_records(probs), 2).tolist() == [1, 3]  # margins 0.01, 0.01 (row 1 first: lower index)
    assert select(_records(probs), 2, measure="entropy").tolist() == [1, 3]
    np.testing.assert_allclose(uncertainty(np.array(probs))[[0, 2]], [1 - 0.85, 1 - 0.3])
    assert select(_records(probs), 10).tolist() == [1, 3, 2, 0, 4]  # k larger than N: everything, ranked


def test_margin_and_entropy_differ_where_the_third_class_matters():
    probs = [[0.5, 0.5, 0.0], [0.4, 0.3, 0.3]]  # margin: row 0 (0 gap); entropy: row 1 (spread over 3)
    assert select(_records(probs), 1, measure="margin").tolist() == [0]
    assert select(_records(probs), 1, measure="entropy").tolist() == [1]


def test_disagreement_picks_the_rows_where_the_two_models_differ():
    device = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.55, 0.45]])
    global_ = np.array([[0.7, 0.3], [0.2, 0.8], [0.35, 0.65], [0.1, 0.9], [0.5, 0.5]])
    picked = select(_records(device), 2, strategy="disagreement", global_probs=global_)
    assert picked.tolist() == [3, 1]  # both flip; row 3 the more strongly
    scores = disagreement(device, global_)
    assert scores[[1, 3]].min() > 1 > scores[[0, 2, 4]].max()
    assert disagreement(device, device) == pytest.approx(np.zeros(5), abs=1e-12)


def test_k_center_picks_the_far_apart_points():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = np.concatenate([c + rng.normal(0, 0.1, (5, 2)) for c in centres])  # three tight clusters of 5
    chosen = k_center(points, 3)
    assert sorted(i // 5 for i in chosen) == [0, 1, 2]  # one per cluster
    records = _records(np.full((15, 2), 0.5))
    assert sorted(i // 5 for i in select(records, 3, strategy="diverse", embeddings=points)) == [0, 1, 2]


def test_diverse_without_embeddings_uses_the_probability_vectors():
    probs = [[0.98, 0.01, 0.01], [0.97, 0.02, 0.01], [0.01, 0.98, 0.01], [0.02, 0.97, 0.01], [0.01, 0.01, 0.98]]
    assert sorted(select(_records(probs), 3, strategy="diverse").tolist(), key=lambda i: np.argmax(probs[i])) in (
        [0, 2, 4], [0, 3, 4], [1, 2, 4], [1, 3, 4],
    )  # fmt: skip


def test_mixed_prefers_uncertain_rows_but_not_copies_of_one_confusion():
    # Rows 0-2: near-identical uncertain rows (negative/neutral); row 3: uncertain elsewhere; 4-7 confident.
    probs = [
        [0.49, 0.48, 0.03], [0.48, 0.49, 0.03], [0.485, 0.485, 0.03],
        [0.03, 0.46, 0.51], [0.97, 0.02, 0.01], [0.01, 0.98, 0.01], [0.02, 0.01, 0.97], [0.9, 0.05, 0.05],
    ]  # fmt: skip
    assert set(select(_records(probs), 2, strategy="uncertainty").tolist()) <= {0, 1, 2}
    mixed = select(_records(probs), 2, strategy="mixed")
    assert 3 in mixed and len(set(mixed.tolist()) & {0, 1, 2}) == 1


def test_mixed_weighs_disagreement_with_the_global_student_where_given():
    device = [[0.5, 0.5], [0.95, 0.05], [0.9, 0.1], [0.05, 0.95], [0.1, 0.9]]
    global_ = np.array([[0.5, 0.5], [0.1, 0.9], [0.9, 0.1], [0.05, 0.95], [0.1, 0.9]])  # row 1 flips
    assert 1 in select(_records(device), 2, strategy="mixed", global_probs=global_)
    assert 1 not in select(_records(device), 2, strategy="mixed")  # row 2 is less sure than row 1


def test_typical_picks_the_centre_of_each_uncovered_cluster():
    """Three tight clusters on the unit circle's directions; the device already holds a row of the first: one
    pick per uncovered cluster, each its most central member."""
    rng = np.random.default_rng(0)
    centres = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    points = np.concatenate([c + rng.normal(scale=0.05, size=(10, 3)) for c in centres])  # (30, 3)
    middle = [int(np.linalg.norm(points[10 * j : 10 * j + 10] - centres[j], axis=1).argmin()) + 10 * j for j in (1, 2)]
    points[middle] = centres[[1, 2]]  # the exact centre: the densest spot of its cluster
    probs = np.full((30, 3), 1 / 3)
    picked = select(_records(probs), 2, strategy="typical", embeddings=points, labelled_embeddings=centres[:1])
    assert sorted(picked.tolist()) == sorted(middle)  # the two uncovered clusters, at their centres
    again = select(_records(probs), 2, strategy="typical", embeddings=points, labelled_embeddings=centres[:1])
    assert again.tolist() == picked.tolist()  # seeded: the same picks


def test_typical_never_picks_a_text_twice_and_stops_at_the_pool():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(12, 4))
    picked = select(_records(np.full((12, 2), 0.5)), 50, strategy="typical", embeddings=points)
    assert sorted(picked.tolist()) == list(range(12))


def test_repeated_texts_count_once():
    probs = [[0.5, 0.5], [0.5, 0.5], [0.6, 0.4], [0.9, 0.1]]
    picked = select(_records(probs, ["same", "same", "other", "third"]), 2)
    assert picked.tolist() == [0, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be an integer >= 1"),
        ({"k": 1, "strategy": "random"}, "strategy must be one of"),
        ({"k": 1, "strategy": "disagreement"}, "needs global_probs"),
        ({"k": 1, "strategy": "disagreement", "global_probs": np.ones((3, 2)) / 2}, "N = 2 records"),
        ({"k": 1, "measure": "variance"}, "'margin' or 'entropy'"),
        ({"k": 1, "strategy": "typical"}, "needs embeddings"),
        ({"k": 1, "strategy": "typical", "embeddings": np.full((2, 3), np.nan)}, "NaN"),
        (
            {"k": 1, "strategy": "typical", "embeddings": np.ones((2, 3)), "labelled_embeddings": np.ones((1, 4))},
            r"labelled must be \(M, 3\)",
        ),
    ],
)
def test_select_refuses(kwargs, match):
    with pytest.raises(FlywheelError, match=match):
        select(_records([[0.5, 0.5], [0.9, 0.1]]), **kwargs)


# --- annotation round trip -------------------------------------------------------------------


def test_annotation_round_trip_joins_the_devices_data(tmp_path):
    records = _records([[0.5, 0.4, 0.1], [0.2, 0.3, 0.5], [0.4, 0.4, 0.2]], ["good, day", "bad", 'a "quote"'])
    path = write_annotation_file(records, tmp_path / "annotate.csv", label_names=NAMES)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(ANNOTATION_COLUMNS)
    assert lines[1] == '"good, day",,negative,0.5000'
    with pytest.raises(FlywheelError, match="refusing to overwrite"):
        write_annotation_file(records, path)
    filled = path.read_text(encoding="utf-8").replace('"good, day",,', '"good, day",positive,')
    filled = filled.replace("bad,,", "bad, negative ,")  # spaces around a label are fine; row 3 left blank
    path.write_text("\ufeff" + filled, encoding="utf-8")  # a spreadsheet's byte-order mark
    data = read_annotations(path, label_names=NAMES)
    assert data.texts == ["good, day", "bad"] and data.labels.tolist() == [2, 0]
    out = write_labelled(data, tmp_path / "device-data" / "flywheel-1.csv")
    joined = load_labelled_files(out.parent, label_names=NAMES)
    assert joined.texts == data.texts and joined.labels.tolist() == [2, 0]


def test_read_annotations_names_the_bad_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("text,label\nfine,neutral\nnope,Positive\n", encoding="utf-8")
    with pytest.raises(FlywheelError, match=r"a\.csv:3: label 'Positive' is not one of .*'positive'"):
        read_annotations(path, label_names=NAMES)
    path.write_text("text,label\n,neutral\n", encoding="utf-8")
    with pytest.raises(FlywheelError, match=r"a\.csv:2: empty text"):
        read_annotations(path, label_names=NAMES)
    path.write_text("sentence,label\nfine,neutral\n", encoding="utf-8")
    with pytest.raises(FlywheelError, match=r"no \['text'\] column"):
        read_annotations(path, label_names=NAMES)
