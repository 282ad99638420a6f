"""Fault injection, request counting, synchronous helpers, the serve command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from dc_helpers import agent, raw
from kubernetes import client
from kubernetes.client.exceptions import ApiException

ROOT = Path(__file__).resolve().parents[2]


def test_status_fault_fires_n_times(dc: Any, k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "f"}})
    f = dc.faults.inject(verb="delete", resource="configmaps", namespace=ns, status=500, times=2)
    for _ in range(2):
        with pytest.raises(ApiException) as ei:
            v1.delete_namespaced_config_map("f", ns)
        assert ei.value.status == 500 and json.loads(ei.value.body)["reason"] == "InternalError"
    v1.delete_namespaced_config_map("f", ns)
    assert f.hits == 2 and dc.faults.active() == []


def test_fault_on_subresource_and_name(dc: Any, ns: str) -> None:
    dc.create({**agent("x"), "metadata": {"name": "x", "namespace": ns}})
    dc.faults.inject(verb="patch", resource="agents/status", name="x", status=409, times=None)
    path = f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents/x"
    patch = {"status": {"phase": "Running"}}
    hdr = {"Content-Type": "application/merge-patch+json"}
    assert raw(dc, "PATCH", path + "/status", patch, hdr)[0] == 409
    assert raw(dc, "PATCH", path + "/status", patch, hdr)[0] == 409
    assert raw(dc, "PATCH", path, {"metadata": {"labels": {"a": "b"}}}, hdr)[0] == 200
    assert raw(dc, "GET", path + "/status")[0] == 200
    dc.faults.clear()
    assert raw(dc, "PATCH", path + "/status", patch, hdr)[0] == 200
    assert dc.requests[("patch", "agents/status")] >= 3


def test_hang_until_cleared_and_delay(dc: Any, ns: str) -> None:
    dc.faults.inject(verb="list", resource="pods", namespace=ns, hang=True)
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods")[0]))
    t.start()
    time.sleep(0.3)
    assert t.is_alive() and not result
    dc.faults.clear()
    t.join(10)
    assert result == [200]
    dc.faults.inject(verb="get", resource="namespaces", name=ns, delay=0.2, status=503)
    code, headers, _ = raw(dc, "GET", f"/api/v1/namespaces/{ns}")
    assert code == 503 and headers.get("Retry-After") == "1"


def test_sync_helpers(dc: Any, ns: str) -> None:
    assert dc.get("configmaps", "nope", ns) is None
    assert dc.delete("configmaps", "nope", ns) is None
    created = dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "h", "namespace": ns, "labels": {"k": "v"}}})
    assert dc.get("ConfigMap", "h", ns)["metadata"]["uid"] == created["metadata"]["uid"]
    assert [c["metadata"]["name"] for c in dc.list("cm", ns, label_selector="k=v")] == ["h"]
    upd = dc.update({**created, "data": {"a": "b"}})
    assert upd["data"] == {"a": "b"}
    from controller.devcluster import ApiError

    with pytest.raises(ApiError) as ei:
        dc.update({**created, "data": {"a": "c"}})  # stale resourceVersion
    assert ei.value.code == 409
    out = dc.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "h", "namespace": ns}, "data": {"z": "1"}})
    assert out["data"] == {"a": "b", "z": "1"}
    assert dc.delete("configmaps", "h", ns, uid=created["metadata"]["uid"]) is not None
    assert dc.get("configmaps", "h", ns) is None


def test_serve_command_writes_kubeconfig(tmp_path: Path) -> None:
    kc = tmp_path / "kc"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.devcluster", "serve", "--port", "0", "--kubeconfig-out", str(kc),
         "--crd", str(ROOT / "manifests" / "crd.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("devcluster serving at http://127.0.0.1:")
        from kubernetes import config

        api = config.new_client_from_config(str(kc))
        items = client.CustomObjectsApi(api).list_cluster_custom_object("agentcontroller.dev", "v1alpha1", "agents")
        assert items["items"] == []
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0


def test_tls_material_with_openssl_cli() -> None:
    import shutil

    from controller.devcluster import server

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    m = server._tls_with_openssl()
    assert m is not None
    ca, cert, key = m
    assert ca.startswith(b"-----BEGIN CERTIFICATE-----") and cert.startswith(b"-----BEGIN CERTIFICATE-----")
    assert b"PRIVATE KEY" in key
