"""A tiny stand-in Kubernetes API for the agentctl tests: the Agent endpoints agentctl uses.

It serves GET/PATCH of ``agents`` and ``agents/status``, enforces ``resourceVersion`` preconditions
(409) and the terminal-phase rule (422), and lets a test inject failures (with headers, e.g.
``Retry-After``), a delay or a concurrent writer. Over plain HTTP, or HTTPS (optionally requiring a
client certificate) with the certificates of :class:`TestPKI`.
"""

from __future__ import annotations

import datetime
import json
import re
import ssl
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PATH_RE = re.compile(r"^/apis/agentcontroller\.dev/v1alpha1/namespaces/([^/]+)/agents/([^/?]+)(/status)?(\?.*)?$")
TERMINAL = {"Completed", "Failed", "Error", "Terminated"}


def merge(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


Failure = int | tuple[int, dict[str, str]]
"""An injected answer: a status code, or a status code and extra response headers."""


class FakeAPI:
    """Agent endpoints only; see the module docstring."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 100
        self.requests: list[dict[str, Any]] = []
        self.fail: list[Failure] = []  # answers of the next requests
        self.delay = 0.0  # seconds each response is held back
        self.before_patch: Callable[[FakeAPI, dict[str, Any]], None] | None = None
        self.lock = threading.Lock()
        self.arrived = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, msg: str, headers: dict[str, str] | None = None) -> None:
                self._send(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                  "message": msg, "code": code}, headers)

            def _client_cn(self) -> str | None:
                getpeercert = getattr(self.connection, "getpeercert", None)
                cert = getpeercert() if getpeercert else None
                for rdn in (cert or {}).get("subject", ()):
                    for key, value in rdn:
                        if key == "commonName":
                            return str(value)
                return None

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with api.lock:
                    api.arrived += 1
                time.sleep(api.delay)
                with api.lock:
                    api.requests.append({"method": method, "path": self.path, "body": body,
                                         "content_type": self.headers.get("Content-Type"),
                                         "auth": self.headers.get("Authorization"),
                                         "client_cn": self._client_cn(), "at": time.monotonic()})
                    if api.fail:
                        failure = api.fail.pop(0)
                        code, headers = failure if isinstance(failure, tuple) else (failure, {})
                        return self._status(code, f"injected {code}", headers)
                    m = PATH_RE.match(self.path)
                    if not m:
                        return self._status(404, "not found")
                    key = (m.group(1), m.group(2))
                    obj = api.objects.get(key)
                    if obj is None:
                        return self._status(404, f'agents.agentcontroller.dev "{key[1]}" not found')
                    if method == "GET":
                        return self._send(200, obj)
                    if self.headers.get("Content-Type") != "application/merge-patch+json":
                        return self._status(415, "unsupported patch type")
                    if api.before_patch is not None:
                        hook, api.before_patch = api.before_patch, None
                        hook(api, obj)
                    want_rv = ((body or {}).get("metadata") or {}).get("resourceVersion")
                    if want_rv is not None and want_rv != obj["metadata"]["resourceVersion"]:
                        return self._status(409, "the object has been modified")
                    part = "status" if m.group(3) else "spec"
                    new = merge(obj.get(part) or {}, (body or {}).get(part) or {})
                    old_phase = (obj.get("status") or {}).get("phase")
                    if part == "status" and old_phase in TERMINAL and new.get("phase") != old_phase:
                        return self._status(422, "status.phase is terminal and cannot change")
                    obj[part] = new
                    api.bump(obj)
                    return self._send(200, obj)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def bump(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    def add_agent(self, ns: str, name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
        obj = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
               "metadata": {"name": name, "namespace": ns, "resourceVersion": "1"},
               "spec": {"image": "x"}, "status": dict(status or {})}
        with self.lock:
            self.bump(obj)
            self.objects[(ns, name)] = obj
        return obj

    def patches(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "PATCH"]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class TestPKI:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in ``directory``
    (made with ``cryptography``, a test dependency)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path, client_cn: str = "agent-user") -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        directory.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.UTC)

        def name(cn: str) -> x509.Name:
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
            return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())

        def issue(cn: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name, issuer_key: Any,
                  ca: bool, usage: Any = None, ip: bool = False) -> x509.Certificate:
            b = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(issuer)
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5))
                 .not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
            if ca:
                b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            else:
                b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                                    critical=False)
            if usage is not None:
                b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            if ip:
                import ipaddress

                b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                    critical=False)
            return b.sign(issuer_key, hashes.SHA256())

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = issue("test-ca", ca_key, name("test-ca"), ca_key, ca=True)
        server_key = ec.generate_private_key(ec.SECP256R1())
        server = issue("127.0.0.1", server_key, ca.subject, ca_key, ca=False,
                       usage=ExtendedKeyUsageOID.SERVER_AUTH, ip=True)
        client_key = ec.generate_private_key(ec.SECP256R1())
        client = issue(client_cn, client_key, ca.subject, ca_key, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)

        def write(filename: str, data: bytes) -> Path:
            path = directory / filename
            path.write_bytes(data)
            return path

        pem = serialization.Encoding.PEM
        self.ca_pem = ca.public_bytes(pem)
        self.ca = write("ca.crt", self.ca_pem)
        self.server_cert = write("server.crt", server.public_bytes(pem))
        self.server_key = write("server.key", pem_key(server_key))
        self.client_cert_pem = client.public_bytes(pem)
        self.client_key_pem = pem_key(client_key)
        self.client_cert = write("client.crt", self.client_cert_pem)
        self.client_key = write("client.key", self.client_key_pem)

    def server_context(self, require_client_cert: bool = False) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.server_cert, self.server_key)
        if require_client_cert:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(self.ca))
        return ctx
