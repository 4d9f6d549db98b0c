"""Nebula ClientApp: one app for edge clients, the teacher node and inference-only nodes.

The role comes from the node config (deployment) or from the teacher index and
``federation.inference_clients`` the server sends (simulation). A bad request gets an error
reply naming what was wrong; the node keeps running.

torch and the training roles are imported when a training node first needs them, not at
import: every node of a deployment runs this app (the run's FAB names it), and an
inference node (:mod:`nebula.client.runtime.inference`) may be a device without torch.

A node with ``worker-socket`` in its node config forwards every message to its long-lived
local worker (:mod:`nebula.client.worker`), which runs these same handlers with torch and the models
already loaded; without a worker answering there, the message is handled here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from nebula.client import worker_link
from nebula.client.runtime import inference
from nebula.client.faults import corrupt, parse_faults
from nebula.client.messages import describe_reply, guarded, ok_reply, read_request
from nebula.client.node import NodeIdentity
from nebula.common import keys
from nebula.common.config import NebulaConfig

app = ClientApp()
log = logging.getLogger(__name__)


def forwarded(handler):
    """Send the message to the node's worker when it has one (see the module docstring)."""

    def wrapped(msg: Message, context: Context) -> Message:
        socket_path = worker_link.worker_socket(context)
        if socket_path:
            try:
                return worker_link.forward(msg, context, socket_path)
            except worker_link.WorkerUnavailable as exc:
                log.warning("%s; handling %s in the ClientApp", exc, msg.metadata.message_type)
        return handler(msg, context)

    wrapped.__name__ = handler.__name__
    return wrapped


def _setup(msg: Message, context: Context) -> tuple[NebulaConfig, NodeIdentity, ConfigRecord]:
    config, node, round_rec = read_request(msg, context)
    if node.role == keys.ROLE_INFERENCE:
        return config, node, round_rec  # onnxruntime takes train.threads itself; no torch here
    import torch  # here, not at the top: see the module docstring

    threads = (config.train.teacher_threads or os.cpu_count()) if node.role == keys.ROLE_TEACHER else config.train.threads
    if threads:
        torch.set_num_threads(threads)
    return config, node, round_rec


def _output_dir(context: Context, round_rec: ConfigRecord) -> Path:
    return Path(str(context.node_config.get("output-dir", round_rec.get(keys.OUTPUT_DIR, "runs/latest"))))


def _worker(config: NebulaConfig, node: NodeIdentity, context: Context):
    from nebula.client.edge import EdgeClient  # imports torch: see the module docstring
    from nebula.client.teacher import TeacherNode

    return TeacherNode(config, context) if node.role == keys.ROLE_TEACHER else EdgeClient(config, node.index, context)


@app.query("describe")
@guarded
@forwarded
def describe(msg: Message, context: Context) -> Message:
    config, node, rec = _setup(msg, context)
    if node.role == keys.ROLE_INFERENCE:
        return inference.describe(msg, config, node, rec)
    return describe_reply(msg, node, _worker(config, node, context).describe())


@app.train("round")
@guarded
@forwarded
def train_round(msg: Message, context: Context) -> Message:
    config, node, rec = _setup(msg, context)
    if node.role == keys.ROLE_INFERENCE:
        return inference.answer_round(msg, config, node, rec)
    if node.role != keys.ROLE_CLIENT:
        raise ValueError(f"{keys.MSG_ROUND} sent to the teacher node")
    faults = parse_faults(config.federation.faults)
    if faults.get(node.index) == "error":
        raise RuntimeError(f"injected fault: client {node.index} fails its round")
    round_index = int(rec[keys.ROUND_INDEX])
    targets = rec.get(keys.TARGET_BLOB)
    query_ids = np.asarray(rec[keys.QUERY_IDS], dtype=np.int64)
    evaluate = round_index % config.train.eval_every == 0 or round_index == config.federation.rounds
    client = _worker(config, node, context)
    start_from = None
    if keys.STUDENT_STATE in msg.content.array_records:
        if rec.get(keys.STUDENT_MODEL) != client.model_name:
            raise ValueError(f"global student is a {rec.get(keys.STUDENT_MODEL)!r} model, this client runs {client.model_name!r}")
        start_from = msg.content.array_records[keys.STUDENT_STATE].to_torch_state_dict()
    class_counts = rec.get(keys.CLASS_COUNTS)
    out = client.run_round(
        round_index=round_index, targets=targets or None, query_ids=query_ids, evaluate=evaluate, start_from=start_from,
        class_counts=np.asarray(class_counts, dtype=np.int64) if class_counts else None,
    )
    blob = corrupt(out.logits_blob, faults[node.index]) if node.index in faults else out.logits_blob
    return ok_reply(msg, {keys.CLIENT_ID: node.client_id, keys.LOGITS_BLOB: blob}, out.metrics)


def _teacher_request(msg: Message, context: Context, message_type: str):
    """``(teacher node, round record, output dir)`` of a message only the teacher may get."""
    config, node, rec = _setup(msg, context)
    if node.role != keys.ROLE_TEACHER:
        raise ValueError(f"{message_type} sent to edge client {node.client_id}")
    return _worker(config, node, context), node, rec, _output_dir(context, rec)


def _with_student(reply: Message, student_state) -> Message:
    reply.content[keys.STUDENT_STATE] = ArrayRecord(torch_state_dict=student_state)
    return reply


@app.train("teach")
@guarded
@forwarded
def teach(msg: Message, context: Context) -> Message:
    teacher, node, rec, out = _teacher_request(msg, context, keys.MSG_TEACH)
    refined, metrics, student_state = teacher.teach(round_index=int(rec[keys.ROUND_INDEX]), consensus=rec[keys.CONSENSUS_BLOB], output_dir=out)
    return _with_student(ok_reply(msg, {keys.CLIENT_ID: node.client_id, keys.REFINED_BLOB: refined}, metrics), student_state)


@app.train("restore")
@guarded
@forwarded
def restore(msg: Message, context: Context) -> Message:
    """After a server restart (server/resume.py) or a live unlearning request: the teacher loads a checkpoint
    and sends the global student back, and its logits on ``QUERY_IDS`` when asked (the next round's targets)."""
    teacher, node, rec, out = _teacher_request(msg, context, keys.MSG_RESTORE)
    student_state = teacher.restore(
        round_index=int(rec[keys.RESTORE_ROUND]), gathered=rec.get(keys.GATHERED_BLOB), output_dir=out,
        states_dir=str(rec.get(keys.RESTORE_DIR, "")), keep=bool(rec.get(keys.RESTORE_KEEP, False)),
    )
    fields: dict = {keys.CLIENT_ID: node.client_id}
    if keys.QUERY_IDS in rec:
        fields[keys.REFINED_BLOB] = teacher.answer(np.asarray(rec[keys.QUERY_IDS], dtype=np.int64))
    return _with_student(ok_reply(msg, fields), student_state)


@app.query("finish")
@guarded
@forwarded
def finish(msg: Message, context: Context) -> Message:
    """Save this node's adapters where PeftModel.from_pretrained loads them."""
    config, node, rec = _setup(msg, context)
    if node.role == keys.ROLE_INFERENCE:
        return inference.finish(msg, config, node, rec)
    out = _output_dir(context, rec)
    worker = _worker(config, node, context)
    if node.role == keys.ROLE_TEACHER:
        worker.save(out / "models")
    else:
        worker.save(out / "clients" / node.client_id / "adapter")
    return ok_reply(msg, {keys.CLIENT_ID: node.client_id})


def handlers() -> dict:
    """Message type -> handler, as registered above (what the worker runs for a forwarded message)."""
    return {
        keys.MSG_DESCRIBE: describe, keys.MSG_ROUND: train_round, keys.MSG_TEACH: teach,
        keys.MSG_RESTORE: restore, keys.MSG_FINISH: finish,
    }
