"""Operator authentication: every call is signed with a trusted operator's Ed25519 key.

What is signed (``signing_bytes``)::

    b"nebula-operator-call/1\\n" + canonical_json({"method": ..., "fields": {...},
                                                  "key_id": ..., "timestamp_ms": ..., "nonce": ...})

``fields`` are the call's own fields (for a submit: client_id, reason, mode, idempotency_key),
so a signature cannot be moved to another call or another method. The server checks, in this
order, and refuses with the first problem found:

1. the call carries an auth block with a key id, a 64-byte signature and a nonce of 16 to 128
   characters (:class:`MissingSignature` / :class:`OperatorAuthError`);
2. the key id names a key in the trusted operators' folder (untrusted key);
3. the signature verifies (bad signature);
4. the timestamp is within ``window_s`` of the server's clock (stale or future call).

A submit's nonce is then stored with the request and never accepted again
(server/unlearning/requests.py). Reads (status, list) are not journaled, so their replay within
the window is possible and harmless: it changes nothing and tells the replayer nothing new.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nebula.server.exceptions import MissingSignature, OperatorAuthError
from nebula.server.unlearning.crypto import SIGNATURE_BYTES, key_id, load_public_key, sign, signature_ok

SIGNING_DOMAIN = b"nebula-operator-call/1\n"
NONCE_CHARS = (16, 128)
KEY_SUFFIXES = (".pem", ".pub")
# The fields of each call (server/unlearning/proto/unlearn.proto) that its signature covers: all but auth.
SIGNED_FIELDS = {
    "SubmitUnlearn": ("client_id", "reason", "mode", "idempotency_key"),
    "GetStatus": ("request_id",),
    "ListRequests": ("status", "limit"),
}


@dataclass(frozen=True)
class CallAuth:
    key_id: str
    timestamp_ms: int
    nonce: str
    signature: bytes


def call_fields(method: str, message: object) -> dict[str, str | int]:
    """The signed fields of a call, read from its request message (or any object with those attributes)."""
    return {name: getattr(message, name) for name in SIGNED_FIELDS[method]}


def _signed_object(method: str, fields: Mapping[str, str | int], *, key: str, timestamp_ms: int, nonce: str) -> dict:
    return {"method": method, "fields": dict(fields), "key_id": key, "timestamp_ms": int(timestamp_ms), "nonce": nonce}


def sign_call(
    private_key: Ed25519PrivateKey,
    method: str,
    fields: Mapping[str, str | int],
    *,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> CallAuth:
    """The auth block an operator attaches to a call (now, with a fresh random nonce, by default)."""
    key = key_id(private_key.public_key())
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    obj = _signed_object(method, fields, key=key, timestamp_ms=ts, nonce=nonce)
    return CallAuth(
        key_id=key, timestamp_ms=ts, nonce=nonce, signature=sign(private_key, domain=SIGNING_DOMAIN, obj=obj)
    )


class TrustedOperators:
    """The operators' public keys the server trusts: every ``*.pem`` / ``*.pub`` file in a folder, or one file.

    Read again on every call, so adding or deleting a key file takes effect at once.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise ValueError(f"trusted operator keys: {self.path} does not exist")
        if not self.keys():
            raise ValueError(
                f"trusted operator keys: no {' or '.join(KEY_SUFFIXES)} file in {self.path}; nobody could submit"
            )

    def keys(self) -> dict[str, Ed25519PublicKey]:
        files = (
            [self.path] if self.path.is_file() else sorted(p for p in self.path.iterdir() if p.suffix in KEY_SUFFIXES)
        )
        keys = {}
        for file in files:
            key = load_public_key(file)  # a broken key file is the server admin's error: raise, naming it
            keys[key_id(key)] = key
        return keys


def check_call(
    trusted: TrustedOperators,
    method: str,
    fields: Mapping[str, str | int],
    auth: CallAuth | None,
    *,
    window_s: float,
    now_ms: int | None = None,
) -> str:
    """Authenticate a call; returns the operator's key id. Raises as the module docstring lists."""
    if auth is None or not auth.signature or not auth.key_id:
        raise MissingSignature(f"{method}: the call is not signed; sign it with a trusted operator key")
    if len(auth.signature) != SIGNATURE_BYTES:
        raise OperatorAuthError(
            f"{method}: signature has {len(auth.signature)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}"
        )
    if not NONCE_CHARS[0] <= len(auth.nonce) <= NONCE_CHARS[1]:
        raise OperatorAuthError(
            f"{method}: nonce must have {NONCE_CHARS[0]} to {NONCE_CHARS[1]} characters, got {len(auth.nonce)}"
        )
    key = trusted.keys().get(auth.key_id)
    if key is None:
        raise OperatorAuthError(f"{method}: operator key {auth.key_id} is not trusted by this server")
    obj = _signed_object(method, fields, key=auth.key_id, timestamp_ms=auth.timestamp_ms, nonce=auth.nonce)
    if not signature_ok(key, auth.signature, domain=SIGNING_DOMAIN, obj=obj):
        raise OperatorAuthError(
            f"{method}: bad signature for operator key {auth.key_id} (the call's fields do not match what was signed)"
        )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    skew_s = (auth.timestamp_ms - now) / 1000
    if abs(skew_s) > window_s:
        raise OperatorAuthError(
            f"{method}: timestamp is {skew_s:+.0f} s from the server's clock, outside the {window_s:.0f} s window "
            "(a replayed call, or a clock to fix)"
        )
    return auth.key_id
