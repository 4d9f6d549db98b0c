"""Who a node is, from its authenticated key: the node registry of a deployment.

With SuperNode authentication on, the SuperLink admits only nodes whose public key the operator
registered (``flwr supernode register KEY.pub --name NAME``), and tells the ServerApp each node's
registered name and public key (``grid.get_nodes()``). The registry, a JSON file the operator
writes with ``nebula certs`` (``nodes.json``), maps each name to its role and client id and pins the
key's fingerprint::

    {"format": 1, "nodes": {"teacher0": {"role": "teacher", "client_id": "teacher0", "key_sha256": "..."},
                            "client0":  {"role": "client",  "client_id": "client0",  "key_sha256": "..."}}}

With ``federation.node_registry`` set, the server takes role and client id from here, and a node
whose name or key is not registered, or whose describe reply claims another role or client id, is
left out with the reason logged. Without it (simulation, where nodes are virtual), the server
believes what nodes say about themselves.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from nebula.common import keys
from nebula.common.messages import CLIENT_ID, ROLES
from nebula.server.exceptions import NebulaServerError

REGISTRY_FORMAT = 1


class IdentityError(NebulaServerError):
    """The node registry cannot be read, or a node is not who its key says."""


@dataclass(frozen=True)
class RegisteredNode:
    name: str
    role: str
    client_id: str
    key_sha256: str


def key_sha256(public_key: bytes) -> str:
    """sha256 of a public key's SubjectPublicKeyInfo (DER), from PEM, DER or OpenSSH text."""
    data = bytes(public_key).strip()
    loaders = (serialization.load_pem_public_key, serialization.load_der_public_key, serialization.load_ssh_public_key)
    for load in loaders:
        try:
            key = load(data)
        except (ValueError, TypeError):
            continue
        der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()
    raise IdentityError("not a public key in PEM, DER or OpenSSH form")


@dataclass(frozen=True)
class NodeRegistry:
    """Registered nodes by name."""

    nodes: dict[str, RegisteredNode]

    @classmethod
    def load(cls, path: str | Path) -> NodeRegistry:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise IdentityError(f"node registry {path}: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != REGISTRY_FORMAT or not isinstance(raw.get("nodes"), dict):
            raise IdentityError(f"node registry {path}: expected {{'format': {REGISTRY_FORMAT}, 'nodes': {{...}}}}")
        return cls({name: _entry(path, name, entry) for name, entry in raw["nodes"].items()})

    def identify(self, name: str, public_key: bytes) -> RegisteredNode:
        """The registered node ``name`` if ``public_key`` is the key registered for it; IdentityError otherwise."""
        node = self.nodes.get(name)
        if node is None:
            raise IdentityError(f"its registered name {name!r} is not in the node registry")
        try:
            digest = key_sha256(public_key)
        except IdentityError as exc:
            raise IdentityError(f"{name}: its key: {exc}") from None
        if digest != node.key_sha256:
            raise IdentityError(f"{name}: its key is not the one the node registry pins")
        return node


def check_claims(node: RegisteredNode, *, role: str, client_id: str) -> str:
    """Why a describe reply's claims disagree with the registry ("" when they agree)."""
    if role != node.role:
        return f"claims role {role!r}, its key is registered as {node.role!r} ({node.name})"
    if role != keys.ROLE_TEACHER and client_id != node.client_id:
        return f"claims client id {client_id!r}, its key is registered as {node.client_id!r} ({node.name})"
    return ""


def _entry(path: Path, name: str, entry: object) -> RegisteredNode:
    if not isinstance(entry, dict):
        raise IdentityError(f"node registry {path}: nodes.{name} is not an object")
    fields = {k: entry.get(k) for k in ("role", "client_id", "key_sha256")}
    if fields["role"] not in ROLES:
        raise IdentityError(f"node registry {path}: nodes.{name}.role is {fields['role']!r}, not one of {ROLES}")
    if not isinstance(fields["client_id"], str) or not CLIENT_ID.match(fields["client_id"]):
        raise IdentityError(f"node registry {path}: nodes.{name}.client_id is {fields['client_id']!r}")
    digest = fields["key_sha256"]
    if not isinstance(digest, str) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise IdentityError(f"node registry {path}: nodes.{name}.key_sha256 is not a sha256 hex digest")
    return RegisteredNode(name, fields["role"], fields["client_id"], digest)


def write_registry(path: str | Path, nodes: dict[str, tuple[str, str, bytes]]) -> Path:
    """Write a registry: ``{name: (role, client id, public key bytes)}``."""
    entries = {
        name: {"role": role, "client_id": client_id, "key_sha256": key_sha256(public_key)}
        for name, (role, client_id, public_key) in nodes.items()
    }
    path = Path(path)
    path.write_text(json.dumps({"format": REGISTRY_FORMAT, "nodes": entries}, indent=2, sort_keys=True) + "\n")
    return path
