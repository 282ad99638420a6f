"""controller/podsecurity.py against the real thing: Pod Security Admission of a real
kube-apiserver. Every case of pss_cases.py is created (dry run) in a namespace enforcing baseline
and in one enforcing restricted; the API server must admit exactly what our table admits. And
every pod the controller builds (sidecars, init containers, prompt, template security contexts
our defaults complete) is admitted where `restricted` is enforced.

Real API server only (the emulator has no Pod Security Admission): skipped on the emulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from controller import children, podsecurity

from .conftest import Backend, Installed, new_namespace
from .pss_cases import CASES, Case
from .secclient import Client

RANK = {"privileged": 0, "baseline": 1, "restricted": 2}


@pytest.fixture(scope="module")
def enforcing(backend: Backend, installed: Installed) -> Iterator[dict[str, str]]:
    if backend.emulator is not None:
        pytest.skip("the emulator has no Pod Security Admission")
    admin = installed.admin
    namespaces = {}
    for level in ("baseline", "restricted"):
        ns = new_namespace(admin)
        admin.ok("PATCH", f"/api/v1/namespaces/{ns}", {"metadata": {"labels": {
            "pod-security.kubernetes.io/enforce": level, "pod-security.kubernetes.io/enforce-version": "latest"}}},
            "application/merge-patch+json")
        namespaces[level] = ns
        # no kube-controller-manager needed: the ServiceAccount admission plugin wants the account
        admin.apply({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}})
    yield namespaces
    for ns in namespaces.values():
        admin.request("DELETE", f"/api/v1/namespaces/{ns}")


def dry_run_pod(admin: Client, ns: str, name: str, spec: dict[str, Any],
                annotations: dict[str, str] | None = None) -> Any:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
            "spec": spec}
    return admin.request("POST", f"/api/v1/namespaces/{ns}/pods?dryRun=All", body)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_admission_agrees_with_our_table(
    installed: Installed, enforcing: dict[str, str], case: Case, level: str
) -> None:
    spec = case.spec()
    reply = dry_run_pod(installed.admin, enforcing[level], f"pss-{case.id.lower()}", spec)
    ours = podsecurity.pss_violations(spec, level)
    expected_admitted = RANK[case.level] >= RANK[level]
    assert (not ours) == expected_admitted, [str(v) for v in ours]
    if expected_admitted:
        assert reply.status == 201, reply.message
    else:
        assert reply.status == 403, reply.message
        assert "violates PodSecurity" in reply.message, reply.message


BUILT: dict[str, dict[str, Any]] = {
    "plain": {},
    "prompt": {"prompt": "hello", "command": ["agentctl", "run", "--", "python3", "-m", "agent"]},
    "sidecars": {"podTemplate": {"spec": {
        "initContainers": [{"name": "fetch", "image": "busybox:1", "command": ["true"]},
                           {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always"}],
        "containers": [{"name": "agent", "env": [{"name": "MODE", "value": "x"}],
                        "securityContext": {"readOnlyRootFilesystem": True, "runAsUser": 1000}},
                       {"name": "logger", "image": "fluent:1",
                        "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}],
        "volumes": [{"name": "scratch", "emptyDir": {}}],
        "securityContext": {"runAsUser": 1000, "fsGroup": 2000},
    }}},
}


@pytest.mark.parametrize("name", sorted(BUILT))
def test_every_pod_the_controller_builds_passes_restricted(
    installed: Installed, enforcing: dict[str, str], name: str
) -> None:
    ns = enforcing["restricted"]
    agent = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
             "metadata": {"name": name, "namespace": ns, "uid": "00000000-0000-0000-0000-000000000001"},
             "spec": {"image": "agent:1", **BUILT[name]}}
    installed.admin.apply(children.service_account(agent))
    pod = children.pod(agent)
    reply = dry_run_pod(installed.admin, ns, pod["metadata"]["name"], pod["spec"], pod["metadata"].get("annotations"))
    assert reply.status == 201, reply.message
