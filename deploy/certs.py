"""Keys and certificates for a Nebula deployment (``cryptography`` only, no openssl needed).

* a CA (self-signed, ECDSA P-256) that issues the servers' TLS certificates;
* a server TLS certificate for a list of host names and IP addresses (``localhost``, ``127.0.0.1`` ...);
* Ed25519 key pairs: each operator's (signs unlearning requests) and the server's signing key
  (signs unlearning certificates).

Private keys are written unencrypted (PKCS#8 PEM) with mode 0600: protect the folder, or keep them
in a secret store. :func:`write_unlearning_material` writes the whole set for the unlearning
service (tests, a first set-up); ``nebula certs`` (:mod:`nebula.deploy.pki`) reuses these functions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey


# What a CA's key may do: sign certificates and revocation lists (and be a digital signature); nothing else.
_CA_KEY_USAGE = dict.fromkeys(
    ("content_commitment", "key_encipherment", "data_encipherment", "key_agreement", "encipher_only", "decipher_only"),
    False,
) | {"digital_signature": True, "key_cert_sign": True, "crl_sign": True}


def make_ca(common_name: str = "Nebula CA", *, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA key and certificate (may sign leaf certificates only: path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(**_CA_KEY_USAGE),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A TLS server key and certificate issued by the CA, valid for ``hosts`` (names or IP addresses)."""
    if not hosts:
        raise ValueError("hosts is empty: a server certificate needs at least one host name or IP address")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([_general_name(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def make_ed25519_key() -> Ed25519PrivateKey:
    """An operator's or the server's signing key."""
    return Ed25519PrivateKey.generate()


def write_secret(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` with mode 0600, whatever was there before.

    The bytes go to a new file beside ``path`` (created with O_EXCL and O_NOFOLLOW: never an existing
    file, never through a link), which then replaces ``path``. An existing file keeps neither its
    mode nor its content, and a symbolic link at ``path`` is replaced, not followed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_private_key(path: str | Path, key: PrivateKey) -> Path:
    """PKCS#8 PEM, unencrypted, mode 0600 (:func:`write_secret`)."""
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return write_secret(path, pem)


def write_public_key(path: str | Path, key: PrivateKey) -> Path:
    """The public half of ``key``, SubjectPublicKeyInfo PEM."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return _write(path, pem)


def write_cert(path: str | Path, cert: x509.Certificate) -> Path:
    return _write(path, cert.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class UnlearningMaterial:
    """Paths written by :func:`write_unlearning_material`."""

    ca_cert: Path  # operators' --ca
    ca_key: Path
    tls_cert: Path  # the service's TLS certificate and key
    tls_key: Path
    signing_key: Path  # the server's Ed25519 key: signs certificates
    signing_pub: Path  # what `nebula unlearn verify --server-key` needs
    operators: Path  # folder of trusted operator public keys
    operator_key: Path  # the first operator's private key (--key)


def write_unlearning_material(
    folder: str | Path, *, hosts: Sequence[str] = ("localhost", "127.0.0.1"), operator: str = "operator"
) -> UnlearningMaterial:
    """Write a CA, a server TLS certificate for ``hosts``, the server's signing key pair and one operator's key pair."""
    out = Path(folder)
    ca_key, ca_cert = make_ca()
    tls_key, tls_cert = make_server_cert(ca_key, ca_cert, hosts)
    signing, operator_key = make_ed25519_key(), make_ed25519_key()
    material = UnlearningMaterial(
        ca_cert=write_cert(out / "ca.pem", ca_cert),
        ca_key=write_private_key(out / "ca.key", ca_key),
        tls_cert=write_cert(out / "server.pem", tls_cert),
        tls_key=write_private_key(out / "server.key", tls_key),
        signing_key=write_private_key(out / "server-signing.key", signing),
        signing_pub=write_public_key(out / "server-signing.pub", signing),
        operators=out / "operators",
        operator_key=write_private_key(out / f"{operator}.key", operator_key),
    )
    write_public_key(material.operators / f"{operator}.pub", operator_key)
    return material


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
