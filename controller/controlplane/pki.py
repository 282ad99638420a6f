"""The control plane's certificates: one cluster CA and the certificates it signs.

Everything a small cluster needs, as kubeadm lays it out (but with ECDSA P-256 keys, which are
quick to generate): the CA, the API server's serving certificate, client certificates for the
administrator (group ``system:masters``), the controller manager, the scheduler, the API server
when it calls kubelets, and nodes (``system:node:<name>`` in ``system:nodes``, so the Node
authorizer and NodeRestriction apply), serving certificates for simulated kubelets, and the
service-account signing key pair. Files are PEM, keys PKCS#8, written with mode 0600.

A directory that already holds ``ca.crt``/``ca.key`` is reused (a control plane restarted on the
same work directory keeps its identity); other certificates are issued when missing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=365)
CLOCK_SKEW = datetime.timedelta(minutes=5)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attrs)


class CertificateAuthority:
    """The cluster CA in ``directory`` (created, or loaded when it exists), and what it signs."""

    def __init__(self, directory: str | os.PathLike[str], common_name: str = "agent-controller-test-ca"):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.cert_path = self.directory / "ca.crt"
        self.key_path = self.directory / "ca.key"
        if self.cert_path.exists() and self.key_path.exists():
            self.cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            loaded = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self.key_path}: expected an ECDSA key")
            self.key = loaded
            return
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        subject = _name(common_name)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + 10 * VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        _write(self.key_path, _key_pem(self.key), private=True)
        _write(self.cert_path, self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, name: str, common_name: str, *, organizations: Sequence[str] = (),
              client: bool = False, server: bool = False, dns_names: Sequence[str] = (),
              ip_addresses: Sequence[str] = (), reuse: bool = True) -> tuple[Path, Path]:
        """Sign a certificate ``<name>.crt`` (key ``<name>.key``) in the CA's directory and return
        both paths. ``client``/``server`` set the extended key usages; ``reuse`` keeps existing files."""
        cert_path, key_path = self.directory / f"{name}.crt", self.directory / f"{name}.key"
        if reuse and cert_path.exists() and key_path.exists():
            return cert_path, key_path
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else []) + \
                 ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name, organizations)).issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW).not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                         content_commitment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=False, crl_sign=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                           critical=False)
        )
        if usages:
            builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        _write(key_path, _key_pem(key), private=True)
        _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path


def service_account_keys(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """The service-account token signing key pair ``sa.key`` / ``sa.pub`` (created when missing)."""
    directory = Path(directory)
    key_path, pub_path = directory / "sa.key", directory / "sa.pub"
    if key_path.exists() and pub_path.exists():
        return key_path, pub_path
    key = ec.generate_private_key(ec.SECP256R1())
    _write(key_path, _key_pem(key), private=True)
    _write(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo))
    return key_path, pub_path
