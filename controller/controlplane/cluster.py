"""`ControlPlane`: etcd, kube-apiserver, kube-controller-manager and kube-scheduler on loopback.

Started as child processes in a work directory (certificates, kubeconfigs, etcd's data and one
log per process), on free loopback ports::

    from controller.controlplane import ControlPlane

    with ControlPlane(workdir="/tmp/cp") as cp:          # builds the binaries first if needed
        cp.create_namespace("demo", {"pod-security.kubernetes.io/enforce": "restricted"})
        cp.kubectl("get", "--raw", "/readyz")
        cp.service_account_kubeconfig("demo", "default", "/tmp/cp/demo.kubeconfig")

What is configured, and why, is in docs/controlplane.md. In short: client certificates and a static
admin bearer token (``--token-auth-file``); Node,RBAC authorization; the default admission plugins
(Pod Security among them) plus NodeRestriction and OwnerReferencesPermissionEnforcement; bound
service-account tokens (TokenRequest) signed by a generated key; every default controller of
kube-controller-manager with per-controller service-account credentials; no leader election.
There is no kubelet: nodes come from the node simulator (controller.nodesim), which
:meth:`ControlPlane.issue_kubelet_serving_cert` and :meth:`ControlPlane.node_kubeconfig` equip.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from .binaries import ensure_binaries
from .pki import CertificateAuthority, service_account_keys

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KUBERNETES_SERVICE_IP = "10.0.0.1"                 # the first address of the range
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
ADMIN_USER = "admin"
ORDER = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


class ControlPlaneError(RuntimeError):
    """A process of the control plane failed to start or to answer; the message ends with the
    tail of that process's log."""


class ApiError(RuntimeError):
    """An API request of the control plane's own helpers failed (status and Status body)."""

    def __init__(self, status: int, body: Mapping[str, Any]):
        super().__init__(f"{status}: {body.get('message', body)}")
        self.status = status
        self.body = dict(body)


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (held open together, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the thread that started it dies (Linux only)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)              # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class _Process:
    """One child process: its command line, its log, and how to tell it is up."""

    def __init__(self, name: str, args: list[str], log: Path):
        self.name = name
        self.args = args
        self.log = log
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self, die_with_parent: bool) -> None:
        with open(self.log, "ab") as out:
            out.write(f"\n==== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(self.args)}\n".encode())
            out.flush()
            self.popen = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True,
                                          preexec_fn=_die_with_parent if die_with_parent else None)

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after `timeout` seconds; returns once the process is reaped."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None


class ControlPlane:
    """A real Kubernetes control plane for tests, benchmarks and local use.

    Parameters:
        workdir: where certificates, kubeconfigs, etcd's data and the logs go (``logs/<process>.log``).
            Default: a new temporary directory, removed by :meth:`stop`. An existing work
            directory is reused: same CA, same admin token, same etcd data.
        bin_dir: a directory with the five binaries; default: :func:`ensure_binaries` (runs
            scripts/install-control-plane.sh, building when needed, if ``build``).
        prefix: the tools prefix given to the script (default: the repository's ``.tools``).
        node_monitor_grace_period: seconds without a node heartbeat before the node lifecycle
            controller marks the node NotReady/Unknown (kube-controller-manager's default is 50).
        pod_eviction_toleration_seconds: the API server's default not-ready/unreachable
            tolerations added to pods (after which pods on a lost node are evicted); default 300
            as in a real cluster.
        extra_args: more flags per process name (``{"kube-apiserver": ["--v=2"]}``), appended last.
        die_with_parent: the children get SIGKILL when the thread that started them exits (Linux
            ``PR_SET_PDEATHSIG``): no orphan survives a killed test run or CLI. Only use it when the
            starting thread lives as long as the control plane (the main thread).
        stop_timeout: seconds a process gets after SIGTERM before SIGKILL.
    """

    def __init__(self, workdir: str | os.PathLike[str] | None = None, *, bin_dir: str | os.PathLike[str] | None = None,
                 prefix: str | os.PathLike[str] | None = None, build: bool = True,
                 node_monitor_grace_period: float = 50.0, pod_eviction_toleration_seconds: int = 300,
                 extra_args: Mapping[str, Sequence[str]] | None = None, die_with_parent: bool = False,
                 start_timeout: float = 180.0, stop_timeout: float = 15.0):
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="agent-controlplane-")).resolve()
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self.prefix = prefix
        self.build = build
        self.node_monitor_grace_period = node_monitor_grace_period
        self.pod_eviction_toleration_seconds = pod_eviction_toleration_seconds
        self.extra_args = {k: list(v) for k, v in (extra_args or {}).items()}
        self.die_with_parent = die_with_parent
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.pki = self.workdir / "pki"
        self.logs = self.workdir / "logs"
        self.ports: dict[str, int] = {}
        self.processes: dict[str, _Process] = {}
        self.admin_token = ""
        self.startup_seconds: float | None = None   # the last start(), for reports
        self.timings: dict[str, float] = {}          # seconds each step of the last start took
        self._ca: CertificateAuthority | None = None
        self._ssl: ssl.SSLContext | None = None

    # ---- what users need
    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            raise ControlPlaneError("the control plane has not been started")
        return self._bin_dir

    @property
    def url(self) -> str:
        """The API server, ``https://127.0.0.1:<port>``."""
        return f"https://127.0.0.1:{self.ports['kube-apiserver']}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        """An admin kubeconfig (client certificate in ``system:masters``; certificates embedded)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def kubectl_path(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def pids(self) -> dict[str, int]:
        """The PID of every running process, by name."""
        return {name: p.pid for name, p in self.processes.items() if p.pid is not None and p.running()}

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    # ---- lifecycle
    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> ControlPlane:
        """Build if needed, then start the four processes in order, each once the previous one
        answers; returns when the scheduler and controller manager are healthy and the
        ServiceAccount controller has made ``default/default``. On failure everything started is
        stopped and ControlPlaneError names the failing process, with the tail of its log."""
        started = time.monotonic()
        self.timings = {}
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries(self.prefix, build=self.build)
            self.timings["binaries"] = time.monotonic() - started
        step = time.monotonic()
        self._prepare()
        self.timings["certificates"] = time.monotonic() - step
        try:
            for name in ORDER:
                step = time.monotonic()
                self._start_process(name)
                self.timings[name] = time.monotonic() - step
            step = time.monotonic()
            self._wait("ServiceAccount default/default", "kube-controller-manager",
                       lambda: self._get_ok("/api/v1/namespaces/default/serviceaccounts/default"))
            self.timings["default-serviceaccount"] = time.monotonic() - step
        except BaseException:
            self.stop(remove_workdir=False)
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, remove_workdir: bool | None = None) -> None:
        """Stop every process, scheduler first and etcd last (SIGTERM, then SIGKILL after
        ``stop_timeout``), each by its PID, and wait for it. A temporary work directory is removed
        (``remove_workdir`` overrides)."""
        for name in reversed(ORDER):
            proc = self.processes.get(name)
            if proc is not None:
                proc.stop(self.stop_timeout)
        if remove_workdir if remove_workdir is not None else self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart_apiserver(self) -> None:
        """Stop kube-apiserver and start it again on the same port (chaos tests: watches break,
        requests fail meanwhile); returns once it is ready."""
        self.processes["kube-apiserver"].stop(self.stop_timeout)
        self._start_process("kube-apiserver")

    def restart_etcd(self) -> None:
        """Stop etcd and start it again on the same ports and data; returns once the API server
        answers ready again."""
        self.processes["etcd"].stop(self.stop_timeout)
        self._start_process("etcd")
        self._wait("readyz after the etcd restart", "kube-apiserver", lambda: self._get_ok("/readyz"))

    def running(self) -> dict[str, bool]:
        return {name: p.running() for name, p in self.processes.items()}

    # ---- the API, as an administrator
    def request(self, method: str, path: str, body: Any = None, *, token: str | None = None,
                content_type: str = "application/json", timeout: float = 30.0) -> Any:
        """One API call (admin token unless ``token``); the decoded JSON answer; ApiError otherwise."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {token or self.admin_token}", "Content-Type": content_type,
            "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl_context()) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")}
            raise ApiError(exc.code, parsed) from None
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode(errors="replace")

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts the cluster CA (and only it)."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        return self._ssl

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                kubeconfig: str | os.PathLike[str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the built kubectl with the admin kubeconfig (or ``kubeconfig``)."""
        cmd = [str(self.kubectl_path), "--kubeconfig", str(kubeconfig or self.admin_kubeconfig), *args]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False)
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def create_namespace(self, name: str, labels: Mapping[str, str] | None = None, *,
                         wait_for_service_account: bool = True) -> dict[str, Any]:
        """Create a namespace; by default wait until its ``default`` ServiceAccount exists (pods
        cannot be created before it does)."""
        ns = self.request("POST", "/api/v1/namespaces", {
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": dict(labels or {})}})
        if wait_for_service_account:
            self._wait(f"ServiceAccount {name}/default", "kube-controller-manager",
                       lambda: self._get_ok(f"/api/v1/namespaces/{name}/serviceaccounts/default"))
        assert isinstance(ns, dict)
        return ns

    def service_account_token(self, namespace: str, name: str, *, expiration_seconds: int = 3600,
                              audiences: Sequence[str] | None = None) -> str:
        """A bound token of that ServiceAccount, from the TokenRequest API (the API server refuses
        less than 600 seconds)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = list(audiences)
        answer = self.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    def service_account_kubeconfig(self, namespace: str, name: str, path: str | os.PathLike[str], *,
                                   expiration_seconds: int = 3600) -> Path:
        """Write a kubeconfig authenticating as that ServiceAccount (a TokenRequest token; default
        namespace ``namespace``) and return its path."""
        token = self.service_account_token(namespace, name, expiration_seconds=expiration_seconds)
        return self._write_kubeconfig(Path(path), f"system:serviceaccount:{namespace}:{name}",
                                      {"token": token}, namespace=namespace)

    # ---- credentials for the node simulator
    def issue_kubelet_serving_cert(self, node_name: str) -> tuple[Path, Path]:
        """A serving certificate for a simulated kubelet on loopback (IP SAN 127.0.0.1, DNS SANs
        the node name and localhost), signed by the cluster CA, which the API server verifies
        (``--kubelet-certificate-authority``). Returns (cert path, key path)."""
        return self._authority().issue(f"kubelet-serving-{node_name}", f"system:node:{node_name}",
                                       organizations=["system:nodes"], server=True,
                                       dns_names=[node_name, "localhost"], ip_addresses=["127.0.0.1"])

    def node_client_cert(self, node_name: str) -> tuple[Path, Path]:
        """The client certificate of node ``node_name``: user ``system:node:<name>`` in group
        ``system:nodes`` (the Node authorizer and NodeRestriction apply to it)."""
        return self._authority().issue(f"node-{node_name}", f"system:node:{node_name}",
                                       organizations=["system:nodes"], client=True)

    def node_kubeconfig(self, node_name: str, path: str | os.PathLike[str] | None = None) -> Path:
        """A kubeconfig for node ``node_name`` (its client certificate, embedded)."""
        cert, key = self.node_client_cert(node_name)
        target = Path(path) if path else self.workdir / f"node-{node_name}.kubeconfig"
        return self._write_kubeconfig(target, f"system:node:{node_name}", self._cert_user(cert, key))

    @property
    def kubelet_client_cert(self) -> tuple[Path, Path]:
        """The client certificate the API server presents to kubelets (for a simulated kubelet
        that checks its callers: it is signed by the cluster CA)."""
        return self.pki / "apiserver-kubelet-client.crt", self.pki / "apiserver-kubelet-client.key"

    # ---- internals
    def _authority(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = CertificateAuthority(self.pki)
        return self._ca

    def _cert_user(self, cert: Path, key: Path) -> dict[str, str]:
        return {"client-certificate-data": base64.b64encode(cert.read_bytes()).decode(),
                "client-key-data": base64.b64encode(key.read_bytes()).decode()}

    def _write_kubeconfig(self, path: Path, user: str, credentials: Mapping[str, str],
                          namespace: str | None = None) -> Path:
        context: dict[str, str] = {"cluster": "agent-controller-test", "user": user}
        if namespace:
            context["namespace"] = namespace
        config = {
            "apiVersion": "v1", "kind": "Config", "preferences": {},
            "clusters": [{"name": "agent-controller-test", "cluster": {
                "server": self.url, "certificate-authority-data": base64.b64encode(self.ca_file.read_bytes()).decode()}}],
            "users": [{"name": user, "user": dict(credentials)}],
            "contexts": [{"name": "agent-controller-test", "context": context}],
            "current-context": "agent-controller-test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(config, fh, sort_keys=False)
        os.replace(tmp, path)
        return path

    def _prepare(self) -> None:
        """Certificates, keys, the token file, ports, kubeconfigs and the command lines."""
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.workdir / "etcd").mkdir(exist_ok=True)
        ca = self._authority()
        ca.issue("apiserver", "kube-apiserver", server=True,
                 dns_names=["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                            "kubernetes.default.svc.cluster.local"],
                 ip_addresses=["127.0.0.1", KUBERNETES_SERVICE_IP])
        ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", organizations=["system:masters"],
                 client=True)
        admin = ca.issue("admin", ADMIN_USER, organizations=["system:masters"], client=True)
        kcm = ca.issue("kube-controller-manager", "system:kube-controller-manager", client=True)
        sched = ca.issue("kube-scheduler", "system:kube-scheduler", client=True)
        sa_key, sa_pub = service_account_keys(self.pki)
        # The aggregation layer's own CA and client (as kubeadm sets them up): without them every
        # component that delegates authentication logs "missing content for CA bundle" forever.
        front_proxy = CertificateAuthority(self.pki / "front-proxy", "agent-controller-test-front-proxy-ca")
        proxy_cert, proxy_key = front_proxy.issue("front-proxy-client", "front-proxy-client", client=True)
        tokens = self.pki / "tokens.csv"
        if tokens.exists():
            self.admin_token = tokens.read_text().split(",", 1)[0]
        else:
            self.admin_token = secrets.token_urlsafe(32)
            fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:       # token,user,uid,"groups"
                fh.write(f'{self.admin_token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        if not self.ports:                       # a restart keeps its ports
            names = ["etcd-client", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
            self.ports = dict(zip(names, _free_ports(len(names))))
        self._write_kubeconfig(self.admin_kubeconfig, ADMIN_USER, self._cert_user(*admin))
        kcm_kc = self._write_kubeconfig(self.workdir / "kube-controller-manager.kubeconfig",
                                        "system:kube-controller-manager", self._cert_user(*kcm))
        sched_kc = self._write_kubeconfig(self.workdir / "kube-scheduler.kubeconfig", "system:kube-scheduler",
                                          self._cert_user(*sched))
        sched_config = self.workdir / "kube-scheduler.yaml"
        sched_config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(sched_kc)}, "leaderElection": {"leaderElect": False}}))
        b, p, pki = self.bin_dir, self.ports, self.pki
        etcd_url = f"http://127.0.0.1:{p['etcd-client']}"
        commands = {
            "etcd": [str(b / "etcd"), f"--data-dir={self.workdir / 'etcd'}", f"--listen-client-urls={etcd_url}",
                     f"--listen-peer-urls=http://127.0.0.1:{p['etcd-peer']}", "--unsafe-no-fsync"],
            "kube-apiserver": [
                str(b / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={p['kube-apiserver']}",
                # 1.37 refuses a loopback advertise address with the lease endpoint reconciler
                # (it could never be stored in the `kubernetes` Endpoints): nothing reconciles them.
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}", f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                f"--token-auth-file={tokens}",
                f"--requestheader-client-ca-file={front_proxy.cert_path}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={proxy_cert}", f"--proxy-client-key-file={proxy_key}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={self.ca_file}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--default-not-ready-toleration-seconds={self.pod_eviction_toleration_seconds}",
                f"--default-unreachable-toleration-seconds={self.pod_eviction_toleration_seconds}",
                "--allow-privileged=true",
                # On SIGTERM, end open watches within 2 s; unset, the HTTP server waits for them up
                # to its 60 s shutdown timeout (measured: restart_apiserver took 60 s, now ~1 s).
                "--shutdown-watch-termination-grace-period=2s",
                "--profiling=false",
            ],
            "kube-controller-manager": [
                str(b / "kube-controller-manager"),
                f"--kubeconfig={kcm_kc}", f"--authentication-kubeconfig={kcm_kc}", f"--authorization-kubeconfig={kcm_kc}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kube-controller-manager']}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={sa_key}",
                f"--root-ca-file={self.ca_file}",
                f"--cluster-signing-cert-file={self.ca_file}", f"--cluster-signing-key-file={pki / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                f"--node-monitor-grace-period={self.node_monitor_grace_period:g}s",
                "--leader-elect=false",
                "--profiling=false",
            ],
            "kube-scheduler": [
                str(b / "kube-scheduler"), f"--config={sched_config}",
                f"--authentication-kubeconfig={sched_kc}", f"--authorization-kubeconfig={sched_kc}",
                "--bind-address=127.0.0.1", f"--secure-port={p['kube-scheduler']}",
                "--profiling=false",
            ],
        }
        for name, args in commands.items():
            self.processes[name] = _Process(name, args + self.extra_args.get(name, []), self.log_path(name))

    def _start_process(self, name: str) -> None:
        proc = self.processes[name]
        proc.start(self.die_with_parent)
        if name == "etcd":
            self._wait("etcd /health", name, lambda: self._etcd_healthy())
        elif name == "kube-apiserver":
            self._wait("kube-apiserver /readyz", name, lambda: self._get_ok("/readyz"))
        else:
            self._wait(f"{name} /healthz", name, lambda: self._component_healthy(self.ports[name]))

    def _wait(self, what: str, name: str, check: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.start_timeout
        proc = self.processes[name]
        last = ""
        while True:
            if not proc.running():
                status = proc.popen.returncode if proc.popen is not None else None
                raise ControlPlaneError(f"{name} exited (status {status}) while waiting for {what}; "
                                        f"last lines of {proc.log}:\n{_tail(proc.log)}")
            try:
                if check():
                    return
            except (OSError, ApiError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"timed out after {self.start_timeout:g}s waiting for {what}"
                                        + (f" ({last})" if last else "")
                                        + f"; last lines of {proc.log}:\n{_tail(proc.log)}")
            time.sleep(0.1)

    def _etcd_healthy(self) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['etcd-client']}/health", timeout=2) as resp:
            return bool(json.loads(resp.read()).get("health") == "true")

    def _get_ok(self, path: str) -> bool:
        self.request("GET", path, timeout=5)
        return True

    def _component_healthy(self, port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE                # its own self-signed serving certificate
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
