"""Operator signatures: a call verifies only with its own fields, a trusted key, and a fresh timestamp."""

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from nebula.deploy.certs import write_public_key
from nebula.server.exceptions import MissingSignature, OperatorAuthError
from nebula.server.unlearning.auth import TrustedOperators, check_call, sign_call
from nebula.server.unlearning.crypto import key_id

FIELDS = {"client_id": "client-1", "reason": "r", "mode": "purge", "idempotency_key": "k"}
NOW = 1_700_000_000_000


@pytest.fixture
def operator(tmp_path):
    key = Ed25519PrivateKey.generate()
    write_public_key(tmp_path / "ops" / "alice.pub", key)
    return key, TrustedOperators(tmp_path / "ops")


def _check(trusted, auth, *, method="SubmitUnlearn", fields=FIELDS, now=NOW):
    return check_call(trusted, method, fields, auth, window_s=300, now_ms=now)


def test_a_signed_call_passes(operator):
    key, trusted = operator
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    assert _check(trusted, auth) == key_id(key.public_key()) == auth.key_id
    assert len(auth.nonce) == 32 and sign_call(key, "SubmitUnlearn", FIELDS).nonce != auth.nonce


def test_unsigned_calls(operator):
    _, trusted = operator
    with pytest.raises(MissingSignature, match="not signed"):
        _check(trusted, None)
    auth = sign_call(Ed25519PrivateKey.generate(), "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(MissingSignature):
        _check(trusted, auth.__class__(auth.key_id, auth.timestamp_ms, auth.nonce, b""))


def test_untrusted_key(operator):
    _, trusted = operator
    auth = sign_call(Ed25519PrivateKey.generate(), "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
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
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(OperatorAuthError, match="bad signature"):
        _check(trusted, auth, method=method, fields=fields)


def test_nonce_and_timestamp_are_signed(operator):
    key, trusted = operator
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    for changed in (
        auth.__class__(auth.key_id, NOW + 1, auth.nonce, auth.signature),
        auth.__class__(auth.key_id, NOW, "f" * 32, auth.signature),
    ):
        with pytest.raises(OperatorAuthError, match="bad signature"):
            _check(trusted, changed)


def test_stale_or_future_timestamps(operator):
    key, trusted = operator
    for offset_s in (-301, 301):
        auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW + offset_s * 1000)
        with pytest.raises(OperatorAuthError, match="outside the 300 s window"):
            _check(trusted, auth)
    assert _check(trusted, sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW - 299_000))


def test_short_nonce_and_odd_signature_length(operator):
    key, trusted = operator
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW, nonce="short")
    with pytest.raises(OperatorAuthError, match="nonce must have 16 to 128"):
        _check(trusted, auth)
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
    with pytest.raises(OperatorAuthError, match="65 bytes"):
        _check(trusted, auth.__class__(auth.key_id, NOW, auth.nonce, auth.signature + b"x"))


def test_trust_folder_is_read_on_every_call(operator, tmp_path):
    key, trusted = operator
    auth = sign_call(key, "SubmitUnlearn", FIELDS, timestamp_ms=NOW)
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
