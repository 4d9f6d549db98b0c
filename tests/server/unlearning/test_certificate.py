"""Certificates: built from an outcome, signed, verified.

Tampering, other keys and bad files are refused with the reason.
"""

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula.server.exceptions import CertificateError, MalformedCertificate
from nebula.server.ledger import ConsensusRevision, Tombstone
from nebula.server.unlearning.arithmetic import digest_of
from nebula.server.unlearning.base import UnlearnOutcome
from nebula.server.unlearning.certificate import build_certificate, sign_certificate, verify_certificate
from nebula.server.unlearning.crypto import canonical_json, key_id
from nebula.server.unlearning.requests import UnlearnRequest

KEY = Ed25519PrivateKey.generate()
REQUEST = UnlearnRequest(
    "req-1", "sha256:op", "k1", "client-1", "art. 17", "reaggregate", "running", 1.7e9, 1.7e9, None, 1, "", ""
)
OUTCOME = UnlearnOutcome(
    tombstones=[
        Tombstone("req-1", "run-a", 1, "client-1", "aa" * 32, 160, 11.0),
        Tombstone("req-1", "run-a", 2, "client-1", "bb" * 32, 160, 11.0),
    ],
    revisions=[
        ConsensusRevision("req-1", "run-a", 1, "11" * 32, "22" * 32, ["client-0", "client-1"], ["client-0"], "none"),
        ConsensusRevision("req-1", "run-b", 3, "33" * 32, None, ["client-1", "client-2"], [], "none"),
    ],
)


@pytest.fixture
def signed():
    return sign_certificate(build_certificate(REQUEST, OUTCOME, created_at=1.7e9 + 5), KEY)


def test_certificate_says_what_was_done(signed):
    assert signed["request_id"] == "req-1" and signed["client_id"] == "client-1" and signed["mode"] == "reaggregate"
    assert signed["runs"] == ["run-a", "run-b"]
    assert signed["rounds_affected"] == [
        {"run_id": "run-a", "round": 1},
        {"run_id": "run-a", "round": 2},
        {"run_id": "run-b", "round": 3},
    ]
    removed = signed["ledger_rows_removed"]
    assert removed["count"] == 2 and removed["payloads_sha256"] == digest_of(["aa" * 32, "bb" * 32])
    assert [c["after_sha256"] for c in signed["consensus"]] == ["22" * 32, None]
    assert signed["verification"] is None and signed["models"] is None
    assert signed["created_at"].endswith("Z") and signed["server_key"] == key_id(KEY.public_key())


def test_verify_accepts_a_dict_a_file_and_pem_bytes(signed, tmp_path):
    from cryptography.hazmat.primitives import serialization

    pem = KEY.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "server.pub").write_bytes(pem)
    (tmp_path / "cert.json").write_text(json.dumps(signed, indent=2))
    assert verify_certificate(signed, KEY.public_key()) == signed
    assert verify_certificate(tmp_path / "cert.json", tmp_path / "server.pub") == signed
    assert verify_certificate(str(tmp_path / "cert.json"), pem) == signed


@pytest.mark.parametrize(
    "field, value",
    [
        ("client_id", "client-2"),
        ("ledger_rows_removed", {"count": 0, "payloads_sha256": "", "rows": []}),
        ("verification", {"forgotten_acc": "0.3"}),
        ("created_at", "2020-01-01T00:00:00.000Z"),
    ],
)
def test_a_changed_field_breaks_the_signature(signed, field, value):
    tampered = {**signed, field: value}
    with pytest.raises(CertificateError, match="bad signature.*changed after signing"):
        verify_certificate(tampered, KEY.public_key())


def test_an_added_field_or_a_float_breaks_it_too(signed):
    with pytest.raises(CertificateError, match="bad signature"):
        verify_certificate({**signed, "extra": "x"}, KEY.public_key())
    with pytest.raises(CertificateError, match="tampered.*float"):
        verify_certificate({**signed, "verification": {"auc": 0.5}}, KEY.public_key())


def test_another_key_is_named(signed):
    other = Ed25519PrivateKey.generate().public_key()
    with pytest.raises(CertificateError, match=f"wrong key.*{key_id(KEY.public_key())}.*{key_id(other)}"):
        verify_certificate(signed, other)
    forged = sign_certificate(
        {**signed, "client_id": "client-9"}, Ed25519PrivateKey.generate()
    )  # re-signed by a stranger
    with pytest.raises(CertificateError, match="wrong key"):
        verify_certificate(forged, KEY.public_key())


def test_malformed_certificates_and_keys(signed, tmp_path):
    bad = tmp_path / "bad.json"
    cases = [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON object was expected"),
        (json.dumps({k: v for k, v in signed.items() if k != "consensus"}), r"missing fields \['consensus'\]"),
        (json.dumps({**signed, "format": "other/9"}), "format 'other/9'"),
        (json.dumps({**signed, "signature": "abc"}), "malformed signature: expected"),
        (json.dumps({**signed, "signature": {"algorithm": "ed25519", "value": "!!"}}), "not base64"),
        (json.dumps({**signed, "signature": {"algorithm": "ed25519", "value": "AAAA"}}), "3 bytes"),
    ]
    for text, message in cases:
        bad.write_text(text)
        with pytest.raises(MalformedCertificate, match=message):
            verify_certificate(bad, KEY.public_key())
    with pytest.raises(MalformedCertificate, match="cannot read"):
        verify_certificate(tmp_path / "missing.json", KEY.public_key())
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(MalformedCertificate, match="server public key.*junk.pem"):
        verify_certificate(signed, tmp_path / "junk.pem")


def test_canonical_json_is_stable_and_refuses_floats():
    assert canonical_json({"b": [1, None], "a": "é"}) == '{"a":"é","b":[1,null]}'.encode()
    with pytest.raises(TypeError, match="floats"):
        canonical_json({"a": [0.5]})
