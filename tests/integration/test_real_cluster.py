"""Regressions found by reviewing the controller against real Kubernetes behaviour (issue "Correct on a
real cluster"): each test drives the real controller through the API and fails on the code before
its fix. Item numbers refer to that issue."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from helpers import HttpError, leftovers, script, wait_for
from test_lifecycle import archive_path, assert_manifest, cleaned
from test_sweep import healthz, orphan, sample, scrape

SEL = "agentcontroller.dev/agent-uid="


def phase(api, ns, name):
    return (api.agent(ns, name).get("status") or {}).get("phase")


def plain_pod(api, ns, name, **meta):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta},
            "spec": {"containers": [{"name": "c", "image": "x", "env": script([{"sleep": 3600}])}]}}
    return api.create_pod(ns, body)


def test_1_an_agent_created_during_a_sweep_keeps_its_children(api, ns, cluster, controller):
    """The sweep lists the Agents, then the children: an Agent created in between is absent from the
    first list. Its children are confirmed by a fresh read before anything is called orphaned."""
    fault = cluster.faults.inject(verb="list", resource="pods", namespace=ns, hang=True, times=1)
    result: dict = {}
    sweeping = threading.Thread(target=lambda: result.update(report=controller.sweep()))
    sweeping.start()
    wait_for(lambda: fault.hits >= 1, message="the sweep's pod list is held")
    created = api.create_agent(ns, "newborn", {"image": "agent:1", "prompt": "hi",
                                               "env": script([{"sleep": 3600}])})
    wait_for(lambda: phase(api, ns, "newborn") == "Running", message="newborn Running")
    cluster.faults.clear()           # the held list is answered now: it holds the newborn's pod
    sweeping.join(120)
    report = result["report"]
    assert report is not None and not report.found and not report.errors, report
    assert report.confirmed_alive >= 5      # the pod, the prompt and the three credentials
    assert phase(api, ns, "newborn") == "Running"
    assert set(leftovers(api, ns, SEL + created["metadata"]["uid"])) == {
        "pod", "configmap", "serviceaccount", "role", "rolebinding"}


def test_2_a_prompt_of_500_kib_works_end_to_end(api, ns, controller, archive_dir):
    """Nothing copies the prompt into an annotation (limited to 256 KiB per object): kopf's diff-base
    annotation would, and then every patch of the Agent fails and its finalizer is never removed."""
    prompt = ("0123456789abcdef" * 64 + "\n") * 490          # ~500 KiB
    api.create_agent(ns, "big", {"image": "agent:1", "prompt": prompt, "env": script([{"exit": 0}])})
    agent = wait_for(cleaned(api, ns, "big"))
    assert (archive_path(archive_dir, agent) / "prompt.txt").read_text() == prompt
    annotations = agent["metadata"].get("annotations") or {}
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 4096, annotations.keys()
    api.delete_agent(ns, "big")
    wait_for(lambda: api.agent_or_none(ns, "big") is None, message="deleted (finalizer removed)")


def test_7_8_9_a_pod_name_held_by_an_unrelated_pod(api, ns, controller):
    """The Agent says what blocks it (Pending, PodNameTaken) and retries; killed meanwhile, its
    cleanup does not claim to have deleted a pod it never had; the unrelated pod is untouched."""
    plain_pod(api, ns, "taken")
    api.create_agent(ns, "taken", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    agent = wait_for(lambda: (a := api.agent(ns, "taken")).get("status", {}).get("reason") == "PodNameTaken" and a,
                     message="PodNameTaken")
    assert agent["status"]["phase"] == "Pending" and not agent["status"].get("podName")
    assert "another owner" in agent["status"]["message"]
    api.patch_agent(ns, "taken", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "taken"))
    c = agent["status"]["cleanup"]
    assert agent["status"]["phase"] == "Terminated" and c["verifiedNoLeaks"] is True
    assert c["podDeleted"] is False, "no pod of this agent ever existed: nothing was deleted"
    assert api.pod(ns, "taken") is not None and not api.pod(ns, "taken")["metadata"].get("deletionTimestamp")


def test_7_an_agent_waits_for_its_pod_name_then_runs(api, ns, controller):
    """The decision's requeue reaches the queue: once the name is free, the Agent's pod is created."""
    plain_pod(api, ns, "recycled", finalizers=["example.com/hold"])
    api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/recycled")
    api.create_agent(ns, "recycled", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "recycled").get("status", {}).get("reason") == "PodNameTaken")
    api.call("PATCH", f"/api/v1/namespaces/{ns}/pods/recycled", {"metadata": {"finalizers": None}},
             "application/merge-patch+json")
    wait_for(lambda: phase(api, ns, "recycled") == "Running", timeout=120, message="Running once the name is free")


def test_10_an_agent_reporting_before_it_was_seen_running(api, ns, controller):
    """Conditions and times are right whatever order the events arrive in."""
    api.create_agent(ns, "eager", {"image": "agent:1", "env": script([
        {"report": {"phase": "Working", "progress": 10, "message": "at once"}}, {"sleep": 3600}])})
    agent = wait_for(lambda: (a := api.agent(ns, "eager"))["status"].get("startTime")
                     and a["status"].get("phase") == "Working" and a, message="Working, with its startTime")
    conds = {c["type"]: c for c in agent["status"]["conditions"]}
    assert agent["status"]["phase"] == "Working"
    assert conds["Ready"]["status"] == "True" and conds["Ready"]["reason"] != "Created"
    api.patch_agent(ns, "eager", {"status": {"phase": "Completed"}}, status=True)
    agent = wait_for(cleaned(api, ns, "eager"))
    conds = {c["type"]: c for c in agent["status"]["conditions"]}
    assert conds["Finished"]["status"] == "True" and conds["Finished"]["reason"] not in ("Created", "PodRunning")
    assert conds["Ready"]["reason"] not in ("Created", "PodRunning")


def test_10_reported_completed_before_the_pod_was_seen_running(api, ns, controller):
    api.create_agent(ns, "quick", {"image": "agent:1", "env": script([
        {"report": {"phase": "Completed", "message": "done before you looked"}}, {"sleep": 3600}])})
    agent = wait_for(cleaned(api, ns, "quick"))
    conds = {c["type"]: c for c in agent["status"]["conditions"]}
    assert conds["Finished"]["reason"] == "Completed" and conds["Ready"]["reason"] == "Completed"
    assert agent["status"]["reason"] != "Created" or conds["Finished"]["reason"] == "Completed"


def test_11_a_sidecar_that_never_exits_does_not_keep_the_agent_alive(api, ns, controller, archive_dir):
    template = {"spec": {"containers": [{"name": "helper", "image": "sidecar:1",
                                         "env": script([{"log": "helping\n"}, {"sleep": 3600}])}]}}
    api.create_agent(ns, "withcar", {"image": "agent:1", "podTemplate": template,
                                     "env": script([{"log": "agent work\n"}, {"sleep": 0.2}, {"exit": 0}])})
    agent = wait_for(cleaned(api, ns, "withcar"))
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Completed", "PodSucceeded")
    directory = archive_path(archive_dir, agent)
    assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b"agent work\n"
    assert (directory / "helper.log").read_bytes() == b"helping\n"
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_14_unrelated_pods_are_not_watched(api, ns, controller):
    for i in range(20):
        plain_pod(api, ns, f"unrelated-{i}")
    api.create_agent(ns, "watched", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(lambda: phase(api, ns, "watched") == "Running")
    pods = controller.runtime.pods
    assert len(pods) == 1 and pods.named(ns, "watched") is not None


def test_8_16_a_stuck_orphan_never_fails_the_sweep(api, ns, cluster, controller, archive_dir):
    """An orphan pod held by a foreign finalizer: the sweep succeeds, /healthz stays 200, the failure is
    reported per object (an Event naming it), and only what was really removed counts as reaped."""
    pod = orphan(api, ns, "clingy")
    api.call("PATCH", f"/api/v1/namespaces/{ns}/pods/clingy", {"metadata": {"finalizers": ["example.com/hold"]}},
             "application/merge-patch+json")
    orphan(api, ns, "loose", kind="configmap")
    wait_for(lambda: (api.pod(ns, "clingy") or {}).get("status", {}).get("phase") == "Running")
    report = controller.sweep()
    assert report is not None, controller.sweeper.last_error
    assert report.found[("pod", "orphaned")] == 1 and report.reaped == {"configmap": 1}
    assert any("clingy" in e for e in report.errors), report.errors
    assert healthz(controller) == 200
    text = scrape(controller)
    assert sample(text, "agent_controller_leaks_reaped_total", kind="pod") == 0
    assert sample(text, "agent_controller_leaks_reaped_total", kind="configmap") == 1
    failed = [e for e in api.events(ns) if e.get("reason") == "ReapFailed"]
    assert failed and failed[0]["involvedObject"]["name"] == "clingy" and failed[0]["type"] == "Warning"
    # The archive of its logs was written all the same (data first: it is deleted only after).
    assert (archive_dir / ns / "_orphans" / pod["metadata"]["uid"] / "agent.log").read_bytes() == b"orphan output\n"
    api.call("PATCH", f"/api/v1/namespaces/{ns}/pods/clingy", {"metadata": {"finalizers": None}},
             "application/merge-patch+json")
    wait_for(lambda: api.pod(ns, "clingy") is None)


def test_12_hostile_shapes_end_in_invalid_spec_or_are_refused(api, ns, controller):
    nested: dict = {}
    cur = nested
    for _ in range(800):
        cur["x"] = {}
        cur = cur["x"]
    try:
        api.create_agent(ns, "deep", {"image": "agent:1", "podTemplate": {"metadata": {"annotations": {}},
                                                                        "spec": {"nodeSelector": {}, "deep": nested}}})
    except HttpError as exc:
        assert exc.status in (400, 422), exc.body     # refused by the API: fine
    else:
        agent = wait_for(lambda: (a := api.agent(ns, "deep")).get("status", {}).get("reason") and a)
        assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Failed", "InvalidSpec")
    dup = {"spec": {"containers": [{"name": "agent", "image": "a"}, {"name": "agent", "image": "b"}]}}
    try:
        api.create_agent(ns, "dup", {"image": "agent:1", "podTemplate": dup})
    except HttpError as exc:
        assert exc.status == 422 and "agent" in json.dumps(exc.body)
    else:
        agent = wait_for(lambda: (a := api.agent(ns, "dup")).get("status", {}).get("reason") and a)
        assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Failed", "InvalidSpec")
        assert "containers" in agent["status"]["message"]
    try:
        api.create_agent(ns, "lots", {"image": "agent:1", "resources": {"limits": {"cpu": "lots"}}})
    except HttpError as exc:
        assert exc.status == 422 and "cpu" in json.dumps(exc.body)
    else:
        agent = wait_for(lambda: (a := api.agent(ns, "lots")).get("status", {}).get("reason") and a)
        assert (agent["status"]["phase"], agent["status"]["reason"]) in (("Failed", "InvalidSpec"),
                                                                        ("Failed", "PodRejected"))
        assert "cpu" in agent["status"]["message"]
    assert str(uuid.uuid4())   # (the controller is still alive: the next test's agents run)
    api.create_agent(ns, "after", {"image": "agent:1", "env": script([{"exit": 0}])})
    wait_for(cleaned(api, ns, "after"))


def test_4_a_pod_the_api_refuses_ends_the_agent_pod_rejected(api, ns, backend_name, make_controller):
    """Pod Security admission refuses the pod with 403 (not 400/422): the Agent ends Failed/PodRejected
    with the API's message, instead of being retried forever. The controller's own policy is set to
    `privileged` here, so that the real API server's admission is what says no."""
    if backend_name != "control-plane":
        pytest.skip("Pod Security admission is the real API server's (the control-plane backend)")
    make_controller(pod_security="privileged")
    api.create_agent(ns, "hostnet", {"image": "agent:1", "podTemplate": {"spec": {"hostNetwork": True}},
                                     "env": script([{"sleep": 3600}])})
    agent = wait_for(lambda: (a := api.agent(ns, "hostnet")).get("status", {}).get("phase") == "Failed" and a,
                     timeout=120, message="Failed")
    assert agent["status"]["reason"] == "PodRejected"
    assert "violates PodSecurity" in agent["status"]["message"] and "hostNetwork" in agent["status"]["message"]
    agent = wait_for(cleaned(api, ns, "hostnet"), timeout=120)
    assert agent["status"]["cleanup"]["podDeleted"] is False     # no pod ever existed
    assert agent["status"]["cleanup"]["verifiedNoLeaks"] is True


def test_4_a_pod_that_never_starts_ends_start_timeout(api, ns, controller):
    """An image that cannot be pulled: Pending with the waiting reason while it waits, then, past
    startDeadlineSeconds, Failed/StartTimeout with the last waiting reason and message."""
    api.create_agent(ns, "nopull", {"image": "agent:1", "startDeadlineSeconds": 2, "podTemplate": {"metadata": {
        "annotations": {"sim.agentcontroller.dev/waiting-reason": "ImagePullBackOff",
                        "sim.agentcontroller.dev/waiting-message": 'Back-off pulling image "agent:1"'}}}})
    agent = wait_for(lambda: (a := api.agent(ns, "nopull")).get("status", {}).get("phase") == "Failed" and a,
                     timeout=120, message="Failed")
    assert agent["status"]["reason"] == "StartTimeout"
    assert "ImagePullBackOff" in agent["status"]["message"] and "Back-off pulling image" in agent["status"]["message"]
    wait_for(cleaned(api, ns, "nopull"), timeout=120)
