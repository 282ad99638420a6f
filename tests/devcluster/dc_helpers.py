"""Manifest helpers of the devcluster tests."""

from __future__ import annotations

import json
from typing import Any


def script_env(script: dict[str, Any]) -> list[dict[str, str]]:
    """The env list carrying a DEVCLUSTER_SCRIPT."""
    return [{"name": "DEVCLUSTER_SCRIPT", "value": json.dumps(script)}]


def pod(name: str, script: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A one-container pod manifest (``c``) running ``script``."""
    c: dict[str, Any] = {"name": "c", "image": "busybox:1.36"}
    if script is not None:
        c["env"] = script_env(script)
    s: dict[str, Any] = {"containers": [c], "restartPolicy": "Never"}
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": s}


def agent(name: str, **spec: Any) -> dict[str, Any]:
    """An Agent manifest."""
    s: dict[str, Any] = {"image": "busybox"}
    s.update(spec)
    return {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": name}, "spec": s}


def raw(
    dc: Any,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    token: str | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to the emulator: (status, headers, body bytes)."""
    import urllib.error
    import urllib.request

    data = None
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(dc.url + path, data=data, method=method)
    req.add_header("Authorization", f"Bearer {token or dc.admin_token}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
