"""A minimal REST client for the security tests: any API server (the emulator or a real
kube-apiserver), any bearer token, the HTTP status and the Status body as they come."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

AGENTS = "/apis/agentcontroller.dev/v1alpha1"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def message(self) -> str:
        return str(self.body.get("message", ""))


class Client:
    def __init__(self, url: str, token: str, ssl_context: ssl.SSLContext | None = None,
                 impersonate: tuple[str, ...] = ()) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ssl_context = ssl_context
        self.impersonate = impersonate  # (user, group) or ()

    def as_token(self, token: str) -> Client:
        return Client(self.url, token, self.ssl_context)

    def impersonating(self, user: str, group: str) -> Client:
        """The same credentials acting as `user` of `group` (Impersonate-User/-Group headers)."""
        return Client(self.url, self.token, self.ssl_context, (user, group))

    def request(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Reply:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": ctype, "Accept": "application/json"})
        if self.impersonate:
            req.add_header("Impersonate-User", self.impersonate[0])
            req.add_header("Impersonate-Group", self.impersonate[1])
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context) as resp:
                raw = resp.read()
                return Reply(resp.status, json.loads(raw) if raw else {}, _warnings(resp.headers))
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")}
            return Reply(exc.code, parsed, _warnings(exc.headers))

    def ok(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> dict[str, Any]:
        r = self.request(method, path, body, ctype)
        assert r.status < 300, f"{method} {path}: {r.status} {r.message}"
        return r.body

    # ---- objects
    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace if it exists (the resourceVersion of the stored object is kept)."""
        path = object_path(obj)
        r = self.request("POST", collection_path(obj), obj)
        if r.status == 409:
            current = self.ok("GET", path)
            obj = {**obj, "metadata": {**obj["metadata"],
                                       "resourceVersion": current["metadata"]["resourceVersion"]}}
            return self.ok("PUT", path, obj)
        assert r.status < 300, f"create {path}: {r.status} {r.message}"
        return r.body

    def sa_token(self, namespace: str, name: str) -> str:
        """A bound token of a ServiceAccount (TokenRequest), as a pod's projected token."""
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": {"expirationSeconds": 3600}}
        out = self.ok("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token", body)
        return str(out["status"]["token"])

    def patch_status(self, ns: str, name: str, patch: Any, ctype: str = MERGE) -> Reply:
        return self.request("PATCH", f"{AGENTS}/namespaces/{ns}/agents/{name}/status", patch, ctype)

    def patch_agent(self, ns: str, name: str, patch: Any, ctype: str = MERGE) -> Reply:
        return self.request("PATCH", f"{AGENTS}/namespaces/{ns}/agents/{name}", patch, ctype)

    def agent(self, ns: str, name: str) -> dict[str, Any]:
        return self.ok("GET", f"{AGENTS}/namespaces/{ns}/agents/{name}")


_PLURALS = {"Namespace": "namespaces", "ServiceAccount": "serviceaccounts", "Role": "roles",
            "RoleBinding": "rolebindings", "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings", "Agent": "agents",
            "ValidatingAdmissionPolicy": "validatingadmissionpolicies",
            "ValidatingAdmissionPolicyBinding": "validatingadmissionpolicybindings",
            "CustomResourceDefinition": "customresourcedefinitions", "ConfigMap": "configmaps"}
_CLUSTER = {"Namespace", "ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding", "CustomResourceDefinition"}


def collection_path(obj: dict[str, Any]) -> str:
    api = obj["apiVersion"]
    base = f"/api/{api}" if "/" not in api else f"/apis/{api}"
    kind = obj["kind"]
    if kind in _CLUSTER:
        return f"{base}/{_PLURALS[kind]}"
    return f"{base}/namespaces/{obj['metadata']['namespace']}/{_PLURALS[kind]}"


def object_path(obj: dict[str, Any]) -> str:
    return f"{collection_path(obj)}/{obj['metadata']['name']}"


def insecure_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _warnings(headers: Any) -> list[str]:
    """The texts of `Warning: 299 - "..."` headers."""
    out = []
    for h in headers.get_all("Warning") or ():
        text = h.split(" ", 2)[-1] if h.startswith("299") else h
        out.append(text.strip().strip('"'))
    return out
