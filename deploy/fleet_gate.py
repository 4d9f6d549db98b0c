"""The fleet gate: a TLS reverse proxy in front of the SuperLink that forwards the Fleet API and nothing else.

Flower 1.41 serves the Control API (``flwr run``, ``flwr ls``, ``flwr supernode register``: no
authentication without Flower Enterprise), the Fleet API (the SuperNodes) and the Runtime API on one
HTTPS server, under ``/v1/control/``, ``/v1/fleet/`` and ``/v1/runtime/``. The SuperLink therefore
listens on loopback only, and the nodes reach it through this gate (``nebula fleet-gate``):

* a request whose path is a Fleet API path, ``/v1/fleet/NAME`` (NAME: lower-case letters, digits and
  ``-``; no ``..``, no percent escapes, no other segment), goes to the SuperLink over HTTPS, its
  certificate verified against the federation's CA; the method, the query, the body and every header
  (the SuperNode's ``flwr-public-key``, ``flwr-timestamp`` and ``flwr-signature`` included) pass
  unchanged, except the hop-by-hop headers, ``Host`` and incoming ``Forwarded`` / ``X-Forwarded-*``
  (the gate sets ``X-Forwarded-For`` to the real peer). The answer comes back with its status,
  headers (hop-by-hop ones dropped) and raw body (content encoding untouched);
* every other path gets ``403`` with a short text, and is logged (method, path, peer);
* a body over ``max_body`` bytes gets ``413``; a SuperLink that cannot be reached gets ``502`` and one
  that does not answer within the timeout ``504``: the statuses on which a SuperNode retries (Flower's
  ``make_simple_http_retry_invoker``), so nodes ride out a SuperLink restart behind a running gate.

What the SuperNode sends (flwr/supernode/fleet_http_client.py, flwr/supercore/protobuf/client.py):
unary ``POST`` requests, ``content-type: application/protobuf``, one protobuf message a body (array
chunks of at most 5 MiB, ``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``, plus framing), a 30 s client timeout
(5 s for heartbeats), HTTP/1.1, no streaming. The gate buffers each body (up to ``max_body``, default
64 MiB) and each answer, and gives the SuperLink 60 s: the node's own timeout fires first.

The gate does not authenticate nodes itself: the SuperLink still checks each request's signature
against the registered keys (``--enable-supernode-auth``, which also refuses self-registration over
the Fleet API). What the gate removes is everyone's access to the Control and Runtime APIs.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

log = logging.getLogger("nebula.fleet_gate")

FLEET_PREFIX = "/v1/fleet/"
FLEET_PATH = re.compile(r"/v1/fleet/[a-z0-9][a-z0-9-]{0,63}")
MAX_BODY = 64 * 1024 * 1024
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
REFUSED = "403 Forbidden: this address serves the Flower Fleet API (SuperNodes) only.\n"

# RFC 9110 section 7.6.1 (plus the legacy proxy ones); ``host`` and ``content-length`` are set anew.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
    }
)
NOT_FORWARDED = frozenset({"host", "content-length", "forwarded", "x-real-ip"})


def is_fleet_path(path: str, raw_path: bytes | None = None) -> bool:
    """True for a Fleet API path and nothing else (no dot segments, escapes, doubled slashes)."""
    if raw_path is not None and raw_path != path.encode("ascii", "replace"):
        return False  # percent escapes: the decoded and the raw path differ
    return FLEET_PATH.fullmatch(path) is not None


def _dropped(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """Hop-by-hop header names, with those the ``Connection`` header lists."""
    names = set(HOP_BY_HOP)
    for key, value in headers:
        if key.lower() == b"connection":
            names.update(t.strip().lower() for t in value.decode("latin-1").split(",") if t.strip())
    return names


def forward_headers(headers: list[tuple[bytes, bytes]], peer: str | None) -> list[tuple[bytes, bytes]]:
    """The request headers that go to the SuperLink (order and duplicates kept)."""
    drop = _dropped(headers) | NOT_FORWARDED
    kept = [
        (k, v)
        for k, v in headers
        if (name := k.decode("latin-1").lower()) not in drop and not name.startswith("x-forwarded-")
    ]
    if not any(k.lower() == b"accept-encoding" for k, _ in kept):
        kept.append((b"accept-encoding", b"identity"))  # else httpx would ask for gzip on the node's behalf
    if peer:
        kept += [(b"x-forwarded-for", peer.encode("latin-1")), (b"x-forwarded-proto", b"https")]
    return kept


def answer_headers(headers: list[tuple[bytes, bytes]], length: int) -> list[tuple[bytes, bytes]]:
    """The SuperLink's answer headers that go back to the node, with the body's length."""
    drop = _dropped(headers) | {"content-length"}
    kept = [(k, v) for k, v in headers if k.decode("latin-1").lower() not in drop]
    return kept + [(b"content-length", str(length).encode())]


def upstream_context(ca_cert: str | Path) -> ssl.SSLContext:
    """TLS to the SuperLink: its certificate must chain to ``ca_cert`` and name the host dialled."""
    return ssl.create_default_context(cafile=str(ca_cert))


def fleet_gate_app(
    superlink: str,
    *,
    verify: ssl.SSLContext | bool = True,
    max_body: int = MAX_BODY,
    timeout: httpx.Timeout = TIMEOUT,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The gate's ASGI app: Fleet API requests to ``https://SUPERLINK`` (``HOST:PORT``), 403 for the rest.

    ``transport`` replaces the network (tests give an ``httpx.MockTransport``).
    """
    base = f"https://{superlink}"
    state: dict[str, httpx.AsyncClient] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            verify=verify, timeout=timeout, transport=transport, follow_redirects=False, trust_env=False
        ) as client:
            state["client"] = client
            yield
            state.clear()

    async def gate(request: Request) -> Response:
        peer = request.client.host if request.client else None
        path = request.url.path
        if not is_fleet_path(path, request.scope.get("raw_path")):
            log.warning("refused %s %s from %s", request.method, path[:200], peer)
            return PlainTextResponse(REFUSED, status_code=403)
        body = await _read_body(request, max_body)
        if body is None:
            return PlainTextResponse(f"413: body over {max_body} bytes\n", status_code=413)
        query = request.scope.get("query_string", b"")
        url = f"{base}{path}" + (f"?{query.decode('latin-1')}" if query else "")
        client = state["client"]
        outgoing = client.build_request(
            request.method, url, headers=forward_headers(request.headers.raw, peer), content=bytes(body)
        )
        try:
            upstream = await client.send(outgoing, stream=True)
            try:
                raw = b"".join([chunk async for chunk in upstream.aiter_raw()])
            finally:
                await upstream.aclose()
        except httpx.TimeoutException as exc:
            log.warning("SuperLink timed out on %s %s: %r", request.method, path, exc)
            return PlainTextResponse("504: the SuperLink did not answer in time\n", status_code=504)
        except httpx.HTTPError as exc:
            log.warning("SuperLink unreachable for %s %s: %r", request.method, path, exc)
            return PlainTextResponse("502: the SuperLink cannot be reached\n", status_code=502)
        response = Response(content=raw, status_code=upstream.status_code)
        response.raw_headers = answer_headers(upstream.headers.raw, len(raw))
        return response

    return Starlette(routes=[Route("/{path:path}", gate, methods=METHODS)], lifespan=lifespan)


async def _read_body(request: Request, max_body: int) -> bytearray | None:
    """The request's body, or None as soon as it (declared or streamed) is over ``max_body`` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_body:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_body:
            return None
    return body


def split_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as ``(host, port)``; ValueError naming the text."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r}: expected HOST:PORT")
    return host, int(port)


def serve(listen: str, superlink: str, certs: str | Path, *, max_body: int = MAX_BODY) -> None:
    """Run the gate until SIGTERM / SIGINT: TLS with ``CERTS/server.pem`` + ``server.key`` on ``listen``
    (``HOST:PORT``), forwarding to ``superlink`` (``HOST:PORT``) whose certificate ``CERTS/ca.pem`` verifies.

    The SuperLink's certificate must name the host given in ``superlink`` (``nebula certs`` puts
    ``localhost`` and ``127.0.0.1`` in it by default; keep them in ``--hosts``).
    """
    import uvicorn

    certs = Path(certs)
    missing = [str(p) for p in (certs / "server.pem", certs / "server.key", certs / "ca.pem") if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing: {', '.join(missing)} (made by `nebula certs {certs}`)")
    host, port = split_address(listen)
    split_address(superlink)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = fleet_gate_app(superlink, verify=upstream_context(certs / "ca.pem"), max_body=max_body)
    log.info("fleet gate on https://%s:%d -> https://%s (Fleet API only)", host, port, superlink)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(certs / "server.pem"),
        ssl_keyfile=str(certs / "server.key"),
        proxy_headers=False,  # the peer's own X-Forwarded-For is never believed
        server_header=False,
        access_log=False,  # heartbeats and polls every few seconds; refusals are logged above
        log_level="info",
    )
    uvicorn.Server(config).run()
