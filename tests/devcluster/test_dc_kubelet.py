"""The simulated kubelet: scripted containers, graceful deletion, pod logs, reports."""

from __future__ import annotations

import base64
import json
import threading
import urllib.request
from typing import Any

import pytest
from dc_helpers import agent, pod, raw


def phase(dc: Any, ns: str, name: str) -> str | None:
    p = dc.get("pods", name, ns)
    return None if p is None else p.get("status", {}).get("phase")


def test_lifecycle_pending_running_succeeded(dc: Any, ns: str) -> None:
    p = dc.create({**pod("ok", {"steps": [{"log": "hello\n"}, {"sleep": 0.3}, {"exit": 0}]}), "metadata": {"name": "ok", "namespace": ns}})
    assert p["status"]["phase"] == "Pending" and "nodeName" not in p["spec"]
    dc.wait_for(lambda: phase(dc, ns, "ok") == "Running", 10)
    running = dc.get("pods", "ok", ns)
    st = running["status"]
    assert running["spec"]["nodeName"] == "devcluster-node"
    assert st["startTime"] and st["podIP"]
    assert st["containerStatuses"][0]["state"]["running"]["startedAt"]
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "True"
    dc.wait_for(lambda: phase(dc, ns, "ok") == "Succeeded", 10)
    st = dc.get("pods", "ok", ns)["status"]
    term = st["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    assert {c["type"]: c["status"] for c in st["conditions"]}["Ready"] == "False"
    assert dc.kubelet.served_log(ns, "ok") == b"hello\n"


def test_failed_exit_code_and_kubelet_exit(dc: Any, ns: str) -> None:
    dc.create({**pod("bad", {"steps": [{"exit": 3}]}), "metadata": {"name": "bad", "namespace": ns}})
    dc.create({**pod("idle"), "metadata": {"name": "idle", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "bad") == "Failed", 10)
    assert dc.get("pods", "bad", ns)["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    dc.wait_for(lambda: phase(dc, ns, "idle") == "Running", 10)
    dc.kubelet.exit(ns, "idle", 0)
    dc.wait_for(lambda: phase(dc, ns, "idle") == "Succeeded", 10)


def test_graceful_deletion_runs_on_term_then_removes(dc: Any, ns: str) -> None:
    script = {"steps": [{"log": "working\n"}], "onTerm": [{"log": "got SIGTERM\n"}, {"sleep": 0.2}, {"log": "bye\n"}, {"exit": 0}]}
    dc.create({**pod("g", script, terminationGracePeriodSeconds=5), "metadata": {"name": "g", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "g") == "Running", 10)
    out = dc.delete("pods", "g", ns)
    assert out["metadata"]["deletionTimestamp"] and out["metadata"]["deletionGracePeriodSeconds"] == 5
    dc.wait_for(lambda: dc.get("pods", "g", ns) is None, 10)
    assert dc.kubelet.served_log(ns, "g") == b"working\ngot SIGTERM\nbye\n"


def test_ignore_term_is_killed_with_137_at_grace_end(dc: Any, ns: str) -> None:
    script = {"steps": [{"ignoreTerm": True}, {"log": "stubborn\n"}], "onTerm": [{"log": "never\n"}]}
    dc.create({**pod("s", script, terminationGracePeriodSeconds=1), "metadata": {"name": "s", "namespace": ns, "finalizers": ["example.com/keep"]}})
    dc.wait_for(lambda: phase(dc, ns, "s") == "Running", 10)
    dc.delete("pods", "s", ns)
    # the finalizer keeps the object, so the terminal status stays visible
    dc.wait_for(lambda: phase(dc, ns, "s") == "Failed", 10)
    term = dc.get("pods", "s", ns)["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 137
    assert dc.kubelet.served_log(ns, "s") == b"stubborn\n"
    dc.patch("pods", "s", {"metadata": {"finalizers": None}}, ns)
    dc.wait_for(lambda: dc.get("pods", "s", ns) is None, 10)


def test_on_term_without_exit_is_killed_and_no_script_exits_143(dc: Any, ns: str) -> None:
    dc.create({**pod("t", {"onTerm": [{"log": "flush\n"}]}, terminationGracePeriodSeconds=1), "metadata": {"name": "t", "namespace": ns, "finalizers": ["example.com/keep"]}})
    dc.create({**pod("n"), "metadata": {"name": "n", "namespace": ns, "finalizers": ["example.com/keep"]}})
    dc.wait_for(lambda: phase(dc, ns, "t") == "Running" and phase(dc, ns, "n") == "Running", 10)
    dc.delete("pods", "t", ns)
    dc.delete("pods", "n", ns)
    dc.wait_for(lambda: phase(dc, ns, "t") == "Failed" and phase(dc, ns, "n") == "Failed", 10)
    assert dc.get("pods", "t", ns)["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 137
    assert dc.get("pods", "n", ns)["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 143
    assert dc.kubelet.served_log(ns, "t") == b"flush\n"


def test_grace_zero_removes_at_once(dc: Any, ns: str) -> None:
    dc.create({**pod("z"), "metadata": {"name": "z", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "z") == "Running", 10)
    dc.delete("pods", "z", ns, grace_period_seconds=0)
    assert dc.get("pods", "z", ns) is None


def test_pods_log_binary_and_follow(dc: Any, ns: str) -> None:
    blob = bytes(range(256)) + b"\xff\xfe\x00not utf-8\n"
    script = {"steps": [{"logB64": base64.b64encode(blob).decode()}, {"log": "line2\n"}]}
    dc.create({**pod("lg", script), "metadata": {"name": "lg", "namespace": ns}})
    dc.wait_for(lambda: dc.kubelet.served_log(ns, "lg").endswith(b"line2\n"), 10)
    code, hdrs, data = raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/lg/log")
    assert code == 200 and data == blob + b"line2\n"
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/lg/log?tailLines=1")[2] == b"line2\n"
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/lg/log?limitBytes=3")[2] == b"\x00\x01\x02"
    # follow: existing bytes, then new bytes as written, ends when the container exits
    req = urllib.request.Request(dc.url + f"/api/v1/namespaces/{ns}/pods/lg/log?follow=true&container=c")
    req.add_header("Authorization", f"Bearer {dc.admin_token}")
    got = bytearray()
    done = threading.Event()

    def follow() -> None:
        with urllib.request.urlopen(req, timeout=30) as r:
            while True:
                chunk = r.read1(65536)
                if not chunk:
                    break
                got.extend(chunk)
        done.set()

    t = threading.Thread(target=follow)
    t.start()
    dc.wait_for(lambda: bytes(got) == blob + b"line2\n", 10)
    more = b"\x80\x81 more\r\n" * 1000
    dc.kubelet.append_log(ns, "lg", "c", more)
    dc.wait_for(lambda: len(got) == len(blob) + 6 + len(more), 10)
    assert not done.is_set()
    dc.kubelet.exit(ns, "lg", 0)
    assert done.wait(10)
    t.join(5)
    assert bytes(got) == blob + b"line2\n" + more == dc.kubelet.served_log(ns, "lg")


def test_follow_ends_when_pod_removed(dc: Any, ns: str) -> None:
    dc.create({**pod("fr", {"steps": [{"log": "x"}]}), "metadata": {"name": "fr", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "fr") == "Running", 10)
    result: list[bytes] = []
    before = dc.requests[("get", "pods/log")]
    t = threading.Thread(target=lambda: result.append(raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/fr/log?follow=true")[2]))
    t.start()
    dc.wait_for(lambda: dc.requests[("get", "pods/log")] > before, 10)
    dc.delete("pods", "fr", ns, grace_period_seconds=0)
    t.join(10)
    assert not t.is_alive() and result == [b"x"]


def test_log_errors_and_previous(dc: Any, ns: str) -> None:
    two = pod("two")
    two["spec"]["containers"].append({"name": "side", "image": "busybox"})
    dc.create({**two, "metadata": {"name": "two", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "two") == "Running", 10)
    code, _, data = raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/two/log")
    assert code == 400 and json.loads(data)["message"] == "a container name must be specified for pod two, choose one of: [c side]"
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/two/log?container=nope")[0] == 400
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/missing/log")[0] == 404
    # restartPolicy OnFailure: the failed instance becomes "previous"
    script = {"steps": [{"log": "attempt\n"}, {"exit": 1}]}
    dc.create({**pod("rs", script, restartPolicy="OnFailure"), "metadata": {"name": "rs", "namespace": ns}})
    dc.wait_for(lambda: (dc.get("pods", "rs", ns)["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 1, 10)
    code, _, data = raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/rs/log?previous=true")
    assert code == 200 and data == b"attempt\n"
    assert raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/two/log?container=c&previous=true")[0] == 400


def test_evict_and_active_deadline(dc: Any, ns: str) -> None:
    dc.create({**pod("ev"), "metadata": {"name": "ev", "namespace": ns}})
    dc.create({**pod("dl", activeDeadlineSeconds=1), "metadata": {"name": "dl", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "ev") == "Running", 10)
    dc.kubelet.evict(ns, "ev")
    dc.wait_for(lambda: phase(dc, ns, "ev") == "Failed", 10)
    assert dc.get("pods", "ev", ns)["status"]["reason"] == "Evicted"
    dc.wait_for(lambda: phase(dc, ns, "dl") == "Failed", 10)
    assert dc.get("pods", "dl", ns)["status"]["reason"] == "DeadlineExceeded"


def test_configmap_volume_waits_for_configmap(dc: Any, ns: str) -> None:
    p = pod("mnt")
    p["spec"]["volumes"] = [{"name": "prompt", "configMap": {"name": "later"}}]
    p["spec"]["containers"][0]["volumeMounts"] = [{"name": "prompt", "mountPath": "/p"}]
    dc.create({**p, "metadata": {"name": "mnt", "namespace": ns}})
    dc.wait_for(lambda: dc.get("pods", "mnt", ns)["spec"].get("nodeName"), 10)
    assert phase(dc, ns, "mnt") == "Pending"
    assert dc.get("pods", "mnt", ns)["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ContainerCreating"
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "later", "namespace": ns}})
    dc.wait_for(lambda: phase(dc, ns, "mnt") == "Running", 10)


def _agent_rbac(dc: Any, ns: str, name: str) -> None:
    dc.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"{name}-agent", "namespace": ns}})
    dc.create({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": f"{name}-agent", "namespace": ns},
        "rules": [{"apiGroups": ["agentcontroller.dev"], "resources": ["agents/status"], "resourceNames": [name], "verbs": ["get", "patch"]}],
    })
    dc.create({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": f"{name}-agent", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-agent"},
        "subjects": [{"kind": "ServiceAccount", "name": f"{name}-agent", "namespace": ns}],
    })


def test_report_patches_agent_status_with_sa_credentials(dc: Any, ns: str) -> None:
    a = dc.create({**agent("rep"), "metadata": {"name": "rep", "namespace": ns}})
    _agent_rbac(dc, ns, "rep")
    script = {"steps": [{"report": {"phase": "Working", "progress": 40}}, {"log": "reported\n"}]}
    p = pod("rep", script, serviceAccountName="rep-agent")
    p["metadata"] = {
        "name": "rep", "namespace": ns,
        "ownerReferences": [{"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": "rep", "uid": a["metadata"]["uid"], "controller": True}],
    }
    user = f"system:serviceaccount:{ns}:rep-agent"
    dc.create(p)
    dc.wait_for(lambda: dc.kubelet.served_log(ns, "rep") == b"reported\n", 10)
    st = dc.get("agents", "rep", ns)["status"]
    assert st == {"phase": "Working", "progress": 40}
    assert dc.requests_by_user[user][("patch", "agents/status")] == 1
    # without RBAC (an SA with no role) the report is forbidden
    dc.create({**agent("norbac"), "metadata": {"name": "norbac", "namespace": ns}})
    dc.create({**pod("norbac", {"steps": [{"report": {"phase": "Working"}}]}), "metadata": {"name": "norbac", "namespace": ns}})
    dc.wait_for(lambda: any(r["pod"] == "norbac" and r["namespace"] == ns for r in list(dc.kubelet.reports)), 10)
    rec = [r for r in list(dc.kubelet.reports) if r["pod"] == "norbac" and r["namespace"] == ns][0]
    assert rec["code"] == 403 and rec["agent"] == "norbac"
    assert dc.get("agents", "norbac", ns)["status"] == {"phase": "Pending"}    # the CRD's default, untouched


def test_service_account_token_invalid_after_sa_deletion(dc: Any, ns: str) -> None:
    dc.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "tmp", "namespace": ns}})
    token = dc.service_account_token(ns, "tmp")
    code, _, data = raw(dc, "POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews", {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}, token=token)
    assert code == 201 and json.loads(data)["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:tmp"
    dc.delete("serviceaccounts", "tmp", ns)
    assert raw(dc, "GET", "/api", token=token)[0] == 401


@pytest.mark.parametrize("policy", ["Always"])
def test_restart_policy_always_restarts(dc: Any, ns: str, policy: str) -> None:
    dc.create({**pod("ra", {"steps": [{"log": "run\n"}, {"exit": 0}]}, restartPolicy=policy), "metadata": {"name": "ra", "namespace": ns}})
    dc.wait_for(lambda: (dc.get("pods", "ra", ns)["status"].get("containerStatuses") or [{}])[0].get("restartCount", 0) >= 2, 15)
    assert phase(dc, ns, "ra") == "Running"
