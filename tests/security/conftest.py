"""Fixtures of the security tests. The API server is a fixture (`backend`):

- by default, the in-process emulator (controller/devcluster), started for this package;
- with `--backend control-plane` (scripts/test does so), the project's real control plane;
- with AGENT_CONTROLLER_TEST_APISERVER=https://HOST:PORT and AGENT_CONTROLLER_TEST_TOKEN=<a
  system:masters token>, any real kube-apiserver (>= 1.30, RBAC authorization, TokenRequest
  enabled: --service-account-signing-key-file). TLS is not verified (test servers).

`installed` applies what a user installs (manifests/crd.yaml, and from manifests/install.yaml the
controller's ServiceAccount, ClusterRole, ClusterRoleBinding and the status ValidatingAdmissionPolicy
+ binding) and removes the policy again at the end of the session (so other tests sharing a real
server are not subject to it).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .secclient import AGENTS, Client, insecure_context, object_path

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crd.yaml"
INSTALL = ROOT / "manifests" / "install.yaml"
CONTROLLER_NS = "agent-controller"
CONTROLLER_SA = "agent-controller"
_ids = itertools.count(1)


@dataclass
class Backend:
    name: str  # "emulator" or "external"
    admin: Client
    emulator: Any = None  # the DevCluster, on the emulator backend


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, backend_name: str) -> Iterator[Backend]:
    url = os.environ.get("AGENT_CONTROLLER_TEST_APISERVER")
    if url:
        token = os.environ["AGENT_CONTROLLER_TEST_TOKEN"]
        yield Backend("external", Client(url, token, insecure_context()))
        return
    if backend_name == "control-plane":
        # `--backend control-plane`: the project's own real control plane (tests/backends.py).
        cp = request.getfixturevalue("control_plane")
        os.environ.setdefault("AGENT_CONTROLLER_TEST_OWNERREF_ENFORCEMENT", "1")   # it runs the plugin
        yield Backend("external", Client(cp.url, cp.admin_token, insecure_context()))
        return
    from controller.devcluster import DevCluster

    dc = DevCluster(tls=False)
    dc.start()
    try:
        yield Backend("emulator", Client(dc.url, dc.admin_token), dc)
    finally:
        dc.stop()


def install_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]


def status_policy_docs() -> list[dict[str, Any]]:
    return [d for d in install_docs()
            if d["kind"] in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")]


@dataclass
class Installed:
    admin: Client
    controller: Client  # the controller's ServiceAccount
    controller_user: str
    backend: str


@pytest.fixture(scope="session")
def installed(backend: Backend) -> Iterator[Installed]:
    admin = backend.admin
    admin.apply(yaml.safe_load(CRD.read_text()))
    wait_until(lambda: admin.request("GET", AGENTS).status == 200, "the Agent CRD is served")
    admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CONTROLLER_NS}})
    for doc in install_docs():
        if doc["kind"] in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
            admin.apply(doc)
    policy = status_policy_docs()
    assert [d["kind"] for d in policy] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    for doc in policy:
        admin.apply(doc)
    controller = admin.as_token(admin.sa_token(CONTROLLER_NS, CONTROLLER_SA))
    _wait_policy_active(admin)
    try:
        yield Installed(admin, controller, f"system:serviceaccount:{CONTROLLER_NS}:{CONTROLLER_SA}",
                        backend.name)
    finally:
        for doc in reversed(policy):
            admin.request("DELETE", object_path(doc))


def _wait_policy_active(admin: Client) -> None:
    """A real API server loads policies asynchronously: wait until a probe write is refused."""
    ns = new_namespace(admin)
    probe = admin.ok("POST", f"{AGENTS}/namespaces/{ns}/agents", agent_body(ns, "policy-probe"))
    name = probe["metadata"]["name"]
    tries = itertools.count()  # a new value each time: an unchanged field is never refused
    wait_until(lambda: admin.patch_status(ns, name, {"status": {"podName": f"x{next(tries)}"}}).status == 403,
               "the status ValidatingAdmissionPolicy is in force")
    admin.request("DELETE", f"/api/v1/namespaces/{ns}")


def wait_until(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.1)


def new_namespace(admin: Client) -> str:
    name = f"sec-{os.getpid() % 10000}-{next(_ids)}"
    admin.ok("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


def agent_body(ns: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": ns}, "spec": {"image": "agent:1", **spec}}


@pytest.fixture
def ns(installed: Installed) -> Iterator[str]:
    name = new_namespace(installed.admin)
    yield name
    installed.admin.request("DELETE", f"/api/v1/namespaces/{name}")
