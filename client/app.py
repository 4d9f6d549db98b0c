"""Nebula ClientApp: one app for edge clients and the teacher node.

The role comes from the node config (deployment) or from the teacher index the server
sends (simulation). A bad request gets an error reply naming what was wrong; the node
keeps running.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.edge import EdgeClient
from client.faults import corrupt, parse_faults
from client.node import NodeIdentity, identify
from client.teacher import TeacherNode
from common import keys
from common.config import NebulaConfig

log = logging.getLogger(__name__)
BAD_REQUEST, FAILED = 400, 500

app = ClientApp()


def _setup(msg: Message, context: Context) -> tuple[NebulaConfig, NodeIdentity, ConfigRecord]:
    if keys.CONFIG not in msg.content.config_records:
        raise ValueError(f"message has no {keys.CONFIG!r} record")
    config = NebulaConfig.from_flat(dict(msg.content.config_records[keys.CONFIG]))
    round_rec = msg.content.config_records.get(keys.ROUND, ConfigRecord())
    teacher_index = int(round_rec.get(keys.TEACHER_INDEX, config.data.num_clients))
    node = identify(context, teacher_index=teacher_index)
    threads = (config.train.teacher_threads or os.cpu_count()) if node.role == keys.ROLE_TEACHER else config.train.threads
    if threads:
        torch.set_num_threads(threads)
    return config, node, round_rec


def _output_dir(context: Context, round_rec: ConfigRecord) -> Path:
    return Path(str(context.node_config.get("output-dir", round_rec.get(keys.OUTPUT_DIR, "runs/latest"))))


def _reply(msg: Message, reply: dict, metrics: dict[str, float] | None = None) -> Message:
    content = RecordDict({keys.REPLY: ConfigRecord(reply)})
    if metrics:
        content[keys.METRICS] = MetricRecord({k: float(v) for k, v in metrics.items()})
    return Message(content, reply_to=msg)


def _guarded(handler):
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


def _worker(config: NebulaConfig, node: NodeIdentity, context: Context):
    return TeacherNode(config, context) if node.role == keys.ROLE_TEACHER else EdgeClient(config, node.index, context)


@app.query("describe")
@_guarded
def describe(msg: Message, context: Context) -> Message:
    config, node, _ = _setup(msg, context)
    info = _worker(config, node, context).describe()
    return _reply(
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


@app.train("round")
@_guarded
def train_round(msg: Message, context: Context) -> Message:
    config, node, rec = _setup(msg, context)
    if node.role != keys.ROLE_CLIENT:
        raise ValueError(f"{keys.MSG_ROUND} sent to the teacher node")
    faults = parse_faults(config.federation.faults)
    if faults.get(node.index) == "error":
        raise RuntimeError(f"injected fault: client {node.index} fails its round")
    round_index = int(rec[keys.ROUND_INDEX])
    targets = rec.get(keys.TARGET_BLOB)
    query_ids = np.asarray(rec[keys.QUERY_IDS], dtype=np.int64)
    evaluate = round_index % config.train.eval_every == 0 or round_index == config.federation.rounds
    client = EdgeClient(config, node.index, context)
    start_from = None
    if keys.STUDENT_STATE in msg.content.array_records:
        if rec.get(keys.STUDENT_MODEL) != client.model_name:
            raise ValueError(f"global student is a {rec.get(keys.STUDENT_MODEL)!r} model, this client runs {client.model_name!r}")
        start_from = msg.content.array_records[keys.STUDENT_STATE].to_torch_state_dict()
    out = client.run_round(
        round_index=round_index, targets=targets or None, query_ids=query_ids, evaluate=evaluate, start_from=start_from
    )
    blob = corrupt(out.logits_blob, faults[node.index]) if node.index in faults else out.logits_blob
    return _reply(msg, {keys.CLIENT_ID: node.client_id, keys.LOGITS_BLOB: blob}, out.metrics)


@app.train("teach")
@_guarded
def teach(msg: Message, context: Context) -> Message:
    config, node, rec = _setup(msg, context)
    if node.role != keys.ROLE_TEACHER:
        raise ValueError(f"{keys.MSG_TEACH} sent to edge client {node.client_id}")
    refined, metrics, student_state = TeacherNode(config, context).teach(
        round_index=int(rec[keys.ROUND_INDEX]), consensus=rec[keys.CONSENSUS_BLOB], output_dir=_output_dir(context, rec)
    )
    reply = _reply(msg, {keys.CLIENT_ID: node.client_id, keys.REFINED_BLOB: refined}, metrics)
    reply.content[keys.STUDENT_STATE] = ArrayRecord(torch_state_dict=student_state)
    return reply


@app.query("finish")
@_guarded
def finish(msg: Message, context: Context) -> Message:
    """Save this node's adapters where PeftModel.from_pretrained loads them."""
    config, node, rec = _setup(msg, context)
    out = _output_dir(context, rec)
    worker = _worker(config, node, context)
    if node.role == keys.ROLE_TEACHER:
        worker.save(out / "models")
    else:
        worker.save(out / "clients" / node.client_id / "adapter")
    return _reply(msg, {keys.CLIENT_ID: node.client_id})
