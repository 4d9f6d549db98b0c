"""server/exchange.py: one push, pulls until every reply is in or the timeout passes."""

from types import SimpleNamespace

from nebula.server.exchange import send_and_receive


def _reply(to):
    return SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=to))


class PushPullGrid:
    """Replies to message ``i`` become available at pull number ``ready[i]``."""

    def __init__(self, ready):
        self.ready, self.pushes, self.pulls = ready, [], 0

    def push_messages(self, messages):
        self.pushes.append(list(messages))
        return list(self.ready)

    def pull_messages(self, ids):
        self.pulls += 1
        return [_reply(i) for i in ids if self.ready[i] == self.pulls]


def test_one_push_and_pulls_until_all_replies_arrived():
    grid = PushPullGrid({"a": 1, "b": 3})
    replies = send_and_receive(grid, ["m1", "m2"], timeout=10, poll=0.001)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a", "b"]
    assert len(grid.pushes) == 1 and grid.pulls == 3


def test_timeout_returns_what_arrived():
    grid = PushPullGrid({"a": 1, "never": -1})
    replies = send_and_receive(grid, ["m1", "m2"], timeout=0.05, poll=0.01)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]


def test_a_grid_without_push_and_pull_is_asked_as_a_whole():
    grid = SimpleNamespace(send_and_receive=lambda messages, timeout: [_reply("x")])
    assert [r.metadata.reply_to_message_id for r in send_and_receive(grid, ["m"], timeout=1)] == ["x"]
