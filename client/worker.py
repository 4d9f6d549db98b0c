"""A long-lived local worker beside a SuperNode: the training roles without a process start per message.

Flower starts a fresh ``flwr-clientapp`` process for every message, and each one would import
torch, transformers and PEFT (about 8 s here) and load its models again. A node started with
``worker-socket='PATH'`` in its node config has its ClientApp (:mod:`nebula.client.app`) forward each
message, with the node's context, over a Unix socket to this process (``nebula worker --socket
PATH``), which keeps the imports and the models loaded and runs the very same handlers. The reply
and the updated context state go back to Flower as if the ClientApp had computed them: the state
stays Flower's (the context travels both ways), so restarting a worker loses warm caches only.

If the socket is absent or refuses the connection, the ClientApp logs it and handles the message
itself, as without a worker. A worker that fails during a request gives an error reply naming it.

Protocol: ``multiprocessing.connection`` over AF_UNIX with its HMAC challenge on a random key written
next to the socket (``PATH.key``, mode 0600: only the node's user can talk to the worker). One request
per connection, as raw byte frames (``send_bytes``: nothing is unpickled): the message and the context
as Flower's own protobuf serialization; the answer ``ok``, the reply, the context state, or ``error``
and a text naming what failed.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
from pathlib import Path

from nebula.client import app
from nebula.client.worker_link import ERROR, MAX_SOCKET_PATH, OK, enter_worker, key_path
from nebula.common import keys

log = logging.getLogger(__name__)


def _handle(message_bytes: bytes, context_bytes: bytes) -> tuple[bytes, bytes]:
    from flwr.common.serde import context_from_proto, message_from_proto, message_to_proto, recorddict_to_proto
    from flwr.proto.message_pb2 import Context as ProtoContext
    from flwr.proto.message_pb2 import Message as ProtoMessage

    handlers = app.handlers()
    msg = message_from_proto(ProtoMessage.FromString(message_bytes))
    context = context_from_proto(ProtoContext.FromString(context_bytes))
    handler = handlers.get(msg.metadata.message_type)
    log.info("handling %s of run %s%s", msg.metadata.message_type, msg.metadata.run_id, _round_of(msg))
    if handler is None:
        raise ValueError(
            f"no handler for message type {msg.metadata.message_type!r}; known: {', '.join(sorted(handlers))}"
        )
    reply = handler(msg, context)
    return message_to_proto(reply).SerializeToString(), recorddict_to_proto(context.state).SerializeToString()


def _round_of(msg) -> str:
    """`` (round N)`` for a message that names its round, else ""."""
    record = msg.content.config_records.get(keys.ROUND) if msg.has_content() else None
    return f" (round {record[keys.ROUND_INDEX]})" if record is not None and keys.ROUND_INDEX in record else ""


def serve(socket_path: str | Path, *, max_requests: int | None = None) -> None:
    """Answer forwarded messages on ``socket_path`` until killed (or after ``max_requests``)."""
    path = Path(socket_path)
    if len(str(path)) > MAX_SOCKET_PATH:
        raise ValueError(
            f"worker socket path {path} is {len(str(path))} characters; AF_UNIX allows about {MAX_SOCKET_PATH}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # a stale socket of an earlier worker
    t0 = time.perf_counter()
    import peft  # noqa: F401
    import torch  # noqa: F401  - the point of the worker: imported once, not per message
    import transformers  # noqa: F401

    enter_worker()
    key = key_path(path)
    authkey = secrets.token_bytes(32)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(authkey)
    log.info("worker ready on %s (imports %.1f s)", path, time.perf_counter() - t0)
    served = 0
    with Listener(str(path), family="AF_UNIX", authkey=authkey) as listener:
        while max_requests is None or served < max_requests:
            try:
                conn = listener.accept()
            except (OSError, EOFError, AuthenticationError) as exc:  # a client that failed the challenge
                log.warning("refused a connection on %s: %s", path, exc)
                continue
            with conn:
                started = time.perf_counter()
                try:
                    message_bytes, context_bytes = conn.recv_bytes(), conn.recv_bytes()
                    reply, state = _handle(message_bytes, context_bytes)
                    log.info("handled a message in %.1f s", time.perf_counter() - started)
                    for part in (OK, reply, state):
                        conn.send_bytes(part)
                except Exception as exc:
                    log.exception("request failed")
                    try:
                        conn.send_bytes(ERROR)
                        conn.send_bytes(f"{type(exc).__name__}: {exc}".encode())
                    except OSError:
                        pass
            served += 1
