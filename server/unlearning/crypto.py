"""Ed25519 keys, key ids and canonical JSON: what operator signatures and certificates share.

Canonical JSON (what gets signed): ``json.dumps`` with sorted keys, no whitespace, UTF-8, and
only strings, integers, booleans, None, lists and objects: floats are refused, because their
text form is where two JSON writers most often disagree (times are ISO 8601 strings instead).
Every signature covers ``domain + canonical_json(obj)``; the domain string (one per kind of
signed object) keeps a signature made for one purpose from being valid for another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_BYTES = 64


def canonical_json(obj: Any) -> bytes:
    """The one byte string ``obj`` is signed as. Raises TypeError on a float anywhere inside."""
    _no_floats(obj)
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def key_id(public_key: Ed25519PublicKey) -> str:
    """``"sha256:<hex>"`` of the raw 32-byte public key: how operators and servers name keys."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def sign(private_key: Ed25519PrivateKey, *, domain: bytes, obj: Any) -> bytes:
    return private_key.sign(domain + canonical_json(obj))


def signature_ok(public_key: Ed25519PublicKey, signature: bytes, *, domain: bytes, obj: Any) -> bool:
    try:
        public_key.verify(signature, domain + canonical_json(obj))
    except InvalidSignature:
        return False
    return True


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """An unencrypted PEM (PKCS#8) Ed25519 private key. Raises ValueError naming the file and the problem."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a readable unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: an {type(key).__name__}, not an Ed25519 private key")
    return key


def load_public_key(source: str | Path | bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes or a PEM file (SubjectPublicKeyInfo).

    Raises ValueError naming the file and the problem.
    """
    if isinstance(source, Ed25519PublicKey):
        return source
    where = "the given bytes" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not a readable PEM public key ({exc})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{where}: an {type(key).__name__}, not an Ed25519 public key")
    return key


def _no_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise TypeError(f"canonical JSON holds no floats, got {obj!r}")
    if isinstance(obj, dict):
        for value in obj.values():
            _no_floats(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            _no_floats(value)
