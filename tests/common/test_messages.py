"""Typed messages: every kind survives its round trip, and every malformed field is named."""

import re

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from nebula.common import keys
from nebula.common import messages as M
from nebula.common.messages import Envelope, MessageError
from nebula.common.presets import preset_config

ENVELOPE = Envelope(preset_config("smoke"), 3, "runs/x")
STATE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}

CASES = [
    M.DescribeRequest(ENVELOPE),
    M.RoundRequest(ENVELOPE, 2, np.arange(4, dtype=np.int64), (3, 4, 5), b"targets", STATE, "minilm-l3"),
    M.RoundRequest(ENVELOPE, 1, np.arange(4, dtype=np.int64)),
    M.TeachRequest(ENVELOPE, 2, b"consensus"),
    M.RestoreRequest(ENVELOPE, 2, "unlearning/r1", False, b"gathered", np.arange(3, dtype=np.int64)),
    M.RestoreRequest(ENVELOPE, 0),
    M.FinishRequest(ENVELOPE),
    M.DescribeReply("client", "client-0", 0, "minilm-l3", 12, (3, 4, 5)),
    M.RoundReply("client-0", b"logits", {"acc_global": 0.5}),
    M.TeachReply("teacher", b"refined", {"acc_teacher": 0.6}, STATE, "checkpoints/round-002"),
    M.RestoreReply("teacher", None, STATE),
    M.FinishReply("client-0"),
]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    return a == b


@pytest.mark.parametrize("message", CASES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    assert _same(type(message).from_record(message.to_record()), message)


def _round_record(**changes):
    content = M.RoundRequest(ENVELOPE, 2, np.arange(4, dtype=np.int64), (3, 4, 5)).to_record()
    for key, value in changes.items():
        if value is None:
            del content.config_records[keys.ROUND][key]
        else:
            content.config_records[keys.ROUND][key] = value
    return content


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (keys.ROUND_INDEX, None, "is missing"),
        (keys.ROUND_INDEX, "abc", "not an integer"),
        (keys.ROUND_INDEX, 0, "below 1"),
        (keys.QUERY_IDS, [1, -2], "below 0"),
        (keys.QUERY_IDS, "1,2", "not a list of integers"),
        (keys.CLASS_COUNTS, [1.5, 2.0], "not a list of integers"),
        (keys.TARGET_BLOB, "text", "not bytes"),
        (keys.TEACHER_INDEX, True, "not an integer"),
    ],
)
def test_a_bad_round_field_is_named(key, value, problem):
    with pytest.raises(MessageError, match=f"train.round: '{key}' .*{problem}"):
        M.RoundRequest.from_record(_round_record(**{key: value}))


def test_a_bad_configuration_is_named():
    content = M.DescribeRequest(ENVELOPE).to_record()
    content.config_records[keys.CONFIG]["federation.rounds"] = -1
    with pytest.raises(MessageError, match="'config' is not a valid configuration"):
        M.DescribeRequest.from_record(content)


def test_a_restore_folder_outside_the_run_folder_is_refused():
    for bad in ("/etc", "../other", "unlearning/../../x"):
        with pytest.raises(MessageError, match="not a folder inside the run folder"):
            M.RestoreRequest.from_record(M.RestoreRequest(ENVELOPE, 1, bad).to_record())


@pytest.mark.parametrize("value", [[0.1, 0.2], float("nan"), float("inf"), "high"])
def test_a_metric_that_is_not_a_finite_number_is_named(value):
    content = M.RoundReply("client-0", b"x").to_record()
    content[keys.METRICS] = MetricRecord({"acc_global": 0.5})
    content.metric_records[keys.METRICS].__dict__["_data"]["acc_global"] = value  # Flower refuses it on set
    with pytest.raises(MessageError, match="'metrics.acc_global' is"):
        M.RoundReply.from_record(content)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        (keys.ROLE, "superuser", "not one of"),
        (keys.CLIENT_INDEX, "abc", "not an integer"),
        (keys.NUM_EXAMPLES, -1, "below 0"),
        (keys.LABEL_COUNTS, 7, "not a list of integers"),
        (keys.LABEL_COUNTS, [1, -1, 2], "below 0"),
        (keys.MODEL, None, "is missing"),
    ],
)
def test_a_bad_describe_field_is_named(key, value, problem):
    content = M.DescribeReply("client", "client-0", 0, "m", 10, (3, 3, 4)).to_record()
    rec: ConfigRecord = content.config_records[keys.REPLY]
    if value is None:
        del rec[key]
    else:
        rec[key] = value
    with pytest.raises(MessageError, match=f"query.describe: '{key}' .*{problem}"):
        M.DescribeReply.from_record(content)


def test_a_missing_record_is_named():
    content = M.RoundReply("client-0", b"x").to_record()
    del content[keys.REPLY]
    with pytest.raises(MessageError, match="'reply' record is missing"):
        M.RoundReply.from_record(content)


def test_nodes_are_not_sent_what_only_the_server_may_know():
    config = preset_config(
        "smoke", {"federation.unlearn_key": "/srv/keys/signing.key", "federation.output_dir": "/srv/run"}
    )
    sent = M.DescribeRequest(Envelope(config, 3, "/srv/run")).to_record()
    flat = dict(sent.config_records[keys.CONFIG])
    assert flat["federation.unlearn_key"] == "" and flat["federation.output_dir"] != "/srv/run"
    assert "/srv/keys" not in str(dict(sent.config_records[keys.ROUND]))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({keys.CLIENT_ID: "../../etc"}, "'client-id' is '../../etc': use 1-64 letters"),
        ({keys.CLIENT_ID: "a\nb"}, "'client-id' is 'a\\nb'"),
        ({keys.CLIENT_ID: ""}, "'client-id' is ''"),
        ({keys.NUM_EXAMPLES: 10**15, keys.LABEL_COUNTS: [10**15, 0, 0]}, "'num-examples' is 1000000000000000, above"),
        ({keys.NUM_EXAMPLES: 99}, "'label-counts' sum to 10, num-examples says 99"),
        ({keys.ROLE: "teacher"}, "a teacher node holds no private data"),
    ],
)
def test_a_describe_reply_that_lies_about_its_holdings_is_refused(changes, problem):
    content = M.DescribeReply("client", "client-0", 0, "m", 10, (3, 3, 4)).to_record()
    for key, value in changes.items():
        content.config_records[keys.REPLY][key] = value
    with pytest.raises(MessageError, match=re.escape(problem)):
        M.DescribeReply.from_record(content)
