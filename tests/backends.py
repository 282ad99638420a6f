"""The API the tests run against: the emulator (controller/devcluster) or a real control plane
(controller/controlplane), behind one small facade so a test can be written once.

Choose with ``pytest --backend emulator|control-plane`` or ``AGENT_TEST_BACKEND`` (default:
emulator). The fixtures are in conftest.py: ``backend`` (this facade, session-scoped),
``backend_ns`` (a fresh namespace per test), ``control_plane`` (always the real one, for tests that
need it whatever the choice). On the control plane:

- the CRDs are installed with ``kubectl apply --server-side`` (manifests/crd.yaml and the chart's
  kopf peering CRD);
- the controller's namespace, ServiceAccount and RBAC are the chart's own, rendered by
  ``helm template`` and applied — the controller never runs as an administrator:
  :meth:`Backend.controller_config` authenticates as that ServiceAccount with a TokenRequest token;
- per-test namespaces are labelled ``pod-security.kubernetes.io/enforce: restricted``.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers import Api, wait_for

ROOT = Path(__file__).resolve().parent.parent
CRDS = [ROOT / "manifests" / "crd.yaml"]
CHART = ROOT / "helm" / "agent-controller"
TOOLS = Path(os.environ.get("AGENT_CONTROLLER_TOOLS") or ROOT / ".tools")
BACKENDS = ("emulator", "control-plane")
RELEASE = "agent-controller"
CONTROLLER_NAMESPACE = "agent-controller"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted",
              "pod-security.kubernetes.io/enforce-version": "latest"}
CONTROLLER_TOKEN_SECONDS = 24 * 3600
NODES = 2


def backend_choice(option: str | None) -> str:
    """The backend named by the pytest option, else AGENT_TEST_BACKEND, else the emulator."""
    name = option or os.environ.get("AGENT_TEST_BACKEND") or "emulator"
    if name not in BACKENDS:
        raise pytest.UsageError(f"unknown backend {name!r} (AGENT_TEST_BACKEND / --backend): one of {', '.join(BACKENDS)}")
    return name


class Backend:
    """What a test needs from the API server, whichever it is."""

    name: str
    url: str
    admin_token: str
    ca_file: str | None
    kubeconfig: str                      # an admin kubeconfig
    namespace_labels: dict[str, str]     # put on every per-test namespace

    def api(self, token: str | None = None) -> Api:
        """The tests' synchronous REST client, as the admin (or with ``token``)."""
        return Api(self.url, token or self.admin_token, self.ca_file)

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.api().create_namespace(name, {**self.namespace_labels, **(labels or {})})

    def controller_config(self, default_namespace: str = "default") -> Any:
        """The controller's ClientConfig (controller.kube.client)."""
        raise NotImplementedError


class EmulatorBackend(Backend):
    """controller/devcluster; the controller runs as its admin (as the existing fixtures do)."""

    name = "emulator"

    def __init__(self, cluster: Any, workdir: Path):
        self.cluster = cluster
        self.url = cluster.url
        self.admin_token = cluster.admin_token
        self.ca_file = None
        self.kubeconfig = cluster.kubeconfig_path(str(workdir / "admin.kubeconfig"))
        self.namespace_labels = {}

    def controller_config(self, default_namespace: str = "default") -> Any:
        from controller.kube.client import ClientConfig

        return ClientConfig(server=self.url, token=self.admin_token, default_namespace=default_namespace)


class ControlPlaneBackend(Backend):
    """A real control plane with the chart's RBAC installed for the controller's ServiceAccount."""

    name = "control-plane"

    def __init__(self, cp: Any, controller_service_account: str):
        self.cp = cp
        self.url = cp.url
        self.admin_token = cp.admin_token
        self.ca_file = str(cp.ca_file)
        self.kubeconfig = str(cp.admin_kubeconfig)
        self.namespace_labels = dict(RESTRICTED)
        self.controller_namespace = CONTROLLER_NAMESPACE
        self.controller_service_account = controller_service_account
        self.controller_token = cp.service_account_token(CONTROLLER_NAMESPACE, controller_service_account,
                                                         expiration_seconds=CONTROLLER_TOKEN_SECONDS)
        self.sim: Any = None          # the node simulator (controller.nodesim.sim.start_nodes)
        # The controllers under test reach the API server through the fault proxy: the emulator's
        # fault injection and request counts, in front of the real server (their token passes through).
        from controller.controlplane.proxy import ApiProxy
        from controller.kube.client import ClientConfig

        self.proxy = ApiProxy(ClientConfig(server=self.url, ca_file=self.ca_file)).start()

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        self.cp.create_namespace(name, {**self.namespace_labels, **(labels or {})})

    def controller_config(self, default_namespace: str = "default") -> Any:
        from controller.kube.client import ClientConfig

        return ClientConfig(server=self.url, token=self.controller_token, ca_file=self.ca_file,
                            default_namespace=default_namespace)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.cp.kubectl(*args, input=input, check=check)

    def stop(self) -> None:
        self.proxy.stop()
        if self.sim is not None:
            self.sim.stop()
        self.cp.stop()


class _EmulatorOnly:
    """What only the emulator has (its kubelet's internals): a test
    using it on the control plane lacks its `@pytest.mark.emulator_only` — said, not skipped."""

    def __init__(self, what: str):
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"{self._what} needs the emulator: mark the test @pytest.mark.emulator_only")

    def __getitem__(self, key: Any) -> Any:
        raise AssertionError(f"{self._what} needs the emulator: mark the test @pytest.mark.emulator_only")


class ControlPlaneCluster:
    """The integration fixtures' `cluster` on a real control plane: the same url/admin_token
    (+ ca_file), kubeconfigs, service-account tokens; ``faults`` and ``requests`` are the fault
    proxy's, which the controllers under test go through (``controller_url``); the emulator's
    kubelet internals skip the test."""

    def __init__(self, backend: ControlPlaneBackend):
        self.backend = backend
        self.url = backend.url
        self.admin_token = backend.admin_token
        self.ca_file = backend.ca_file
        self.controller_token = backend.controller_token
        self.controller_url = backend.proxy.url
        self.faults = backend.proxy.faults
        self.requests = backend.proxy.requests
        self.kubelet = _EmulatorOnly("the emulator's kubelet")

    def kubeconfig_path(self, path: str, user: str = "admin", namespace: str = "default",
                        token: str | None = None) -> str:
        """A kubeconfig as the emulator's: the admin's, a ServiceAccount's
        (``system:serviceaccount:NS:SA``) or ``token``'s, with ``namespace`` in its context."""
        config = yaml.safe_load(Path(self.backend.kubeconfig).read_text())
        if token is None and user.startswith("system:serviceaccount:"):
            sns, _, sname = user.removeprefix("system:serviceaccount:").partition(":")
            token = self.service_account_token(sns, sname)
        elif token is None and user != "admin":
            pytest.skip(f"user {user!r} needs the emulator (--backend emulator)")
        if token is not None:
            for entry in config.get("users") or []:
                entry["user"] = {"token": token}
        for entry in config.get("contexts") or []:
            entry["context"]["namespace"] = namespace
        Path(path).write_text(yaml.safe_dump(config))
        return path

    def service_account_token(self, namespace: str, name: str, **kw: Any) -> str:
        token: str = self.backend.cp.service_account_token(namespace, name, **kw)
        return token

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"cluster.{name}: the emulator's (mark the test @pytest.mark.emulator_only), "
                             f"or a typo")


def _helm() -> str:
    helm = TOOLS / "bin" / "helm"
    if not os.access(helm, os.X_OK):
        message = f"{helm} missing: run scripts/install-test-tools.sh"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set)", pytrace=False)
        pytest.skip(message)
    return str(helm)


def render_controller_rbac() -> str:
    """The chart's ServiceAccount and RBAC, as `helm template` renders them for release
    agent-controller in namespace agent-controller."""
    home = TOOLS / "helm-home"
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data"), "KUBECONFIG": os.devnull}
    # Rendered as for standby replicas (replicas: 2, a ReadWriteMany archive): the RBAC then has the
    # Lease rules leader election needs, which the HA tests use; the rest is the same.
    proc = subprocess.run([_helm(), "template", RELEASE, str(CHART), "--namespace", CONTROLLER_NAMESPACE,
                           "--set", "replicas=2", "--set", "archive.persistence.accessModes={ReadWriteMany}",
                           "--show-only", "templates/serviceaccount.yaml", "--show-only", "templates/rbac.yaml"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr}")
    return proc.stdout


def start_control_plane(workdir: Path) -> ControlPlaneBackend:
    """Start a control plane in ``workdir`` and install what the suite needs (see the module
    docstring). Skips (one line) when the binaries are missing and cannot be built here."""
    from controller.controlplane import BinariesUnavailable, ControlPlane, ensure_binaries

    try:
        bin_dir = ensure_binaries()
    except BinariesUnavailable as exc:
        pytest.skip(f"no control plane: {exc}")
    manifests = render_controller_rbac()
    cp = ControlPlane(workdir=workdir, bin_dir=bin_dir, die_with_parent=True)
    cp.start()
    try:
        for crd in CRDS:
            cp.kubectl("apply", "--server-side", "-f", str(crd))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agents.agentcontroller.dev")
        # The CRD's OpenAPI schema is published a moment after it is Established: wait until
        # `kubectl explain` (and server-side apply's schema) knows it.
        wait_for(lambda: cp.kubectl("explain", "agent.spec", check=False).returncode == 0,
                 message="the Agent CRD's OpenAPI schema")
        cp.create_namespace(CONTROLLER_NAMESPACE)
        cp.kubectl("apply", "--server-side", "-f", "-", input=manifests)
        accounts = [d["metadata"]["name"] for d in yaml.safe_load_all(manifests)
                    if d and d.get("kind") == "ServiceAccount"]
        assert len(accounts) == 1, f"the chart renders {len(accounts)} ServiceAccounts"
        backend = ControlPlaneBackend(cp, accounts[0])
        from controller.nodesim.sim import start_nodes

        backend.sim = start_nodes(cp, NODES, heartbeat_seconds=2.0, workdir=str(workdir / "pods"))
        return backend
    except BaseException:
        cp.stop()
        raise
