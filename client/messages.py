"""Torch-free plumbing shared by the ClientApps: read a request, build a reply, survive errors.

Used by :mod:`nebula.client.app` (every role) and :mod:`nebula.client.runtime.app` (devices without
torch), so it imports nothing heavier than Flower and the config.
"""

from __future__ import annotations

import logging
from typing import TypeVar

from flwr.app import Context, Error, Message

from nebula.client.node import NodeIdentity, identify
from nebula.common.messages import DescribeReply

log = logging.getLogger(__name__)
BAD_REQUEST, FAILED = 400, 500
Q = TypeVar("Q")


def read_request(msg: Message, context: Context, kind: type[Q]) -> tuple[Q, NodeIdentity]:
    """The typed request of kind ``kind`` (MessageError, a ValueError, names a bad field) and this node's identity."""
    request = kind.from_record(msg.content)
    envelope = request.envelope
    node = identify(
        context, teacher_index=envelope.teacher_index, inference_exports=envelope.config.federation.inference_exports()
    )
    return request, node


def answer(msg: Message, reply) -> Message:
    """The Flower reply carrying the typed ``reply`` (a :mod:`nebula.common.messages` reply)."""
    return Message(reply.to_record(), reply_to=msg)


def describe_reply(msg: Message, node: NodeIdentity, info: dict) -> Message:
    """The answer to ``query.describe``; ``info`` holds ``model``, ``num_examples`` and ``label_counts``."""
    return answer(
        msg,
        DescribeReply(
            node.role,
            node.client_id,
            node.index,
            info["model"],
            int(info["num_examples"]),
            tuple(int(c) for c in info["label_counts"]),
        ),
    )


def guarded(handler):
    """Turn exceptions into error replies naming what went wrong, so the node survives."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad request %s: %s", msg.metadata.message_type, exc)
            return Message(Error(BAD_REQUEST, f"{type(exc).__name__}: {exc}"), reply_to=msg)
        except Exception as exc:
            log.exception("failed %s", msg.metadata.message_type)
            return Message(Error(FAILED, f"{type(exc).__name__}: {exc}"), reply_to=msg)

    wrapped.__name__ = handler.__name__
    return wrapped
