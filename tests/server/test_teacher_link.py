"""A teacher that fails a round, or whose SuperNode restarts, is restored from the ledger before it teaches again.

Scripted nodes against server/federation.py's round loop (no Flower network, no models): the teacher's
messages are recorded, and the tests check what it is asked, in which order, and what the rounds record.
"""

from collections.abc import Callable
from types import SimpleNamespace

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from nebula.common import keys
from nebula.common.presets import preset_config
from nebula.common.probabilities import softmax
from nebula.common.wire import decode_logits, encode_logits
from nebula.server.federation import Federation
from nebula.server.ledger import Ledger

C, TEACHER = 3, 9
STUDENT = {"head": np.ones(3, np.float32)}


def _reply(msg: Message, fields: dict, *, metrics: dict | None = None, student: bool = False) -> Message:
    content = RecordDict({keys.REPLY: ConfigRecord(fields)})
    if metrics:
        content[keys.METRICS] = MetricRecord(metrics)
    if student:
        content[keys.STUDENT_STATE] = ArrayRecord({k: Array(v) for k, v in STUDENT.items()})
    return Message(content, reply_to=msg)


def _describe(msg: Message, index: int) -> Message:
    teacher = index < 0
    return _reply(
        msg,
        {
            keys.ROLE: keys.ROLE_TEACHER if teacher else keys.ROLE_CLIENT,
            keys.CLIENT_ID: "teacher" if teacher else f"client-{index}",
            keys.CLIENT_INDEX: index,
            keys.MODEL: "m",
            keys.NUM_EXAMPLES: 0 if teacher else 10,
            keys.LABEL_COUNTS: [0, 0, 0] if teacher else [3, 3, 4],
        },
    )


def _client(index: int) -> Callable[[Message], Message]:
    def node(msg: Message) -> Message:
        if msg.metadata.message_type == keys.MSG_DESCRIBE:
            return _describe(msg, index)
        if msg.metadata.message_type == keys.MSG_ROUND:
            ids = np.asarray(msg.content.config_records[keys.ROUND][keys.QUERY_IDS])
            logits = np.zeros((len(ids), C), np.float32)
            logits[:, index % C] = 2.0
            blob = encode_logits(ids, logits)
            return _reply(msg, {keys.CLIENT_ID: f"client-{index}", keys.LOGITS_BLOB: blob})
        return _reply(msg, {keys.CLIENT_ID: f"client-{index}"})

    return node


class Teacher:
    """A scripted teacher node. ``silent``: which of its messages (0, 1, ... in the order it gets them, describe
    and finish aside) it leaves unanswered, as a node that is down; it records every one of them in ``asked``."""

    def __init__(self, silent: set[int] = frozenset()) -> None:
        self.silent, self.asked = set(silent), []

    def __call__(self, msg: Message) -> Message | None:
        kind, rec = msg.metadata.message_type, msg.content.config_records[keys.ROUND]
        if kind == keys.MSG_DESCRIBE:
            return _describe(msg, -1)
        if kind == keys.MSG_FINISH:
            return _reply(msg, {keys.CLIENT_ID: "teacher"})
        self.asked.append(dict(rec))
        if len(self.asked) - 1 in self.silent:
            return None  # the server gives up at the reply timeout
        if kind == keys.MSG_TEACH:
            c = decode_logits(rec[keys.CONSENSUS_BLOB])
            fields = {keys.CLIENT_ID: "teacher", keys.REFINED_BLOB: encode_logits(c.ids, c.logits)}
            return _reply(msg, fields, metrics={"seconds": 1.0}, student=True)
        return _reply(msg, {keys.CLIENT_ID: "teacher"}, student=True)

    def story(self) -> list[str]:
        """``teach R`` (round R's consensus) and ``restore R`` (round R's checkpoint), in order."""
        return [
            f"teach {rec[keys.ROUND_INDEX]}" if keys.CONSENSUS_BLOB in rec else f"restore {rec[keys.RESTORE_ROUND]}"
            for rec in self.asked
        ]


class Grid:
    """Answers each message with its node's script; ``activations`` (round -> the teacher's activation time,
    read before that round's teaching) plays the SuperLink's node list, None: a grid without one."""

    def __init__(self, teacher: Teacher, activations: Callable[[], str] | None = None) -> None:
        self.nodes = {1: _client(0), 2: _client(1), TEACHER: teacher}
        if activations is not None:
            self.get_nodes = lambda: [
                SimpleNamespace(node_id=n, last_activated_at=activations() if n == TEACHER else "t0")
                for n in self.nodes
            ]

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        replies = (self.nodes[m.metadata.dst_node_id](m) for m in messages)
        return [r for r in replies if r is not None]


def _run(tmp_path, grid: Grid, rounds: int) -> tuple[Federation, list[dict]]:
    config = preset_config(
        "smoke",
        {
            "federation.output_dir": str(tmp_path),
            "data.num_clients": 2,
            "federation.rounds": rounds,
            "federation.min_replies": 1,
        },
    )
    fed = Federation(grid, config)
    return fed, fed.run()


def _gathered_ids(fields: dict) -> list[int]:
    return sorted(decode_logits(fields[keys.GATHERED_BLOB]).ids.tolist())


def test_a_silent_teacher_round_goes_on_with_the_consensus_and_the_teacher_restores_before_teaching_again(
    tmp_path, caplog
):
    teacher = Teacher(silent={1})  # round 2's teaching
    fed, history = _run(tmp_path, Grid(teacher), rounds=3)
    assert [h["teacher_ok"] for h in history] == [True, False, True]
    assert "no reply before the timeout" in history[1]["teacher_error"] and history[2]["teacher_error"] == ""
    assert "no reply before the timeout; the consensus itself becomes next round's targets" in caplog.text
    ledger = Ledger(tmp_path / "ledger.sqlite")
    targets, ok = ledger.finished_rounds(fed.run_id)[2]
    ids, consensus = ledger.consensus(fed.run_id, 2)
    got = decode_logits(targets)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_allclose(softmax(got.logits, temperature=fed.config.train.temperature), consensus, atol=2e-3)
    assert teacher.story() == ["teach 1", "teach 2", "restore 1", "teach 3"]  # 1: the last round it was taught
    restore = teacher.asked[2]
    expected = sorted(set(fed.public_ids(1).tolist()) | set(fed.public_ids(2).tolist()))
    assert _gathered_ids(restore) == expected  # round 2's consensus too: it missed it, the ledger did not


def test_a_teacher_still_down_fails_the_next_round_too_and_is_restored_when_back(tmp_path):
    teacher = Teacher(silent={1, 2})  # round 2's teaching, round 3's restore
    fed, history = _run(tmp_path, Grid(teacher), rounds=4)
    assert [h["teacher_ok"] for h in history] == [True, False, False, True]
    assert "could not restore round 1's checkpoint" in history[2]["teacher_error"]
    assert teacher.story() == ["teach 1", "teach 2", "restore 1", "restore 1", "teach 4"]
    assert len(_gathered_ids(teacher.asked[3])) == len(set().union(*(fed.public_ids(r) for r in (1, 2, 3))))


def test_a_teacher_whose_supernode_was_started_again_is_restored_before_it_teaches(tmp_path, caplog):
    teacher = Teacher()
    stamps = iter(["t1", "t1", "t2", "t2", "t2", "t2"])  # read before each teaching and after each restore
    fed, history = _run(tmp_path, Grid(teacher, activations=lambda: next(stamps)), rounds=3)
    assert all(h["teacher_ok"] for h in history)
    assert teacher.story() == ["teach 1", "teach 2", "restore 2", "teach 3"]
    assert "its SuperNode was started again (activated t2, before t1)" in caplog.text
    assert len(_gathered_ids(teacher.asked[2])) == len(fed.public_ids(1)) * 2


def test_a_teacher_in_step_is_never_asked_to_restore(tmp_path):
    for grid in (Grid(teacher := Teacher()), Grid(other := Teacher(), activations=lambda: "t1")):
        _run(tmp_path / str(id(grid)), grid, rounds=3)
    for t in (teacher, other):
        assert t.story() == ["teach 1", "teach 2", "teach 3"]
