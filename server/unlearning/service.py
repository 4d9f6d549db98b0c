"""The operator API: a TLS gRPC service (proto/unlearn.proto) in front of the request store.

:func:`serve` starts it. Every call is authenticated first (server/unlearning/auth.py), then its
content is checked, and only then is anything stored; a refused call changes nothing in the
ledger or the request store. Calls are verified for this deployment's audience: the key id of the
server's signing public key (auth.py), so a call signed for another service, even one that trusts the
same operator key, is refused. Errors map to gRPC codes:

==========================  ====================  ============================================
error                       code                  when
==========================  ====================  ============================================
MissingSignature            UNAUTHENTICATED       no auth block or signature
OperatorAuthError           PERMISSION_DENIED     untrusted key, bad signature (or signed for another
                                                  deployment's audience), stale timestamp
ReplayedRequest             PERMISSION_DENIED     a submit's nonce was used before
InvalidUnlearnRequest       INVALID_ARGUMENT      empty or overlong field, unknown mode
UnknownClient               NOT_FOUND             the client never took part in a run
UnknownRequest              NOT_FOUND             no request has that id
IdempotencyConflict         ALREADY_EXISTS        the key names a request with other content
==========================  ====================  ============================================

Scheduling: with ``live_run=False`` (``nebula unlearn serve``) a worker thread carries out each
request as soon as it is stored, and resumes unfinished ones at start. With ``live_run=True`` a
running federation calls :meth:`UnlearningServer.run_pending` between rounds instead, so that a
round never sees a half-forgotten client.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc

from nebula.common.run_folder import RunFolder
from nebula.server.exceptions import (
    IdempotencyConflict,
    InvalidUnlearnRequest,
    MissingSignature,
    OperatorAuthError,
    UnknownClient,
    UnknownRequest,
    UnlearningError,
)
from nebula.server.ledger import Ledger
from nebula.server.unlearning.auth import CallAuth, TrustedOperators, audience_of, call_fields, check_call
from nebula.server.unlearning.crypto import load_private_key
from nebula.server.unlearning.executor import Executor
from nebula.server.unlearning.proto import unlearn_pb2 as pb
from nebula.server.unlearning.proto import unlearn_pb2_grpc as pb_grpc
from nebula.server.unlearning.registry import available_modes
from nebula.server.unlearning.requests import STATUSES, RequestStore, UnlearnRequest, check_submission, iso_time

log = logging.getLogger(__name__)

_CODES: tuple[tuple[type[UnlearningError], grpc.StatusCode], ...] = (
    (MissingSignature, grpc.StatusCode.UNAUTHENTICATED),
    (OperatorAuthError, grpc.StatusCode.PERMISSION_DENIED),
    (InvalidUnlearnRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownClient, grpc.StatusCode.NOT_FOUND),
    (UnknownRequest, grpc.StatusCode.NOT_FOUND),
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
)
DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT = 100, 1000


@dataclass(frozen=True)
class ServeConfig:
    """Where the service finds its ledger, keys and certificates, and how it schedules work."""

    ledger: Path  # the federation's ledger.sqlite
    operators: Path  # trusted operators' Ed25519 public keys: a folder of *.pem / *.pub, or one file
    signing_key: Path  # the server's Ed25519 private key (PEM), which signs certificates
    tls_cert: Path  # the server's TLS certificate (PEM), issued by a CA the operators trust
    tls_key: Path  # its private key (PEM)
    host: str = "127.0.0.1"
    port: int = 50061  # 0: any free port (the bound one is returned by start)
    store: Path | None = None  # request store; default: the ledger's own file
    certificates_dir: Path | None = None  # copies of certificates; default: <ledger folder>/certificates
    window_s: float = 300.0  # accepted distance between a call's timestamp and the server's clock
    live_run: bool = False  # True: no worker thread; the federation calls run_pending between rounds

    def validate(self) -> ServeConfig:
        for name in ("ledger", "operators", "signing_key", "tls_cert", "tls_key"):
            if not Path(getattr(self, name)).exists():
                raise ValueError(f"{name}: {getattr(self, name)} does not exist")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {self.window_s}")
        return self


def _answers(method: Callable) -> Callable:
    """Turn the unlearning errors a handler raises into gRPC status codes with their message."""

    @functools.wraps(method)
    def handler(self: UnlearningServicer, request: object, context: grpc.ServicerContext) -> object:
        try:
            with self.lock:
                return method(self, request, context)
        except UnlearningError as exc:
            code = next((c for cls, c in _CODES if isinstance(exc, cls)), grpc.StatusCode.INTERNAL)
            log.warning("%s refused (%s): %s", method.__name__, code.name, exc)
            context.abort(code, str(exc))

    return handler


def _auth(message: pb.OperatorAuth, present: bool) -> CallAuth | None:
    if not present:
        return None
    return CallAuth(
        key_id=message.key_id, timestamp_ms=message.timestamp_ms, nonce=message.nonce, signature=message.signature
    )


# Fields a status reply copies from the stored request as they are; the times are formatted.
_STATUS_FIELDS = (
    "request_id",
    "client_id",
    "mode",
    "reason",
    "status",
    "error",
    "operator_key",
    "idempotency_key",
    "attempts",
    "certificate_json",
)


def to_status(request: UnlearnRequest) -> pb.RequestStatus:
    times = {name: iso_time(getattr(request, name)) for name in ("created_at", "started_at", "finished_at")}
    return pb.RequestStatus(**{name: getattr(request, name) for name in _STATUS_FIELDS}, **times)


class UnlearningServicer(pb_grpc.UnlearningServicer):
    """The three calls. Handlers run one at a time (``lock``): the store and the ledger are SQLite."""

    def __init__(
        self,
        *,
        store: RequestStore,
        ledger: Ledger,
        operators: TrustedOperators,
        audience: str,
        window_s: float,
        on_stored: Callable[[], None],
    ) -> None:
        self.store, self.ledger, self.operators, self.window_s, self.on_stored = (
            store,
            ledger,
            operators,
            window_s,
            on_stored,
        )
        self.audience = audience  # this deployment: key id of the server's signing public key (auth.audience_of)
        self.lock = threading.Lock()

    def _operator(self, method: str, request: object) -> CallAuth:
        auth = _auth(request.auth, request.HasField("auth"))
        check_call(
            self.operators, method, call_fields(method, request), auth, audience=self.audience, window_s=self.window_s
        )
        return auth

    @_answers
    def SubmitUnlearn(self, request: pb.SubmitUnlearnRequest, context: grpc.ServicerContext) -> pb.SubmitUnlearnReply:
        auth = self._operator("SubmitUnlearn", request)
        check_submission(
            client_id=request.client_id,
            reason=request.reason,
            mode=request.mode,
            idempotency_key=request.idempotency_key,
            modes=available_modes(),
        )
        if not self.ledger.knows_client(request.client_id):
            raise UnknownClient(f"client {request.client_id!r} never took part in a run of this ledger")
        stored, created = self.store.submit(
            client_id=request.client_id,
            reason=request.reason,
            mode=request.mode,
            idempotency_key=request.idempotency_key,
            operator_key=auth.key_id,
            nonce=auth.nonce,
        )
        log.info(
            "unlearning request %s %s: %s client %s by %s",
            stored.request_id,
            "stored" if created else "found again",
            stored.mode,
            stored.client_id,
            auth.key_id,
        )
        if created:
            self.on_stored()
        return pb.SubmitUnlearnReply(request_id=stored.request_id, status=stored.status, created=created)

    @_answers
    def GetStatus(self, request: pb.GetStatusRequest, context: grpc.ServicerContext) -> pb.RequestStatus:
        self._operator("GetStatus", request)
        if not request.request_id.strip():
            raise InvalidUnlearnRequest("request_id is empty")
        return to_status(self.store.get(request.request_id))

    @_answers
    def ListRequests(self, request: pb.ListRequestsRequest, context: grpc.ServicerContext) -> pb.ListRequestsReply:
        self._operator("ListRequests", request)
        if request.status and request.status not in STATUSES:
            raise InvalidUnlearnRequest(f"status must be empty or one of {', '.join(STATUSES)}, got {request.status!r}")
        if not 0 <= request.limit <= MAX_LIST_LIMIT:
            raise InvalidUnlearnRequest(
                f"limit must be in [0, {MAX_LIST_LIMIT}] (0: {DEFAULT_LIST_LIMIT}), got {request.limit}"
            )
        found = self.store.list(status=request.status or None, limit=request.limit or DEFAULT_LIST_LIMIT)
        return pb.ListRequestsReply(requests=[to_status(r) for r in found])


class UnlearningServer:
    """The gRPC service, its executor and (unless ``live_run``) the worker thread that drives it."""

    def __init__(self, config: ServeConfig, *, checkpoint: Callable[[str], None] | None = None) -> None:
        self.config = config.validate()
        store_path = config.store or config.ledger
        operators = TrustedOperators(config.operators)
        signing_key = load_private_key(config.signing_key)
        self.audience = audience_of(signing_key)  # what operators sign for: the key id of server-signing.pub
        self.executor = Executor(
            ledger=Ledger(config.ledger),
            store=RequestStore(store_path, nonce_retention_s=2 * config.window_s),
            signing_key=signing_key,
            checkpoint=checkpoint,
            certificates_dir=config.certificates_dir or RunFolder(Path(config.ledger).parent).certificates,
        )
        self._wake, self._stop = threading.Event(), threading.Event()
        self.servicer = UnlearningServicer(
            store=RequestStore(store_path, nonce_retention_s=2 * config.window_s),
            ledger=Ledger(config.ledger),
            operators=operators,
            audience=self.audience,
            window_s=config.window_s,
            on_stored=self._wake.set,
        )
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_UnlearningServicer_to_server(self.servicer, self._grpc)
        self._worker: threading.Thread | None = None
        self.port = 0

    def start(self) -> int:
        """Bind, start serving and (unless live_run) start the worker; returns the bound port."""
        creds = grpc.ssl_server_credentials(
            [(Path(self.config.tls_key).read_bytes(), Path(self.config.tls_cert).read_bytes())]
        )
        address = f"{self.config.host}:{self.config.port}"
        try:
            self.port = self._grpc.add_secure_port(address, creds)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc}") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {address}")
        self._grpc.start()
        if not self.config.live_run:
            self._worker = threading.Thread(target=self._work, name="unlearning-worker", daemon=True)
            self._worker.start()
            self._wake.set()  # resume what a stopped process left, at once
        return self.port

    def run_pending(self) -> list[UnlearnRequest]:
        """Carry out every stored request now: what a live federation calls between rounds."""
        return self.executor.run_pending()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=5.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                live = self.executor.ledger.live_run()
                if live is not None:  # that run carries the requests out between its rounds (federation.unlearn_key)
                    log.info("run %s is live: it carries out the stored requests between rounds", live)
                    continue
                self.executor.run_pending()
            except Exception:
                log.exception("unlearning worker: run_pending failed")

    def wait(self) -> None:
        self._grpc.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self._wake.set()
        self._grpc.stop(grace).wait()
        if self._worker is not None:
            self._worker.join(timeout=grace + 5.0)


def serve(config: ServeConfig, *, checkpoint: Callable[[str], None] | None = None) -> UnlearningServer:
    """Start the operator API (and its worker, unless ``config.live_run``); returns the running server."""
    server = UnlearningServer(config, checkpoint=checkpoint)
    server.start()
    return server
