"""The emulator's service-account tokens where a conformance test cannot go
(tests/conformance/test_token_review.py has the rest, on both backends): expiry (a TokenRequest
lasts at least 10 minutes), the year-long pod-bound token of 3607 seconds a kubelet asks for, its
kubelet's projected tokens, and foreign-audience tokens refused for API calls."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from dc_helpers import raw

AUDIENCE = "agent-controller"
API_AUDIENCE = "https://kubernetes.default.svc.cluster.local"


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return decoded


def token_request(dc: Any, ns: str, sa: str, spec: dict[str, Any]) -> dict[str, Any]:
    code, _, data = raw(dc, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec})
    assert code == 201, data
    answer: dict[str, Any] = json.loads(data)
    return answer


def review(dc: Any, token: str, audiences: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token, **({"audiences": audiences} if audiences else {})}
    code, _, data = raw(dc, "POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
    assert code == 201, data
    status: dict[str, Any] = json.loads(data)["status"]
    return status


def lookup(dc: Any) -> Any:
    return dc._token_lookup


def pod(name: str, sa: str = "default", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "c", "image": "agent:1"}], **spec}}


def test_a_token_expires_after_a_minute_of_leeway(dc: Any, ns: str) -> None:
    dc.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "exp", "namespace": ns}})
    answer = token_request(dc, ns, "exp", {"expirationSeconds": 600})
    token = answer["status"]["token"]
    c = claims(token)
    assert c["exp"] == c["iat"] + 600
    at = float(c["exp"])
    assert dc.run(lambda: dc.auth.review(token, lookup(dc), now=at + 59)).authenticated
    late = dc.run(lambda: dc.auth.review(token, lookup(dc), now=at + 61))
    assert late.user is None and late.error == "[invalid bearer token, service account token has expired]"
    early = dc.run(lambda: dc.auth.review(token, lookup(dc), now=c["nbf"] - 61))
    assert early.error == "[invalid bearer token, service account token is not valid yet]"


def test_a_pod_bound_token_of_3607_seconds_lasts_a_year_for_the_api_server(dc: Any, ns: str) -> None:
    dc.create({**pod("ext"), "metadata": {"name": "ext", "namespace": ns}})
    ref = {"apiVersion": "v1", "kind": "Pod", "name": "ext"}
    answer = token_request(dc, ns, "default", {"expirationSeconds": 3607, "boundObjectRef": ref})
    c = claims(answer["status"]["token"])
    # kube-apiserver --service-account-extend-token-expiration: a year, with a warning after 3607 s
    assert c["exp"] - c["iat"] == 365 * 86400 and c["kubernetes.io"]["warnafter"] == c["iat"] + 3607
    assert answer["spec"]["expirationSeconds"] == 3607      # and the answer says what was asked
    # not for another audience, nor unbound
    for spec in ({"expirationSeconds": 3607, "audiences": [AUDIENCE], "boundObjectRef": ref},
                 {"expirationSeconds": 3607}):
        c = claims(token_request(dc, ns, "default", spec)["status"]["token"])
        assert c["exp"] - c["iat"] == 3607 and "warnafter" not in c["kubernetes.io"]


def test_the_kubelet_projects_pod_bound_tokens_of_the_volumes_audience(dc: Any, ns: str) -> None:
    volume = {"name": "ship", "projected": {"sources": [{"serviceAccountToken": {
        "audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}
    # a process sees the volumes through their directories: $SHIP (a mount path, rewritten) and
    # $AGENT_SERVICEACCOUNT_DIR (the kube-api-access volume's)
    cmd = 'cat "$SHIP"; echo; cat "$AGENT_SERVICEACCOUNT_DIR/token"'
    body = pod("proj", restartPolicy="Never", volumes=[volume], containers=[
        {"name": "c", "image": "sim.local/shell", "command": ["sh", "-c", cmd],
         "env": [{"name": "SHIP", "value": "/ship/token"}], "volumeMounts": [{"name": "ship", "mountPath": "/ship"}]}])
    created = dc.create({**body, "metadata": {"name": "proj", "namespace": ns}})
    dc.wait_for(lambda: (dc.get("pods", "proj", ns) or {}).get("status", {}).get("phase") in ("Succeeded", "Failed"), 15)
    assert dc.get("pods", "proj", ns)["status"]["phase"] == "Succeeded", dc.kubelet.written_output(ns, "proj")
    ship, api = dc.kubelet.written_output(ns, "proj").decode().split()
    uid = created["metadata"]["uid"]
    for token, aud in ((ship, AUDIENCE), (api, API_AUDIENCE)):
        c = claims(token)
        assert c["aud"] == [aud]
        assert c["kubernetes.io"]["pod"] == {"name": "proj", "uid": uid}
        assert c["kubernetes.io"]["node"] == {"name": dc.kubelet.node_name}
    assert claims(ship)["exp"] - claims(ship)["iat"] == 3600
    status = review(dc, ship, [AUDIENCE])
    assert status["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [uid]
    assert status["user"]["extra"]["authentication.kubernetes.io/node-name"] == [dc.kubelet.node_name]
    # the API takes the kube-api-access token, not the other audience's
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/proj", token=api)[0] == 403     # no RBAC: authenticated
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/proj", token=ship)[0] == 401
    dc.delete("pods", "proj", ns)
    dc.wait_for(lambda: dc.get("pods", "proj", ns) is None, 10)
    assert review(dc, ship, [AUDIENCE]) == {"user": {}, "error": (
        "[invalid bearer token, service account token has been invalidated]")}
    assert raw(dc, "GET", "/api", token=api)[0] == 401


def test_static_users_are_for_the_api_servers_audience_only(dc: Any) -> None:
    ok = review(dc, dc.admin_token)
    assert ok == {"authenticated": True, "user": {"username": "admin", "groups": ["system:masters", "system:authenticated"]},
                  "audiences": [API_AUDIENCE]}
    assert review(dc, dc.admin_token, [AUDIENCE]) == {"user": {}, "error": "invalid bearer token"}


def test_a_token_of_another_signer_is_not_authenticated(dc: Any, ns: str) -> None:
    from controller.devcluster.tokens import Auth

    dc.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "forged", "namespace": ns}})
    sa = dc.get("serviceaccounts", "forged", ns)
    forged = Auth().sa_token(ns, "forged", sa["metadata"]["uid"], now=time.time())
    assert review(dc, forged)["error"] == "[invalid bearer token, go-jose/go-jose: error in cryptographic primitive]"
    assert raw(dc, "GET", "/api", token=forged)[0] == 401
