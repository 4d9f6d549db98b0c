"""A node the SuperLink declares unavailable: the error reply Flower writes for it is attributed to that node.

Flower 1.41's SuperLink answers a message to a node that missed its heartbeats with an error
reply whose sender is the SuperLink itself (``SUPERLINK_NODE_ID``, 1), not the node. The server must match it
to the request by message id, so the ledger records the node's real reason, not "no reply".
"""

import numpy as np
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.server.superlink.linkstate.utils import create_message_error_unavailable_res_message

from nebula.common import keys
from nebula.common.presets import preset_config
from nebula.common.wire import decode_logits, encode_logits
from nebula.server.federation import Federation
from nebula.server.ledger import Ledger

TEACHER, DEAD = 9, 2


def _reply(msg, fields, metrics=None):
    content = RecordDict({keys.REPLY: ConfigRecord(fields)})
    if metrics:
        content[keys.METRICS] = MetricRecord(metrics)
    return Message(content, reply_to=msg)


def _node(index: int, role: str = keys.ROLE_CLIENT):
    cid = "teacher" if role == keys.ROLE_TEACHER else f"client-{index}"

    def answer(msg: Message) -> Message:
        kind, rec = msg.metadata.message_type, msg.content.config_records[keys.ROUND]
        if kind == keys.MSG_DESCRIBE:
            return _reply(
                msg,
                {
                    keys.ROLE: role,
                    keys.CLIENT_ID: cid,
                    keys.CLIENT_INDEX: index,
                    keys.MODEL: "m",
                    keys.NUM_EXAMPLES: 0 if role == keys.ROLE_TEACHER else 10,
                    keys.LABEL_COUNTS: [0, 0, 0] if role == keys.ROLE_TEACHER else [3, 3, 4],
                },
            )
        if kind == keys.MSG_ROUND:
            ids = np.asarray(rec[keys.QUERY_IDS])
            return _reply(
                msg, {keys.CLIENT_ID: cid, keys.LOGITS_BLOB: encode_logits(ids, np.zeros((len(ids), 3), np.float32))}
            )
        if kind == keys.MSG_TEACH:
            c = decode_logits(rec[keys.CONSENSUS_BLOB])
            return _reply(
                msg, {keys.CLIENT_ID: cid, keys.REFINED_BLOB: encode_logits(c.ids, c.logits)}, {"seconds": 1.0}
            )
        return _reply(msg, {keys.CLIENT_ID: cid})

    return answer


class SuperLinkLikeGrid:
    """Sets message ids as Flower's grid does when pushing; node DEAD is answered for by the SuperLink."""

    def __init__(self):
        self.nodes = {1: _node(0), DEAD: _node(1), TEACHER: _node(-1, keys.ROLE_TEACHER)}

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = m.object_id
            dead = m.metadata.dst_node_id == DEAD and m.metadata.message_type == keys.MSG_ROUND
            out.append(
                create_message_error_unavailable_res_message(m.metadata, "node_unavail")
                if dead
                else self.nodes[m.metadata.dst_node_id](m)
            )
        return out


def test_the_superlinks_node_unavailable_reply_is_the_nodes_rejection(tmp_path):
    config = preset_config(
        "smoke",
        {
            "federation.output_dir": str(tmp_path),
            "data.num_clients": 2,
            "federation.rounds": 1,
            "federation.min_replies": 1,
        },
    )
    fed = Federation(SuperLinkLikeGrid(), config)
    [summary] = fed.run()
    assert summary["accepted"] == 1
    assert "Node Unavailable" in summary["rejected"]["client-1"]
    assert summary["teacher_seconds"] == 1.0 and summary["clients_wait_seconds"] >= 0.0
    ledger = Ledger(tmp_path / "ledger.sqlite")
    try:
        [(r, cid, why)] = ledger.rejections(fed.run_id)
        assert (r, cid) == (1, "client-1") and "Node Unavailable" in why
    finally:
        ledger.close()
