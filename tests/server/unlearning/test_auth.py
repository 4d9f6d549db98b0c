"""Operator signatures: a call verifies only with its own fields, a trusted key, a fresh timestamp, and at the
deployment it was signed for (its audience)."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula.deploy.certs import write_public_key
from nebula.server.exceptions import MissingSignature, OperatorAuthError
from nebula.server.unlearning.auth import (
    SIGNING_DOMAIN,
    TrustedOperators,
    audience_of,
    check_audience,
    check_call,
    sign_call,
)
from nebula.server.unlearning.crypto import key_id

FIELDS = {"client_id": "client-1", "reason": "r", "mode": "purge", "idempotency_key": "k"}
NOW = 1_700_000_000_000
SERVER = Ed25519PrivateKey.generate()  # this deployment's signing key
AUDIENCE = audience_of(SERVER)


@pytest.fixture
def operator(tmp_path):
    key = Ed25519PrivateKey.generate()
    write_public_key(tmp_path / "ops" / "alice.pub", key)
    return key, TrustedOperators(tmp_path / "ops")


def _check(trusted, auth, *, method="SubmitUnlearn", fields=FIELDS, now=NOW, audience=AUDIENCE):
    return check_call(trusted, method, fields, auth, audience=audience, window_s=300, now_ms=now)


def _sign(key, method, fields, **kwargs):
    """sign_call for this deployment, unless the test names another audience."""
    return sign_call(key, method, fields, **{"audience": AUDIENCE, **kwargs})


def test_a_signed_call_passes(operator):
    key, trusted = operator
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    assert _check(trusted, auth) == key_id(key.public_key()) == auth.key_id
    assert len(auth.nonce) == 32 and _sign(key, "SubmitUnlearn", FIELDS).nonce != auth.nonce


def test_unsigned_calls(operator):
    _, trusted = operator
    with pytest.raises(MissingSignature, match="not signed"):
        _check(trusted, None)
    auth = _sign(Ed25519PrivateKey.generate(), "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(MissingSignature):
        _check(trusted, auth.__class__(auth.key_id, auth.timestamp_ms, auth.nonce, b""))


def test_untrusted_key(operator):
    _, trusted = operator
    auth = _sign(Ed25519PrivateKey.generate(), "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(OperatorAuthError, match=f"{auth.key_id} is not trusted"):
        _check(trusted, auth)


@pytest.mark.parametrize(
    "method, fields",
    [
        ("SubmitUnlearn", {**FIELDS, "client_id": "client-2"}),
        ("SubmitUnlearn", {**FIELDS, "mode": "reaggregate"}),
        ("GetStatus", FIELDS),
    ],
)
def test_a_signature_covers_the_fields_and_the_method(operator, method, fields):
    key, trusted = operator
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(OperatorAuthError, match="bad signature"):
        _check(trusted, auth, method=method, fields=fields)


def test_nonce_and_timestamp_are_signed(operator):
    key, trusted = operator
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    for changed in (
        auth.__class__(auth.key_id, NOW + 1, auth.nonce, auth.signature),
        auth.__class__(auth.key_id, NOW, "f" * 32, auth.signature),
    ):
        with pytest.raises(OperatorAuthError, match="bad signature"):
            _check(trusted, changed)


def test_stale_or_future_timestamps(operator):
    key, trusted = operator
    for offset_s in (-301, 301):
        auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW + offset_s * 1000)
        with pytest.raises(OperatorAuthError, match="outside the 300 s window"):
            _check(trusted, auth)
    assert _check(trusted, _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW - 299_000))


def test_short_nonce_and_odd_signature_length(operator):
    key, trusted = operator
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW, nonce="short")
    with pytest.raises(OperatorAuthError, match="nonce must have 16 to 128"):
        _check(trusted, auth)
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(OperatorAuthError, match="65 bytes"):
        _check(trusted, auth.__class__(auth.key_id, NOW, auth.nonce, auth.signature + b"x"))


def test_trust_folder_is_read_on_every_call(operator, tmp_path):
    key, trusted = operator
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    (tmp_path / "ops" / "alice.pub").rename(tmp_path / "ops" / "alice.revoked")
    with pytest.raises(OperatorAuthError, match="not trusted"):
        _check(trusted, auth)


def test_trust_folder_must_hold_keys(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        TrustedOperators(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nobody could submit"):
        TrustedOperators(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.pem").write_text("junk")
    with pytest.raises(ValueError, match="x.pem"):
        TrustedOperators(tmp_path / "bad")


def test_a_call_signed_for_another_deployment_is_refused(operator, tmp_path):
    key, trusted = operator
    other = audience_of(Ed25519PrivateKey.generate())  # another service that trusts the same operator key
    auth = _sign(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW, audience=other)
    assert _check(trusted, auth, audience=other) == auth.key_id
    with pytest.raises(OperatorAuthError, match="bad signature") as refused:
        _check(trusted, auth)
    assert "signed for another deployment" in str(refused.value) and AUDIENCE in str(refused.value)


def test_the_audience_is_the_key_id_of_the_signing_public_key(tmp_path):
    pub = write_public_key(tmp_path / "server-signing.pub", SERVER)
    assert audience_of(pub) == audience_of(pub.read_bytes()) == key_id(SERVER.public_key()) == AUDIENCE
    assert SIGNING_DOMAIN == b"nebula-operator-call/2\n"
    with pytest.raises(ValueError, match="audience must be the key id"):
        _sign(Ed25519PrivateKey.generate(), "SubmitUnlearn", FIELDS, audience="deployment-a")
    assert check_audience(AUDIENCE) == AUDIENCE
    with pytest.raises(ValueError, match="not a readable PEM public key"):
        audience_of(tmp_path / "none.pub")
