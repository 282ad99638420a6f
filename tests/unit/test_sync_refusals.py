"""Which refusals of a child's creation end the agent (PodRejected) and which are the controller's
own misconfiguration, retried until an administrator fixes it (the messages are kube-apiserver's,
as the RBAC-sufficiency test met them on the real control plane)."""

from __future__ import annotations

import pytest

from controller.kube.client import ApiError
from controller.sync import _transient_refusal

SA = "system:serviceaccount:agent-controller:agent-controller"


@pytest.mark.parametrize("message", [
    f'pods is forbidden: User "{SA}" cannot create resource "pods" in API group "" in the namespace "a"',
    'configmaps "x-prompt" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a '
    "resource you can't set finalizers on: , <nil>",
    f'roles.rbac.authorization.k8s.io "x-agent" is forbidden: user "{SA}" (groups=["system:serviceaccounts"]) '
    "is attempting to grant RBAC permissions not currently held:\n{APIGroups:[\"agentcontroller.dev\"], ...}",
    'pods "x" is forbidden: error looking up service account a/x-agent: serviceaccount "x-agent" not found',
    'pods "x" is forbidden: unable to create new content in namespace a because it is being terminated',
])
def test_the_controllers_own_misconfiguration_is_retried(message: str) -> None:
    assert _transient_refusal(ApiError(403, "Forbidden", message))


@pytest.mark.parametrize("status,message", [
    (403, 'pods "x" is forbidden: violates PodSecurity "restricted:latest": hostPath volumes'),
    (403, 'admission webhook "deny.example.com" denied the request: no'),
    (422, 'Pod "x" is invalid: spec.containers[0].image: Required value'),
    (403, 'pods "x" is forbidden: exceeded quota: q, requested: pods=1, used: pods=0, limited: pods=0'),
])
def test_a_refusal_of_what_the_agent_asked_for_goes_to_decide(status: int, message: str) -> None:
    # decide(): PodRejected, or for a quota QuotaExceeded (retried until the start deadline)
    assert not _transient_refusal(ApiError(status, "Forbidden", message))
