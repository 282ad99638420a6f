"""The real control plane (controller/controlplane) as the suite uses it: the `control_plane`
fixture (tests/backends.py) — CRDs installed, the chart's RBAC for the controller's ServiceAccount.

Skipped, with the reason, when the binaries are not built and Go is not on PATH."""

from __future__ import annotations

import itertools
import json
import os
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from helpers import GROUP_PATH, HttpError, wait_for

_names = itertools.count(1)
MINIMAL_SPEC = {"image": "gcr.io/distroless/python3-debian12:nonroot", "command": ["python3", "-c", "print('hi')"]}


@pytest.fixture
def cp_ns(control_plane: Any) -> str:
    name = f"cp{os.getpid() % 1000}-{next(_names)}"
    control_plane.create_namespace(name)
    return name


def whoami(control_plane: Any, token: str) -> dict[str, Any]:
    review = control_plane.api(token).call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    info: dict[str, Any] = review["status"]["userInfo"]
    return info


def test_the_api_server_is_ready_and_is_the_pinned_release(control_plane: Any) -> None:
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"
    assert version["clientVersion"]["gitVersion"] == "v1.37.2"


def test_the_crd_is_served_and_explained(control_plane: Any) -> None:
    resources = control_plane.api().call("GET", GROUP_PATH)["resources"]
    assert "agents" in {r["name"] for r in resources}
    explained = control_plane.kubectl("explain", "agent.spec").stdout
    assert "KIND:" in explained and "Agent" in explained and "image" in explained


def test_per_test_namespaces_enforce_the_restricted_pod_security_level(control_plane: Any, cp_ns: str) -> None:
    labels = control_plane.api().call("GET", f"/api/v1/namespaces/{cp_ns}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    privileged = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged"},
                  "spec": {"containers": [{"name": "c", "image": "busybox",
                                           "securityContext": {"privileged": True}}]}}
    with pytest.raises(HttpError) as err:
        control_plane.api().call("POST", f"/api/v1/namespaces/{cp_ns}/pods", privileged)
    assert err.value.status == 403
    assert 'violates PodSecurity "restricted:latest"' in err.value.body["message"]


def test_the_admin_creates_and_reads_an_agent(control_plane: Any, cp_ns: str) -> None:
    api = control_plane.api()
    created = api.create_agent(cp_ns, "hello", MINIMAL_SPEC)
    assert created["metadata"]["uid"]
    read = api.agent(cp_ns, "hello")
    assert read["spec"]["image"] == MINIMAL_SPEC["image"]
    assert read["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_the_controller_runs_as_its_service_account_under_the_charts_rbac(control_plane: Any, cp_ns: str) -> None:
    token = control_plane.controller_token
    user = whoami(control_plane, token)
    assert user["username"] == "system:serviceaccount:agent-controller:agent-controller"
    api = control_plane.api(token)
    control_plane.api().create_agent(cp_ns, "listed", MINIMAL_SPEC)
    names = [a["metadata"]["name"] for a in api.call("GET", f"{GROUP_PATH}/agents")["items"]]
    assert "listed" in names
    for path in ("/api/v1/secrets", f"/api/v1/namespaces/{cp_ns}/secrets"):
        with pytest.raises(HttpError) as err:
            api.call("GET", path)
        assert err.value.status == 403, path
    config = control_plane.controller_config(cp_ns)
    assert config.ca_file == control_plane.ca_file and config.token == token


def test_token_request_gives_a_working_token_of_that_service_account(control_plane: Any, cp_ns: str,
                                                                     tmp_path: Any) -> None:
    api = control_plane.api()
    api.call("POST", f"/api/v1/namespaces/{cp_ns}/serviceaccounts",
             {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "worker"}})
    kubeconfig = control_plane.cp.service_account_kubeconfig(cp_ns, "worker", tmp_path / "worker.kubeconfig",
                                                             expiration_seconds=600)
    who = control_plane.kubectl("auth", "whoami", "--kubeconfig", str(kubeconfig), "-o", "json")
    assert json.loads(who.stdout)["status"]["userInfo"]["username"] == f"system:serviceaccount:{cp_ns}:worker"
    denied = control_plane.kubectl("get", "pods", "--kubeconfig", str(kubeconfig), check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr         # authenticated, not authorized
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cp_ns}/roles", {
        "metadata": {"name": "pods-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cp_ns}/rolebindings", {
        "metadata": {"name": "pods-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pods-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "worker", "namespace": cp_ns}]})
    wait_for(lambda: control_plane.kubectl("get", "pods", "--kubeconfig", str(kubeconfig), check=False).returncode == 0,
             message="the RoleBinding to take effect")
    token = control_plane.cp.service_account_token(cp_ns, "worker", expiration_seconds=600)
    assert whoami(control_plane, token)["username"] == f"system:serviceaccount:{cp_ns}:worker"


def test_garbage_collection_and_namespace_deletion(control_plane: Any) -> None:
    api = control_plane.api()
    ns = f"cp{os.getpid() % 1000}-gc-{next(_names)}"
    control_plane.create_namespace(ns)
    owner = api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "owner"}})
    api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}]}})
    api.call("DELETE", f"/api/v1/namespaces/{ns}/configmaps/owner")

    def gone(path: str) -> bool:
        try:
            api.call("GET", path)
        except HttpError as exc:
            return exc.status == 404
        return False

    wait_for(lambda: gone(f"/api/v1/namespaces/{ns}/configmaps/dependent"), message="the garbage collector")
    api.call("DELETE", f"/api/v1/namespaces/{ns}")
    wait_for(lambda: gone(f"/api/v1/namespaces/{ns}"), message="the namespace controller")


def test_owner_references_permission_enforcement_is_on(control_plane: Any, cp_ns: str) -> None:
    """A user who may create ConfigMaps but not update agents/finalizers cannot set
    blockOwnerDeletion on a reference to an Agent."""
    api = control_plane.api()
    agent = api.create_agent(cp_ns, "owner", MINIMAL_SPEC)
    api.call("POST", f"/api/v1/namespaces/{cp_ns}/serviceaccounts", {"metadata": {"name": "maker"}})
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cp_ns}/roles", {
        "metadata": {"name": "maker"}, "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
            {"apiGroups": ["agentcontroller.dev"], "resources": ["agents"], "verbs": ["get", "delete"]}]})
    api.call("POST", f"/apis/rbac.authorization.k8s.io/v1/namespaces/{cp_ns}/rolebindings", {
        "metadata": {"name": "maker"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "maker"},
        "subjects": [{"kind": "ServiceAccount", "name": "maker", "namespace": cp_ns}]})
    maker = control_plane.api(control_plane.cp.service_account_token(cp_ns, "maker", expiration_seconds=600))
    ref = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": "owner",
           "uid": agent["metadata"]["uid"], "controller": True}

    def create(name: str, block: bool) -> Any:
        return maker.call("POST", f"/api/v1/namespaces/{cp_ns}/configmaps", {
            "metadata": {"name": name, "ownerReferences": [{**ref, "blockOwnerDeletion": block}]}})

    wait_for(lambda: create("unblocked", False), message="the RoleBinding to take effect")
    with pytest.raises(HttpError) as err:
        create("blocking", True)
    assert err.value.status == 403
    assert "cannot set blockOwnerDeletion" in err.value.body["message"]


def test_validating_admission_policy_is_enforced(control_plane: Any, cp_ns: str) -> None:
    api = control_plane.api()
    policy = f"no-forbidden-key-{cp_ns}"
    api.call("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies", {
        "metadata": {"name": policy},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["configmaps"]}]},
                 "validations": [{"expression": "!has(object.data) || !('forbidden' in object.data)",
                                  "message": "the key 'forbidden' is not allowed"}]}})
    api.call("POST", "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings", {
        "metadata": {"name": policy},
        "spec": {"policyName": policy, "validationActions": ["Deny"],
                 "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": cp_ns}}}}})
    try:
        def denied() -> str | None:
            name = f"probe-{next(_names)}"
            try:
                api.call("POST", f"/api/v1/namespaces/{cp_ns}/configmaps",
                         {"metadata": {"name": name}, "data": {"forbidden": "x"}})
            except HttpError as exc:
                return str(exc.body["message"])
            return None

        message = wait_for(denied, message="the policy to be enforced")
        assert "the key 'forbidden' is not allowed" in message
        api.call("POST", f"/api/v1/namespaces/{cp_ns}/configmaps", {"metadata": {"name": "fine"}, "data": {"ok": "1"}})
    finally:
        api.call("DELETE", f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings/{policy}")
        api.call("DELETE", f"/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies/{policy}")


def test_node_credentials_are_subject_to_node_authorization(control_plane: Any, tmp_path: Any) -> None:
    cp = control_plane.cp
    name = f"sim-{os.getpid() % 1000}-{next(_names)}"
    kubeconfig = cp.node_kubeconfig(name, tmp_path / "node.kubeconfig")
    info = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)["status"]["userInfo"]
    assert info["username"] == f"system:node:{name}" and "system:nodes" in info["groups"]

    def node(node_name: str) -> str:
        return json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": node_name}})

    try:
        cp.kubectl("create", "-f", "-", input=node(name), kubeconfig=kubeconfig)
        other = cp.kubectl("create", "-f", "-", input=node(name + "-other"), kubeconfig=kubeconfig, check=False)
        assert other.returncode != 0 and "Forbidden" in other.stderr
        assert f"node \"{name}\" is not allowed to modify node \"{name}-other\"" in other.stderr
    finally:
        cp.kubectl("delete", "node", name, "--ignore-not-found")


def test_kubelet_serving_certificates_are_signed_by_the_cluster_ca(control_plane: Any) -> None:
    cp = control_plane.cp
    cert_path, key_path = cp.issue_kubelet_serving_cert("sim-cert")
    assert key_path.exists()
    ca = x509.load_pem_x509_certificate(cp.ca_file.read_bytes())
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    cert.verify_directly_issued_by(ca)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    assert "sim-cert" in sans.get_values_for_type(x509.DNSName)
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in usages
