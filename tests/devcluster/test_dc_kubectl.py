"""Conformance with the real kubectl (v1.32): apply, get (server-side columns), patch, delete, watch."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dc_helpers import pod

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
ROOT = Path(__file__).resolve().parents[2]
Kubectl = Callable[..., subprocess.CompletedProcess]

AGENT = """\
apiVersion: agentcontroller.dev/v1alpha1
kind: Agent
metadata:
  name: {name}
  namespace: {ns}
spec:
  image: busybox
  prompt: {prompt}
"""


def test_apply_get_patch_delete_agent(kubectl: Kubectl, ns: str, dc: Any) -> None:
    out = kubectl("apply", "-f", str(ROOT / "manifests" / "crd.yaml")).stdout
    assert "customresourcedefinition.apiextensions.k8s.io/agents.agentcontroller.dev" in out
    out = kubectl("apply", "-f", "-", input=AGENT.format(name="demo", ns=ns, prompt="hi")).stdout
    assert out.strip() == "agent.agentcontroller.dev/demo created"
    assert kubectl("apply", "-f", "-", input=AGENT.format(name="demo", ns=ns, prompt="hi")).stdout.strip().endswith("unchanged")
    assert kubectl("apply", "-f", "-", input=AGENT.format(name="demo", ns=ns, prompt="changed")).stdout.strip().endswith("configured")
    assert dc.get("agents", "demo", ns)["spec"]["prompt"] == "changed"

    lines = kubectl("get", "agents", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "REASON", "PROGRESS", "POD", "CLEANUP", "AGE"]
    assert lines[1].split()[0] == "demo"

    kubectl("patch", "agent", "demo", "-n", ns, "--subresource=status", "--type=merge",
            "-p", '{"status":{"phase":"Working","reason":"Started","progress":40,"podName":"demo",'
                  '"nodeName":"node-1","cleanup":{"state":"Pending","trigger":"Completed","archivedBytes":1234}}}')
    row = kubectl("get", "ag", "demo", "-n", ns, "--no-headers").stdout.split()
    assert row[:6] == ["demo", "Working", "Started", "40", "demo", "Pending"]
    wide = kubectl("get", "ag", "demo", "-n", ns, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "PHASE", "REASON", "PROGRESS", "POD", "CLEANUP", "AGE", "NODE", "TRIGGER",
                               "ARCHIVED", "FINISHED"]
    assert wide[1].split()[7:10] == ["node-1", "Completed", "1234"]

    obj = json.loads(kubectl("get", "agent", "demo", "-n", ns, "-o", "json").stdout)
    assert obj["kind"] == "Agent" and obj["status"]["progress"] == 40
    assert obj["spec"]["cleanup"]["gracePeriodSeconds"] == 5  # defaulted by the schema

    kubectl("patch", "agent", "demo", "-n", ns, "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Completed"}}')
    bad = kubectl("patch", "agent", "demo", "-n", ns, "--subresource=status", "--type=merge",
                  "-p", '{"status":{"phase":"Running"}}', check=False)
    assert bad.returncode != 0 and "terminal" in bad.stderr

    assert kubectl("delete", "agent", "demo", "-n", ns).stdout.strip() == 'agent.agentcontroller.dev "demo" deleted'
    gone = kubectl("get", "agent", "demo", "-n", ns, check=False)
    assert gone.returncode != 0 and 'agents.agentcontroller.dev "demo" not found' in gone.stderr


def test_apply_rejects_unknown_and_invalid_fields(kubectl: Kubectl, ns: str) -> None:
    bad = AGENT.format(name="bad", ns=ns, prompt="x") + "  bogusField: 1\n"
    r = kubectl("apply", "-f", "-", input=bad, check=False)
    assert r.returncode != 0 and 'unknown field "spec.bogusField"' in r.stderr
    r = kubectl("apply", "-f", "-", input=AGENT.format(name="bad", ns=ns, prompt="x").replace("  image: busybox\n", ""), check=False)
    assert r.returncode != 0 and "spec.image: Required value" in r.stderr


def test_get_watch_prints_changes(kubectl: Kubectl, kubeconfig: str, ns: str, dc: Any, tmp_path: Path) -> None:
    dc.create({"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "w1", "namespace": ns}, "spec": {"image": "x"}})
    proc = subprocess.Popen(
        ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(tmp_path / "c"), "get", "agents", "-n", ns, "-w",
         "--request-timeout=0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        dc.wait_for(lambda: dc.requests[("watch", "agents")] > 0 and dc.run(lambda: any(w.ns == ns for w in dc.store.all_watchers())), 15)
        dc.patch("agents", "w1", {"status": {"phase": "Running", "progress": 7}}, ns, subresource="status")
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=10)
    lines = [ln.split() for ln in out.splitlines()]
    assert lines[0] == ["NAME", "PHASE", "REASON", "PROGRESS", "POD", "CLEANUP", "AGE"]
    assert ["w1", "Running", "7"] == lines[-1][:3], out + err  # an empty cell prints nothing


def test_builtin_kinds_pods_logs_and_auth(kubectl: Kubectl, ns: str, dc: Any) -> None:
    manifest = json.dumps({**pod("kp", {"steps": [{"log": "from the pod\n"}]}), "metadata": {"name": "kp", "namespace": ns}})
    assert kubectl("apply", "-f", "-", input=manifest).stdout.strip() == "pod/kp created"
    dc.wait_for(lambda: dc.kubelet.served_log(ns, "kp") == b"from the pod\n", 10)
    assert kubectl("logs", "kp", "-n", ns).stdout == "from the pod\n"
    lines = kubectl("get", "pods", "-n", ns).stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["kp", "1/1", "Running", "0"]
    # strategic merge patch of a built-in (kubectl's default patch type)
    kubectl("patch", "pod", "kp", "-n", ns, "-p", '{"metadata":{"labels":{"x":"y"}}}')
    assert dc.get("pods", "kp", ns)["metadata"]["labels"] == {"x": "y"}
    kubectl("create", "configmap", "cm1", "-n", ns, "--from-literal=a=b")
    assert kubectl("get", "cm", "cm1", "-n", ns, "-o", "jsonpath={.data.a}").stdout == "b"
    assert kubectl("auth", "can-i", "delete", "pods", "-n", ns).stdout.strip() == "yes"
    r = kubectl("auth", "can-i", "get", "pods", "-n", ns, "--as", "nobody", check=False)
    assert r.stdout.strip() == "no"
    assert kubectl("delete", "pod", "kp", "-n", ns, "--grace-period=0", "--force").returncode == 0
    assert dc.get("pods", "kp", ns) is None
