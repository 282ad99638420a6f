"""A minimal real control plane for the node simulator's tests (private to tests/nodesim).

etcd + kube-apiserver (Node,RBAC authorization, NodeRestriction, TokenRequest) +
kube-controller-manager (service accounts, kube-root-ca.crt, garbage collection) +
kube-scheduler, from the v1.37.2 binaries of scripts/install-control-plane.sh, with certificates
made with ``cryptography``. Every process is started and stopped by PID. The project's own starter
(controller/controlplane) replaces this once it exists.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def find_bin_dir() -> Path | None:
    """Where kube-apiserver and friends are: NODESIM_K8S_BIN, else the project's own lookup
    (controller.controlplane.ensure_binaries: AGENT_CONTROLLER_CONTROLPLANE_BIN, or .tools keyed by
    the pinned versions, as scripts/install-control-plane.sh builds them)."""
    explicit = os.environ.get("NODESIM_K8S_BIN", "")
    if explicit and all((Path(explicit) / b).is_file() for b in ("etcd", "kube-apiserver")):
        return Path(explicit)
    from controller.controlplane import BinariesUnavailable, ensure_binaries

    try:
        return Path(ensure_binaries())
    except BinariesUnavailable:
        return None


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (a killed pytest leaves no control plane behind)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CA:
    def __init__(self, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def issue(self, cn: str, orgs: tuple[str, ...] = (), *, server: bool = False) -> tuple[bytes, bytes]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        now = dt.datetime.now(dt.UTC)
        b = (
            x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(self.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("10.0.0.1")),
                x509.DNSName("localhost"), x509.DNSName("kubernetes"), x509.DNSName("kubernetes.default"),
                x509.DNSName("kubernetes.default.svc"), x509.DNSName("kubernetes.default.svc.cluster.local"),
            ]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return (cert.public_bytes(serialization.Encoding.PEM),
                key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.cert.public_bytes(serialization.Encoding.PEM)


@dataclass
class MiniCluster:
    workdir: Path
    bin_dir: Path
    url: str = ""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ca: CA | None = None

    def _write(self, name: str, data: bytes, mode: int = 0o600) -> str:
        p = self.workdir / name
        p.write_bytes(data)
        p.chmod(mode)
        return str(p)

    def kubeconfig(self, name: str, cn: str, orgs: tuple[str, ...] = ()) -> str:
        assert self.ca is not None
        cert, key = self.ca.issue(cn, orgs)
        cf, kf = self._write(f"{name}.crt", cert), self._write(f"{name}.key", key)
        path = self.workdir / f"{name}.kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters:\n- name: k\n  cluster:\n    server: {self.url}\n    certificate-authority: {self.workdir / 'ca.crt'}\n"
            f"users:\n- name: u\n  user:\n    client-certificate: {cf}\n    client-key: {kf}\n"
            "contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n"
        )
        return str(path)

    def start(self, *, scheduler: bool = True, controller_manager: bool = True) -> MiniCluster:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.workdir.mkdir(parents=True, exist_ok=True)
        self.ca = CA("nodesim-test-ca")
        ca_file = self._write("ca.crt", self.ca.pem(), 0o644)
        srv_cert, srv_key = self.ca.issue("kube-apiserver", server=True)
        kcl_cert, kcl_key = self.ca.issue("kube-apiserver-kubelet-client", ("system:masters",))
        sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_key = self._write("sa.key", sa.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        sa_pub = self._write("sa.pub", sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                                    serialization.PublicFormat.SubjectPublicKeyInfo))
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.url = f"https://127.0.0.1:{api_port}"
        self._spawn("etcd", [str(self.bin_dir / "etcd"), "--data-dir", str(self.workdir / "etcd"),
                             "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer_port}", "--unsafe-no-fsync"])
        self._spawn("kube-apiserver", [
            str(self.bin_dir / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
            f"--tls-cert-file={self._write('apiserver.crt', srv_cert)}",
            f"--tls-private-key-file={self._write('apiserver.key', srv_key)}",
            f"--client-ca-file={ca_file}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={sa_pub}", f"--service-account-signing-key-file={sa_key}",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--kubelet-client-certificate={self._write('kubelet-client.crt', kcl_cert)}",
            f"--kubelet-client-key={self._write('kubelet-client.key', kcl_key)}",
            "--kubelet-preferred-address-types=InternalIP",
            "--service-cluster-ip-range=10.0.0.0/24", f"--cert-dir={self.workdir / 'certs'}",
            "--profiling=false", "--endpoint-reconciler-type=none",
        ])
        self.admin_kubeconfig = self.kubeconfig("admin", "admin", ("system:masters",))
        self._wait_ready()
        if controller_manager and (self.bin_dir / "kube-controller-manager").is_file():
            kc = self.kubeconfig("kcm", "system:kube-controller-manager")
            self._spawn("kube-controller-manager", [
                str(self.bin_dir / "kube-controller-manager"), f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={free_port()}",
                f"--service-account-private-key-file={sa_key}", f"--root-ca-file={ca_file}",
                "--use-service-account-credentials=true", "--controllers=*,-nodeipam",
                "--node-monitor-grace-period=20s",
            ])
        if scheduler and (self.bin_dir / "kube-scheduler").is_file():
            kc = self.kubeconfig("scheduler", "system:kube-scheduler")
            self._spawn("kube-scheduler", [
                str(self.bin_dir / "kube-scheduler"), f"--kubeconfig={kc}", f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}", "--leader-elect=false", "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ])
        self.ca_file = ca_file
        self.kubelet_client_ca = ca_file
        return self

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.workdir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=_die_with_parent)

    def _wait_ready(self, timeout: float = 120) -> None:
        ctx = ssl.create_default_context(cafile=str(self.workdir / "ca.crt"))
        ctx.load_cert_chain(str(self.workdir / "admin.crt"), str(self.workdir / "admin.key"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited: {(self.workdir / f'{name}.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/readyz", context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception:  # noqa: BLE001
                pass
            time.sleep(0.3)
        raise RuntimeError("kube-apiserver did not become ready")

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            p = self.procs[name]
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()

    def kubectl_bin(self) -> str:
        b = self.bin_dir / "kubectl"
        return str(b) if b.is_file() else shutil.which("kubectl") or "kubectl"
