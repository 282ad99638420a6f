"""ValidatingAdmissionPolicy semantics the emulator must share with kube-apiserver 1.37: the
messages and status codes (default message, static message, messageExpression and its fallback,
evaluation errors, reasons), match rules, namespace selectors, match conditions, Warn. Every
expectation here was read off a real kube-apiserver v1.37.2, and the tests run on either backend.

The policies only select ConfigMaps in namespaces labelled for this test, so they disturb nothing
else on a shared server."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Backend, Installed, new_namespace, wait_until
from .secclient import Client, object_path

LABEL = "agentcontroller.dev/admission-conformance"


def policy(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name}, "spec": spec}


def binding(name: str, policy_name: str, actions: list[str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name}, "spec": {"policyName": policy_name, "validationActions": actions, **spec}}


CONFIGMAP_CREATES = {"resourceRules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                                        "resources": ["configmaps"]}],
                     "namespaceSelector": {"matchLabels": {LABEL: "yes"}}}

PROBE = policy("conformance-probe", {
    "matchConstraints": CONFIGMAP_CREATES,
    "validations": [
        {"expression": "object.metadata.name != 'bad'"},
        {"expression": "object.metadata.name != 'bad2'", "message": "static msg"},
        {"expression": "object.metadata.name != 'bad3'", "messageExpression": "'dyn ' + object.metadata.name",
         "reason": "Forbidden"},
        {"expression": "object.metadata.name != 'bad4' || object.data.x == 'y'"},
        {"expression": "object.metadata.name != 'bad5'", "messageExpression": "string(object.data.nope)",
         "message": "fallback"},
        {"expression": "object.metadata.name != 'bad6'", "messageExpression": "''", "message": "fallback6"},
    ],
})
WARN = policy("conformance-warn", {
    "failurePolicy": "Ignore",
    "matchConstraints": CONFIGMAP_CREATES,
    "matchConditions": [{"name": "only-w", "expression": "object.metadata.name.startsWith('w')"}],
    "validations": [{"expression": "false", "message": "warned"}],
})
OBJECTS = [PROBE, binding("conformance-probe", "conformance-probe", ["Deny", "Audit"]),
           WARN, binding("conformance-warn", "conformance-warn", ["Warn"])]


@pytest.fixture(scope="module")
def policies(installed: Installed) -> Iterator[Client]:
    admin = installed.admin
    for obj in OBJECTS:
        admin.apply(obj)
    yield admin
    for obj in reversed(OBJECTS):
        admin.request("DELETE", object_path(obj))


@pytest.fixture
def labelled(installed: Installed, policies: Client) -> Iterator[str]:
    name = new_namespace(installed.admin)
    installed.admin.ok("PATCH", f"/api/v1/namespaces/{name}", {"metadata": {"labels": {LABEL: "yes"}}},
                       "application/merge-patch+json")
    wait_until(lambda: create(policies, name, "bad").status == 422, "the probe policy is in force")
    policies.request("DELETE", f"/api/v1/namespaces/{name}/configmaps/bad")  # if created before that
    yield name
    installed.admin.request("DELETE", f"/api/v1/namespaces/{name}")


def create(client: Client, ns: str, name: str, data: dict[str, str] | None = None) -> Any:
    return client.request("POST", f"/api/v1/namespaces/{ns}/configmaps",
                          {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name},
                           "data": data or {"a": "b"}})


def head(name: str, policy_name: str = "conformance-probe") -> str:
    return (f'configmaps "{name}" is forbidden: ValidatingAdmissionPolicy \'{policy_name}\' '
            f"with binding '{policy_name}' denied request: ")


@pytest.mark.parametrize(("name", "code", "reason", "message"), [
    ("bad", 422, "Invalid", "failed expression: object.metadata.name != 'bad'"),
    ("bad2", 422, "Invalid", "static msg"),
    ("bad3", 403, "Forbidden", "dyn bad3"),
    ("bad4", 422, "Invalid",
     "expression 'object.metadata.name != 'bad4' || object.data.x == 'y'' resulted in error: no such key: x"),
    ("bad5", 422, "Invalid", "fallback"),
    ("bad6", 422, "Invalid", "fallback6"),
])
def test_denial_messages(policies: Client, labelled: str, name: str, code: int, reason: str,
                         message: str) -> None:
    reply = create(policies, labelled, name)
    assert reply.status == code, reply.message
    assert reply.body["reason"] == reason
    assert reply.message == head(name) + message
    assert reply.body["details"] == {"name": name, "kind": "configmaps",
                                     "causes": [{"message": reply.message.split(" is forbidden: ", 1)[1]}]}


def test_what_the_rules_do_not_select_is_admitted(installed: Installed, policies: Client, labelled: str) -> None:
    other = new_namespace(installed.admin)  # not labelled: the namespaceSelector does not match
    try:
        assert create(policies, other, "bad").status == 201
    finally:
        installed.admin.request("DELETE", f"/api/v1/namespaces/{other}")
    assert create(policies, labelled, "fine").status == 201
    # UPDATE is not among the operations
    reply = policies.request("PUT", f"/api/v1/namespaces/{labelled}/configmaps/fine",
                             {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "fine"},
                              "data": {"c": "d"}})
    assert reply.status == 200, reply.message


def test_warn_and_match_conditions(policies: Client, labelled: str) -> None:
    reply = create(policies, labelled, "wok")
    assert reply.status == 201
    assert reply.warnings == [
        "Validation failed for ValidatingAdmissionPolicy 'conformance-warn' with binding 'conformance-warn': warned"
    ]
    reply = create(policies, labelled, "ok")  # the match condition is false: not even a warning
    assert reply.status == 201 and reply.warnings == []


def test_unselected_requests_cost_no_evaluation(backend: Backend, policies: Client, labelled: str) -> None:
    """The emulator evaluates only policies whose rules select the request."""
    if backend.emulator is None:
        pytest.skip("counts the emulator's own evaluations")
    plugin = backend.emulator.admission
    before = plugin.evaluations
    for i in range(20):
        policies.request("POST", f"/api/v1/namespaces/{labelled}/secrets",
                         {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"s{i}"}})
    assert plugin.evaluations == before
    create(policies, labelled, "counted")
    assert plugin.evaluations == before + 2  # the probe policy's binding and the warn policy's


@pytest.fixture
def owner_references_enforced(backend: Backend) -> Iterator[None]:
    """The OwnerReferencesPermissionEnforcement admission plugin (off by default in kube-apiserver):
    switched on in the emulator; on a real server only when it says it runs it."""
    import os

    if backend.emulator is None:
        if os.environ.get("AGENT_CONTROLLER_TEST_OWNERREF_ENFORCEMENT") != "1":
            pytest.skip("set AGENT_CONTROLLER_TEST_OWNERREF_ENFORCEMENT=1 when the server runs the plugin")
        yield
        return
    plugin = backend.emulator.admission
    plugin.owner_references_permission_enforcement = True
    try:
        yield
    finally:
        plugin.owner_references_permission_enforcement = False


def test_block_owner_deletion_needs_update_on_the_owners_finalizers(
    installed: Installed, ns: str, owner_references_enforced: None
) -> None:
    admin = installed.admin
    owner = admin.ok("POST", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents",
                     {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "o"},
                      "spec": {"image": "i"}})
    rules = [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "delete"]}]
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "cm", "namespace": ns}, "rules": rules})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                 "metadata": {"name": "cm", "namespace": ns},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm"},
                 "subjects": [{"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}]})
    alice = admin.impersonating("alice", "system:authenticated")

    def owned(name: str, block: bool) -> Any:
        ref = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": "o",
               "uid": owner["metadata"]["uid"], "controller": True, "blockOwnerDeletion": block}
        return alice.request("POST", f"/api/v1/namespaces/{ns}/configmaps", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "ownerReferences": [ref]}})

    wait_until(lambda: create(alice, ns, "probe").status == 201, "alice's Role is in force")
    reply = owned("blocking", True)
    assert reply.status == 403, reply.message
    assert reply.message == ('configmaps "blocking" is forbidden: cannot set blockOwnerDeletion if an '
                             "ownerReference refers to a resource you can't set finalizers on: , <nil>")
    assert owned("not-blocking", False).status == 201
    rules.append({"apiGroups": ["agentcontroller.dev"], "resources": ["agents/finalizers"], "verbs": ["update"]})
    admin.apply({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                 "metadata": {"name": "cm", "namespace": ns}, "rules": rules})
    wait_until(lambda: owned("blocking", True).status == 201, "agents/finalizers update lets alice block")
