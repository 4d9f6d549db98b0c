"""Operator authentication: every call is signed with a trusted operator's Ed25519 key.

What is signed::

    b"nebula-operator-call/2\\n" + canonical_json({"method": ..., "fields": {...}, "audience": ...,
                                                  "key_id": ..., "timestamp_ms": ..., "nonce": ...})

``fields`` are the call's own fields (for a submit: client_id, reason, mode, idempotency_key),
so a signature cannot be moved to another call or another method.

``audience`` is the deployment the call is meant for: the key id (:func:`~nebula.server.unlearning.crypto.key_id`)
of that unlearning service's certificate-signing public key (``server-signing.pub``, written by
``nebula certs``; operators hold it anyway, to verify certificates). :func:`audience_of` computes it.
It is not sent: the operator signs with the audience of the service they address, and the service
verifies with its own (computed from its ``--signing-key``). So a call signed for deployment A does
not verify at deployment B, even when B trusts the same operator key: without it, a call captured
from A could be replayed to B within the time window (B has never seen its nonce). Version 1 of the
domain (no audience) is not accepted any more: its signatures fail as bad signatures.

The server checks, in this order, and refuses with the first problem found:

1. the call carries an auth block with a key id, a 64-byte signature and a nonce of 16 to 128
   characters (:class:`MissingSignature` / :class:`OperatorAuthError`);
2. the key id names a key in the trusted operators' folder (untrusted key);
3. the signature verifies for this server's audience (bad signature: the call was signed for another
   deployment, or its fields, method, timestamp or nonce are not those signed);
4. the timestamp is within ``window_s`` of the server's clock (stale or future call).

A submit's nonce is then stored with the request and never accepted again
(server/unlearning/requests.py). Reads (status, list) are not journaled, so their replay within
the window is possible and harmless: it changes nothing and tells the replayer nothing new.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nebula.server.exceptions import MissingSignature, OperatorAuthError
from nebula.server.unlearning.crypto import SIGNATURE_BYTES, key_id, load_public_key, sign, signature_ok

SIGNING_DOMAIN = b"nebula-operator-call/2\n"
AUDIENCE_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")  # what key_id returns
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


def audience_of(server_signing_key: str | Path | bytes | Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """The audience of a deployment: the key id of its certificate-signing public key.

    ``server_signing_key``: the public key (object, PEM bytes or file: ``server-signing.pub``), or the
    private key object itself (what the service holds). Raises ValueError naming an unreadable file.
    """
    if isinstance(server_signing_key, Ed25519PrivateKey):
        return key_id(server_signing_key.public_key())
    return key_id(load_public_key(server_signing_key))


def check_audience(audience: str) -> str:
    """``audience`` if it is a key id (``sha256:`` and 64 hex digits); ValueError otherwise."""
    if not isinstance(audience, str) or not AUDIENCE_PATTERN.fullmatch(audience):
        raise ValueError(
            f"audience must be the key id of the server's signing public key (sha256:<64 hex>), got {audience!r}"
        )
    return audience


def _signed_object(
    method: str, fields: Mapping[str, str | int], *, audience: str, key: str, timestamp_ms: int, nonce: str
) -> dict:
    return {
        "method": method,
        "fields": dict(fields),
        "audience": audience,
        "key_id": key,
        "timestamp_ms": int(timestamp_ms),
        "nonce": nonce,
    }


def sign_call(
    private_key: Ed25519PrivateKey,
    method: str,
    fields: Mapping[str, str | int],
    *,
    audience: str,
    timestamp_ms: int | None = None,
    nonce: str | None = None,
) -> CallAuth:
    """The auth block an operator attaches to a call for the deployment ``audience`` (:func:`audience_of`),
    now and with a fresh random nonce by default."""
    key = key_id(private_key.public_key())
    ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
    nonce = secrets.token_hex(16) if nonce is None else nonce
    obj = _signed_object(method, fields, audience=check_audience(audience), key=key, timestamp_ms=ts, nonce=nonce)
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
    audience: str,
    window_s: float,
    now_ms: int | None = None,
) -> str:
    """Authenticate a call made to the deployment ``audience`` (this server's own, :func:`audience_of` of its
    signing key); returns the operator's key id. Raises as the module docstring lists."""
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
    obj = _signed_object(
        method, fields, audience=audience, key=auth.key_id, timestamp_ms=auth.timestamp_ms, nonce=auth.nonce
    )
    if not signature_ok(key, auth.signature, domain=SIGNING_DOMAIN, obj=obj):
        raise OperatorAuthError(
            f"{method}: bad signature for operator key {auth.key_id} (signed for another deployment, or the call's "
            f"fields do not match what was signed); this server's audience is {audience}, the key id of its "
            "signing public key (server-signing.pub): sign for it"
        )
    now = int(time.time() * 1000) if now_ms is None else now_ms
    skew_s = (auth.timestamp_ms - now) / 1000
    if abs(skew_s) > window_s:
        raise OperatorAuthError(
            f"{method}: timestamp is {skew_s:+.0f} s from the server's clock, outside the {window_s:.0f} s window "
            "(a replayed call, or a clock to fix)"
        )
    return auth.key_id
