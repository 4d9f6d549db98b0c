"""Typed messages: every kind survives its round trip, and every malformed field is named."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from nebula.common import keys
from nebula.common.messages import (
    DescribeReply,
    DescribeRequest,
    Envelope,
    FinishReply,
    FinishRequest,
    MessageError,
    RestoreReply,
    RestoreRequest,
    RoundReply,
    RoundRequest,
    TeachReply,
    TeachRequest,
)
from nebula.common.presets import preset_config

ENVELOPE = Envelope(preset_config("smoke"), 3, "runs/x")
STATE = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(3, np.float32)}

CASES = [
    DescribeRequest(ENVELOPE),
    RoundRequest(ENVELOPE, 2, np.arange(4, dtype=np.int64), (3, 4, 5), b"targets", STATE, "minilm-l3"),
    RoundRequest(ENVELOPE, 1, np.arange(4, dtype=np.int64)),
    TeachRequest(ENVELOPE, 2, b"consensus"),
    RestoreRequest(ENVELOPE, 2, "unlearning/r1", False, b"gathered", np.arange(3, dtype=np.int64)),
    RestoreRequest(ENVELOPE, 0),
    FinishRequest(ENVELOPE),
    DescribeReply("client", "client-0", 0, "minilm-l3", 12, (3, 4, 5)),
    RoundReply("client-0", b"logits", {"acc_global": 0.5}),
    TeachReply("teacher", b"refined", {"acc_teacher": 0.6}, STATE, "checkpoints/round-002"),
    RestoreReply("teacher", None, STATE),
    FinishReply("client-0"),
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
    content = RoundRequest(ENVELOPE, 2, np.arange(4, dtype=np.int64), (3, 4, 5)).to_record()
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
        RoundRequest.from_record(_round_record(**{key: value}))


def test_a_bad_configuration_is_named():
    content = DescribeRequest(ENVELOPE).to_record()
    content.config_records[keys.CONFIG]["federation.rounds"] = -1
    with pytest.raises(MessageError, match="'config' is not a valid configuration"):
        DescribeRequest.from_record(content)


def test_a_restore_folder_outside_the_run_folder_is_refused():
    for bad in ("/etc", "../other", "unlearning/../../x"):
        with pytest.raises(MessageError, match="not a folder inside the run folder"):
            RestoreRequest.from_record(RestoreRequest(ENVELOPE, 1, bad).to_record())


@pytest.mark.parametrize("value", [[0.1, 0.2], float("nan"), float("inf"), "high"])
def test_a_metric_that_is_not_a_finite_number_is_named(value):
    content = RoundReply("client-0", b"x").to_record()
    content[keys.METRICS] = MetricRecord({"acc_global": 0.5})
    content.metric_records[keys.METRICS].__dict__["_data"]["acc_global"] = value  # Flower refuses it on set
    with pytest.raises(MessageError, match="'metrics.acc_global' is"):
        RoundReply.from_record(content)


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
    content = DescribeReply("client", "client-0", 0, "m", 10, (3, 3, 4)).to_record()
    rec: ConfigRecord = content.config_records[keys.REPLY]
    if value is None:
        del rec[key]
    else:
        rec[key] = value
    with pytest.raises(MessageError, match=f"query.describe: '{key}' .*{problem}"):
        DescribeReply.from_record(content)


def test_a_missing_record_is_named():
    content = RoundReply("client-0", b"x").to_record()
    del content[keys.REPLY]
    with pytest.raises(MessageError, match="'reply' record is missing"):
        RoundReply.from_record(content)
