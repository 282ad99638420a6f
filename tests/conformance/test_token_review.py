"""Service-account tokens as the ship endpoint uses them, on both backends (conftest.py): a
TokenRequest bound to a pod for the audience ``agent-controller`` (directly, and as the kubelet asks
for a projected volume's token), reviewed with a TokenReview — authenticated for its audience only,
the pod in the user's extra, and no longer once the pod is gone — and the RBAC a TokenReview needs.
The real kube-apiserver is the judge of every field asserted here.

A real API server caches a successful authentication for 10 seconds, so what must stop
authenticating is polled for (the emulator stops at once).
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import pytest

from helpers import HttpError, wait_for

AUDIENCE = "agent-controller"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
POD_NAME, POD_UID = "authentication.kubernetes.io/pod-name", "authentication.kubernetes.io/pod-uid"
NODE_NAME, CREDENTIAL_ID = "authentication.kubernetes.io/node-name", "authentication.kubernetes.io/credential-id"
INVALIDATED = "[invalid bearer token, service account token has been invalidated]"
CACHE_SECONDS = 30.0          # a failsafe: the real server's token cache holds a success for 10 s


def review(api: Any, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    """POST a TokenReview; the answer (201)."""
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    answer: dict[str, Any] = api.call("POST", REVIEWS, {"apiVersion": "authentication.k8s.io/v1",
                                                        "kind": "TokenReview", "spec": spec})
    assert answer["kind"] == "TokenReview" and answer["apiVersion"] == "authentication.k8s.io/v1", answer
    assert answer["spec"] == spec
    return answer


def token_request(api: Any, ns: str, sa: str, spec: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = api.call("POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                                      {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    return answer


def claims(token: str) -> dict[str, Any]:
    """The (unverified) payload of a JWT."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def service_account(conf: Any, name: str) -> dict[str, Any]:
    sa: dict[str, Any] = conf.api.call("POST", f"/api/v1/namespaces/{conf.ns}/serviceaccounts",
                                       {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    return sa


def scheduled_pod(conf: Any, name: str, sa: str, **spec: Any) -> dict[str, Any]:
    """A pod of ServiceAccount ``sa`` (allowed by Pod Security `restricted`), once it is on a node."""
    conf.api.create_pod(conf.ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {
        "serviceAccountName": sa, "automountServiceAccountToken": False, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "agent", "image": "agent:1"}], **spec}})
    pod: dict[str, Any] = wait_for(lambda: (p := conf.api.pod(conf.ns, name)) and p["spec"].get("nodeName") and p,
                                   message=f"pod {name} scheduled")
    return pod


def delete_pod(conf: Any, name: str) -> None:
    conf.api.call("DELETE", f"/api/v1/namespaces/{conf.ns}/pods/{name}")
    wait_for(lambda: conf.api.pod(conf.ns, name) is None, message=f"pod {name} gone")


def not_authenticated(api: Any, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    """The review's status once the token no longer authenticates (polled: the real server's cache)."""
    status: dict[str, Any] = wait_for(lambda: (st := review(api, token, audiences)["status"]).get("authenticated")
                                      is not True and st, timeout=CACHE_SECONDS, interval=0.5,
                                      message="the token no longer authenticating")
    return status


def sa_user(ns: str, sa: dict[str, Any]) -> dict[str, Any]:
    """``status.user`` of a token of ``sa``, but its ``extra``."""
    return {"username": f"system:serviceaccount:{ns}:{sa['metadata']['name']}", "uid": sa["metadata"]["uid"],
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]}


def assert_pod_user(status: dict[str, Any], ns: str, sa: dict[str, Any], pod: dict[str, Any], token: str) -> None:
    assert status["authenticated"] is True, status
    user = dict(status["user"])
    extra = user.pop("extra")
    assert user == sa_user(ns, sa)
    assert extra[POD_NAME] == [pod["metadata"]["name"]] and extra[POD_UID] == [pod["metadata"]["uid"]], extra
    assert extra[NODE_NAME] == [pod["spec"]["nodeName"]], extra
    assert extra[CREDENTIAL_ID] == ["JTI=" + claims(token)["jti"]], extra
    # a real server also says the node's uid (authentication.kubernetes.io/node-uid): the emulator
    # has no Node objects, so it cannot
    assert set(extra) - {"authentication.kubernetes.io/node-uid"} == {POD_NAME, POD_UID, NODE_NAME, CREDENTIAL_ID}


def test_a_pod_bound_token_is_reviewed_for_its_audience_while_the_pod_exists(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    sa = service_account(conf, "agent")
    pod = scheduled_pod(conf, "bound", "agent")
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "bound", "uid": pod["metadata"]["uid"]}
    answer = token_request(api, ns, "agent", {"audiences": [AUDIENCE], "boundObjectRef": ref})
    assert (answer["kind"], answer["apiVersion"]) == ("TokenRequest", "authentication.k8s.io/v1")
    assert {k: answer["metadata"][k] for k in ("name", "namespace", "uid")} == {
        "name": "agent", "namespace": ns, "uid": sa["metadata"]["uid"]}
    assert answer["spec"] == {"audiences": [AUDIENCE], "expirationSeconds": 3600, "boundObjectRef": ref}
    token = answer["status"]["token"]
    # the token carries the pod (and its node) in the kubernetes.io claim, like a real bound token
    c = claims(token)
    assert c["aud"] == [AUDIENCE] and c["sub"] == f"system:serviceaccount:{ns}:agent"
    assert c["iss"] == API_AUDIENCE and c["exp"] - c["iat"] == 3600 and c["nbf"] == c["iat"]
    k8s = c["kubernetes.io"]
    assert k8s["namespace"] == ns
    assert k8s["serviceaccount"] == {"name": "agent", "uid": sa["metadata"]["uid"]}
    assert k8s["pod"] == {"name": "bound", "uid": pod["metadata"]["uid"]}
    assert k8s["node"]["name"] == pod["spec"]["nodeName"]

    # reviewed for its audience: authenticated, the pod in the user's extra
    ok = review(api, token, [AUDIENCE])
    assert set(ok["status"]) == {"authenticated", "user", "audiences"}
    assert ok["status"]["audiences"] == [AUDIENCE]
    assert_pod_user(ok["status"], ns, sa, pod, token)
    # several audiences: the ones the token has
    assert review(api, token, ["other", AUDIENCE])["status"]["audiences"] == [AUDIENCE]
    # another audience, or the API server's (no audiences given): not authenticated
    assert review(api, token, ["other"])["status"] == {"user": {}, "error": (
        f'[invalid bearer token, token audiences ["{AUDIENCE}"] is invalid for the target audiences ["other"]]')}
    assert review(api, token)["status"] == {"user": {}, "error": (
        f'[invalid bearer token, token audiences ["{AUDIENCE}"] is invalid for the target audiences '
        f'["{API_AUDIENCE}"]]')}
    # ... and so it is no credential for the API
    with pytest.raises(HttpError) as info:
        conf.backend.api(token).call("GET", f"/api/v1/namespaces/{ns}/pods")
    assert info.value.status == 401 and info.value.body["message"] == "Unauthorized"

    # a token of the default audience bound to the same pod is one: the API server sees the pod
    api_token = token_request(api, ns, "agent", {"boundObjectRef": ref})["status"]["token"]
    assert claims(api_token)["aud"] == [API_AUDIENCE]
    me = conf.backend.api(api_token).call("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {
        "apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})["status"]["userInfo"]
    assert me["username"] == f"system:serviceaccount:{ns}:agent" and me["extra"][POD_UID] == [pod["metadata"]["uid"]]
    assert review(api, api_token)["status"]["audiences"] == [API_AUDIENCE]

    # the pod gone, its tokens are not authenticated any more
    delete_pod(conf, "bound")
    assert not_authenticated(api, token, [AUDIENCE]) == {"user": {}, "error": INVALIDATED}
    assert not_authenticated(api, api_token) == {"user": {}, "error": INVALIDATED}
    # a new pod of the same name is another pod
    again = scheduled_pod(conf, "bound", "agent")
    assert again["metadata"]["uid"] != pod["metadata"]["uid"]
    assert review(api, token, [AUDIENCE])["status"] == {"user": {}, "error": (
        f"[invalid bearer token, pod UID ({again['metadata']['uid']}) does not match service account pod ref claim "
        f"({pod['metadata']['uid']})]")}


def test_a_token_request_binds_only_what_it_can(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    service_account(conf, "agent")
    service_account(conf, "other")
    pod = scheduled_pod(conf, "bound", "agent")

    def refused(sa: str, spec: dict[str, Any]) -> dict[str, Any]:
        with pytest.raises(HttpError) as info:
            token_request(api, ns, sa, spec)
        body: dict[str, Any] = info.value.body
        assert body["kind"] == "Status" and body["code"] == info.value.status, body
        return body

    wrong = "00000000-0000-0000-0000-000000000000"
    body = refused("agent", {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "bound", "uid": wrong}})
    assert (body["code"], body["reason"], body["details"]) == (409, "Conflict", {"name": "bound", "kind": "Pod"})
    assert body["message"] == (f'Operation cannot be fulfilled on Pod "bound": the UID in the bound object reference '
                               f"({wrong}) does not match the UID in record. The object might have been deleted and "
                               f"then recreated")
    body = refused("other", {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "bound"}})
    assert (body["code"], body["reason"]) == (400, "BadRequest")
    assert body["message"] == ('cannot bind token for serviceaccount "other" to pod running with different '
                               "serviceaccount name.")
    body = refused("agent", {"boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "nope"}})
    assert (body["code"], body["message"], body["details"]) == (404, 'pods "nope" not found',
                                                                {"name": "nope", "kind": "pods"})
    body = refused("agent", {"boundObjectRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}})
    assert (body["code"], body["message"]) == (400, "cannot bind token to object of type /v1, Kind=ConfigMap")
    body = refused("agent", {"expirationSeconds": 599})
    assert (body["code"], body["reason"]) == (422, "Invalid")
    assert body["message"] == ('TokenRequest.authentication.k8s.io "" is invalid: spec.expirationSeconds: '
                               "Invalid value: 599: may not specify a duration less than 10 minutes")
    body = refused("nope", {})
    assert (body["code"], body["message"]) == (404, 'serviceaccounts "nope" not found')
    # without a uid the pod's is bound; the expiration asked for is the token's
    answer = token_request(api, ns, "agent", {"expirationSeconds": 600,
                                              "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": "bound"}})
    assert answer["spec"]["boundObjectRef"] == {"apiVersion": "v1", "kind": "Pod", "name": "bound"}
    assert answer["spec"]["audiences"] == [API_AUDIENCE] and answer["spec"]["expirationSeconds"] == 600
    c = claims(answer["status"]["token"])
    assert c["kubernetes.io"]["pod"] == {"name": "bound", "uid": pod["metadata"]["uid"]} and c["exp"] - c["iat"] == 600


SHOW_TOKEN = "/var/run/secrets/agent-controller"


def test_a_projected_token_is_bound_to_its_pod_with_the_volumes_audience(conf: Any) -> None:
    """What the kubelet (the node simulator) puts in a projected serviceAccountToken volume."""
    api, ns = conf.api, conf.ns
    sa = service_account(conf, "agent")
    volume = {"name": "ship-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}
    conf.api.create_pod(ns, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "projected"}, "spec": {
        "serviceAccountName": "agent", "automountServiceAccountToken": False, "restartPolicy": "Never",
        "volumes": [volume], "containers": [{
            "name": "agent", "image": "sim.local/shell", "command": ["cat", f"{SHOW_TOKEN}/token"],
            "volumeMounts": [{"name": "ship-token", "mountPath": SHOW_TOKEN, "readOnly": True}]}]}})
    wait_for(lambda: (conf.api.pod(ns, "projected") or {}).get("status", {}).get("phase") in ("Succeeded", "Failed"),
             message="the pod finished")
    pod = conf.api.pod(ns, "projected")
    assert pod is not None and pod["status"]["phase"] == "Succeeded", pod["status"]
    token = _log(conf, "projected")
    c = claims(token)
    assert c["aud"] == [AUDIENCE] and c["exp"] - c["iat"] == 3600
    assert c["kubernetes.io"]["pod"] == {"name": "projected", "uid": pod["metadata"]["uid"]}
    ok = review(api, token, [AUDIENCE])["status"]
    assert ok["audiences"] == [AUDIENCE]
    assert_pod_user(ok, ns, sa, pod, token)
    delete_pod(conf, "projected")
    assert not_authenticated(api, token, [AUDIENCE]) == {"user": {}, "error": INVALIDATED}


def _log(conf: Any, pod: str) -> str:
    """The pod's log (text) through the API."""
    import urllib.request

    req = urllib.request.Request(f"{conf.backend.url}/api/v1/namespaces/{conf.ns}/pods/{pod}/log",
                                 headers={"Authorization": f"Bearer {conf.backend.admin_token}"})
    with urllib.request.urlopen(req, timeout=30, context=conf.api.ssl) as resp:
        return str(resp.read().decode().strip())


def test_a_token_of_a_deleted_or_recreated_service_account_is_not_authenticated(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    sa = service_account(conf, "short")
    token = token_request(api, ns, "short", {})["status"]["token"]
    ok = review(api, token)["status"]
    assert ok["authenticated"] is True and ok["audiences"] == [API_AUDIENCE]
    assert ok["user"]["uid"] == sa["metadata"]["uid"] and ok["user"]["username"] == f"system:serviceaccount:{ns}:short"
    assert set(ok["user"]["extra"]) == {CREDENTIAL_ID}          # bound to nothing
    api.call("DELETE", f"/api/v1/namespaces/{ns}/serviceaccounts/short")
    assert not_authenticated(api, token) == {"user": {}, "error": (
        '[invalid bearer token, serviceaccounts "short" not found]')}
    again = service_account(conf, "short")
    assert not_authenticated(api, token) == {"user": {}, "error": (
        f"[invalid bearer token, service account UID ({again['metadata']['uid']}) does not match claim "
        f"({sa['metadata']['uid']})]")}


def test_a_token_review_needs_create_on_tokenreviews_at_the_cluster_scope(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    service_account(conf, "reviewer")
    token = token_request(api, ns, "reviewer", {})["status"]["token"]
    reviewer = conf.backend.api(token)
    user = f"system:serviceaccount:{ns}:reviewer"
    with pytest.raises(HttpError) as info:
        review(reviewer, token)
    assert info.value.status == 403 and info.value.body["reason"] == "Forbidden"
    assert info.value.body["message"] == (
        f'tokenreviews.authentication.k8s.io is forbidden: User "{user}" cannot create resource "tokenreviews" '
        f'in API group "authentication.k8s.io" at the cluster scope')
    assert info.value.body["details"] == {"group": "authentication.k8s.io", "kind": "tokenreviews"}
    # garbage is not authenticated; an empty token is a bad request
    assert review(api, "not-a-token")["status"] == {"user": {}, "error": "invalid bearer token"}
    with pytest.raises(HttpError) as info:
        review(api, "")
    assert (info.value.status, info.value.body["message"]) == (400, "token is required for TokenReview in authentication")
    # system:auth-delegator (a bootstrap ClusterRole) grants it
    binding = f"{ns}-reviewer-{os.getpid() % 1000}"
    path = "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    api.call("POST", path, {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": binding},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
        "subjects": [{"kind": "ServiceAccount", "name": "reviewer", "namespace": ns}]})
    try:
        status = wait_for(lambda: review(reviewer, token)["status"], message="the binding in effect")
        assert status["authenticated"] is True and status["user"]["username"] == user
    finally:
        api.call("DELETE", f"{path}/{binding}")
