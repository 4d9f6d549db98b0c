"""The operator API end to end on loopback with TLS: the CLI submits, polls, lists and verifies;
every refused call gets its gRPC code and a clear message and changes nothing stored; a call signed for
one deployment is refused by another that trusts the same operator key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula.cli.main import main
from nebula.deploy.certs import write_unlearning_material
from nebula.server.unlearning.auth import audience_of, call_fields, sign_call
from nebula.server.unlearning.certificate import verify_certificate
from nebula.server.unlearning.crypto import load_private_key
from nebula.server.unlearning.proto import unlearn_pb2 as pb
from nebula.server.unlearning.proto import unlearn_pb2_grpc as pb_grpc
from nebula.server.unlearning.service import ServeConfig, UnlearningServer

from .conftest import TARGET, build_ledger, other_rows, snapshot


def _start(material, ledger: Path, *, live_run: bool, signing_key: Path | None = None) -> UnlearningServer:
    server = UnlearningServer(
        ServeConfig(
            ledger=ledger,
            operators=material.operators,
            signing_key=signing_key or material.signing_key,
            tls_cert=material.tls_cert,
            tls_key=material.tls_key,
            port=0,
            live_run=live_run,
        )
    )
    server.start()
    return server


@pytest.fixture
def service(material, ledger_path):
    server = _start(material, ledger_path, live_run=False)  # carries out requests at once
    yield server
    server.stop()


@pytest.fixture
def idle_service(material, ledger_path):
    server = _start(
        material, ledger_path, live_run=True
    )  # stores requests, carries out none: state changes only by submits
    yield server
    server.stop()


PURGE_TARGET = ["unlearn", TARGET, "--reason", "r", "--mode", "purge"]
OTHER_SERVER = Ed25519PrivateKey.generate()  # the signing key of a deployment these tests do not run


def _operator_args(server, material, key=None, server_key=None) -> list[str]:
    """The CLI's operator options; without ``server_key``, the CLI finds server-signing.pub next to the CA."""
    return [
        "--server",
        f"127.0.0.1:{server.port}",
        "--ca",
        str(material.ca_cert),
        "--key",
        str(key or material.operator_key),
        *(["--server-key", str(server_key)] if server_key else []),
    ]


def _stub(server, material):
    channel = grpc.secure_channel(
        f"127.0.0.1:{server.port}", grpc.ssl_channel_credentials(material.ca_cert.read_bytes())
    )
    return pb_grpc.UnlearningStub(channel)


def _signed(m, key_path, method="SubmitUnlearn", message=None, *, server_key=None, **sign_kwargs):
    """``message`` signed with the operator key at ``key_path`` for the deployment whose signing public key
    is ``server_key`` (default: the material's server, ``m.signing_pub``)."""
    message = message or pb.SubmitUnlearnRequest(
        client_id=TARGET, reason="art. 17", mode="purge", idempotency_key="k-1"
    )
    audience = audience_of(server_key or m.signing_pub)
    auth = sign_call(load_private_key(key_path), method, call_fields(method, message), audience=audience, **sign_kwargs)
    message.auth.CopyFrom(
        pb.OperatorAuth(key_id=auth.key_id, timestamp_ms=auth.timestamp_ms, nonce=auth.nonce, signature=auth.signature)
    )
    return message


def test_cli_submits_waits_lists_and_verifies(service, material, ledger_path, tmp_path, capsys):
    others = other_rows(ledger_path)
    cert_path = tmp_path / "cert.json"
    ops = _operator_args(service, material)
    request = ["--reason", "GDPR art. 17 #12", "--mode", "reaggregate", "--request-key", "ticket-12"]
    rc = main(["unlearn", TARGET, *request, "--wait", "--out", str(cert_path), *ops])
    out = capsys.readouterr().out
    assert rc == 0, out
    request_id = re.search(r"request ([0-9a-f]{32}) queued", out).group(1)
    assert f"request {request_id}: done (reaggregate client {TARGET}, attempts 1)" in out
    assert "4 ledger rows removed, 4 round consensus recomputed" in out

    cert = verify_certificate(cert_path, material.signing_pub)
    assert cert["request_id"] == request_id and cert["client_id"] == TARGET and cert["reason"] == "GDPR art. 17 #12"
    assert cert["ledger_rows_removed"]["count"] == 4 and len(cert["consensus"]) == 4
    assert json.loads((ledger_path.parent / "certificates" / f"{request_id}.json").read_text()) == cert
    assert other_rows(ledger_path) == others

    assert main(["unlearn", "verify", str(cert_path), "--server-key", str(material.signing_pub)]) == 0
    assert f"valid: request {request_id}, reaggregate of client {TARGET}" in capsys.readouterr().out

    assert main(["unlearn", "status", request_id, "--json", *ops]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "done" and status["attempts"] == 1 and status["idempotency_key"] == "ticket-12"

    assert main(["unlearn", "list", "--status", "done", *ops]) == 0
    listing = capsys.readouterr().out
    assert request_id in listing and "1 request(s)" in listing

    # the same key and content again: the same request, nothing new done
    assert main(["unlearn", "submit", TARGET, *request, *ops]) == 0
    assert f"request {request_id} done (already submitted with this key)" in capsys.readouterr().out


def test_verify_exit_codes(service, material, tmp_path, capsys):
    wrong = tmp_path / "other.pub"
    wrong.write_bytes(material.tls_cert.read_bytes())  # a certificate, not an Ed25519 key
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert main(["unlearn", "verify", str(bad), "--server-key", str(material.signing_pub)]) == 2
    assert main(["unlearn", "verify", str(tmp_path / "none.json"), "--server-key", str(material.signing_pub)]) == 2
    assert "no such file" in capsys.readouterr().err


def test_a_tampered_certificate_fails_verify(service, material, tmp_path, capsys):
    cert_path = tmp_path / "cert.json"
    assert main([*PURGE_TARGET, "--wait", "--out", str(cert_path), *_operator_args(service, material)]) == 0
    cert = json.loads(cert_path.read_text())
    cert["ledger_rows_removed"]["count"] = 0
    cert_path.write_text(json.dumps(cert))
    assert main(["unlearn", "verify", str(cert_path), "--server-key", str(material.signing_pub)]) == 1
    assert "bad signature" in capsys.readouterr().err


REFUSALS = {
    "unknown client": (
        lambda m: _signed(
            m,
            m.operator_key,
            message=pb.SubmitUnlearnRequest(client_id="ghost", reason="r", mode="purge", idempotency_key="k"),
        ),
        grpc.StatusCode.NOT_FOUND,
        "client 'ghost' never took part",
    ),
    "empty client id": (
        lambda m: _signed(
            m,
            m.operator_key,
            message=pb.SubmitUnlearnRequest(client_id="", reason="r", mode="purge", idempotency_key="k"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "client_id is empty",
    ),
    "unknown mode": (
        lambda m: _signed(
            m,
            m.operator_key,
            message=pb.SubmitUnlearnRequest(client_id=TARGET, reason="r", mode="forget-harder", idempotency_key="k"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "unknown unlearning mode 'forget-harder'",
    ),
    "no reason": (
        lambda m: _signed(
            m,
            m.operator_key,
            message=pb.SubmitUnlearnRequest(client_id=TARGET, reason="", mode="purge", idempotency_key="k"),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "reason is empty",
    ),
    "unsigned": (
        lambda m: pb.SubmitUnlearnRequest(client_id=TARGET, reason="r", mode="purge", idempotency_key="k"),
        grpc.StatusCode.UNAUTHENTICATED,
        "not signed",
    ),
    "untrusted key": (lambda m: _signed(m, m.stranger_key), grpc.StatusCode.PERMISSION_DENIED, "is not trusted"),
    "bad signature": (lambda m: _resigned_for_other_client(m), grpc.StatusCode.PERMISSION_DENIED, "bad signature"),
    "signed for another deployment": (
        lambda m: _signed(m, m.operator_key, server_key=OTHER_SERVER),
        grpc.StatusCode.PERMISSION_DENIED,
        "bad signature for operator key",
    ),
    "stale timestamp": (
        lambda m: _signed(m, m.operator_key, timestamp_ms=1_000),
        grpc.StatusCode.PERMISSION_DENIED,
        "outside the 300 s window",
    ),
}


def _resigned_for_other_client(m):
    message = _signed(m, m.operator_key)
    message.client_id = "client-2"  # signature was over client-1
    return message


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_submissions_change_nothing(idle_service, material, ledger_path, case):
    build, code, message = REFUSALS[case]
    before = snapshot(ledger_path)  # ledger tables and request store tables alike
    with pytest.raises(grpc.RpcError) as refused:
        _stub(idle_service, material).SubmitUnlearn(build(material), timeout=10)
    assert refused.value.code() == code and message in refused.value.details()
    assert snapshot(ledger_path) == before


def test_a_replayed_submission_is_refused(idle_service, material, ledger_path):
    stub, message = _stub(idle_service, material), _signed(material, material.operator_key)
    first = stub.SubmitUnlearn(message, timeout=10)
    assert first.created and first.status == "queued"
    after_first = snapshot(ledger_path)
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitUnlearn(message, timeout=10)
    assert (
        refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        and "replayed request: nonce" in refused.value.details()
    )
    assert snapshot(ledger_path) == after_first
    again = stub.SubmitUnlearn(
        _signed(material, material.operator_key), timeout=10
    )  # a fresh signature: idempotent, same id
    assert again.request_id == first.request_id and not again.created


def test_a_call_signed_for_another_deployment_names_this_servers_audience(idle_service, material, ledger_path):
    before = snapshot(ledger_path)
    with pytest.raises(grpc.RpcError) as refused:
        _stub(idle_service, material).SubmitUnlearn(
            _signed(material, material.operator_key, server_key=OTHER_SERVER), timeout=10
        )
    details = refused.value.details()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and "signed for another deployment" in details
    assert idle_service.audience == audience_of(material.signing_pub) and idle_service.audience in details
    assert snapshot(ledger_path) == before


def test_a_request_replayed_to_a_second_deployment_is_refused(idle_service, material, ledger_path, tmp_path):
    """Two services trust the same operator key and differ in their signing keys: a submit the first
    accepted, replayed to the second within the window (a nonce the second never saw), is refused there."""
    second_keys = write_unlearning_material(tmp_path / "deployment-b")
    second_ledger = build_ledger(tmp_path / "deployment-b" / "run" / "ledger.sqlite")
    second = _start(material, second_ledger, live_run=True, signing_key=second_keys.signing_key)
    try:
        assert second.audience != idle_service.audience == audience_of(material.signing_pub)
        message = _signed(material, material.operator_key)  # signed for the first deployment
        accepted = _stub(idle_service, material).SubmitUnlearn(message, timeout=10)
        assert accepted.created and accepted.status == "queued"
        before = snapshot(second_ledger)
        with pytest.raises(grpc.RpcError) as refused:
            _stub(second, material).SubmitUnlearn(message, timeout=10)  # same TLS CA: only the audience differs
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        details = refused.value.details()
        assert "bad signature" in details and "signed for another deployment" in details and second.audience in details
        assert snapshot(second_ledger) == before  # nothing stored at the second deployment
        # the same operator, signing for the second deployment, is accepted there
        fresh = _signed(material, material.operator_key, server_key=second_keys.signing_pub)
        assert _stub(second, material).SubmitUnlearn(fresh, timeout=10).created
    finally:
        second.stop()


def test_same_key_other_content_is_already_exists(idle_service, material, ledger_path):
    stub = _stub(idle_service, material)
    stub.SubmitUnlearn(_signed(material, material.operator_key), timeout=10)
    before = snapshot(ledger_path, tables=("unlearn_requests", "contributions", "consensus"))
    other = pb.SubmitUnlearnRequest(client_id="client-2", reason="art. 17", mode="purge", idempotency_key="k-1")
    with pytest.raises(grpc.RpcError) as refused:
        stub.SubmitUnlearn(_signed(material, material.operator_key, message=other), timeout=10)
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS and "idempotency key 'k-1'" in refused.value.details()
    assert snapshot(ledger_path, tables=("unlearn_requests", "contributions", "consensus")) == before


def test_live_run_defers_work_to_run_pending(idle_service, material, ledger_path):
    reply = _stub(idle_service, material).SubmitUnlearn(_signed(material, material.operator_key), timeout=10)
    assert idle_service.executor.store.get(reply.request_id).status == "queued"
    [done] = idle_service.run_pending()  # what the federation calls between rounds
    assert done.request_id == reply.request_id and done.status == "done"
    assert idle_service.run_pending() == []


def test_while_a_run_holds_the_lease_the_service_leaves_requests_to_it(material, ledger_path):
    import time

    from nebula.server.ledger import Ledger

    ledger = Ledger(ledger_path)
    ledger.mark_live("live-run", for_seconds=600)  # a run started with federation.unlearn_key
    server = _start(material, ledger_path, live_run=False)
    try:
        reply = _stub(server, material).SubmitUnlearn(_signed(material, material.operator_key), timeout=10)
        time.sleep(2.0)  # the worker woke up for the submit and saw the lease
        assert server.executor.store.get(reply.request_id).status == "queued"
        ledger.clear_live("live-run")  # the run ended: the service takes the request over (within its 5 s poll)
        deadline = time.monotonic() + 30
        while server.executor.store.get(reply.request_id).status != "done" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.executor.store.get(reply.request_id).status == "done"
    finally:
        server.stop()
        ledger.close()


def test_cli_refusals_exit_2_with_the_reason(idle_service, material, capsys):
    ops = _operator_args(idle_service, material)
    assert main(["unlearn", "ghost", "--reason", "r", "--mode", "purge", *ops]) == 2
    assert "NOT_FOUND: client 'ghost' never took part" in capsys.readouterr().err
    assert main([*PURGE_TARGET, *_operator_args(idle_service, material, material.stranger_key)]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    wrong = material.stranger_key.parent / "server-signing.pub"  # another deployment's signing public key
    assert main([*PURGE_TARGET, *_operator_args(idle_service, material, server_key=wrong)]) == 2
    err = capsys.readouterr().err
    assert "PERMISSION_DENIED" in err and "signed for another deployment" in err and idle_service.audience in err
    assert main(["unlearn", "list", *_operator_args(idle_service, material, server_key=material.signing_pub)]) == 0
    assert "request(s)" in capsys.readouterr().out
    assert main(["unlearn", "status", "nope", *ops]) == 2
    assert "NOT_FOUND: no unlearning request has id 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_mode:
        main(["unlearn", TARGET, "--reason", "r", "--mode", "forget-harder", *ops])
    assert bad_mode.value.code == 2


def test_unreachable_service_exits_1(material, capsys):
    ops = [
        "--server",
        "127.0.0.1:1",
        "--ca",
        str(material.ca_cert),
        "--key",
        str(material.operator_key),
        "--timeout",
        "1",
    ]
    assert main(["unlearn", "list", *ops]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_reads_are_signed_and_checked_too(idle_service, material):
    stub = _stub(idle_service, material)
    with pytest.raises(grpc.RpcError) as unsigned:
        stub.ListRequests(pb.ListRequestsRequest(), timeout=10)
    assert unsigned.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as stranger:
        stub.GetStatus(
            _signed(material, material.stranger_key, "GetStatus", pb.GetStatusRequest(request_id="x")), timeout=10
        )
    assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as bad_filter:
        stub.ListRequests(
            _signed(material, material.operator_key, "ListRequests", pb.ListRequestsRequest(status="nope")), timeout=10
        )
    assert (
        bad_filter.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "status must be empty or one of" in bad_filter.value.details()
    )
    with pytest.raises(grpc.RpcError) as empty_id:
        stub.GetStatus(
            _signed(material, material.operator_key, "GetStatus", pb.GetStatusRequest(request_id="")), timeout=10
        )
    assert empty_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT
