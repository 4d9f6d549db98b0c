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
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from nebula.client import worker_link
from nebula.client.adversary import poison
from nebula.client.faults import corrupt, parse_faults
from nebula.client.messages import answer, describe_reply, guarded, read_request
from nebula.client.node import NodeIdentity
from nebula.client.runtime import inference
from nebula.common import keys
from nebula.common.config import NebulaConfig
from nebula.common.messages import (
    DescribeRequest,
    FinishReply,
    FinishRequest,
    RestoreReply,
    RestoreRequest,
    RoundReply,
    RoundRequest,
    TeachReply,
    TeachRequest,
)
from nebula.common.run_folder import RunFolder

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


def _handler(register):
    """Register the handler with ``register`` (``app.query(name)`` or ``app.train(name)``), guarded and forwarded."""

    def decorate(handler):
        return register(guarded(forwarded(handler)))

    return decorate


def _setup(msg: Message, context: Context, kind: type):
    """``(request, node)`` of a message of kind ``kind``; sets torch's threads for a training role."""
    request, node = read_request(msg, context, kind)
    if node.role == keys.ROLE_INFERENCE:
        return request, node  # onnxruntime takes train.threads itself; no torch here
    import torch  # here, not at the top: see the module docstring

    config = request.envelope.config
    threads = (
        (config.train.teacher_threads or os.cpu_count()) if node.role == keys.ROLE_TEACHER else config.train.threads
    )
    if threads:
        torch.set_num_threads(threads)
    return request, node


def _run_folder(context: Context, request) -> RunFolder:
    """The run folder: the node config's ``output-dir`` (a deployment's node writes its own), else the server's."""
    return RunFolder(
        Path(str(context.node_config.get(keys.NODE_OUTPUT_DIR, request.envelope.output_dir or "runs/latest")))
    )


def _worker(config: NebulaConfig, node: NodeIdentity, context: Context):
    from nebula.client.edge import EdgeClient  # imports torch: see the module docstring
    from nebula.client.teacher import TeacherNode

    return TeacherNode(config, context) if node.role == keys.ROLE_TEACHER else EdgeClient(config, node.index, context)


def _numpy_state(state) -> dict:
    """A torch state dict as name -> numpy array, as the typed messages carry it."""
    return {name: tensor.detach().cpu().numpy() for name, tensor in state.items()}


@_handler(app.query("describe"))
def describe(msg: Message, context: Context) -> Message:
    request, node = _setup(msg, context, DescribeRequest)
    if node.role == keys.ROLE_INFERENCE:
        return inference.describe(msg, request, node)
    return describe_reply(msg, node, _worker(request.envelope.config, node, context).describe())


@_handler(app.train("round"))
def train_round(msg: Message, context: Context) -> Message:
    request, node = _setup(msg, context, RoundRequest)
    if node.role == keys.ROLE_INFERENCE:
        return inference.answer_round(msg, request, node)
    if node.role != keys.ROLE_CLIENT:
        raise ValueError(f"{keys.MSG_ROUND} sent to the teacher node")
    config, r = request.envelope.config, request.round_index
    faults = parse_faults(config.federation.faults)
    if faults.get(node.index) == "error":
        raise RuntimeError(f"injected fault: client {node.index} fails its round")
    evaluate = r % config.train.eval_every == 0 or r == config.federation.rounds
    client = _worker(config, node, context)
    start_from = None
    if request.student is not None:
        if request.student_model != client.model_name:
            raise ValueError(
                f"global student is a {request.student_model!r} model, this client runs {client.model_name!r}"
            )
        import torch

        start_from = {name: torch.from_numpy(array) for name, array in request.student.items()}
    out = client.run_round(
        round_index=r,
        targets=request.targets,
        query_ids=request.query_ids,
        evaluate=evaluate,
        start_from=start_from,
        class_counts=np.asarray(request.class_counts, dtype=np.int64) if request.class_counts else None,
    )
    blob = poison(  # a simulated adversary (client/adversary.py) rewrites its honest answer on the way out
        out.logits_blob,
        spec=config.federation.adversaries,
        client_index=node.index,
        round_index=r,
        seed=config.data.seed,
        dtype=config.federation.wire_dtype,
    )
    blob = corrupt(blob, faults[node.index]) if node.index in faults else blob
    return answer(msg, RoundReply(node.client_id, blob, out.metrics))


def _teacher_request(msg: Message, context: Context, kind: type):
    """``(teacher node, its identity, the request, run folder)`` of a message only the teacher may get."""
    request, node = _setup(msg, context, kind)
    if node.role != keys.ROLE_TEACHER:
        raise ValueError(f"{kind.TYPE} sent to edge client {node.client_id}")
    return _worker(request.envelope.config, node, context), node, request, _run_folder(context, request)


@_handler(app.train("teach"))
def teach(msg: Message, context: Context) -> Message:
    teacher, node, request, folder = _teacher_request(msg, context, TeachRequest)
    out = teacher.teach(round_index=request.round_index, consensus=request.consensus, output_dir=folder.root)
    return answer(
        msg, TeachReply(node.client_id, out.refined, out.metrics, _numpy_state(out.student_state), out.checkpoint)
    )


@_handler(app.train("restore"))
def restore(msg: Message, context: Context) -> Message:
    """After a server restart (server/resume.py) or a live unlearning request: the teacher loads a checkpoint
    and sends the global student back, and its logits on the request's query ids when asked (the next
    round's targets)."""
    teacher, node, request, folder = _teacher_request(msg, context, RestoreRequest)
    student_state = teacher.restore(
        round_index=request.restore_round,
        gathered=request.gathered,
        output_dir=folder.root,
        states_dir=request.restore_dir,
        keep=request.keep,
    )
    refined = teacher.answer(request.query_ids) if request.query_ids is not None else None
    return answer(msg, RestoreReply(node.client_id, refined, _numpy_state(student_state)))


@_handler(app.query("finish"))
def finish(msg: Message, context: Context) -> Message:
    """Save this node's adapters where PeftModel.from_pretrained loads them."""
    request, node = _setup(msg, context, FinishRequest)
    if node.role == keys.ROLE_INFERENCE:
        return inference.finish(msg, request, node)
    folder = _run_folder(context, request)
    worker = _worker(request.envelope.config, node, context)
    if node.role == keys.ROLE_TEACHER:
        worker.save(folder.models)
    else:
        worker.save(folder.client_adapter(node.client_id))
    return answer(msg, FinishReply(node.client_id))


def handlers() -> dict:
    """Message type -> handler, as registered above (what the worker runs for a forwarded message)."""
    return {
        keys.MSG_DESCRIBE: describe,
        keys.MSG_ROUND: train_round,
        keys.MSG_TEACH: teach,
        keys.MSG_RESTORE: restore,
        keys.MSG_FINISH: finish,
    }
