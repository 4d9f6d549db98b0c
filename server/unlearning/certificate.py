"""Unlearning certificates: what a finished request did, signed with the server's Ed25519 key.

A certificate is one JSON object (``format`` ``nebula-unlearning-certificate/1``)::

    request_id, client_id, mode, reason, operator_key, requested_at, created_at
    runs                 run ids the request touched
    rounds_affected      [{run_id, round}]: rounds whose contribution was removed or consensus revised
    ledger_rows_removed  {count, payloads_sha256: digest of the hashes,
                          rows: [{run_id, round, payload_sha256, payload_bytes}]}
    consensus            [{run_id, round, before_sha256, after_sha256, contributors_before, contributors_after,
                           support}]
                         (empty for purge, which leaves the consensus as it was; after_sha256 null: round no
                         longer aggregated)
    models               null for the modes that leave the models (purge, reaggregate); for exact-replay and
                         fast-correction: the run, the hashes of the teacher's and global student's trainable
                         states before and after, where the new states were written, the rounds replayed
                         or the correction's budget and steps (server/unlearning/models.py)
    verification         null until measured (``nebula unlearn benchmark``); figures go in as decimal
                         strings ("0.512"): canonical JSON refuses floats
    server_key           key id of the signing key
    signature            {algorithm: "ed25519", value: base64 of the signature}

The signature covers ``SIGNING_DOMAIN + canonical_json(certificate without "signature")``
(server/unlearning/crypto.py). Hashes are defined in server/unlearning/arithmetic.py.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from nebula.server.exceptions import CertificateError, MalformedCertificate
from nebula.server.unlearning.arithmetic import digest_of
from nebula.server.unlearning.base import UnlearnOutcome
from nebula.server.unlearning.crypto import SIGNATURE_BYTES, key_id, load_public_key, sign, signature_ok
from nebula.server.unlearning.requests import UnlearnRequest, iso_time

CERTIFICATE_FORMAT = "nebula-unlearning-certificate/1"
SIGNING_DOMAIN = b"nebula-unlearning-certificate/1\n"
FIELDS = (
    "format",
    "request_id",
    "client_id",
    "mode",
    "reason",
    "operator_key",
    "requested_at",
    "created_at",
    "runs",
    "rounds_affected",
    "ledger_rows_removed",
    "consensus",
    "models",
    "verification",
    "server_key",
    "signature",
)


def build_certificate(request: UnlearnRequest, outcome: UnlearnOutcome, *, created_at: float) -> dict[str, Any]:
    """The unsigned certificate of ``request`` (pure: no key, no disk)."""
    rows = [
        {"run_id": t.run_id, "round": t.round, "payload_sha256": t.payload_sha256, "payload_bytes": t.payload_bytes}
        for t in outcome.tombstones
    ]
    revisions = [
        {
            "run_id": r.run_id,
            "round": r.round,
            "before_sha256": r.before_sha256,
            "after_sha256": r.after_sha256,
            "contributors_before": r.contributors_before,
            "contributors_after": r.contributors_after,
            "support": r.support,
        }
        for r in outcome.revisions
    ]
    rounds = sorted({(x["run_id"], x["round"]) for x in rows + revisions})
    return {
        "format": CERTIFICATE_FORMAT,
        "request_id": request.request_id,
        "client_id": request.client_id,
        "mode": request.mode,
        "reason": request.reason,
        "operator_key": request.operator_key,
        "requested_at": iso_time(request.created_at),
        "created_at": iso_time(created_at),
        "runs": sorted({run for run, _ in rounds}),
        "rounds_affected": [{"run_id": run, "round": rnd} for run, rnd in rounds],
        "ledger_rows_removed": {
            "count": len(rows),
            "payloads_sha256": digest_of(r["payload_sha256"] for r in rows),
            "rows": rows,
        },
        "consensus": revisions,
        "models": outcome.models,
        "verification": None,
    }


def sign_certificate(certificate: Mapping[str, Any], private_key: Ed25519PrivateKey) -> dict[str, Any]:
    """``certificate`` with ``server_key`` and ``signature`` set."""
    body = {k: v for k, v in certificate.items() if k != "signature"}
    body["server_key"] = key_id(private_key.public_key())
    value = sign(private_key, domain=SIGNING_DOMAIN, obj=body)
    return {**body, "signature": {"algorithm": "ed25519", "value": base64.b64encode(value).decode("ascii")}}


def verify_certificate(
    source: str | Path | Mapping[str, Any], public_key: str | Path | bytes | Ed25519PublicKey
) -> dict[str, Any]:
    """Check a certificate (a dict, or the path of its JSON file) against the server's public key.

    Returns the parsed certificate.

    Raises
    ------
    MalformedCertificate
        An unreadable or malformed file or key: not JSON, missing fields, unknown format, a
        malformed signature.
    CertificateError
        A certificate signed by another key (wrong key), or a signature that does not match the
        content (a field was changed after signing).
    """
    cert = _load(source)
    try:
        key = load_public_key(public_key)
    except ValueError as exc:
        raise MalformedCertificate(f"server public key: {exc}") from exc
    signature = _signature(cert)
    if cert["server_key"] != key_id(key):
        raise CertificateError(
            f"wrong key: the certificate names server key {cert['server_key']}, the given key is {key_id(key)}"
        )
    body = {k: v for k, v in cert.items() if k != "signature"}
    try:
        ok = signature_ok(key, signature, domain=SIGNING_DOMAIN, obj=body)
    except TypeError as exc:  # a float slipped into a tampered file: it was never signed
        raise CertificateError(f"tampered certificate: {exc}") from exc
    if not ok:
        raise CertificateError(
            "bad signature: the certificate's content does not match its signature (a field was changed after signing)"
        )
    return cert


def _load(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    where = "certificate"
    if isinstance(source, Mapping):
        cert: Any = dict(source)
    else:
        where = f"certificate {source}"
        try:
            cert = json.loads(Path(source).read_text(encoding="utf-8"))
        except OSError as exc:
            raise MalformedCertificate(f"{where}: cannot read it: {exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MalformedCertificate(f"malformed {where}: not JSON: {exc}") from exc
    if not isinstance(cert, dict):
        raise MalformedCertificate(f"malformed {where}: a JSON object was expected, got {type(cert).__name__}")
    missing = [f for f in FIELDS if f not in cert]
    if missing:
        raise MalformedCertificate(f"malformed {where}: missing fields {missing}")
    if cert["format"] != CERTIFICATE_FORMAT:
        raise MalformedCertificate(
            f"malformed {where}: format {cert['format']!r}, this reader checks {CERTIFICATE_FORMAT!r}"
        )
    return cert


def _signature(cert: dict[str, Any]) -> bytes:
    sig = cert["signature"]
    if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519" or not isinstance(sig.get("value"), str):
        raise MalformedCertificate('malformed signature: expected {"algorithm": "ed25519", "value": "<base64>"}')
    try:
        value = base64.b64decode(sig["value"], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedCertificate(f"malformed signature: not base64 ({exc})") from exc
    if len(value) != SIGNATURE_BYTES:
        raise MalformedCertificate(
            f"malformed signature: {len(value)} bytes, an Ed25519 signature has {SIGNATURE_BYTES}"
        )
    return value
