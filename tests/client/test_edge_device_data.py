"""An edge client that trains on its device's own file (node config ``data-path``), smoke preset.

The node config names the file; describe reports only its label counts and example count; a file the
federation cannot use (missing, a missing column, empty, an unknown label) is an error reply naming the
path, never a crash.
"""

import numpy as np
import pytest

from nebula.client import app as client_app
from nebula.client.node import DataSource, NodeIdentity, data_source, identify
from nebula.common import keys
from nebula.common.data import load_dataset
from nebula.common.presets import preset_config

SMOKE = preset_config("smoke")  # tweets; 3 clients; holdout 0.2
NAMES = ("negative", "neutral", "positive")


@pytest.fixture(scope="module")
def tweet_rows():
    """Tweets from the end of the dataset, 40 of each class."""
    data = load_dataset("tweets")
    rows = []
    for label in range(len(NAMES)):
        rows += [(data.texts[i], NAMES[label]) for i in np.flatnonzero(data.labels == label)[-40:]]
    return rows


def _write_csv(path, rows, *, text="text", label="label"):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([text, label])
        writer.writerows(rows)
    return path


def _mine(tweet_rows, tmp_path, counts=(20, 0, 10), **kw):
    """A CSV of tweets with ``counts`` examples of each class, in the tweets' own order."""
    chosen = []
    for name, want in zip(NAMES, counts, strict=True):
        chosen += [r for r in tweet_rows if r[1] == name][:want]
    return _write_csv(tmp_path / "mine.csv", chosen, **kw), chosen


def _node(path=None, **fields):
    cfg = {"partition-id": 1, "num-partitions": 3}
    if path is not None:
        cfg["data-path"] = str(path)
    return {**cfg, **fields}


# -- node config ---------------------------------------------------------------------------------


def test_node_config_names_the_data_and_its_fields(make_context):
    cfg = _node("/data/mine.csv", **{"text-field": "body", "label-field": "y"})
    assert data_source(cfg) == DataSource("/data/mine.csv", "body", "y")
    assert data_source(_node()) is None
    node = identify(make_context(cfg), teacher_index=3)
    assert node == NodeIdentity(keys.ROLE_CLIENT, 1, "client-1", data=DataSource("/data/mine.csv", "body", "y"))
    assert DataSource("/d.csv").fields("text", "label") == ("text", "label")  # the federation's by default


@pytest.mark.parametrize(
    "cfg, message",
    [
        (_node(""), "data-path is empty"),
        (_node(**{"text-field": "body"}), "sets 'text-field' but no 'data-path'"),
        (_node("/d.csv", **{"label-field": " "}), "label-field is empty"),
        ({"partition-id": 3, "data-path": "/d.csv"}, "data-path is for edge clients"),
    ],
)
def test_bad_data_config_names_the_field(make_context, cfg, message):
    with pytest.raises(ValueError, match=message):
        identify(make_context(cfg), teacher_index=3)


# -- describe through the ClientApp ------------------------------------------------------------------


def _describe(make_request, make_context, cfg, config=SMOKE):
    return client_app.describe(make_request(config, keys.MSG_DESCRIBE), make_context(cfg))


def test_describe_reports_the_files_label_counts(tweet_rows, tmp_path, make_request, make_context):
    from nebula.common.federation_data import device_data

    path, rows = _mine(tweet_rows, tmp_path)
    reply = _describe(make_request, make_context, _node(path))
    assert not reply.has_error(), reply.error
    rec = reply.content.config_records[keys.REPLY]
    view = device_data(path, label_names=NAMES, text_field="text", label_field="label", holdout_fraction=0.2, seed=0)
    assert rec[keys.NUM_EXAMPLES] == 24  # 30 rows, 6 held out
    assert list(rec[keys.LABEL_COUNTS]) == view.support().tolist()
    assert rec[keys.LABEL_COUNTS][1] == 0 and sum(rec[keys.LABEL_COUNTS]) == 24  # only the file's classes
    held = np.bincount(view.labels(view.split.holdout), minlength=3)
    assert (np.asarray(rec[keys.LABEL_COUNTS]) + held).tolist() == [20, 0, 10]


def test_describe_uses_the_node_configs_fields(tweet_rows, tmp_path, make_request, make_context):
    path, _ = _mine(tweet_rows, tmp_path, counts=(5, 5, 0), text="tweet", label="mood")
    reply = _describe(make_request, make_context, _node(path, **{"text-field": "tweet", "label-field": "mood"}))
    assert not reply.has_error(), reply.error
    counts = list(reply.content.config_records[keys.REPLY][keys.LABEL_COUNTS])
    assert sum(counts) == 8 and counts[2] == 0  # 10 rows, round(10 * 0.2) held out; no positive tweets


@pytest.mark.parametrize(
    "write, message",
    [
        (lambda p, rows: p / "absent.csv", "absent.csv: file not found"),
        (lambda p, rows: _write_csv(p / "m.csv", rows[:3], text="body"), "m.csv:1: missing column 'text'"),
        (lambda p, rows: _write_csv(p / "m.csv", []), "m.csv: empty file"),
        (lambda p, rows: _write_csv(p / "m.csv", [rows[0], ("hmm", "sarcastic")]), "m.csv:3: label 'sarcastic'"),
    ],
)
def test_a_file_the_federation_cannot_use_is_an_error_reply(
    tweet_rows, tmp_path, make_request, make_context, write, message
):
    path = write(tmp_path, tweet_rows)
    reply = _describe(make_request, make_context, _node(path))
    assert reply.has_error()
    assert reply.error.code == 400  # a bad request (ValueError), answered; the node keeps running
    assert str(tmp_path) in reply.error.reason and message in reply.error.reason


# -- a round on the device's own data --------------------------------------------------------------


@pytest.mark.e2e
def test_a_round_trains_on_the_device_file_and_scores_its_holdout(tweet_rows, tmp_path, make_context):
    from nebula.client.edge import EdgeClient

    path, rows = _mine(tweet_rows, tmp_path, counts=(12, 8, 10))
    client = EdgeClient(SMOKE, 1, make_context(_node(path)))
    assert client.private.dataset.name == "mine.csv" and len(client.private.dataset) == 30
    assert set(client.private.texts(client.split.train)) <= {t for t, _ in rows}
    assert len(client.split.holdout) == 6
    out = client.run_round(
        round_index=1,
        targets=None,
        query_ids=np.arange(8),
        evaluate=True,
        class_counts=np.asarray([30, 30, 30]),
    )
    assert np.isfinite(out.metrics["train_loss"])
    assert 0.0 <= out.metrics["acc_own"] <= 1.0 and 0.0 <= out.metrics["acc_global"] <= 1.0
    assert client.describe()["label_counts"] == client.private.support().tolist()
