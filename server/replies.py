"""Validation of replies from edge clients and the teacher.

Every reply is checked before anything is stored: it must come from a node of the
cohort, carry no error, hold a well-formed logits payload with exactly the requested
public ids and the federation's number of classes, and finite values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from nebula.common import keys
from nebula.common.wire import DecodedLogits, WireFormatError, decode_logits
from nebula.server.exceptions import ReplyRejected


@dataclass(frozen=True)
class NodeInfo:
    node_id: int
    role: str
    client_id: str
    index: int
    model: str
    num_examples: int
    label_counts: tuple[int, ...]


def parse_describe(reply: Message, *, num_classes: int | None = None) -> NodeInfo:
    """Read a node's answer to ``query.describe``; raises ReplyRejected naming the field."""
    node_id = reply.metadata.src_node_id
    who = f"node {node_id}"
    if reply.has_error():
        raise ReplyRejected(client=who, round_index=0, reason=f"error {reply.error.code}: {reply.error.reason}")
    rec = reply.content.config_records.get(keys.REPLY)
    if rec is None:
        raise ReplyRejected(client=who, round_index=0, reason=f"no {keys.REPLY!r} record")
    try:
        info = NodeInfo(
            node_id=node_id,
            role=str(rec[keys.ROLE]),
            client_id=str(rec[keys.CLIENT_ID]),
            index=int(rec[keys.CLIENT_INDEX]),
            model=str(rec[keys.MODEL]),
            num_examples=int(rec[keys.NUM_EXAMPLES]),
            label_counts=tuple(int(c) for c in rec[keys.LABEL_COUNTS]),
        )
    except KeyError as exc:
        raise ReplyRejected(client=who, round_index=0, reason=f"missing field {exc}") from None
    if info.role == keys.ROLE_CLIENT and num_classes is not None and len(info.label_counts) != num_classes:
        raise ReplyRejected(client=info.client_id, round_index=0, reason=f"label-counts has {len(info.label_counts)} classes, expected {num_classes}")
    if info.num_examples < 0 or min(info.label_counts, default=0) < 0:
        raise ReplyRejected(client=info.client_id, round_index=0, reason="negative counts")
    return info


def read_logits(
    reply: Message, *, who: str, round_index: int, blob_key: str, expected_ids: np.ndarray, num_classes: int
) -> tuple[DecodedLogits, bytes]:
    """The validated logits payload of a reply (and its raw bytes, for the ledger)."""
    if reply.has_error():
        raise ReplyRejected(client=who, round_index=round_index, reason=f"error reply {reply.error.code}: {reply.error.reason}")
    rec = reply.content.config_records.get(keys.REPLY)
    if rec is None or blob_key not in rec:
        raise ReplyRejected(client=who, round_index=round_index, reason=f"no {blob_key!r} payload")
    blob = rec[blob_key]
    if not isinstance(blob, bytes):
        raise ReplyRejected(client=who, round_index=round_index, reason=f"{blob_key!r} is {type(blob).__name__}, not bytes")
    try:
        decoded = decode_logits(blob, expected_ids=expected_ids, num_classes=num_classes)
    except WireFormatError as exc:
        raise ReplyRejected(client=who, round_index=round_index, reason=f"{blob_key}: {exc}") from None
    return decoded, blob


def reply_metrics(reply: Message) -> dict[str, float]:
    rec = reply.content.metric_records.get(keys.METRICS) if not reply.has_error() else None
    return {k: float(v) for k, v in rec.items()} if rec is not None else {}
