"""Test helpers: a tiny synchronous REST client (as a user would drive the API) and wait_for()."""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

GROUP_PATH = "/apis/agentcontroller.dev/v1alpha1"


class HttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]):
        super().__init__(f"{status}: {body.get('message')}")
        self.status = status
        self.body = body


RESTRICTED_CONTAINER = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                        "runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}


def restricted(pod: dict[str, Any]) -> dict[str, Any]:
    """A test's own pod, made to pass Pod Security `restricted` (the real control plane's test
    namespaces enforce it) where it says nothing of its security context."""
    spec = dict(pod.get("spec") or {})
    for key in ("initContainers", "containers"):
        if key in spec:
            spec[key] = [c if "securityContext" in c else {**c, "securityContext": RESTRICTED_CONTAINER}
                         for c in spec[key]]
    return {**pod, "spec": spec}


class Api:
    """Synchronous API calls with a bearer token (over HTTPS: trusting `ca_file`)."""

    def __init__(self, url: str, token: str, ca_file: str | None = None):
        self.url = url.rstrip("/")
        self.token = token
        self.ssl = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def call(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
             params: dict[str, str] | None = None) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": ctype, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl) as resp:
                raw = resp.read()
                return json.loads(raw) if raw else {}
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {"message": raw.decode(errors="replace")}
            raise HttpError(exc.code, parsed) from None

    # ---- agents
    def create_agent(self, ns: str, name: str, spec: dict[str, Any], **meta: Any) -> dict[str, Any]:
        body = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                "metadata": {"name": name, "namespace": ns, **meta}, "spec": spec}
        return self.call("POST", f"{GROUP_PATH}/namespaces/{ns}/agents", body)

    def agent(self, ns: str, name: str) -> dict[str, Any]:
        return self.call("GET", f"{GROUP_PATH}/namespaces/{ns}/agents/{name}")

    def agent_or_none(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.agent(ns, name)
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise

    def patch_agent(self, ns: str, name: str, patch: dict[str, Any], status: bool = False) -> dict[str, Any]:
        sub = "/status" if status else ""
        return self.call("PATCH", f"{GROUP_PATH}/namespaces/{ns}/agents/{name}{sub}", patch,
                         "application/merge-patch+json")

    def delete_agent(self, ns: str, name: str) -> dict[str, Any]:
        return self.call("DELETE", f"{GROUP_PATH}/namespaces/{ns}/agents/{name}")

    # ---- core
    def objects(self, kind: str, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
        params = {"labelSelector": selector} if selector else None
        return self.call("GET", _list_path(KIND_PATHS[kind], ns), params=params)["items"]

    def create_pod(self, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        """A test's own pod (not the controller's), made to pass Pod Security `restricted`."""
        return self.call("POST", f"/api/v1/namespaces/{ns}/pods", restricted(body))

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        try:
            return self.call("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        except HttpError as exc:
            if exc.status == 404:
                return None
            raise

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name, **({"labels": labels} if labels else {})}
        self.call("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": meta})

    def events(self, ns: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/api/v1/namespaces/{ns}/events")["items"]


KIND_PATHS = {
    "pod": "/api/v1|pods",
    "configmap": "/api/v1|configmaps",
    "serviceaccount": "/api/v1|serviceaccounts",
    "role": "/apis/rbac.authorization.k8s.io/v1|roles",
    "rolebinding": "/apis/rbac.authorization.k8s.io/v1|rolebindings",
}


def _list_path(kind_path: str, ns: str) -> str:
    base, plural = kind_path.split("|")
    return f"{base}/namespaces/{ns}/{plural}"


def leftovers(api: Api, ns: str, selector: str) -> dict[str, list[str]]:
    """Every managed kind listed by label: what is left."""
    out = {}
    for kind, path in KIND_PATHS.items():
        items = api.call("GET", _list_path(path, ns), params={"labelSelector": selector})["items"]
        if items:
            out[kind] = [i["metadata"]["name"] for i in items]
    return out


def wait_for(predicate: Callable[[], Any], timeout: float = float(__import__("os").environ.get("WAIT_TIMEOUT", 60)), interval: float = 0.05,
             message: str = "condition") -> Any:
    """Poll until predicate() is truthy; the timeout is a failsafe, not an assertion on speed."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}" + (f" (last error: {last_exc!r})" if last_exc else ""))


def script(steps: list[dict[str, Any]], on_term: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The env entry that scripts a simulated container (see docs/ARCHITECTURE.md)."""
    body: dict[str, Any] = {"steps": steps}
    if on_term is not None:
        body["onTerm"] = on_term
    return [{"name": "DEVCLUSTER_SCRIPT", "value": json.dumps(body)}]
