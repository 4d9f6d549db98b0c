"""The operator's side of the API: a TLS channel and a signature on every call.

Used by ``nebula unlearn``; usable as a library::

    with OperatorClient("unlearn.example.org:50061", ca="ca.pem", key="operator.key",
                        server_key="server-signing.pub") as api:
        reply = api.submit("jetson-07", reason="GDPR art. 17 request #1234", mode="reaggregate",
                           idempotency_key="ticket-1234")
        status = api.status(reply.request_id)

Every call is signed for one deployment, its audience (server/unlearning/auth.py): the key id of that
service's signing public key, ``server-signing.pub``. Give the key file (``server_key``) or the key id
(``audience``); with neither, ``server-signing.pub`` next to the CA file is used if it is there (the
layout ``nebula certs`` writes).
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc

from nebula.server.unlearning.auth import audience_of, call_fields, check_audience, sign_call
from nebula.server.unlearning.crypto import load_private_key
from nebula.server.unlearning.proto import unlearn_pb2 as pb
from nebula.server.unlearning.proto import unlearn_pb2_grpc as pb_grpc

RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
SERVER_KEY_NAME = "server-signing.pub"  # the server's signing public key, as `nebula certs` names it


def server_key_beside(ca: str | Path) -> Path | None:
    """``server-signing.pub`` in the CA certificate's folder, if there is one there."""
    candidate = Path(ca).parent / SERVER_KEY_NAME
    return candidate if candidate.is_file() else None


class OperatorCallError(RuntimeError):
    """A call was refused or failed; ``code`` is the gRPC status code, the message the server's reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details = code, details


class OperatorClient:
    """Signed calls to the unlearning service.

    Parameters
    ----------
    target : ``host:port`` of the service.
    ca : PEM file of the CA that issued the server's TLS certificate.
    key : the operator's Ed25519 private key (PEM).
    server_key : the server's Ed25519 signing public key (PEM, ``server-signing.pub``): the calls are signed
        for its deployment (``audience_of``). Default: ``server-signing.pub`` next to ``ca``, if it exists.
    audience : the deployment's audience itself (``sha256:<hex>`` key id), instead of ``server_key``.
    timeout_s : deadline of each call.
    attempts : tries of a call whose server is unreachable (each one signed anew; a submit keeps its
        idempotency key, so a retry never creates a second request).
    """

    def __init__(
        self,
        target: str,
        *,
        ca: str | Path,
        key: str | Path,
        server_key: str | Path | None = None,
        audience: str | None = None,
        timeout_s: float = 10.0,
        attempts: int = 3,
    ) -> None:
        self.key = load_private_key(key)
        try:
            root = Path(ca).read_bytes()
        except OSError as exc:
            raise ValueError(f"CA certificate {ca}: {exc}") from exc
        self.audience = _audience(ca=ca, server_key=server_key, audience=audience)
        self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root))
        self.stub = pb_grpc.UnlearningStub(self.channel)
        self.timeout_s, self.attempts = timeout_s, attempts

    def __enter__(self) -> OperatorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def submit(self, client_id: str, *, reason: str, mode: str, idempotency_key: str) -> pb.SubmitUnlearnReply:
        message = pb.SubmitUnlearnRequest(
            client_id=client_id, reason=reason, mode=mode, idempotency_key=idempotency_key
        )
        return self._call("SubmitUnlearn", message)

    def status(self, request_id: str) -> pb.RequestStatus:
        return self._call("GetStatus", pb.GetStatusRequest(request_id=request_id))

    def list(self, *, status: str = "", limit: int = 0) -> list[pb.RequestStatus]:
        return list(self._call("ListRequests", pb.ListRequestsRequest(status=status, limit=limit)).requests)

    def _call(self, method: str, message: object) -> object:
        for attempt in range(1, self.attempts + 1):
            auth = sign_call(self.key, method, call_fields(method, message), audience=self.audience)
            message.auth.CopyFrom(
                pb.OperatorAuth(
                    key_id=auth.key_id, timestamp_ms=auth.timestamp_ms, nonce=auth.nonce, signature=auth.signature
                )
            )
            try:
                return getattr(self.stub, method)(message, timeout=self.timeout_s)
            except grpc.RpcError as exc:
                if exc.code() not in RETRIED or attempt == self.attempts:
                    raise OperatorCallError(exc.code(), exc.details() or "") from None
                time.sleep(0.5 * attempt)
        raise AssertionError("unreachable")


def _audience(*, ca: str | Path, server_key: str | Path | None, audience: str | None) -> str:
    if server_key is not None and audience is not None:
        raise ValueError("give the server's signing public key (server_key) or its audience, not both")
    if audience is not None:
        return check_audience(audience)
    if server_key is None:
        server_key = server_key_beside(ca)
        if server_key is None:
            raise ValueError(
                f"the server's signing public key is needed (server_key, or audience): the calls are signed for "
                f"that deployment; there is no {SERVER_KEY_NAME} next to the CA certificate {ca}"
            )
    return audience_of(server_key)
