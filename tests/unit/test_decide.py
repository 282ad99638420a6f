"""The decision function, every phase x trigger."""

from __future__ import annotations

import datetime

import pytest

from controller import api
from controller.decide import PodState, decide, next_wakeup

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
UID = "0b0c0d0e-1111-2222-3333-444455556666"


def agent(phase=None, *, spec=None, status=None, deleting=False, created_ago=10.0):
    body = {
        "metadata": {"name": "a1", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "7",
                     "creationTimestamp": api.format_time(NOW - datetime.timedelta(seconds=created_ago))},
        "spec": {"image": "img", **(spec or {})},
        "status": dict(status or {}),
    }
    if phase:
        body["status"]["phase"] = phase
        body["status"].setdefault("podName", "a1")
    if deleting:
        body["metadata"]["deletionTimestamp"] = api.format_time(NOW)
    return body


def pod(phase="Running", **kw):
    return PodState(uid="pod-uid", phase=phase, owner_uid=UID, **kw)


NON_TERMINAL = [api.PENDING, api.RUNNING, api.WORKING, api.BLOCKED]
TERMINAL = sorted(api.TERMINAL_PHASES)


def test_new_agent_creates_children_and_goes_pending():
    d = decide(agent(), None, NOW)
    assert d.create_children and d.phase and d.phase.phase == api.PENDING and not d.cleanup


def test_pod_running_moves_pending_to_running_with_start_time():
    d = decide(agent(api.PENDING), pod("Running"), NOW)
    assert d.phase and d.phase.phase == api.RUNNING and d.phase.start_time


@pytest.mark.parametrize("phase", [api.RUNNING, api.WORKING, api.BLOCKED])
def test_running_pod_does_not_override_agent_reported_phase(phase):
    assert decide(agent(phase), pod("Running"), NOW).phase is None


@pytest.mark.parametrize("phase", NON_TERMINAL)
@pytest.mark.parametrize("trigger,expected,reason", [
    ("pod_succeeded", api.COMPLETED, api.REASON_POD_SUCCEEDED),
    ("pod_failed", api.FAILED, api.REASON_POD_FAILED),
    ("terminate", api.TERMINATED, api.REASON_KILLED),
    ("deadline", api.FAILED, api.REASON_DEADLINE),
    ("pod_deleted", api.ERROR, api.REASON_POD_LOST),
    ("pod_gone", api.ERROR, api.REASON_POD_LOST),
    ("evicted", api.ERROR, api.REASON_POD_LOST),
    ("agent_deleted", api.TERMINATED, api.REASON_DELETED),
])
def test_every_trigger_from_every_live_phase(phase, trigger, expected, reason):
    spec, deleting, state = {}, False, pod("Running")
    if trigger == "pod_succeeded":
        state = pod("Succeeded", exit_code=0)
    elif trigger == "pod_failed":
        state = pod("Failed", exit_code=3)
    elif trigger == "terminate":
        spec = {"terminate": True}
    elif trigger == "deadline":
        spec = {"activeDeadlineSeconds": 5}
    elif trigger == "pod_deleted":
        state = pod("Running", deleting=True)
    elif trigger == "pod_gone":
        state = None
    elif trigger == "evicted":
        state = pod("Failed", reason="Evicted", message="node pressure")
    elif trigger == "agent_deleted":
        deleting = True
    d = decide(agent(phase, spec=spec, deleting=deleting), state, NOW)
    assert d.phase is not None
    assert (d.phase.phase, d.phase.reason) == (expected, reason)
    assert not d.create_children


def test_exit_code_in_message():
    d = decide(agent(api.RUNNING), pod("Failed", exit_code=3), NOW)
    assert "code 3" in d.phase.message


@pytest.mark.parametrize("phase", TERMINAL)
@pytest.mark.parametrize("state", [None, "Running", "Succeeded", "Failed", "deleting"])
@pytest.mark.parametrize("terminate", [False, True])
def test_terminal_is_final_and_cleans_up(phase, state, terminate):
    pstate = None if state is None else (pod("Running", deleting=True) if state == "deleting" else pod(state))
    d = decide(agent(phase, spec={"terminate": terminate, "activeDeadlineSeconds": 1}), pstate, NOW)
    assert d.phase is None
    assert d.cleanup


@pytest.mark.parametrize("phase", TERMINAL)
def test_terminal_and_cleaned_up_does_nothing(phase):
    d = decide(agent(phase, status={"cleanup": {"state": "Succeeded"}}), None, NOW)
    assert d == type(d)()


def test_first_trigger_wins_deletion_over_terminate_and_deadline():
    d = decide(agent(api.RUNNING, spec={"terminate": True, "activeDeadlineSeconds": 1}, deleting=True),
               pod("Succeeded"), NOW)
    assert d.phase.reason == api.REASON_DELETED


def test_terminate_before_deadline_and_pod_exit():
    d = decide(agent(api.RUNNING, spec={"terminate": True, "activeDeadlineSeconds": 1}), pod("Succeeded"), NOW)
    assert d.phase.reason == api.REASON_KILLED


def test_deadline_not_yet_passed_requeues():
    d = decide(agent(api.RUNNING, spec={"activeDeadlineSeconds": 60}, created_ago=20), pod("Running"), NOW)
    assert d.phase is None and d.requeue_after == pytest.approx(40)


def test_deleted_before_any_pod_goes_terminated():
    d = decide(agent(None, deleting=True), None, NOW)
    assert d.phase.phase == api.TERMINATED and d.phase.reason == api.REASON_DELETED


def test_invalid_pod_template_fails_invalid_spec():
    d = decide(agent(None, spec={"podTemplate": {"spec": {"volumes": "nope"}}}), None, NOW)
    assert d.phase.phase == api.FAILED and d.phase.reason == api.REASON_INVALID_SPEC


def test_api_rejected_pod_fails_invalid_spec():
    d = decide(agent(api.PENDING), None, NOW, pod_create_error="bad")
    assert d.phase.reason == api.REASON_INVALID_SPEC


def test_pod_of_another_owner_waits_when_never_created():
    a = agent(None)
    d = decide(a, PodState(uid="x", phase="Running", owner_uid="other"), NOW)
    assert d.phase is None and d.requeue_after


def test_pod_of_another_owner_after_creation_is_pod_lost():
    d = decide(agent(api.RUNNING), PodState(uid="x", phase="Running", owner_uid="other"), NOW)
    assert d.phase.reason == api.REASON_POD_LOST


def test_cleanup_delay():
    finished = api.format_time(NOW - datetime.timedelta(seconds=3))
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 10}}, status={"completionTime": finished})
    d = decide(a, None, NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(7)
    assert next_wakeup(a, NOW) == pytest.approx(7)
    assert decide(a, None, NOW + datetime.timedelta(seconds=8)).cleanup


def test_cleanup_delay_does_not_hold_a_deletion():
    finished = api.format_time(NOW)
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 100}}, status={"completionTime": finished},
              deleting=True)
    assert decide(a, None, NOW).cleanup


def test_ttl_after_cleanup():
    done = api.format_time(NOW - datetime.timedelta(seconds=5))
    a = agent(api.COMPLETED, spec={"ttlSecondsAfterFinished": 30},
              status={"cleanup": {"state": "Succeeded", "completionTime": done}})
    d = decide(a, None, NOW)
    assert not d.delete_agent and d.requeue_after == pytest.approx(25)
    assert decide(a, None, NOW + datetime.timedelta(seconds=26)).delete_agent
    assert next_wakeup(a, NOW) == pytest.approx(25)


def test_ttl_zero_deletes_at_once():
    a = agent(api.FAILED, spec={"ttlSecondsAfterFinished": 0},
              status={"cleanup": {"state": "Succeeded", "completionTime": api.format_time(NOW)}})
    assert decide(a, None, NOW).delete_agent


def test_next_wakeup_none_without_clock_triggers():
    assert next_wakeup(agent(api.RUNNING), NOW) is None
    assert next_wakeup(agent(api.COMPLETED), NOW) is None
    assert next_wakeup(agent(api.RUNNING, spec={"activeDeadlineSeconds": 100}), NOW) == pytest.approx(90)
    assert next_wakeup(agent(api.RUNNING, spec={"activeDeadlineSeconds": 100, "terminate": True}), NOW) is None


def test_pod_state_from_body():
    body = {"metadata": {"uid": "u", "labels": {"agentcontroller.dev/agent-uid": UID}},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "agent", "state": {"terminated": {"exitCode": 3}}}]}}
    state = PodState.from_body(body)
    assert state.exit_code == 3 and state.owner_uid == UID and not state.deleting


@pytest.mark.parametrize("phase,reason,deleting,expected", [
    (api.COMPLETED, "AgentReported", False, "Completed"),
    (api.TERMINATED, api.REASON_KILLED, False, "Terminated"),
    (api.TERMINATED, api.REASON_DELETED, True, "Deleted"),
    (api.RUNNING, None, True, "Deleted"),
    (api.ERROR, api.REASON_POD_LOST, False, "Error"),
    (None, None, False, "Sweep"),
])
def test_cleanup_trigger(phase, reason, deleting, expected):
    assert api.cleanup_trigger(phase, reason, deleting) == expected


def test_backoff_caps_at_five_minutes():
    assert [api.backoff_seconds(n) for n in (1, 2, 3)] == [1, 2, 4]
    assert api.backoff_seconds(50) == 300


def test_conditions_keep_transition_time_until_status_changes():
    first = api.conditions_for(api.RUNNING, "PodRunning", None, None, NOW)
    later = NOW + datetime.timedelta(seconds=30)
    second = api.conditions_for(api.WORKING, "AgentReported", None, first, later)
    ready = {c["type"]: c for c in second}["Ready"]
    assert ready["status"] == "True" and ready["lastTransitionTime"] == api.format_time(NOW)
    third = api.conditions_for(api.COMPLETED, "Done", "Succeeded", second, later)
    by = {c["type"]: c for c in third}
    assert by["Ready"]["status"] == "False" and by["Ready"]["lastTransitionTime"] == api.format_time(later)
    assert by["Finished"]["status"] == "True" and by["CleanedUp"]["status"] == "True"
