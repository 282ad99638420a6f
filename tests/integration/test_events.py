"""The Events a user follows with `kubectl describe agent` / `kubectl events --for agent/NAME`, one
ending at a time, as the API server holds them: reasons in CamelCase, Normal or Warning as
Kubernetes' own controllers use them, repeats aggregated into one Event with a count, and nothing
said that did not happen (no "pod deleted" when there was no pod)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import script, wait_for
from test_failures import running
from test_lifecycle import cleaned


def told_all(api: Any, ns: str, name: str) -> list[tuple[str, str]]:
    """The Agent's Events once its CleanedUp Event is there (posted just after the status says the
    cleanup Succeeded)."""
    wait_for(lambda: ("Normal", "CleanedUp") in told(api, ns, name), message=f"the CleanedUp Event of {name}")
    return told(api, ns, name)


def told(api: Any, ns: str, name: str) -> list[tuple[str, str]]:
    """(type, reason) of the Agent's Events, oldest first."""
    events = [e for e in api.events(ns)
              if e["involvedObject"].get("kind") == "Agent" and e["involvedObject"].get("name") == name]
    events.sort(key=lambda e: (e.get("firstTimestamp") or e.get("eventTime") or "", e["metadata"]["name"]))
    return [(e["type"], e["reason"]) for e in events]


def message(api: Any, ns: str, name: str, reason: str) -> str:
    (event,) = [e for e in api.events(ns) if e["reason"] == reason and e["involvedObject"].get("name") == name]
    return str(event["message"])


def test_a_deadline_is_a_warning_between_start_and_cleanup(api, ns, controller):
    api.create_agent(ns, "dl", {"image": "agent:1", "activeDeadlineSeconds": 2, "env": script([{"sleep": 3600}])})
    wait_for(cleaned(api, ns, "dl"))
    # (`Started` only if the pod was seen running before the 2 s deadline: a loaded machine may not)
    assert [e for e in told_all(api, ns, "dl") if e != ("Normal", "Started")] == [
        ("Normal", "PodCreated"), ("Warning", "DeadlineExceeded"), ("Normal", "CleanedUp")]
    assert "pod, prompt and credentials deleted" in message(api, ns, "dl", "CleanedUp")


def test_terminate_is_told_as_killed(api, ns, controller):
    api.create_agent(ns, "tk", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "tk"))
    api.patch_agent(ns, "tk", {"spec": {"terminate": True}})
    wait_for(cleaned(api, ns, "tk"))
    assert told_all(api, ns, "tk") == [("Normal", "PodCreated"), ("Normal", "Started"),
                                   ("Normal", "Killed"), ("Normal", "CleanedUp")]


def test_a_pod_deleted_behind_our_back_is_a_pod_lost_warning(api, ns, controller):
    api.create_agent(ns, "pl", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "pl"))
    api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/pl", {"gracePeriodSeconds": 0})
    wait_for(cleaned(api, ns, "pl"))
    assert ("Warning", "PodLost") in told_all(api, ns, "pl")
    assert told_all(api, ns, "pl")[-1] == ("Normal", "CleanedUp")


def test_a_reported_failure_is_a_warning_of_its_own(api, ns, controller):
    api.create_agent(ns, "rf", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "rf"))
    api.patch_agent(ns, "rf", {"status": {"phase": "Failed", "reason": "ToolCrashed", "message": "the tool crashed"}},
                    status=True)
    wait_for(cleaned(api, ns, "rf"))
    assert told_all(api, ns, "rf")[-2:] == [("Warning", "Reported"), ("Normal", "CleanedUp")]
    assert "the tool crashed" in message(api, ns, "rf", "Reported")


def test_an_invalid_spec_never_says_a_pod_was_deleted(api, ns, controller):
    api.create_agent(ns, "bad", {"image": "agent:1", "podTemplate": {"spec": {"volumes": "not-a-list"}}})
    wait_for(cleaned(api, ns, "bad"))
    assert told_all(api, ns, "bad") == [("Warning", "InvalidSpec"), ("Normal", "CleanedUp")]
    text = message(api, ns, "bad", "CleanedUp")
    assert "pod" not in text.split("Cleaned up", 1)[1].split("prompt", 1)[0], text
    assert "prompt and credentials deleted" in text


def test_cleanup_retries_are_one_aggregated_warning(api, ns, cluster, controller):
    api.create_agent(ns, "rt", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "rt"))
    cluster.faults.inject(verb="delete", resource="pods", namespace=ns, status=500, times=None)

    def retries() -> list[dict[str, Any]]:
        return [e for e in api.events(ns) if e["reason"] == "CleanupRetrying" and e["involvedObject"]["name"] == "rt"]
    try:
        api.patch_agent(ns, "rt", {"status": {"phase": "Completed"}}, status=True)
        wait_for(lambda: int((retries() or [{}])[0].get("count") or 0) >= 2, timeout=120,
                 message="the cleanup retried twice, told as one Event")
    finally:
        cluster.faults.clear()
    wait_for(cleaned(api, ns, "rt"), timeout=120)
    (retry,) = retries()
    assert retry["type"] == "Warning" and "500" in retry["message"]
    assert told_all(api, ns, "rt")[-1] == ("Normal", "CleanedUp")
