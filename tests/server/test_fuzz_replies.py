"""Fuzzing the server's boundary: mutated describe, round and teacher replies never end a run.

Each case is a reply an honest node would send, changed by one seeded mutation (a field removed,
retyped or out of range; a payload truncated, extended, bit-flipped or replaced; metrics that are
not finite numbers; a global student with NaN, reshaped or missing tensors). The federation must
finish every run, reject each bad reply with a reason (recorded in the ledger for round replies),
keep the rest, and leave a ledger that passes SQLite's integrity check.
"""

from __future__ import annotations

import sqlite3
from collections import Counter

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from nebula.common import keys
from nebula.common.wire import decode_logits
from nebula.server.ledger import Ledger

from .test_federation import TEACHER, honest, make, teacher

REPLY_FIELDS = (keys.CLIENT_ID, keys.LOGITS_BLOB)
DESCRIBE_FIELDS = (keys.ROLE, keys.CLIENT_ID, keys.CLIENT_INDEX, keys.MODEL, keys.NUM_EXAMPLES, keys.LABEL_COUNTS)
ODD_VALUES = ("", "x" * 300, "../..", "a\nb", -1, 2**62, 1.5, float("nan"), True, [1, 2], [1.5], b"\x00" * 5, [])


def _mutate_blob(blob: bytes, rng: np.random.Generator) -> bytes:
    kind = rng.integers(6)
    b = bytearray(blob)
    if kind == 0:  # one bit flipped
        bit = int(rng.integers(8 * len(b)))
        b[bit // 8] ^= 1 << (bit % 8)
    elif kind == 1:  # truncated
        del b[int(rng.integers(len(b))) :]
    elif kind == 2:  # extended
        b += rng.bytes(int(rng.integers(1, 64)))
    elif kind == 3:  # random bytes of the same length
        b = bytearray(rng.bytes(len(b)))
    elif kind == 4:  # a header byte changed
        b[int(rng.integers(20))] = int(rng.integers(256))
    else:  # a run of bytes inside zeroed
        start = int(rng.integers(len(b)))
        b[start : start + int(rng.integers(1, 32))] = bytes(min(len(b) - start, 32))
    return bytes(b)


def _mutate_fields(rec, names, rng: np.random.Generator) -> None:
    name = names[int(rng.integers(len(names)))]
    if rng.random() < 0.3:
        del rec[name]
    else:
        value = ODD_VALUES[int(rng.integers(len(ODD_VALUES)))]
        try:
            rec[name] = value
        except (TypeError, ValueError):  # Flower refuses the value itself: remove the field instead
            del rec[name]


def _mutate_metrics(msg: Message, rng: np.random.Generator) -> None:
    bad = (float("nan"), float("inf"), [0.1, 0.2], -1e308 * 10)
    value = bad[int(rng.integers(len(bad)))]
    metrics = MetricRecord({"acc_global": 0.5})
    metrics.__dict__["_data"]["acc_global"] = value  # as a hostile node's serialised record would hold it
    msg.content[keys.METRICS] = metrics


def fuzzed_client(index: int, rng: np.random.Generator, counter: Counter):
    base = honest(index)

    def node(msg: Message):
        good = base(msg)
        if msg.metadata.message_type != keys.MSG_ROUND or rng.random() < 0.2:
            return good
        counter["round"] += 1
        rec = good.content.config_records[keys.REPLY]
        kind = rng.integers(4)
        if kind == 0:
            rec[keys.LOGITS_BLOB] = _mutate_blob(rec[keys.LOGITS_BLOB], rng)
        elif kind == 1:
            _mutate_fields(rec, REPLY_FIELDS, rng)
        elif kind == 2:
            _mutate_metrics(good, rng)
        else:
            del good.content[keys.REPLY]
        return good

    return node


def fuzzed_teacher(rng: np.random.Generator, counter: Counter):
    base = teacher(student=lambda r: {"w": np.ones(4, np.float32), "b": np.zeros(2, np.float32)})

    def node(msg: Message):
        good = base(msg)
        if msg.metadata.message_type != keys.MSG_TEACH or rng.random() < 0.3:
            return good
        counter["teach"] += 1
        kind = rng.integers(4)
        if kind == 0:
            rec = good.content.config_records[keys.REPLY]
            rec[keys.REFINED_BLOB] = _mutate_blob(rec[keys.REFINED_BLOB], rng)
        elif kind == 1:
            good.content[keys.STUDENT_STATE] = ArrayRecord({"w": Array(np.full(4, np.nan, np.float32))})
        elif kind == 2:
            good.content[keys.STUDENT_STATE] = ArrayRecord({"w": Array(np.ones((2, 2), np.float32))})
        else:
            _mutate_metrics(good, rng)
        return good

    return node


def _integrity(path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("PRAGMA integrity_check").fetchone()[0]


def test_a_thousand_mutated_round_and_teacher_replies_never_end_the_run(tmp_path):
    rng, counter = np.random.default_rng(0), Counter()
    nodes = {i + 1: fuzzed_client(i, rng, counter) for i in range(5)}
    nodes[TEACHER] = fuzzed_teacher(rng, counter)
    fed, _ = make(tmp_path, nodes, **{"federation.rounds": 260, "federation.min_replies": 1})
    history = fed.run()
    assert len(history) == 260 and counter["round"] >= 1000, counter
    ledger = Ledger(tmp_path / "ledger.sqlite")
    rejected = ledger.rejections(fed.run_id)
    assert all(reason for _, _, reason in rejected)
    for r, contribution in ledger.contributions(fed.run_id):  # every accepted payload is a valid one
        decode_logits(contribution.payload, expected_ids=fed.public_ids(r), num_classes=3)
    assert len(rejected) + len(ledger.contributions(fed.run_id)) == 5 * 260
    assert len(rejected) >= 0.9 * counter["round"]  # a mutation may leave a reply valid (a metric...), rarely
    assert sum(not h["teacher_ok"] for h in history) >= counter["teach"] // 4  # a broken refined blob: fallback
    ledger.close()
    assert _integrity(tmp_path / "ledger.sqlite") == "ok"


@pytest.mark.parametrize("seed", range(8))
def test_mutated_describe_replies_leave_the_node_out_and_the_run_goes_on(tmp_path, seed):
    rng = np.random.default_rng(seed)
    fuzzed = 0
    for case in range(40):  # 8 x 40 = 320 mutated describe replies
        base = honest(2)

        def node(msg: Message, base=base):
            good = base(msg)
            if msg.metadata.message_type == keys.MSG_DESCRIBE:
                _mutate_fields(good.content.config_records[keys.REPLY], DESCRIBE_FIELDS, rng)
            return good

        nodes = {1: honest(0), 2: honest(1), 3: node, TEACHER: teacher()}
        folder = tmp_path / f"case-{case}"
        fed, _ = make(folder, nodes, **{"federation.rounds": 1, "federation.min_replies": 2})
        history = fed.run()
        fuzzed += 1
        assert history[-1]["accepted"] in (2, 3)
        assert _integrity(folder / "ledger.sqlite") == "ok"
    assert fuzzed == 40
