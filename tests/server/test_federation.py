"""The server's round rules against a scripted grid: no Ray, no models, no network.

Each fake node answers with whatever the test scripts: good logits, an error reply,
malformed payloads, silence. The checks are the operator-visible rules of
server/federation.py: bad replies are left out with a reason and recorded, the round goes
on with enough replies, a failed teacher falls back to the consensus.
"""

from collections.abc import Callable

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict

from nebula.common import keys
from nebula.common.presets import preset_config
from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits, encode_logits
from nebula.server.exceptions import TeacherUnavailable
from nebula.server.federation import Federation
from nebula.server.ledger import Ledger

C = 3
TEACHER = 99


def reply(msg: Message, fields: dict, metrics: dict | None = None) -> Message:
    content = RecordDict({keys.REPLY: ConfigRecord(fields)})
    if metrics:
        content[keys.METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


def describe(msg: Message, index: int, role: str = keys.ROLE_CLIENT, model: str = "m") -> Message:
    holds_data = role == keys.ROLE_CLIENT
    return reply(
        msg,
        {
            keys.ROLE: role,
            keys.CLIENT_ID: "teacher" if role == keys.ROLE_TEACHER else f"client-{index}",
            keys.CLIENT_INDEX: index,
            keys.MODEL: model,
            keys.NUM_EXAMPLES: 10 + index if holds_data else 0,
            keys.LABEL_COUNTS: [3, 3, 4 + index] if holds_data else [0, 0, 0],
        },
    )


def honest(
    index: int, *, bias: int = 0, model: str = "m", role: str = keys.ROLE_CLIENT
) -> Callable[[Message], Message]:
    def node(msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind == keys.MSG_DESCRIBE:
            return describe(msg, index, role=role, model=model)
        if kind == keys.MSG_ROUND:
            ids = np.asarray(msg.content.config_records[keys.ROUND][keys.QUERY_IDS])
            logits = np.zeros((len(ids), C), np.float32)
            logits[:, bias] = 2.0
            return reply(
                msg,
                {keys.CLIENT_ID: f"client-{index}", keys.LOGITS_BLOB: encode_logits(ids, logits)},
                {"acc_global": 0.5},
            )
        return reply(msg, {keys.CLIENT_ID: f"client-{index}"})

    return node


def teacher(*, fail: bool = False, student: Callable[[int], dict] | None = None) -> Callable[[Message], Message]:
    def node(msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind == keys.MSG_DESCRIBE:
            return describe(msg, -1, keys.ROLE_TEACHER)
        if kind == keys.MSG_TEACH:
            if fail:
                return Message(Error(500, "RuntimeError: out of memory"), reply_to=msg)
            consensus = decode_logits(msg.content.config_records[keys.ROUND][keys.CONSENSUS_BLOB])
            out = reply(
                msg,
                {keys.CLIENT_ID: "teacher", keys.REFINED_BLOB: encode_logits(consensus.ids, consensus.logits)},
                {"acc_teacher": 0.6, "acc_student": 0.55},
            )
            if student is not None:
                r = msg.content.config_records[keys.ROUND][keys.ROUND_INDEX]
                out.content[keys.STUDENT_STATE] = ArrayRecord({k: Array(v) for k, v in student(r).items()})
            return out
        return reply(msg, {keys.CLIENT_ID: "teacher"})

    return node


class ScriptedGrid:
    def __init__(self, nodes: dict[int, Callable[[Message], Message | None]]) -> None:
        self.nodes, self.sent = nodes, []

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            self.sent.append(m)
            r = self.nodes[m.metadata.dst_node_id](m)
            if r is not None:
                out.append(r)
        return out


def make(tmp_path, nodes, **overrides) -> tuple[Federation, ScriptedGrid]:
    config = preset_config(
        "smoke", {"federation.output_dir": str(tmp_path), "data.num_clients": len(nodes) - 1, **overrides}
    )
    grid = ScriptedGrid(nodes)
    return Federation(grid, config), grid


def with_round_reply(base, change: Callable[[Message, Message], Message | None]):
    def node(msg: Message):
        good = base(msg)
        return change(msg, good) if msg.metadata.message_type == keys.MSG_ROUND else good

    return node


def test_bad_replies_are_left_out_with_reasons_and_recorded(tmp_path):
    ids_shifted = lambda msg, good: reply(
        msg, {keys.LOGITS_BLOB: encode_logits(np.arange(24) + 1000, np.zeros((24, C)))}
    )
    nodes = {
        1: honest(0),
        2: honest(1),
        3: with_round_reply(honest(2), lambda msg, good: Message(Error(400, "ValueError: no data"), reply_to=msg)),
        4: with_round_reply(honest(3), lambda msg, good: None),  # silent
        5: with_round_reply(honest(4), ids_shifted),
        6: with_round_reply(honest(5), lambda msg, good: reply(msg, {keys.LOGITS_BLOB: b"NBLG\x02"})),
        TEACHER: teacher(),
    }
    fed, grid = make(tmp_path, nodes)
    history = fed.run()
    last = history[-1]
    assert last["accepted"] == 2 and last["teacher_ok"]
    assert set(last["rejected"]) == {"client-2", "client-3", "client-4", "client-5"}
    assert "no data" in last["rejected"]["client-2"]
    assert "timeout" in last["rejected"]["client-3"]
    assert "ids not in expected_ids: [1000" in last["rejected"]["client-4"]
    assert "payload truncated" in last["rejected"]["client-5"]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert {c.client_id for _, c in ledger.contributions(fed.run_id)} == {"client-0", "client-1"}
    assert len(ledger.rejections(fed.run_id)) == 8  # 4 clients x 2 rounds


def test_round_two_sends_the_teachers_targets_to_every_client(tmp_path):
    fed, grid = make(tmp_path, {1: honest(0), 2: honest(1, bias=2), TEACHER: teacher()})
    fed.run()
    round2 = [m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND][-2:]
    assert all(keys.TARGET_BLOB in m.content.config_records[keys.ROUND] for m in round2)
    targets = decode_logits(round2[0].content.config_records[keys.ROUND][keys.TARGET_BLOB])
    np.testing.assert_array_equal(targets.ids, fed.public_ids(1))


def test_too_few_replies_skip_aggregation_and_the_next_targets(tmp_path):
    silent = lambda msg, good: None
    nodes = {
        1: honest(0),
        2: with_round_reply(honest(1), silent),
        3: with_round_reply(honest(2), silent),
        TEACHER: teacher(),
    }
    fed, grid = make(tmp_path, nodes)
    history = fed.run()
    assert [h["accepted"] for h in history] == [1, 1]
    assert not any(m.metadata.message_type == keys.MSG_TEACH for m in grid.sent)
    round2 = [m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND][-3:]
    assert not any(keys.TARGET_BLOB in m.content.config_records[keys.ROUND] for m in round2)
    assert Ledger(tmp_path / "ledger.sqlite").consensus(fed.run_id, 1) is None


def test_failed_teacher_falls_back_to_the_consensus(tmp_path):
    fed, grid = make(tmp_path, {1: honest(0), 2: honest(1, bias=2), TEACHER: teacher(fail=True)})
    history = fed.run()
    assert not history[0]["teacher_ok"]
    round2 = [m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND][-1]
    targets = decode_logits(round2.content.config_records[keys.ROUND][keys.TARGET_BLOB])
    ids, consensus = Ledger(tmp_path / "ledger.sqlite").consensus(fed.run_id, 1)
    recovered = softmax(targets.logits, temperature=fed.config.train.temperature)
    np.testing.assert_allclose(recovered, consensus, atol=2e-3)


def test_no_teacher_is_a_clear_error(tmp_path):
    fed, _ = make(tmp_path, {1: honest(0), 2: honest(1), 3: honest(2)})
    with pytest.raises(TeacherUnavailable, match="no node answered as teacher"):
        fed.run()


def test_global_student_goes_only_to_clients_of_its_architecture(tmp_path):
    state = lambda r: {"lora_A": np.full((8, 4), float(r), np.float32), "head": np.ones(3, np.float32)}
    nodes = {1: honest(0, model="minilm-l3"), 2: honest(1, model="minilm-l6"), TEACHER: teacher(student=state)}
    fed, grid = make(tmp_path, nodes)
    history = fed.run()
    round2 = {m.metadata.dst_node_id: m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND}
    same, other = round2[1], round2[2]
    assert keys.STUDENT_STATE in same.content.array_records
    np.testing.assert_array_equal(same.content.array_records[keys.STUDENT_STATE]["lora_A"].numpy(), np.ones((8, 4)))
    assert same.content.config_records[keys.ROUND][keys.STUDENT_MODEL] == "minilm-l3"
    assert keys.STUDENT_STATE not in other.content.array_records
    targets = len(same.content.config_records[keys.ROUND][keys.TARGET_BLOB])
    npy_header = 128  # Flower serialises each array as .npy: a 128-byte header, then the data
    state_bytes = (npy_header + 8 * 4 * 4) + (npy_header + 3 * 4)
    assert history[1]["bytes_down_per_client"] == (targets + state_bytes + targets) / 2


def test_a_non_finite_or_reshaped_global_student_is_refused(tmp_path):
    def state(r):
        if r == 1:
            return {"w": np.ones(4, np.float32)}
        return {"w": np.array([1, np.nan, 1, 1], np.float32)} if r == 2 else {"w": np.ones(5, np.float32)}

    fed, grid = make(
        tmp_path,
        {1: honest(0, model="minilm-l3"), 2: honest(1, model="minilm-l3"), TEACHER: teacher(student=state)},
        **{"federation.rounds": 3},
    )
    fed.run()
    np.testing.assert_array_equal(fed.student_state["w"], np.ones(4))


def test_every_client_is_told_the_federations_label_counts(tmp_path):
    fed, grid = make(tmp_path, {1: honest(0), 2: honest(1), TEACHER: teacher()})
    fed.run()
    rounds = [m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND]
    assert {tuple(m.content.config_records[keys.ROUND][keys.CLASS_COUNTS]) for m in rounds} == {(6, 6, 9)}


def test_inference_nodes_get_no_student_and_alone_do_not_make_a_consensus(tmp_path):
    state = lambda r: {"w": np.ones(4, np.float32)}
    nodes = {
        1: honest(0, model="minilm-l3"),
        2: honest(1, model="minilm-l3", role=keys.ROLE_INFERENCE),
        3: honest(2, model="minilm-l3", role=keys.ROLE_INFERENCE),
        TEACHER: teacher(student=state),
    }
    fed, grid = make(tmp_path, nodes, **{"federation.min_replies": 2})
    history = fed.run()
    round2 = {m.metadata.dst_node_id: m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND}
    assert keys.STUDENT_STATE in round2[1].content.array_records
    assert keys.STUDENT_STATE not in round2[2].content.array_records
    assert all(h["accepted"] == 3 for h in history)

    silent = lambda msg, good: None
    nodes[1] = with_round_reply(honest(0, model="minilm-l3"), silent)  # only the weightless nodes answer
    fed, grid = make(tmp_path / "weightless", nodes, **{"federation.min_replies": 2})
    history = fed.run()  # no exception: the round is skipped
    assert [h["accepted"] for h in history] == [2, 2]
    assert not any(m.metadata.message_type == keys.MSG_TEACH for m in grid.sent)


def test_label_counts_are_recorded_and_forgotten_clients_are_not_selected(tmp_path):
    nodes = {1: honest(0), 2: honest(1), 3: honest(2), TEACHER: teacher()}
    fed, grid = make(tmp_path, nodes, **{"federation.rounds": 1})
    fed.run()
    ledger = Ledger(tmp_path / "ledger.sqlite")
    assert ledger.label_counts(fed.run_id) == {"client-0": [3, 3, 4], "client-1": [3, 3, 5], "client-2": [3, 3, 6]}
    ledger.purge_client("client-1", request_id="req-1")  # what an unlearning request does
    ledger.close()
    fed, grid = make(tmp_path, nodes, **{"federation.rounds": 1})
    history = fed.run()
    rounds = [m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND]
    assert sorted(rounds) == [1, 3]
    assert history[0]["accepted"] == 2 and "client-1" not in history[0]["clients"]
    assert set(Ledger(tmp_path / "ledger.sqlite").label_counts(fed.run_id)) == {"client-0", "client-2"}
    assert fed.class_counts == [6, 6, 10]  # the forgotten client's counts reach no one


def test_an_unreadable_unlearning_key_stops_the_run_before_discovery(tmp_path):
    from nebula.server.exceptions import UnlearningError

    fed, grid = make(
        tmp_path,
        {1: honest(0), 2: honest(1), 9: teacher()},
        **{"federation.unlearn_key": str(tmp_path / "missing.pem")},
    )
    with pytest.raises(UnlearningError, match="federation.unlearn_key .*missing.pem"):
        fed.run()
    assert grid.sent == []  # no node was asked anything


def _live_run_forgetting_client_1(tmp_path, restore_reply: Callable[[Message], Message]):
    """Round 1 runs; while the teacher teaches it an operator's purge request for client-1 is stored; the
    run carries it out before round 2 and asks the teacher to restore (``restore_reply`` answers)."""
    from nebula.deploy.certs import write_unlearning_material
    from nebula.server.unlearning.requests import RequestStore

    material = write_unlearning_material(tmp_path / "keys")
    base = teacher()

    def node(msg: Message) -> Message:
        kind = msg.metadata.message_type
        if kind == keys.MSG_TEACH and msg.content.config_records[keys.ROUND][keys.ROUND_INDEX] == 1:
            store = RequestStore(tmp_path / "ledger.sqlite")
            store.submit(client_id="client-1", reason="test", mode="purge", idempotency_key="k", operator_key="op")
            store.close()
        return restore_reply(msg) if kind == keys.MSG_RESTORE else base(msg)

    fed, grid = make(
        tmp_path,
        {1: honest(0), 2: honest(1), 3: honest(2), TEACHER: node},
        **{"federation.rounds": 2, "federation.unlearn_key": str(material.signing_key)},
    )
    history = fed.run()
    round2 = [m for m in grid.sent if m.metadata.message_type == keys.MSG_ROUND][-2:]
    assert history[-1]["round"] == 2 and "client-1" not in history[-1]["clients"] and len(round2) == 2
    return fed, grid, round2


def test_after_a_live_request_round_2_gets_targets_the_restored_teacher_answered(tmp_path):
    def restore(msg: Message) -> Message:
        ids = np.asarray(msg.content.config_records[keys.ROUND][keys.QUERY_IDS])
        return reply(
            msg,
            {keys.CLIENT_ID: "teacher", keys.REFINED_BLOB: encode_logits(ids, np.tile([0.0, 0.0, 5.0], (len(ids), 1)))},
        )

    fed, grid, round2 = _live_run_forgetting_client_1(tmp_path, restore)
    for m in round2:
        targets = decode_logits(m.content.config_records[keys.ROUND][keys.TARGET_BLOB])
        np.testing.assert_array_equal(targets.ids, fed.public_ids(1))
        assert (targets.logits.argmax(axis=1) == 2).all()  # the restored teacher's answers, not round 1's
    ledger = Ledger(tmp_path / "ledger.sqlite")
    stored, ok = ledger.finished_rounds(fed.run_id)[1]
    assert ok and (decode_logits(stored).logits.argmax(axis=1) == 2).all()  # a resumed run would send these too


def test_a_restored_teacher_that_cannot_answer_leaves_round_2_without_targets(tmp_path, caplog):
    fed, grid, round2 = _live_run_forgetting_client_1(tmp_path, lambda msg: reply(msg, {keys.CLIENT_ID: "teacher"}))
    assert all(keys.TARGET_BLOB not in m.content.config_records[keys.ROUND] for m in round2)
    assert "goes without targets" in caplog.text
    assert Ledger(tmp_path / "ledger.sqlite").finished_rounds(fed.run_id)[1] == (None, False)


def _with_describe(base, fields: dict):
    """A node whose describe reply has ``fields`` changed (a value of None removes the field)."""

    def node(msg: Message):
        good = base(msg)
        if msg.metadata.message_type == keys.MSG_DESCRIBE:
            rec = good.content.config_records[keys.REPLY]
            for key, value in fields.items():
                if value is None:
                    del rec[key]
                else:
                    rec[key] = value
        return good

    return node


def test_a_malformed_metric_is_a_rejection_not_the_end_of_the_run(tmp_path):
    def list_metric(msg, good):
        good.content[keys.METRICS] = MetricRecord({"acc_global": [0.1, 0.2]})
        return good

    nodes = {1: honest(0), 2: honest(1), 3: with_round_reply(honest(2), list_metric), TEACHER: teacher()}
    fed, _ = make(tmp_path, nodes, **{"federation.min_replies": 2})
    history = fed.run()
    assert [h["accepted"] for h in history] == [2, 2]
    assert "'metrics.acc_global' is [0.1, 0.2], not a finite number" in history[-1]["rejected"]["client-2"]
    assert len(Ledger(tmp_path / "ledger.sqlite").rejections(fed.run_id)) == 2


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({keys.CLIENT_INDEX: "abc"}, "not an integer"),
        ({keys.LABEL_COUNTS: 7}, "not a list of integers"),
        ({keys.NUM_EXAMPLES: -5}, "below 0"),
        ({keys.ROLE: "superuser"}, "not one of"),
        ({keys.MODEL: None}, "is missing"),
    ],
)
def test_a_malformed_describe_reply_leaves_the_node_out(tmp_path, caplog, fields, why):
    nodes = {1: honest(0), 2: honest(1), 3: _with_describe(honest(2), fields), TEACHER: teacher()}
    fed, _ = make(tmp_path, nodes, **{"federation.min_replies": 2})
    history = fed.run()
    assert [h["accepted"] for h in history] == [2, 2] and not history[-1]["rejected"]
    assert why in caplog.text and "left out" in caplog.text


def test_a_second_teacher_and_a_taken_client_id_are_left_out_and_the_run_goes_on(tmp_path, caplog):
    impostor = _with_describe(honest(7), {keys.CLIENT_ID: "client-0"})  # claims client-0's id
    nodes = {1: honest(0), 2: honest(1), 3: impostor, TEACHER: teacher(), 100: teacher()}
    fed, _ = make(tmp_path, {k: v for k, v in nodes.items()}, **{"data.num_clients": 3, "federation.min_replies": 2})
    history = fed.run()
    assert [h["accepted"] for h in history] == [2, 2]
    assert "claims client id 'client-0', which node 1 holds" in caplog.text
    assert "also claims to be the teacher (node 99 answered first)" in caplog.text
