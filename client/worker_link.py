"""The ClientApp's side of the long-lived local worker (:mod:`nebula.client.worker`): find it, forward to it.

Kept apart from the worker itself so that the ClientApp imports nothing of the worker's (which
runs the ClientApp's handlers) and no import cycle joins the two. The protocol is described in
:mod:`nebula.client.worker`.
"""

from __future__ import annotations

import logging
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

from flwr.app import Context, Message

from nebula.common import keys

log = logging.getLogger(__name__)

OK, ERROR = b"ok", b"error"
MAX_SOCKET_PATH = 100  # AF_UNIX paths are limited to 107 bytes on Linux
_IN_WORKER = False  # set in the worker process (enter_worker): its handlers run the message themselves


class WorkerUnavailable(ConnectionError):
    """No worker answers on the socket: the ClientApp handles the message itself."""


def key_path(socket_path: str | Path) -> Path:
    return Path(f"{socket_path}.key")


def worker_socket(context: Context) -> str | None:
    """The worker socket this node's messages go to, or None (handle them in the ClientApp)."""
    if _IN_WORKER:
        return None
    value = context.node_config.get(keys.NODE_WORKER_SOCKET)
    return str(value) if value else None


def forward(msg: Message, context: Context, socket_path: str) -> Message:
    """Have the worker at ``socket_path`` handle ``msg``; updates ``context.state`` in place; the reply."""
    from flwr.common.serde import context_to_proto, message_from_proto, message_to_proto, recorddict_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    try:
        authkey = key_path(socket_path).read_bytes()
        conn = Client(socket_path, family="AF_UNIX", authkey=authkey)
    except (OSError, EOFError) as exc:
        raise WorkerUnavailable(f"no worker on {socket_path}: {exc}") from exc
    except AuthenticationError as exc:  # a misconfigured node, not a missing worker: say so, do not fall back
        raise RuntimeError(f"the worker on {socket_path} refused the key in {key_path(socket_path)}: {exc}") from exc
    with conn:
        try:
            conn.send_bytes(message_to_proto(msg).SerializeToString())
            conn.send_bytes(context_to_proto(context).SerializeToString())
            status = conn.recv_bytes()
            if status != OK:
                raise RuntimeError(f"worker on {socket_path}: {conn.recv_bytes().decode(errors='replace')}")
            reply_bytes, state_bytes = conn.recv_bytes(), conn.recv_bytes()
        except (EOFError, OSError) as exc:
            raise RuntimeError(
                f"the worker on {socket_path} stopped during the request ({type(exc).__name__}: {exc})"
            ) from exc
    context.state = recorddict_from_proto(ProtoRecordDict.FromString(state_bytes))
    return message_from_proto(ProtoMessage.FromString(reply_bytes))


def enter_worker() -> None:
    """Mark this process as the worker: its handlers run messages themselves instead of forwarding them."""
    global _IN_WORKER
    _IN_WORKER = True
