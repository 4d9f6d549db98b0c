"""Validation of replies from edge clients and the teacher: the server's one boundary for what nodes send.

Every reply is read with its typed message (:mod:`nebula.common.messages`), which checks every
field, then its logits payload is decoded against the requested public ids and the federation's
number of classes (finite values). Whatever fails raises :class:`ReplyRejected` naming the node,
the round and the field; nothing is stored before this passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from flwr.app import Message

from nebula.common.messages import DescribeReply, MessageError
from nebula.common.wire import DecodedLogits, WireFormatError, decode_logits
from nebula.server.exceptions import ReplyRejected

R = TypeVar("R")


@dataclass(frozen=True)
class NodeInfo:
    """A node as discovery found it: its Flower node id and its describe reply."""

    node_id: int
    role: str
    client_id: str
    index: int
    model: str
    num_examples: int
    label_counts: tuple[int, ...]


def read_reply(reply: Message | None, kind: type[R], *, who: str, round_index: int) -> R:
    """The typed reply of kind ``kind``; ReplyRejected for no reply, an error reply or a malformed field."""
    if reply is None:
        raise ReplyRejected(client=who, round_index=round_index, reason="no reply before the timeout")
    if reply.has_error():
        raise ReplyRejected(
            client=who, round_index=round_index, reason=f"error reply {reply.error.code}: {reply.error.reason}"
        )
    try:
        return kind.from_record(reply.content)
    except MessageError as exc:
        raise ReplyRejected(client=who, round_index=round_index, reason=str(exc)) from None


def parse_describe(reply: Message) -> NodeInfo:
    """A node's answer to ``query.describe``; ReplyRejected naming the field."""
    node_id = reply.metadata.src_node_id
    info = read_reply(reply, DescribeReply, who=f"node {node_id}", round_index=0)
    return NodeInfo(
        node_id, info.role, info.client_id, info.client_index, info.model, info.num_examples, info.label_counts
    )


def check_logits(
    blob: bytes, *, who: str, round_index: int, what: str, expected_ids: np.ndarray, num_classes: int
) -> DecodedLogits:
    """The decoded payload ``what`` of a reply, holding exactly ``expected_ids`` and ``num_classes`` columns."""
    try:
        return decode_logits(blob, expected_ids=expected_ids, num_classes=num_classes)
    except WireFormatError as exc:
        raise ReplyRejected(client=who, round_index=round_index, reason=f"{what}: {exc}") from None
