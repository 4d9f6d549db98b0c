"""Torch-free plumbing shared by the ClientApps: read a request, build a reply, survive errors.

Used by :mod:`nebula.client.app` (every role) and :mod:`nebula.client.runtime.app` (devices without
torch), so it imports nothing heavier than Flower and the config.
"""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord, RecordDict

from nebula.client.node import NodeIdentity, identify
from nebula.common import keys
from nebula.common.config import NebulaConfig

log = logging.getLogger(__name__)
BAD_REQUEST, FAILED = 400, 500


def read_request(msg: Message, context: Context) -> tuple[NebulaConfig, NodeIdentity, ConfigRecord]:
    """The federation's config, this node's identity and the message's ROUND record (may be empty)."""
    if keys.CONFIG not in msg.content.config_records:
        raise ValueError(f"message has no {keys.CONFIG!r} record")
    config = NebulaConfig.from_flat(dict(msg.content.config_records[keys.CONFIG]))
    round_rec = msg.content.config_records.get(keys.ROUND, ConfigRecord())
    teacher_index = int(round_rec.get(keys.TEACHER_INDEX, config.data.num_clients))
    node = identify(context, teacher_index=teacher_index, inference_exports=config.federation.inference_exports())
    return config, node, round_rec


def ok_reply(msg: Message, fields: dict, metrics: dict[str, float] | None = None) -> Message:
    """A reply carrying ``fields`` as the REPLY record and, if any, ``metrics`` as the METRICS record."""
    content = RecordDict({keys.REPLY: ConfigRecord(fields)})
    if metrics:
        content[keys.METRICS] = MetricRecord({k: float(v) for k, v in metrics.items()})
    return Message(content, reply_to=msg)


def describe_reply(msg: Message, node: NodeIdentity, info: dict) -> Message:
    """The answer to ``query.describe``; ``info`` holds ``model``, ``num_examples`` and ``label_counts``."""
    return ok_reply(
        msg,
        {
            keys.ROLE: node.role,
            keys.CLIENT_ID: node.client_id,
            keys.CLIENT_INDEX: node.index,
            keys.MODEL: info["model"],
            keys.NUM_EXAMPLES: info["num_examples"],
            keys.LABEL_COUNTS: info["label_counts"],
        },
    )


def guarded(handler):
    """Turn exceptions into error replies naming what went wrong, so the node survives."""

    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad request %s: %s", msg.metadata.message_type, exc)
            return Message(Error(BAD_REQUEST, f"{type(exc).__name__}: {exc}"), reply_to=msg)
        except Exception as exc:  # noqa: BLE001 - the node must answer, not crash
            log.exception("failed %s", msg.metadata.message_type)
            return Message(Error(FAILED, f"{type(exc).__name__}: {exc}"), reply_to=msg)

    wrapped.__name__ = handler.__name__
    return wrapped
