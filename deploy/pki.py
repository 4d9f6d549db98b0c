"""``nebula certs``: every key and certificate a Nebula deployment needs, in one folder.

Layout of ``OUT_DIR`` (private keys unencrypted, mode 0600; keep the folder, or each key, secret):

================================  ==========================================================
``ca.pem``, ``ca.key``            the CA: SuperNodes (``--root-certificates``) and operators
                                  trust ``ca.pem``; keep ``ca.key`` offline
``server.pem``, ``server.key``    TLS certificate of the SuperLink (and of the unlearning
                                  service on the same host), SAN = ``--hosts``
``supernodes/NAME.key``           a SuperNode's authentication key: EC SECP384R1, OpenSSH
                                  private format (``flower-supernode
                                  --auth-supernode-private-key``); stays on that node
``supernodes/NAME.pub``           its OpenSSH public key (``flwr supernode register``)
``operators/NAME.pub``            operators' Ed25519 public keys (PEM): the folder the
                                  unlearning service trusts (``--operators``)
``operator-keys/NAME.key``        each operator's Ed25519 private key (``nebula unlearn --key``)
``server-signing.key``, ``.pub``  the server's Ed25519 key pair: signs unlearning certificates
================================  ==========================================================

Flower 1.41 wants SuperNode keys on a NIST curve in OpenSSH format;
the CA, TLS and Ed25519 material comes from :mod:`nebula.deploy.certs`. Nothing is written when any
target file exists, unless ``force``: an existing CA or key is never replaced by accident.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from nebula.deploy.certs import (
    make_ca,
    make_ed25519_key,
    make_server_cert,
    write_cert,
    write_private_key,
    write_public_key,
    write_secret,
)
from nebula.server.identity import write_registry

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_NODES = ("teacher0", "client0", "client1")


class PkiError(ValueError):
    """Bad request to :func:`write_deployment_material` (names, hosts, existing files)."""


@dataclass(frozen=True)
class DeploymentMaterial:
    """Paths of everything :func:`write_deployment_material` wrote."""

    root: Path
    ca_cert: Path
    ca_key: Path
    tls_cert: Path
    tls_key: Path
    signing_key: Path
    signing_pub: Path
    supernode_keys: dict[str, Path] = field(default_factory=dict)  # name -> private key
    supernode_pubs: dict[str, Path] = field(default_factory=dict)  # name -> OpenSSH public key
    operator_keys: dict[str, Path] = field(default_factory=dict)
    operators_dir: Path | None = None

    @property
    def node_registry(self) -> Path:
        """``nodes.json``: each SuperNode's role, client id and key fingerprint (server/identity.py)."""
        return self.root / "nodes.json"

    @classmethod
    def at(cls, root: str | Path, nodes: Sequence[str] = (), operators: Sequence[str] = ()) -> DeploymentMaterial:
        """The paths of a material folder (whether or not they exist yet), absolute: the processes that read them
        start in other folders (a relative ``--certs runs/pki`` must mean the same to each of them)."""
        root = Path(root).absolute()
        return cls(
            root=root,
            ca_cert=root / "ca.pem",
            ca_key=root / "ca.key",
            tls_cert=root / "server.pem",
            tls_key=root / "server.key",
            signing_key=root / "server-signing.key",
            signing_pub=root / "server-signing.pub",
            supernode_keys={n: root / "supernodes" / f"{n}.key" for n in nodes},
            supernode_pubs={n: root / "supernodes" / f"{n}.pub" for n in nodes},
            operator_keys={n: root / "operator-keys" / f"{n}.key" for n in operators},
            operators_dir=root / "operators",
        )

    def files(self) -> list[Path]:
        assert self.operators_dir is not None
        return [
            self.ca_cert,
            self.ca_key,
            self.tls_cert,
            self.tls_key,
            self.signing_key,
            self.signing_pub,
            *self.supernode_keys.values(),
            *self.supernode_pubs.values(),
            *self.operator_keys.values(),
            *(self.operators_dir / f"{n}.pub" for n in self.operator_keys),
        ]


def make_supernode_key() -> ec.EllipticCurvePrivateKey:
    """A SuperNode authentication key (NIST P-384, as Flower 1.41 accepts)."""
    return ec.generate_private_key(ec.SECP384R1())


def write_supernode_key(private_path: Path, public_path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """The private key in OpenSSH format (mode 0600) and the public key as one OpenSSH line."""
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_secret(private_path, private)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    public_path.write_bytes(public + f" nebula-{private_path.stem}\n".encode())


def _check_names(kind: str, names: Sequence[str]) -> None:
    for name in names:
        if not NAME.match(name):
            raise PkiError(
                f"{kind} name {name!r}: use letters, digits, '.', '_' or '-' (1-63 characters, starting alphanumeric)"
            )
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    if dupes:
        raise PkiError(f"{kind} names repeated: {', '.join(dupes)}")


def write_deployment_material(
    out_dir: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    nodes: Sequence[str] = DEFAULT_NODES,
    operators: Sequence[str] = ("operator",),
    force: bool = False,
) -> DeploymentMaterial:
    """Write the CA, the SuperLink's TLS certificate, SuperNode and operator keys into ``out_dir``.

    Raises :class:`PkiError`, before writing anything, when a name is malformed, ``hosts`` or
    ``nodes`` is empty, or a target file exists and ``force`` is false.
    """
    hosts, nodes, operators = [h.strip() for h in hosts if h.strip()], list(nodes), list(operators)
    if not hosts:
        raise PkiError("no host: the SuperLink certificate needs at least one host name or IP address (--hosts)")
    if not nodes:
        raise PkiError("no SuperNode names (--nodes): name at least the teacher and one client")
    _check_names("SuperNode", nodes)
    _check_names("operator", operators)
    material = DeploymentMaterial.at(out_dir, nodes, operators)
    existing = [p for p in material.files() if p.exists()]
    if existing and not force:
        shown = ", ".join(str(p) for p in existing[:4]) + (" ..." if len(existing) > 4 else "")
        raise PkiError(f"{len(existing)} file(s) already exist ({shown}); refusing to overwrite keys (use --force)")
    material.root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = make_ca("Nebula deployment CA")
    tls_key, tls_cert = make_server_cert(ca_key, ca_cert, hosts)
    write_cert(material.ca_cert, ca_cert)
    write_private_key(material.ca_key, ca_key)
    write_cert(material.tls_cert, tls_cert)
    write_private_key(material.tls_key, tls_key)
    signing = make_ed25519_key()
    write_private_key(material.signing_key, signing)
    write_public_key(material.signing_pub, signing)
    for name in nodes:
        write_supernode_key(material.supernode_keys[name], material.supernode_pubs[name], make_supernode_key())
    write_node_registry(material, teachers=[n for n in nodes if n.startswith("teacher")])
    assert material.operators_dir is not None
    for name in operators:
        key = make_ed25519_key()
        write_private_key(material.operator_keys[name], key)
        write_public_key(material.operators_dir / f"{name}.pub", key)
    return material


def write_node_registry(material: DeploymentMaterial, *, teachers: Sequence[str]) -> Path:
    """``nodes.json`` for ``material``'s SuperNodes: ``teachers`` are the teacher, every other node a client whose
    client id is its name. The server reads it with ``federation.node_registry`` (server/identity.py)."""
    entries = {
        name: ("teacher" if name in teachers else "client", name, material.supernode_pubs[name].read_bytes())
        for name in material.supernode_pubs
    }
    return write_registry(material.node_registry, entries)
