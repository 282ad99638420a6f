"""End to end through the API: the real controller (kopf) against the API emulator and simulated kubelet.

The best-tested path: the agent reports Completed while its pod is still running.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from helpers import leftovers, script, wait_for

SEL = "agentcontroller.dev/agent-uid="


def cleaned(api, ns, name):
    def check():
        a = api.agent(ns, name)
        c = (a.get("status") or {}).get("cleanup") or {}
        return a if c.get("state") == "Succeeded" else None
    return check


def archive_path(archive_dir: Path, agent) -> Path:
    m = agent["metadata"]
    return archive_dir / m["namespace"] / m["name"] / m["uid"]


def assert_manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "MANIFEST.json").read_text())
    for entry in manifest["files"]:
        data = (directory / entry["name"]).read_bytes()
        assert len(data) == entry["size"]
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    assert sorted(os.listdir(directory)) == sorted([e["name"] for e in manifest["files"]] + ["MANIFEST.json"])
    return manifest


def test_children_labels_owner_refs_and_running(api, ns, controller, cluster):
    created = api.create_agent(ns, "a1", {"image": "agent:1", "prompt": "Summarise the repo."})
    uid = created["metadata"]["uid"]
    agent = wait_for(lambda: (a := api.agent(ns, "a1")).get("status", {}).get("phase") == "Running" and a,
                     message="Running")
    assert agent["status"]["podName"] == "a1" and agent["status"]["startTime"]
    conds = {c["type"]: c["status"] for c in agent["status"]["conditions"]}
    assert conds == {"Ready": "True", "Finished": "False", "CleanedUp": "False"}
    assert agent["metadata"]["finalizers"] == ["agentcontroller.dev/cleanup"]
    expected = {"pod": ["a1"], "configmap": ["a1-prompt"], "serviceaccount": ["a1-agent"],
                "role": ["a1-agent"], "rolebinding": ["a1-agent"]}
    assert leftovers(api, ns, SEL + uid) == expected
    for kind in expected:
        for obj in api.objects(kind, ns, SEL + uid):
            labels = obj["metadata"]["labels"]
            assert labels["app.kubernetes.io/managed-by"] == "agent-controller"
            assert labels["agentcontroller.dev/agent"] == "a1"
            ref = obj["metadata"]["ownerReferences"][0]
            assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("Agent", "a1", uid, True)
    cm = api.objects("configmap", ns, SEL + uid)[0]
    assert cm["data"]["prompt.txt"] == "Summarise the repo."


@pytest.mark.emulator_only("kubelet")
def test_reported_completed_while_running_archives_grace_lines_and_cleans_everything(
        api, ns, controller, cluster, archive_dir):
    prompt = "Find the bug.\n"
    env = script(
        steps=[{"log": "starting\n"}, {"report": {"phase": "Working", "progress": 40, "message": "reading"}},
               {"logB64": "/w5vbi11dGY4IAD/\n"}, {"log": "done thinking\n"},
               {"report": {"phase": "Completed", "progress": 100, "message": "all done"}},
               {"sleep": 3600}],
        on_term=[{"log": "SIGTERM: flushing notes during grace\n"}, {"sleep": 0.3}, {"log": "bye\n"}, {"exit": 0}])
    created = api.create_agent(ns, "a1", {"image": "agent:1", "prompt": prompt, "env": env,
                                          "cleanup": {"gracePeriodSeconds": 5}})
    uid = created["metadata"]["uid"]
    agent = wait_for(cleaned(api, ns, "a1"), message="cleanup Succeeded")
    status = agent["status"]
    assert status["phase"] == "Completed" and status["progress"] == 100 and status["message"] == "all done"
    c = status["cleanup"]
    assert c["trigger"] == "Completed"
    assert (c["podDeleted"], c["promptDeleted"], c["credentialsDeleted"], c["logsArchived"],
            c["verifiedNoLeaks"]) == (True, True, True, True, True)
    assert c["completionTime"] and status["completionTime"] and c["attempts"] == 1
    conds = {x["type"]: x["status"] for x in status["conditions"]}
    assert conds["CleanedUp"] == "True" and conds["Finished"] == "True" and conds["Ready"] == "False"

    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    served = cluster.kubelet.served_log(ns, "a1", "agent")
    log = (directory / "agent.log").read_bytes()
    assert log == served
    assert b"SIGTERM: flushing notes during grace\nbye\n" in log
    assert b"\xff" in log   # raw bytes survive
    assert (directory / "prompt.txt").read_text() == prompt
    snapshot = json.loads((directory / "agent.json").read_text())
    assert snapshot["metadata"]["uid"] == uid and "managedFields" not in snapshot["metadata"]
    assert snapshot["status"]["phase"] == "Completed"
    rel = [f"{ns}/a1/{uid}/{e['name']}" for e in manifest["files"]] + [f"{ns}/a1/{uid}/MANIFEST.json"]
    assert sorted(c["archivedFiles"]) == sorted(rel)
    assert c["archivedBytes"] == sum((directory / f).stat().st_size for f in os.listdir(directory))

    assert leftovers(api, ns, SEL + uid) == {}
    reasons = {e.get("reason") for e in api.events(ns) if e.get("involvedObject", {}).get("uid") == uid}
    assert "CleanedUp" in reasons


@pytest.mark.parametrize("code,phase,reason", [(0, "Completed", "PodSucceeded"), (1, "Failed", "PodFailed")])
def test_pod_exit(api, ns, controller, archive_dir, code, phase, reason):
    env = script([{"log": "working\n"}, {"sleep": 0.2}, {"log": f"exiting {code}\n"}, {"exit": code}])
    api.create_agent(ns, "exit", {"image": "agent:1", "env": env})
    agent = wait_for(cleaned(api, ns, "exit"), message="cleanup")
    assert (agent["status"]["phase"], agent["status"]["reason"]) == (phase, reason)
    assert agent["status"]["cleanup"]["trigger"] == phase
    if code:
        assert "code 1" in agent["status"]["message"]
    log = (archive_path(archive_dir, agent) / "agent.log").read_bytes()
    assert log == f"working\nexiting {code}\n".encode()
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_kill_with_terminate_and_it_cannot_be_undone(api, ns, controller, archive_dir):
    api.create_agent(ns, "k", {"image": "agent:1", "env": script([{"log": "running\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "k").get("status", {}).get("phase") == "Running")
    api.patch_agent(ns, "k", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "k"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Terminated", "Killed")
    assert agent["status"]["cleanup"]["trigger"] == "Terminated"
    from helpers import HttpError
    with pytest.raises(HttpError) as info:
        api.patch_agent(ns, "k", {"spec": {"terminate": False}})
    assert info.value.status == 422 and "cannot be set back" in info.value.body["message"]
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"running\n"


def test_deadline_exceeded(api, ns, controller):
    api.create_agent(ns, "dl", {"image": "agent:1", "activeDeadlineSeconds": 2,
                                "env": script([{"sleep": 3600}])})
    agent = wait_for(cleaned(api, ns, "dl"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Failed", "DeadlineExceeded")
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_pod_deleted_behind_our_back_is_pod_lost(api, ns, controller, cluster):
    created = api.create_agent(ns, "lost", {"image": "agent:1", "prompt": "x"})
    wait_for(lambda: api.agent(ns, "lost").get("status", {}).get("phase") == "Running")
    api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/lost", {"gracePeriodSeconds": 0})
    agent = wait_for(cleaned(api, ns, "lost"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Error", "PodLost")
    assert leftovers(api, ns, SEL + created["metadata"]["uid"]) == {}


@pytest.mark.emulator_only("kubelet")
def test_evicted_pod_is_pod_lost(api, ns, controller, cluster):
    created = api.create_agent(ns, "ev", {"image": "agent:1", "env": script([{"log": "hi\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "ev").get("status", {}).get("phase") == "Running")
    cluster.kubelet.evict(ns, "ev")
    agent = wait_for(cleaned(api, ns, "ev"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Error", "PodLost")
    assert "evicted" in agent["status"]["message"]
    assert leftovers(api, ns, SEL + created["metadata"]["uid"]) == {}


def test_delete_agent_finalizer_holds_until_cleanup(api, ns, controller, cluster, archive_dir):
    created = api.create_agent(ns, "del", {"image": "agent:1", "prompt": "p",
                                           "env": script([{"log": "about to be deleted\n"}, {"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(lambda: api.agent(ns, "del").get("status", {}).get("phase") == "Running")
    api.delete_agent(ns, "del")
    wait_for(lambda: api.agent_or_none(ns, "del") is None, message="agent gone")
    directory = archive_dir / ns / "del" / uid
    assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b"about to be deleted\n"
    snapshot = json.loads((directory / "agent.json").read_text())
    assert snapshot["status"]["phase"] == "Terminated" and snapshot["status"]["reason"] == "Deleted"
    assert snapshot["status"]["cleanup"]["trigger"] == "Deleted"
    assert leftovers(api, ns, SEL + uid) == {}


def test_cleanup_logs_delete_skips_archive(api, ns, controller, archive_dir):
    created = api.create_agent(ns, "nolog", {"image": "agent:1", "cleanup": {"logs": "Delete"},
                                             "env": script([{"log": "secret\n"}, {"exit": 0}])})
    agent = wait_for(cleaned(api, ns, "nolog"))
    assert agent["status"]["cleanup"]["logsArchived"] is False
    assert agent["status"]["cleanup"]["verifiedNoLeaks"] is True
    assert not (archive_dir / ns / "nolog").exists()
    assert leftovers(api, ns, SEL + created["metadata"]["uid"]) == {}


def test_delay_keeps_pod_then_ttl_deletes_agent(api, ns, controller):
    api.create_agent(ns, "ttl", {"image": "agent:1", "ttlSecondsAfterFinished": 1,
                                 "cleanup": {"delaySeconds": 2}, "env": script([{"exit": 0}])})
    seen = wait_for(lambda: (a := api.agent(ns, "ttl")).get("status", {}).get("phase") == "Completed" and a)
    assert seen["status"]["cleanup"]["state"] in ("Pending", "Running", "Succeeded")
    done = wait_for(cleaned(api, ns, "ttl"))
    from controller.api import parse_time
    held = parse_time(done["status"]["cleanup"]["completionTime"]) - parse_time(done["status"]["completionTime"])
    assert held.total_seconds() >= 2
    wait_for(lambda: api.agent_or_none(ns, "ttl") is None, message="TTL deletion")


def test_invalid_pod_template_fails_with_invalid_spec(api, ns, controller):
    api.create_agent(ns, "bad", {"image": "agent:1", "podTemplate": {"spec": {"volumes": "not-a-list"}}})
    agent = wait_for(cleaned(api, ns, "bad"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Failed", "InvalidSpec")
    assert "volumes" in agent["status"]["message"]


def test_twenty_agents_completing_at_once(api, ns, controller, cluster, archive_dir):
    names = [f"b{i}" for i in range(20)]
    for n in names:
        api.create_agent(ns, n, {"image": "agent:1", "env": script([{"log": f"{n}\n"}, {"sleep": 3600}])})
    wait_for(lambda: all(api.agent(ns, n).get("status", {}).get("phase") == "Running" for n in names), timeout=120)
    for n in names:
        api.patch_agent(ns, n, {"status": {"phase": "Completed", "progress": 100}}, status=True)
    for n in names:
        agent = wait_for(cleaned(api, ns, n), timeout=120)
        assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == f"{n}\n".encode()
    assert leftovers(api, ns, "app.kubernetes.io/managed-by=agent-controller") == {}


@pytest.mark.emulator_only("kubelet, requests")
def test_pod_on_a_lost_node_is_force_deleted_after_grace_plus_30s(api, ns, controller, cluster, archive_dir):
    # The test controller uses force_delete_after=2 s instead of 30 s (Options.force_delete_after).
    created = api.create_agent(ns, "stuck", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 1},
                                             "env": script([{"log": "on a doomed node\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "stuck").get("status", {}).get("phase") == "Running")
    cluster.kubelet.lose_node(ns, "stuck", logs_reachable=True)   # a real lost node refuses log reads (issue 14)
    before = cluster.requests[("delete", "pods")]
    api.patch_agent(ns, "stuck", {"status": {"phase": "Completed"}}, status=True)
    agent = wait_for(cleaned(api, ns, "stuck"), timeout=120)
    assert cluster.requests[("delete", "pods")] - before == 2      # graceful, then forced
    assert agent["status"]["cleanup"]["podDeleted"] is True
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"on a doomed node\n"
    assert leftovers(api, ns, SEL + created["metadata"]["uid"]) == {}
