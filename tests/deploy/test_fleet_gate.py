"""The fleet gate (deploy/fleet_gate.py): the Fleet API passes, everything else is refused.

Unit tests drive the gate's ASGI app with a fake SuperLink (``httpx.MockTransport``). The loopback test
(``e2e``) runs the smoke preset for one round with every SuperNode connected through the gate, then plays an
outsider who holds only ``ca.pem`` and points ``flwr`` at the gate's address: registering a node, listing the
nodes and submitting a run all fail with 403, and the SuperLink's nodes and runs are unchanged.
"""

import http.client
import json
import os
import ssl
import subprocess
import time
from base64 import b64encode

import httpx
import pytest
from starlette.testclient import TestClient

from nebula.deploy.fleet_gate import REFUSED, fleet_gate_app, forward_headers, is_fleet_path, split_address

SUPERLINK = "127.0.0.1:9093"


class FakeSuperLink:
    """Records each request the gate sends on; answers with ``status``, ``headers`` and ``body``."""

    def __init__(self, status=200, headers=(("content-type", "application/protobuf"),), body=b"\x08\x01answer"):
        self.status, self.headers, self.body = status, list(headers), body
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return httpx.Response(self.status, headers=self.headers, stream=httpx.ByteStream(self.body))


def _gate(upstream, **kw) -> TestClient:
    return TestClient(fleet_gate_app(SUPERLINK, transport=httpx.MockTransport(upstream), **kw), base_url="https://gate")


@pytest.mark.parametrize(
    "method,path",
    [
        ("POST", "/v1/control/start-run"),
        ("POST", "/v1/control/register-node"),
        ("POST", "/v1/control/list-nodes"),
        ("POST", "/v1/runtime/pull-messages"),
        ("GET", "/health"),
        ("GET", "/docs"),
        ("GET", "/"),
        ("POST", "/v1/fleet/"),
        ("POST", "/v1/fleetx/pull-messages"),
        ("POST", "/v1/fleet/pull-messages/extra"),
        ("POST", "/v1/fleet/Pull-Messages"),
        ("POST", "/v1/fleet/%2e%2e"),
        ("POST", "//v1/fleet/pull-messages"),
    ],
)
def test_everything_but_the_fleet_api_gets_403_and_never_reaches_the_superlink(method, path):
    upstream = FakeSuperLink()
    with _gate(upstream) as gate:
        r = gate.request(method, path, content=b"\x08\x01")
    assert r.status_code == 403 and r.text == REFUSED
    assert upstream.requests == []


def test_fleet_paths_only_dot_segments_and_escapes_refused():
    assert is_fleet_path("/v1/fleet/push-object") and is_fleet_path("/v1/fleet/send-node-heartbeat")
    for path in ("/v1/fleet/../control/start-run", "/v1/fleet/./x", "/v1/fleet/a/../../control/x", "/v1/fleet"):
        assert not is_fleet_path(path, path.encode())
    # Percent escapes: the decoded path differs from the raw one.
    assert not is_fleet_path("/v1/fleet/push-object", b"/v1/fleet/push%2dobject")


def test_a_fleet_request_is_forwarded_with_body_and_headers_intact():
    body = os.urandom(5 * 1024 * 1024 + 123)  # one array chunk (5 MiB) and the protobuf around it
    signed = {
        "content-type": "application/protobuf",
        "accept": "application/protobuf",
        "flwr-public-key": b64encode(b"public key bytes").decode(),
        "flwr-timestamp": "2026-01-01T00:00:00+00:00",
        "flwr-signature": b64encode(os.urandom(64)).decode(),
        "flwr-version": "1.41.0",
    }
    upstream = FakeSuperLink(
        status=200,
        headers=[("content-type", "application/protobuf"), ("x-flwr", "1"), ("x-flwr", "2"), ("connection", "close")],
        body=b"\x00\x01answer" * 1000,
    )
    with _gate(upstream) as gate:
        r = gate.post(
            "/v1/fleet/push-object?x=1",
            content=body,
            headers={**signed, "x-forwarded-for": "6.6.6.6", "te": "trailers", "proxy-authorization": "x"},
        )
    assert r.status_code == 200 and r.content == b"\x00\x01answer" * 1000
    assert r.headers.get_list("x-flwr") == ["1", "2"] and "connection" not in r.headers
    assert r.headers["content-length"] == str(len(r.content))
    [sent] = upstream.requests
    assert sent.method == "POST" and str(sent.url) == f"https://{SUPERLINK}/v1/fleet/push-object?x=1"
    assert sent.content == body and sent.headers["content-length"] == str(len(body))
    for key, value in signed.items():
        assert sent.headers.get_list(key) == [value], key
    assert sent.headers["host"] == SUPERLINK
    assert sent.headers.get_list("x-forwarded-for") == ["testclient"]  # the peer's own claim is dropped
    assert "te" not in sent.headers and "proxy-authorization" not in sent.headers


@pytest.mark.parametrize("status", [401, 403, 404, 409, 500])
def test_the_superlinks_refusals_come_back_unchanged(status):
    error = json.dumps({"code": 1234, "message": "No SuperNode found with the given public key"}).encode()
    upstream = FakeSuperLink(status=status, headers=[("content-type", "application/json")], body=error)
    with _gate(upstream) as gate:
        r = gate.post("/v1/fleet/activate-node", content=b"\x0a\x02pk")
    assert r.status_code == status and r.content == error and r.headers["content-type"] == "application/json"
    assert len(upstream.requests) == 1


def test_an_unreachable_or_slow_superlink_gives_the_statuses_a_supernode_retries_on():
    def refuse(request):
        raise httpx.ConnectError("connection refused", request=request)

    def stall(request):
        raise httpx.ReadTimeout("timed out", request=request)

    with _gate(refuse) as gate:
        assert gate.post("/v1/fleet/pull-messages", content=b"").status_code == 502
    with _gate(stall) as gate:
        assert gate.post("/v1/fleet/pull-messages", content=b"").status_code == 504


def test_a_body_over_the_limit_gets_413():
    upstream = FakeSuperLink()
    with _gate(upstream, max_body=1000) as gate:
        assert gate.post("/v1/fleet/push-object", content=b"x" * 1001).status_code == 413
        assert gate.post("/v1/fleet/push-object", content=b"x" * 1000).status_code == 200
    assert len(upstream.requests) == 1


def test_hop_by_hop_headers_and_those_connection_names_are_dropped():
    kept = forward_headers(
        [(b"connection", b"keep-alive, x-secret"), (b"x-secret", b"1"), (b"keep-alive", b"5"), (b"flwr-x", b"y")],
        None,
    )
    assert kept == [(b"flwr-x", b"y"), (b"accept-encoding", b"identity")]


def test_split_address():
    assert split_address("0.0.0.0:9092") == ("0.0.0.0", 9092)
    assert split_address("[::1]:9092") == ("::1", 9092)
    for bad in ("9092", "host:", "host:x", ":9092", "host:70000"):
        with pytest.raises(ValueError):
            split_address(bad)


# -- on loopback: a federation behind the gate, and an outsider -------------------------------------------------


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")
    except FileNotFoundError:
        return []


def _raw_status(address: str, ca, method: str, path: str, body: bytes = b"") -> int:
    """One request with ``path`` sent exactly as given (no client-side normalization)."""
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPSConnection(host, int(port), context=ssl.create_default_context(cafile=str(ca)), timeout=30)
    try:
        conn.request(method, path, body=body, headers={"content-type": "application/protobuf"})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def gated(tmp_path_factory, smoke_federation):
    from nebula.deploy.local import CONNECTION, PROJECT_ROOT

    root = tmp_path_factory.mktemp("gated")
    fed, run_id = smoke_federation(root, extra_nodes=["intruder"], overrides={"federation.rounds": 1}, gate=True)
    result: dict = {"fed": fed, "run_id": run_id}
    try:
        result["supernode_argv"] = {
            p.name: _cmdline(p.pid) for p in fed.processes if p.name in ("teacher0", "client0", "client1")
        }
        result["status"] = fed.wait_run(run_id, timeout=900)
        result["nodes_before"] = fed.supernodes()
        result["runs_before"] = sorted(int(r["run-id"]) for r in fed.flwr("list", CONNECTION)["runs"])

        # The outsider: ca.pem and the gate's address, nothing else (an unregistered key of its own).
        home = root / "outsider"
        home.mkdir()
        (home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f"address = {json.dumps(fed.gate_address)}\nroot-certificates = {json.dumps(str(fed.material.ca_cert))}\n"
        )
        config = home / "run-config.toml"
        config.write_text('preset = "smoke"\noverrides = "federation.rounds=1"\n')
        env = {**fed.env(), "FLWR_HOME": str(home)}
        attempts = {
            "register": ["supernode", "register", str(fed.material.supernode_pubs["intruder"]), CONNECTION],
            "list": ["supernode", "list", CONNECTION],
            "run": ["run", str(PROJECT_ROOT), CONNECTION, "--run-config", str(config)],
        }
        result["outsider"] = {}
        for what, args in attempts.items():
            done = subprocess.run(
                [fed._bin("flwr"), *args, "--format", "json"],
                env=env,
                cwd=home,
                capture_output=True,
                text=True,
                timeout=180,
            )
            out = done.stdout
            answer = json.loads(out[out.index("{") :]) if "{" in out else {"raw": out + done.stderr}
            result["outsider"][what] = (done.returncode, answer)
        ca = fed.material.ca_cert
        result["raw"] = {
            path: _raw_status(fed.gate_address, ca, "POST", path, b"\x08\x01")
            for path in ("/v1/control/list-runs", "/v1/fleet/../control/list-runs", "/v1/runtime/get-run")
        }
        result["raw"]["GET /health"] = _raw_status(fed.gate_address, ca, "GET", "/health")
        # A Fleet API call from the outsider passes the gate and is refused by the SuperLink: not registered.
        result["raw"]["fleet activate-node"] = _raw_status(fed.gate_address, ca, "POST", "/v1/fleet/activate-node")
        time.sleep(1)
        result["nodes_after"] = fed.supernodes()
        result["runs_after"] = sorted(int(r["run-id"]) for r in fed.flwr("list", CONNECTION)["runs"])
    finally:
        result["survivors"] = fed.stop()
    return result


@pytest.mark.e2e
def test_the_run_finishes_with_every_supernode_behind_the_gate(gated):
    fed = gated["fed"]
    assert gated["status"]["status"] == "finished:completed", gated["status"]
    assert fed.gate is not None and fed.gate_address != fed.address
    for name, argv in gated["supernode_argv"].items():
        assert argv[argv.index("--superlink") + 1] == fed.gate_address, (name, argv)
    metrics = [json.loads(line) for line in fed.run_folder.metrics.read_text().splitlines()]
    assert [m["round"] for m in metrics] == [1] and metrics[0]["accepted"] == 2
    assert gated["survivors"] == [] and not fed.gate.alive()


@pytest.mark.e2e
def test_an_outsider_at_the_gate_can_neither_register_nor_list_nor_run(gated):
    for what, (code, answer) in gated["outsider"].items():
        assert answer.get("success") is False, (what, code, answer)
        assert "403 Forbidden" in answer.get("error-message", ""), (what, answer)
    assert set(gated["nodes_after"]) == set(gated["nodes_before"])  # same registered nodes: none added
    assert gated["runs_after"] == gated["runs_before"] == [gated["run_id"]]  # no new run
    raw = gated["raw"]
    assert raw["/v1/control/list-runs"] == raw["/v1/fleet/../control/list-runs"] == raw["/v1/runtime/get-run"] == 403
    assert raw["GET /health"] == 403
    assert raw["fleet activate-node"] not in (200, 403)  # reached the SuperLink, which refused it
    log = gated["fed"].log_path("fleet-gate").read_text()
    for path in ("/v1/control/register-node", "/v1/control/list-nodes", "/v1/control/start-run"):
        assert f"refused POST {path}" in log
