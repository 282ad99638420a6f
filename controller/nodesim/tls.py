"""A self-signed serving certificate for a simulated kubelet (when the caller gives none).

Uses the ``cryptography`` package when installed, else the ``openssl`` command. The control-plane
starter normally passes certificates of its own CA instead (``KubeletServer(cert_file=, key_file=)``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

__all__ = ["self_signed_files"]


def self_signed_files(common_name: str) -> tuple[str, str, str]:
    """``(directory, cert_file, key_file)`` of a new self-signed certificate for 127.0.0.1/localhost."""
    d = tempfile.mkdtemp(prefix="nodesim-tls-")
    cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    try:
        cert_pem, key_pem = _with_cryptography(common_name)
    except ImportError:
        if shutil.which("openssl") is None:
            raise RuntimeError("a kubelet serving certificate is needed: pass cert_file/key_file, or install "
                               "the cryptography package or openssl") from None
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", cert, "-days", "3650", "-subj", f"/CN={common_name}",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True, capture_output=True,
        )
        return d, cert, key
    with open(cert, "wb") as f:
        f.write(cert_pem)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_pem)
    return d, cert, key


def _with_cryptography(common_name: str) -> tuple[bytes, bytes]:
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
