"""A device's own labelled files, read against the federation's label names (common/data.py), and its
train / holdout view (common/federation_data.py)."""

import json
import os

import numpy as np
import pytest

from nebula.common.data import DatasetError, data_files, load_labelled_files
from nebula.common.federation_data import build_federation_data, device_data
from nebula.common.presets import preset_config

NAMES = ("negative", "neutral", "positive")  # the tweets dataset's label names


def _csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{t},{lab}\n" for t, lab in rows), encoding="utf-8")
    return path


def _jsonl(path, objects):
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")
    return path


def test_labels_are_mapped_to_the_federations_ids(tmp_path):
    path = _csv(tmp_path / "mine.csv", [("good day", "positive"), ("meh", "neutral"), ("awful", " positive ")])
    data = load_labelled_files(path, label_names=NAMES)
    assert data.texts == ["good day", "meh", "awful"]
    assert data.labels.tolist() == [2, 1, 2]
    assert data.label_names == NAMES  # the federation's classes, not the file's
    assert data.labels.dtype == np.int64


def test_one_class_is_enough_for_a_device(tmp_path):
    path = _csv(tmp_path / "one.csv", [("a", "negative"), ("b", "negative")])
    assert load_labelled_files(path, label_names=NAMES).labels.tolist() == [0, 0]


def test_integer_labels_match_by_value_when_the_federations_names_are_integers(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"body": "x", "y": 1}, {"body": "y", "y": "02"}, {"body": "z", "y": 0}])
    data = load_labelled_files(path, label_names=("0", "1", "2"), text_field="body", label_field="y")
    assert data.labels.tolist() == [1, 2, 0]


def test_a_folder_is_read_in_file_name_order(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    _csv(folder / "b.csv", [("second", "neutral")])
    _jsonl(folder / "a.jsonl", [{"text": "first", "label": "negative"}])
    (folder / "notes.txt").write_text("not data")
    (folder / "sub").mkdir()
    _csv(folder / "sub" / "c.csv", [("ignored", "positive")])
    assert [f.name for f in data_files(folder)] == ["a.jsonl", "b.csv"]
    data = load_labelled_files(folder, label_names=NAMES)
    assert data.texts == ["first", "second"] and data.labels.tolist() == [0, 1]


def test_an_unknown_label_names_the_file_the_line_and_the_known_labels(tmp_path):
    path = _csv(tmp_path / "mine.csv", [("fine", "positive"), ("hmm", "sarcastic")])
    with pytest.raises(DatasetError) as err:
        load_labelled_files(path, label_names=NAMES)
    message = str(err.value)
    assert f"{path}:3:" in message  # header is line 1
    assert "'sarcastic'" in message and "['negative', 'neutral', 'positive']" in message


def test_an_unknown_integer_label_is_refused_too(tmp_path):
    path = _jsonl(tmp_path / "mine.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 7}])
    with pytest.raises(DatasetError, match=r"mine\.jsonl:2: label '7' in 'label' is not one of"):
        load_labelled_files(path, label_names=("0", "1"))


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p: _csv(p / "m.csv", [("a", "positive")], header="body,label"), r"m\.csv:1: missing column 'text'"),
        (lambda p: _csv(p / "m.csv", [("a", "positive")], header="text,sentiment"), r"missing column 'label'"),
        (lambda p: _jsonl(p / "m.jsonl", [{"text": "a"}]), r"m\.jsonl:1: missing key 'label'"),
    ],
)
def test_a_missing_column_is_named(tmp_path, write, message):
    with pytest.raises(DatasetError, match=message):
        load_labelled_files(write(tmp_path), label_names=NAMES)


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("m.csv", "", r"m\.csv:1: empty file"),
        ("m.csv", "text,label\n", r"m\.csv: empty file: no examples"),
        ("m.jsonl", "\n\n", r"m\.jsonl: empty file: no examples"),
    ],
)
def test_an_empty_file_is_refused(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match=message):
        load_labelled_files(tmp_path / name, label_names=NAMES)


def test_an_empty_file_in_a_folder_is_named(tmp_path):
    _csv(tmp_path / "a.csv", [("x", "positive")])
    (tmp_path / "b.csv").write_text("text,label\n")
    with pytest.raises(DatasetError, match=r"b\.csv: empty file"):
        load_labelled_files(tmp_path, label_names=NAMES)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "absent.csv", r"absent\.csv: file not found"),
        (lambda p: p, r"folder holds no data file"),
        (lambda p: (p / "x.xlsx").write_text("?") and p / "x.xlsx", r"x\.xlsx: not a data file"),
    ],
)
def test_a_path_without_data_is_named(tmp_path, make, message):
    with pytest.raises(DatasetError, match=message):
        load_labelled_files(make(tmp_path), label_names=NAMES)


def test_a_bad_row_names_its_line(tmp_path):
    path = _csv(tmp_path / "m.csv", [("a", "positive"), ("", "neutral")])
    with pytest.raises(DatasetError, match=r"m\.csv:3: empty text in 'text'"):
        load_labelled_files(path, label_names=NAMES)


def _view(path, fraction=0.25, seed=0):
    return device_data(
        path, label_names=NAMES, text_field="text", label_field="label", holdout_fraction=fraction, seed=seed
    )


def test_device_data_holds_out_a_seeded_share_of_the_file(tmp_path):
    labels = ["negative"] * 10 + ["neutral"] * 6 + ["positive"] * 4
    path = _csv(tmp_path / "m.csv", [(f"t{i}", lab) for i, lab in enumerate(labels)])
    view = _view(path)
    split = view.split
    assert len(split.holdout) == 5 and len(split.train) == 15  # round(20 * 0.25)
    assert sorted([*split.train, *split.holdout]) == list(range(20))
    assert view.num_examples == 15
    assert view.support().tolist() == np.bincount(view.labels(split.train), minlength=3).tolist()
    assert view.support().sum() + np.bincount(view.labels(split.holdout), minlength=3).sum() == 20
    assert view.texts(split.train[:2]) == [f"t{i}" for i in split.train[:2]]
    again = _view(path)
    assert again.split.holdout.tolist() == split.holdout.tolist()  # seeded
    other = _view(path, seed=1)
    assert other.split.holdout.tolist() != split.holdout.tolist()
    assert _view(path, fraction=0.0).split.holdout.tolist() == []


def test_device_data_rereads_a_changed_file(tmp_path):
    path = _csv(tmp_path / "m.csv", [("a", "positive"), ("b", "neutral")])
    assert _view(path, fraction=0.0).support().tolist() == [0, 1, 1]
    _csv(path, [("a", "positive"), ("b", "neutral"), ("c", "negative"), ("d", "negative")])
    os.utime(path, ns=(1, 1))  # a new modification time even on a coarse clock
    assert _view(path, fraction=0.0).support().tolist() == [2, 1, 1]


def test_a_partition_is_the_same_view_as_before():
    data = build_federation_data(preset_config("smoke").data)
    for k in range(len(data.clients)):
        view = data.private(k)
        assert view.split is data.clients[k]
        assert view.support().tolist() == data.support(k).tolist()
        assert view.texts(view.split.train) == data.texts(data.clients[k].train)
