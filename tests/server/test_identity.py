"""Identity from keys: with a node registry the server takes role and client id from each node's
authenticated key (grid.get_nodes(): registered name and public key), never from its describe claims."""

import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.node_pb2 import NodeInfo

from nebula.common import keys
from nebula.server.identity import IdentityError, NodeRegistry, key_sha256, write_registry

from .test_federation import TEACHER, ScriptedGrid, honest, make, teacher


def _pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _ssh(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


class AuthenticatedGrid(ScriptedGrid):
    """A scripted grid that also reports each node's registered name and public key, as a SuperLink does."""

    def __init__(self, nodes, names: dict[int, tuple[str, bytes]]) -> None:
        super().__init__(nodes)
        self.names = names

    def get_nodes(self):
        return [NodeInfo(node_id=n, name=self.names[n][0], public_key=self.names[n][1]) for n in self.nodes]


@pytest.fixture
def keys_by_name():
    return {name: ec.generate_private_key(ec.SECP384R1()) for name in ("teacher0", "client0", "client1", "client2")}


def _registry(tmp_path, keys_by_name):
    nodes = {n: ("teacher" if n.startswith("teacher") else "client", n, _ssh(k)) for n, k in keys_by_name.items()}
    return write_registry(tmp_path / "nodes.json", nodes)


def test_the_fingerprint_is_the_same_from_pem_and_openssh(keys_by_name):
    key = keys_by_name["client0"]
    assert key_sha256(_pem(key)) == key_sha256(_ssh(key)) == key_sha256(_ssh(key) + b" comment\n")
    with pytest.raises(IdentityError, match="not a public key"):
        key_sha256(b"hello")


def test_roles_and_ids_come_from_the_registry_and_liars_are_left_out(tmp_path, keys_by_name, caplog):
    registry = _registry(tmp_path, keys_by_name)
    stranger = ec.generate_private_key(ec.SECP384R1())
    nodes = {
        1: honest(0),  # client0's key, says client-0: its registered client id is client0 -> left out
        2: honest(1),
        3: honest(2, role=keys.ROLE_TEACHER),  # client2's key claims to be the teacher -> left out
        4: honest(3),  # a key nobody registered
        TEACHER: teacher(),
    }
    names = {
        1: ("client0", _pem(keys_by_name["client0"])),
        2: ("client1", _pem(keys_by_name["client1"])),
        3: ("client2", _pem(keys_by_name["client2"])),
        4: ("client1", _pem(stranger)),
        TEACHER: ("teacher0", _pem(keys_by_name["teacher0"])),
    }
    fed, _ = make(tmp_path / "run", nodes, **{"federation.node_registry": str(registry), "federation.min_replies": 1})
    fed.grid = AuthenticatedGrid(nodes, names)
    with pytest.raises(Exception, match="0 edge clients answered"):
        fed.run()  # honest(i) nodes say client-i, the registry says client0/client1: every client is left out
    text = caplog.text
    assert "claims client id 'client-0', its key is registered as 'client0'" in text
    assert "claims role 'teacher', its key is registered as 'client'" in text
    assert "client1: its key is not the one the node registry pins" in text


def test_a_registered_federation_runs(tmp_path, keys_by_name):
    registry = _registry(tmp_path, keys_by_name)
    data = json.loads(registry.read_text())
    for name in ("client0", "client1"):  # the registry names the client ids the nodes really use
        data["nodes"][name]["client_id"] = f"client-{name[-1]}"
    registry.write_text(json.dumps(data))
    nodes = {1: honest(0), 2: honest(1), TEACHER: teacher()}
    names = {
        1: ("client0", _pem(keys_by_name["client0"])),
        2: ("client1", _pem(keys_by_name["client1"])),
        TEACHER: ("teacher0", _pem(keys_by_name["teacher0"])),
    }
    fed, _ = make(tmp_path / "run", nodes, **{"federation.node_registry": str(registry)})
    fed.grid = AuthenticatedGrid(nodes, names)
    assert [h["accepted"] for h in fed.run()] == [2, 2]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("not json", "node registry"),
        ('{"format": 2, "nodes": {}}', "expected"),
        ('{"format": 1, "nodes": {"a": {"role": "root", "client_id": "a", "key_sha256": "0"}}}', "nodes.a.role"),
        ('{"format": 1, "nodes": {"a": {"role": "client", "client_id": "../x", "key_sha256": "0"}}}', "client_id"),
        ('{"format": 1, "nodes": {"a": {"role": "client", "client_id": "a", "key_sha256": "xyz"}}}', "key_sha256"),
    ],
)
def test_a_bad_registry_is_named(tmp_path, text, problem):
    path = tmp_path / "nodes.json"
    path.write_text(text)
    with pytest.raises(IdentityError, match=problem):
        NodeRegistry.load(path)
