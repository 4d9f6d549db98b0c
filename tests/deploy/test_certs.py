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
