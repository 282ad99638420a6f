"""Helpers of the node-simulator tests (the fixtures are in conftest.py).

``backend`` is parametrised: ``emulator`` (DevCluster, its kubelet is the simulator's emulator
adapter) and ``real`` (etcd + kube-apiserver + kube-controller-manager + kube-scheduler v1.37.2 from
tests/nodesim/minicluster.py, with a NodeSimulator node registered through the Node authorizer).
The real backend is skipped when the binaries or ``cryptography`` are missing.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for p in (str(ROOT), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

from minicluster import MiniCluster, find_bin_dir  # noqa: E402

_ids = itertools.count(1)
NODE = "nodesim-1"


def wait_for(pred: Callable[[], Any], timeout: float = 60.0, message: str = "condition", interval: float = 0.1) -> Any:
    """Poll until ``pred()`` is truthy; the timeout is a failsafe, not an assertion on speed."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}" + (f" (last error: {last!r})" if last else ""))


def kubectl_bin() -> str:
    d = find_bin_dir()
    if d is not None and (d / "kubectl").is_file():
        return str(d / "kubectl")
    return shutil.which("kubectl") or "kubectl"


class Backend:
    """One API server with simulated nodes, driven as a user would (HTTP, kubectl)."""

    name = ""
    node = ""

    def __init__(self, url: str, ctx: ssl.SSLContext | None, headers: dict[str, str], kubeconfig: str, sim: Any):
        self.url = url
        self.ctx = ctx
        self.headers = headers
        self.kubeconfig = kubeconfig
        self.sim = sim       # written_output / served_log / current_log / append_log / exit / gc_container

    def raw(self, method: str, path: str, body: Any = None, ctype: str = "application/json",
            timeout: float = 60) -> tuple[int, bytes]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for k, v in self.headers.items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", ctype)
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def json(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> dict[str, Any]:
        code, data = self.raw(method, path, body, ctype)
        if code >= 300:
            raise AssertionError(f"{method} {path}: {code} {data[:500]!r}")
        return json.loads(data) if data else {}

    def pod(self, ns: str, name: str) -> dict[str, Any] | None:
        code, data = self.raw("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
        return json.loads(data) if code == 200 else None

    def create_pod(self, ns: str, name: str, *, annotations: dict[str, str] | None = None,
                   containers: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
        s: dict[str, Any] = {"restartPolicy": "Never", "terminationGracePeriodSeconds": 5,
                             "containers": containers or [{"name": "c", "image": "busybox:1.36"}]}
        s.update(spec)
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "annotations": annotations or {}},
                "spec": s}
        return self.json("POST", f"/api/v1/namespaces/{ns}/pods", body)

    def phase(self, ns: str, name: str) -> str | None:
        p = self.pod(ns, name)
        return None if p is None else (p.get("status") or {}).get("phase")

    def log(self, ns: str, name: str, query: str = "") -> tuple[int, bytes]:
        return self.raw("GET", f"/api/v1/namespaces/{ns}/pods/{name}/log" + (f"?{query}" if query else ""))

    def kubectl(self, *args: str, check: bool = True, timeout: float = 60, text: bool = False) -> Any:
        cmd = [kubectl_bin(), "--kubeconfig", self.kubeconfig, *args]
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, text=text)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stdout!r} {p.stderr!r}")
        return p

    def new_namespace(self) -> str:
        name = f"ns{os.getpid() % 10000}-{next(_ids)}"
        self.json("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        wait_for(lambda: self.raw("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")[0] == 200,
                 message="default ServiceAccount")
        return name

    def lose(self, ns: str, pod: str) -> None:
        raise NotImplementedError


class EmulatorBackend(Backend):
    name = "emulator"
    node = "devcluster-node"

    def __init__(self, dc: Any, kubeconfig: str) -> None:
        super().__init__(dc.url, None, {"Authorization": f"Bearer {dc.admin_token}"}, kubeconfig, dc.kubelet)
        self.dc = dc

    def new_namespace(self) -> str:
        name = f"ns{os.getpid() % 10000}-{next(_ids)}"
        self.dc.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        return name

    def lose(self, ns: str, pod: str) -> None:
        self.dc.kubelet.lose_node(ns, pod)


class RealBackend(Backend):
    name = "real"
    node = NODE

    def __init__(self, mc: MiniCluster, sim: Any) -> None:
        ctx = ssl.create_default_context(cafile=mc.ca_file)
        ctx.load_cert_chain(str(mc.workdir / "admin.crt"), str(mc.workdir / "admin.key"))
        super().__init__(mc.url, ctx, {}, mc.admin_kubeconfig, sim)
        self.mc = mc


def script(steps: list[dict[str, Any]], on_term: list[dict[str, Any]] | None = None) -> str:
    body: dict[str, Any] = {"steps": steps}
    if on_term is not None:
        body["onTerm"] = on_term
    return json.dumps(body)


A = "sim.agentcontroller.dev/"
