"""deploy/certs.py: a CA, a server certificate it issued for the given hosts, Ed25519 keys, written safely."""

import ipaddress
import stat

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from nebula.deploy.certs import make_ca, make_server_cert, write_unlearning_material
from nebula.server.unlearning.crypto import key_id, load_private_key, load_public_key


def test_server_certificate_is_issued_by_the_ca_for_the_hosts():
    ca_key, ca_cert = make_ca()
    _, cert = make_server_cert(ca_key, ca_cert, ["localhost", "127.0.0.1", "unlearn.example.org"])
    ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    assert cert.issuer == ca_cert.subject
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "unlearn.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_material_is_complete_and_private_keys_are_private(tmp_path):
    m = write_unlearning_material(tmp_path, operator="alice")
    for path in (m.ca_key, m.tls_key, m.signing_key, m.operator_key):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    signing = load_private_key(m.signing_key)
    assert key_id(load_public_key(m.signing_pub)) == key_id(signing.public_key())
    [operator_pub] = list(m.operators.iterdir())
    assert operator_pub.name == "alice.pub"
    assert key_id(load_public_key(operator_pub)) == key_id(load_private_key(m.operator_key).public_key())


def test_a_secret_never_keeps_an_old_mode_nor_follows_a_link(tmp_path):
    from nebula.deploy.certs import write_secret

    old = tmp_path / "old.key"
    old.write_bytes(b"public by mistake")
    old.chmod(0o644)
    write_secret(old, b"secret")
    assert stat.S_IMODE(old.stat().st_mode) == 0o600 and old.read_bytes() == b"secret"

    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_bytes(b"not yours")
    link = tmp_path / "link.key"
    link.symlink_to(elsewhere)
    write_secret(link, b"secret")
    assert elsewhere.read_bytes() == b"not yours"  # the link's target is untouched
    assert not link.is_symlink() and link.read_bytes() == b"secret"
    assert stat.S_IMODE(link.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere.txt", "link.key", "old.key"]  # no temp left


def test_deployment_material_paths_are_absolute(tmp_path, monkeypatch):
    """`nebula deploy up --certs runs/pki` starts processes in other folders: a relative folder must still work."""
    from nebula.deploy.pki import DeploymentMaterial

    monkeypatch.chdir(tmp_path)
    material = DeploymentMaterial.at("runs/pki", ["client0"])
    assert material.root == tmp_path / "runs" / "pki"
    assert all(p.is_absolute() for p in material.files())
