"""`nebula certs`: the material Flower 1.41 and the unlearning service load, modes, refusals."""

import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key, load_ssh_private_key

from nebula.cli.main import main
from nebula.deploy.pki import PkiError, write_deployment_material


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    return write_deployment_material(
        tmp_path_factory.mktemp("certs"),
        hosts=["localhost", "127.0.0.1", "link.example"],
        nodes=["teacher0", "client0"],
        operators=["alice"],
    )


def test_tls_certificate_is_issued_by_the_ca_for_the_hosts(material):
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    leaf = x509.load_pem_x509_certificate(material.tls_cert.read_bytes())
    leaf.verify_directly_issued_by(ca)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost", "link.example"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_supernode_keys_load_as_flower_loads_them(material):
    from flwr.cli.supernode.register import try_load_public_key

    for name in ("teacher0", "client0"):
        key = load_ssh_private_key(material.supernode_keys[name].read_bytes(), password=None)  # as flower-supernode
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert material.supernode_keys[name].read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
        assert try_load_public_key(material.supernode_pubs[name])  # as `flwr supernode register`
        assert material.supernode_pubs[name].read_text().startswith("ecdsa-sha2-nistp384 ")
    assert material.supernode_pubs["teacher0"].read_bytes() != material.supernode_pubs["client0"].read_bytes()


def test_operator_and_signing_keys_are_ed25519_pem(material):
    assert isinstance(load_pem_private_key(material.operator_keys["alice"].read_bytes(), None), Ed25519PrivateKey)
    assert isinstance(load_pem_public_key((material.operators_dir / "alice.pub").read_bytes()), Ed25519PublicKey)
    assert isinstance(load_pem_private_key(material.signing_key.read_bytes(), None), Ed25519PrivateKey)


def test_private_keys_are_0600_public_files_are_not_secret(material):
    private = [
        material.ca_key,
        material.tls_key,
        material.signing_key,
        *material.supernode_keys.values(),
        *material.operator_keys.values(),
    ]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for path in (material.ca_cert, material.tls_cert, *material.supernode_pubs.values()):
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 != 0o077 and path.stat().st_size > 0


def test_refuses_to_overwrite_without_force(tmp_path):
    first = write_deployment_material(tmp_path, nodes=["n0"])
    before = first.ca_cert.read_bytes()
    with pytest.raises(PkiError, match="already exist"):
        write_deployment_material(tmp_path, nodes=["n0", "n1"])
    assert first.ca_cert.read_bytes() == before and not (tmp_path / "supernodes" / "n1.key").exists()
    first.ca_key.chmod(0o644)
    again = write_deployment_material(tmp_path, nodes=["n0"], force=True)
    assert again.ca_cert.read_bytes() != before
    assert stat.S_IMODE(again.ca_key.stat().st_mode) == 0o600  # --force also restores the mode


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"nodes": ["ok", "bad name"]}, "SuperNode name 'bad name'"),
        ({"nodes": ["a", "a"]}, "repeated: a"),
        ({"nodes": []}, "no SuperNode names"),
        ({"hosts": [" "]}, "no host"),
        ({"operators": ["../x"]}, "operator name"),
    ],
)
def test_bad_requests_write_nothing(tmp_path, kwargs, match):
    with pytest.raises(PkiError, match=match):
        write_deployment_material(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_cli(tmp_path, capsys):
    assert main(["certs", str(tmp_path), "--nodes", "teacher0,jetson-07"]) == 0
    assert "jetson-07" in capsys.readouterr().out and (tmp_path / "supernodes" / "jetson-07.pub").exists()
    assert main(["certs", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
