"""decide(agent, Observed, now) -> Decision: every phase x trigger, refusals, deadlines, cleanup timing.

Pure: no I/O, no clock. Pods are given as API bodies and read through `PodState.from_body`, so
what a real kubelet reports (container states, conditions) is what is tested.
"""

from __future__ import annotations

import datetime
import itertools
from typing import Any

import pytest

from controller import api
from controller.decide import CreateRefusal, Decision, Observed, PodState, StatusChange, decide
from controller.names import AGENT_UID_LABEL, POD_CONTAINER

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
UID = "0b0c0d0e-1111-2222-3333-444455556666"
OTHER_UID = "99999999-1111-2222-3333-444455556666"

NON_TERMINAL = [api.PENDING, api.RUNNING, api.WORKING, api.BLOCKED]
TERMINAL = sorted(api.TERMINAL_PHASES)
START_DEADLINE = api.DEFAULTS["startDeadlineSeconds"]

PSA_MESSAGE = ('pods "a1" is forbidden: violates PodSecurity "restricted:latest": allowPrivilegeEscalation != false '
               '(container "agent" must set securityContext.allowPrivilegeEscalation=false)')
QUOTA_MESSAGE = ('pods "a1" is forbidden: exceeded quota: pods, requested: pods=1, used: pods=2, limited: pods=2')


def ago(seconds: float) -> str:
    return api.format_time(NOW - datetime.timedelta(seconds=seconds))


def agent(phase: str | None = None, *, spec: dict[str, Any] | None = None, status: dict[str, Any] | None = None,
          deleting: bool = False, created_ago: float = 10.0, pod_name: bool = True) -> dict[str, Any]:
    """An Agent as the API returns it. With a phase, podName is set (the controller created the pod)
    unless pod_name=False; a terminal phase gets a completionTime unless status says otherwise."""
    body: dict[str, Any] = {
        "apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
        "metadata": {"name": "a1", "namespace": "ns", "uid": UID, "generation": 1, "resourceVersion": "7",
                     "creationTimestamp": ago(created_ago), "finalizers": ["agentcontroller.dev/cleanup"]},
        "spec": {"image": "img", **(spec or {})},
        "status": {},
    }
    if phase:
        body["status"]["phase"] = phase
        if pod_name:
            body["status"]["podName"] = "a1"
        if phase in api.ACTIVE_PHASES:
            body["status"]["startTime"] = ago(created_ago - 1)
        if api.is_terminal(phase):
            body["status"]["completionTime"] = ago(1)
            body["status"]["cleanup"] = {"state": api.CLEANUP_PENDING}
    body["status"].update(status or {})
    body["status"] = {k: v for k, v in body["status"].items() if v is not None}
    if deleting:
        body["metadata"]["deletionTimestamp"] = api.format_time(NOW)
        body["metadata"]["finalizers"] = ["agentcontroller.dev/cleanup"]
    return body


# ---------------------------------------------------------------- pod bodies, as a kubelet reports them

def running() -> dict[str, Any]:
    return {"running": {"startedAt": ago(5)}}


def terminated(code: int) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": ago(1)}}


def waiting(reason: str, message: str = "") -> dict[str, Any]:
    return {"waiting": {"reason": reason, **({"message": message} if message else {})}}


def pod_body(phase: str = "Running", agent_state: dict[str, Any] | None = None, *,
             sidecar: dict[str, Any] | None = None, native_sidecar: dict[str, Any] | None = None,
             owner: str = UID, reason: str | None = None, message: str | None = None, deleting: bool = False,
             unschedulable: str | None = None, statuses: bool = True) -> dict[str, Any]:
    if agent_state is None:
        agent_state = running() if phase == "Running" else waiting("ContainerCreating")
    containers = [{"name": POD_CONTAINER, "image": "img"}]
    status: dict[str, Any] = {"phase": phase}
    if statuses:
        status["containerStatuses"] = [{"name": POD_CONTAINER, "state": agent_state, "restartCount": 0}]
    if sidecar is not None:
        containers.append({"name": "sidecar", "image": "side"})
        status.setdefault("containerStatuses", []).append({"name": "sidecar", "state": sidecar, "restartCount": 0})
    spec: dict[str, Any] = {"containers": containers, "nodeName": "node-1"}
    if native_sidecar is not None:
        spec["initContainers"] = [{"name": "proxy", "image": "proxy", "restartPolicy": "Always"}]
        status["initContainerStatuses"] = [{"name": "proxy", "state": native_sidecar, "restartCount": 0}]
    if reason:
        status["reason"] = reason
    if message:
        status["message"] = message
    if unschedulable is not None:
        del spec["nodeName"]
        status.pop("containerStatuses", None)
        status["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": unschedulable}]
    meta: dict[str, Any] = {"name": "a1", "namespace": "ns", "uid": "pod-uid",
                            "labels": {AGENT_UID_LABEL: owner}}
    if deleting:
        meta["deletionTimestamp"] = api.format_time(NOW)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def pod(*args: Any, **kwargs: Any) -> PodState:
    return PodState.from_body(pod_body(*args, **kwargs))


def seen(pod_state: PodState | None = None, **kwargs: Any) -> Observed:
    return Observed(pod=pod_state, **kwargs)


# ---------------------------------------------------------------- PodState.from_body

def test_pod_state_from_a_running_pod():
    state = pod("Running")
    assert state.uid == "pod-uid" and state.name == "a1" and state.owner_uid == UID and state.node == "node-1"
    assert state.agent_running and state.agent_exit_code is None and state.waiting_reason is None
    assert not state.deleting


def test_pod_state_agent_exit_code_is_the_agent_containers_own():
    state = pod("Running", terminated(3), sidecar=running())
    assert state.agent_exit_code == 3 and not state.agent_running


def test_pod_state_waiting_reason_skips_container_creating():
    assert pod("Pending", waiting("ContainerCreating")).waiting_reason is None
    state = pod("Pending", waiting("ImagePullBackOff", 'Back-off pulling image "img"'))
    assert (state.waiting_reason, state.waiting_message) == ("ImagePullBackOff", 'Back-off pulling image "img"')


def test_pod_state_unschedulable_from_the_pod_scheduled_condition():
    state = pod("Pending", unschedulable="0/3 nodes are available: 3 Insufficient cpu.")
    assert state.waiting_reason == api.REASON_UNSCHEDULABLE
    assert state.waiting_message == "0/3 nodes are available: 3 Insufficient cpu."
    assert state.node == ""


def test_pod_state_of_an_empty_body():
    state = PodState.from_body({})
    assert state == PodState(uid="")


# ---------------------------------------------------------------- a new agent

def test_new_agent_creates_its_children_and_records_pending_once_created():
    d = decide(agent(), seen(), NOW)
    assert d.create_children and d.status is None and not d.cleanup and not d.delete_agent
    assert d.on_created == StatusChange(api.PENDING, api.REASON_CREATED, "The agent's pod was created.",
                                       pod_created=True)
    assert d.requeue_after == pytest.approx(START_DEADLINE - 10)   # look again at the start deadline


def test_new_agent_requeues_at_its_active_deadline_when_that_comes_first():
    d = decide(agent(spec={"activeDeadlineSeconds": 60}), seen(), NOW)
    assert d.create_children and d.requeue_after == pytest.approx(50)


def test_agent_that_reported_before_its_pod_was_created_keeps_its_phase_on_creation():
    d = decide(agent(api.WORKING, pod_name=False), seen(), NOW)
    assert d.create_children and d.on_created is not None
    assert d.on_created.phase == api.WORKING and d.on_created.pod_created


def test_pod_exists_but_status_was_never_written_finishes_the_creation():
    """A crash between creating the pod and recording podName: the children are created again
    (idempotent), then the status is recorded."""
    d = decide(agent(), seen(pod("Pending")), NOW)
    assert d.create_children and d.on_created is not None and d.on_created.pod_created and d.status is None


# ---------------------------------------------------------------- every live phase x every trigger

TRIGGERS = {
    # trigger: (agent kwargs, observed pod, expected phase, expected reason)
    "pod_succeeded": ({}, lambda: pod("Succeeded", terminated(0)), api.COMPLETED, api.REASON_POD_SUCCEEDED),
    "pod_failed": ({}, lambda: pod("Failed", terminated(3)), api.FAILED, api.REASON_POD_FAILED),
    "agent_exited_0_sidecar_runs": ({}, lambda: pod("Running", terminated(0), sidecar=running()),
                                    api.COMPLETED, api.REASON_POD_SUCCEEDED),
    "agent_exited_2_sidecar_runs": ({}, lambda: pod("Running", terminated(2), sidecar=running()),
                                    api.FAILED, api.REASON_POD_FAILED),
    "agent_exited_native_sidecar_runs": ({}, lambda: pod("Running", terminated(0), native_sidecar=running()),
                                         api.COMPLETED, api.REASON_POD_SUCCEEDED),
    "terminate": ({"spec": {"terminate": True}}, lambda: pod("Running"), api.TERMINATED, api.REASON_KILLED),
    "deadline": ({"spec": {"activeDeadlineSeconds": 5}}, lambda: pod("Running"), api.FAILED, api.REASON_DEADLINE),
    "pod_deleted": ({}, lambda: pod("Running", deleting=True), api.ERROR, api.REASON_POD_LOST),
    "pod_gone": ({}, lambda: None, api.ERROR, api.REASON_POD_LOST),
    "evicted": ({}, lambda: pod("Failed", terminated(137), reason="Evicted",
                                message="The node was low on resource: memory."), api.ERROR, api.REASON_POD_LOST),
    "agent_deleted": ({"deleting": True}, lambda: pod("Running"), api.TERMINATED, api.REASON_DELETED),
}


@pytest.mark.parametrize("phase", NON_TERMINAL)
@pytest.mark.parametrize("trigger", sorted(TRIGGERS))
def test_every_trigger_from_every_live_phase(phase, trigger):
    kwargs, make_pod, expected_phase, expected_reason = TRIGGERS[trigger]
    d = decide(agent(phase, **kwargs), seen(make_pod()), NOW)
    assert d.status is not None, d
    assert (d.status.phase, d.status.reason) == (expected_phase, expected_reason)
    assert d.status.message
    # The terminal phase is recorded first; the cleanup is the next sync's (from the recorded status).
    assert not d.create_children and not d.cleanup and not d.delete_agent


@pytest.mark.parametrize("phase", NON_TERMINAL)
def test_agent_deleted_wins_over_terminate(phase):
    d = decide(agent(phase, spec={"terminate": True}, deleting=True), seen(pod("Running")), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.TERMINATED, api.REASON_DELETED)


def test_agent_deleted_before_it_was_ever_synced():
    d = decide(agent(deleting=True), seen(), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.TERMINATED, api.REASON_DELETED)
    assert not d.create_children


def test_exit_code_in_the_message():
    d = decide(agent(api.RUNNING), seen(pod("Failed", terminated(42))), NOW)
    assert d.status is not None and "42" in d.status.message
    d = decide(agent(api.RUNNING), seen(pod("Succeeded", terminated(0))), NOW)
    assert d.status is not None and "code 0" in d.status.message


def test_pod_phase_without_container_statuses():
    d = decide(agent(api.RUNNING), seen(pod("Succeeded", statuses=False)), NOW)
    assert d.status is not None and d.status.phase == api.COMPLETED
    d = decide(agent(api.RUNNING), seen(pod("Failed", statuses=False)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_POD_FAILED)
    assert "unknown" in d.status.message


def test_sidecar_exit_is_not_the_agents_end():
    """A sidecar that exits while the agent container runs changes nothing."""
    d = decide(agent(api.RUNNING), seen(pod("Running", running(), sidecar=terminated(1))), NOW)
    assert d.status is None and not d.cleanup


def test_evicted_message_carries_the_kubelets_reason():
    d = decide(agent(api.RUNNING), seen(pod("Failed", terminated(137), reason="Evicted",
                                            message="The node was low on resource: memory.")), NOW)
    assert d.status is not None and "low on resource: memory" in d.status.message


def test_deadline_not_yet_passed_requeues_at_the_deadline():
    d = decide(agent(api.RUNNING, spec={"activeDeadlineSeconds": 60}, created_ago=20), seen(pod("Running")), NOW)
    assert d.status is None and d.requeue_after == pytest.approx(40)


def test_deadline_message_names_the_limit():
    d = decide(agent(api.RUNNING, spec={"activeDeadlineSeconds": 5}), seen(pod("Running")), NOW)
    assert d.status is not None and "activeDeadlineSeconds=5" in d.status.message


def test_pod_gone_before_the_controller_recorded_it_is_created_again():
    """No podName: the pod was never recorded as created, so its absence is no loss."""
    d = decide(agent(api.PENDING, pod_name=False), seen(), NOW)
    assert d.create_children and d.status is None


def test_running_agent_with_its_running_pod_needs_nothing():
    for phase in (api.RUNNING, api.WORKING, api.BLOCKED):
        d = decide(agent(phase), seen(pod("Running")), NOW)
        assert d == Decision(capture_logs=True), phase     # nothing but reading its logs as they come


# ---------------------------------------------------------------- Pending -> Running, startTime

def test_pending_agent_whose_pod_runs_becomes_running_with_start_time():
    d = decide(agent(api.PENDING), seen(pod("Running")), NOW)
    assert d.status is not None
    assert (d.status.phase, d.status.reason, d.status.start_time) == (api.RUNNING, api.REASON_POD_RUNNING, True)
    assert d.requeue_after is None     # no clock-driven trigger left (started: no start deadline)


def test_pending_to_running_requeues_at_the_active_deadline():
    d = decide(agent(api.PENDING, spec={"activeDeadlineSeconds": 100}), seen(pod("Running")), NOW)
    assert d.status is not None and d.status.phase == api.RUNNING and d.requeue_after == pytest.approx(90)


@pytest.mark.parametrize("phase", [api.RUNNING, api.WORKING, api.BLOCKED])
def test_agent_that_reported_before_its_pod_ran_gets_its_start_time_stamped(phase):
    a = agent(phase, status={"startTime": None, "reason": "Thinking", "message": "step 1"})
    d = decide(a, seen(pod("Running")), NOW)
    assert d.status is not None
    assert (d.status.phase, d.status.reason, d.status.message, d.status.start_time) == (phase, "Thinking", "step 1",
                                                                                        True)


def test_start_time_is_stamped_only_once():
    d = decide(agent(api.WORKING), seen(pod("Running")), NOW)
    assert d.status is None


# ---------------------------------------------------------------- start deadline, waiting reasons

@pytest.mark.parametrize("state,reason,message", [
    (waiting("ImagePullBackOff", 'Back-off pulling image "img"'), "ImagePullBackOff", 'Back-off pulling image "img"'),
    (waiting("ErrImagePull", "pull access denied"), "ErrImagePull", "pull access denied"),
    (waiting("CreateContainerConfigError", 'secret "s" not found'), "CreateContainerConfigError",
     'secret "s" not found'),
])
def test_waiting_pod_shows_why_while_pending(state, reason, message):
    d = decide(agent(api.PENDING, created_ago=30), seen(pod("Pending", state)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason, d.status.message) == (api.PENDING, reason,
                                                                                           message)
    assert d.requeue_after == pytest.approx(START_DEADLINE - 30)
    assert not d.create_children and not d.cleanup


def test_unschedulable_pod_shows_why_while_pending():
    why = "0/3 nodes are available: 3 Insufficient cpu."
    d = decide(agent(api.PENDING), seen(pod("Pending", unschedulable=why)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason, d.status.message) == (
        api.PENDING, api.REASON_UNSCHEDULABLE, why)


def test_waiting_reason_without_message_uses_the_reason():
    d = decide(agent(api.PENDING), seen(pod("Pending", waiting("ImagePullBackOff"))), NOW)
    assert d.status is not None and d.status.message == "ImagePullBackOff"


def test_the_same_waiting_note_is_not_written_twice():
    a = agent(api.PENDING, status={"reason": "ImagePullBackOff", "message": "Back-off"})
    d = decide(a, seen(pod("Pending", waiting("ImagePullBackOff", "Back-off"))), NOW)
    assert d.status is None and d.requeue_after == pytest.approx(START_DEADLINE - 10)


def test_container_creating_is_no_news():
    d = decide(agent(api.PENDING), seen(pod("Pending", waiting("ContainerCreating"))), NOW)
    assert d.status is None and d.requeue_after == pytest.approx(START_DEADLINE - 10)


@pytest.mark.parametrize("state,reason,message", [
    (waiting("ImagePullBackOff", 'Back-off pulling image "img"'), "ImagePullBackOff", 'Back-off pulling image "img"'),
    (waiting("CreateContainerConfigError", 'secret "s" not found'), "CreateContainerConfigError",
     'secret "s" not found'),
    (None, api.REASON_UNSCHEDULABLE, "0/3 nodes are available: 3 Insufficient cpu."),
])
def test_start_deadline_ends_failed_with_the_last_waiting_reason(state, reason, message):
    body = (pod("Pending", unschedulable=message) if state is None else pod("Pending", state))
    d = decide(agent(api.PENDING, created_ago=START_DEADLINE + 1), seen(body), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_START_TIMEOUT)
    assert reason in d.status.message and message in d.status.message
    assert str(START_DEADLINE) in d.status.message
    assert not d.create_children


def test_start_deadline_from_spec():
    a = agent(api.PENDING, spec={"startDeadlineSeconds": 30}, created_ago=31)
    d = decide(a, seen(pod("Pending", waiting("ImagePullBackOff", "x"))), NOW)
    assert d.status is not None and d.status.reason == api.REASON_START_TIMEOUT and "30s" in d.status.message
    d = decide(agent(api.PENDING, spec={"startDeadlineSeconds": 30}, created_ago=29),
               seen(pod("Pending", waiting("ImagePullBackOff", "x"))), NOW)
    assert d.status is not None and d.status.phase == api.PENDING and d.requeue_after == pytest.approx(1)


def test_start_deadline_with_nothing_known_of_why():
    d = decide(agent(api.PENDING, created_ago=START_DEADLINE + 1), seen(pod("Pending")), NOW)
    assert d.status is not None and d.status.reason == api.REASON_START_TIMEOUT
    assert "last:" not in d.status.message


def test_start_deadline_falls_back_to_the_recorded_note():
    """The pod is not visible (never created: no podName), but the status says why it was waiting."""
    a = agent(api.PENDING, pod_name=False, created_ago=START_DEADLINE + 5,
              status={"reason": "ImagePullBackOff", "message": "Back-off pulling"})
    d = decide(a, seen(), NOW)
    assert d.status is not None and d.status.reason == api.REASON_START_TIMEOUT
    assert "ImagePullBackOff" in d.status.message and "Back-off pulling" in d.status.message


@pytest.mark.parametrize("phase", [api.RUNNING, api.WORKING, api.BLOCKED])
def test_a_started_agent_has_no_start_deadline(phase):
    d = decide(agent(phase, created_ago=START_DEADLINE * 10), seen(pod("Running")), NOW)
    assert d.status is None and d.requeue_after is None


def test_an_agent_whose_pod_runs_has_no_start_deadline_even_if_not_yet_recorded():
    d = decide(agent(api.PENDING, created_ago=START_DEADLINE + 1), seen(pod("Running")), NOW)
    assert d.status is not None and d.status.phase == api.RUNNING and d.status.start_time


@pytest.mark.parametrize("code,expected", [(0, (api.COMPLETED, api.REASON_POD_SUCCEEDED)),
                                           (3, (api.FAILED, api.REASON_POD_FAILED))])
def test_a_pod_that_ran_and_exited_is_not_a_start_timeout(code, expected):
    d = decide(agent(api.PENDING, created_ago=START_DEADLINE + 60),
               seen(pod("Succeeded" if code == 0 else "Failed", terminated(code))), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == expected


# ---------------------------------------------------------------- refusals

def test_pod_security_refusal_is_final():
    d = decide(agent(api.PENDING, pod_name=False), seen(refusal=CreateRefusal.of(403, PSA_MESSAGE)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_POD_REJECTED)
    assert PSA_MESSAGE in d.status.message
    assert not d.create_children


@pytest.mark.parametrize("status", [400, 422])
def test_invalid_or_unprocessable_pod_is_rejected(status):
    message = 'Pod "a1" is invalid: spec.containers[0].resources.requests: Invalid value: "2": must be <= limit'
    d = decide(agent(api.PENDING, pod_name=False), seen(refusal=CreateRefusal.of(status, message)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_POD_REJECTED)
    assert message in d.status.message


def test_refusal_before_anything_was_recorded():
    d = decide(agent(), seen(refusal=CreateRefusal.of(422, "denied by webhook")), NOW)
    assert d.status is not None and d.status.reason == api.REASON_POD_REJECTED


def test_create_refusal_classification():
    assert CreateRefusal.of(403, QUOTA_MESSAGE).quota
    assert not CreateRefusal.of(403, PSA_MESSAGE).quota
    assert not CreateRefusal.of(422, "exceeded quota: x").quota       # only a 403 is a quota refusal
    taken = CreateRefusal.of(409, "pods/a1 exists and belongs to another owner", name_taken=True)
    assert taken.name_taken and not taken.quota


def test_quota_refusal_is_not_final_pending_with_backoff():
    d = decide(agent(api.PENDING, pod_name=False), seen(refusal=CreateRefusal.of(403, QUOTA_MESSAGE)), NOW)
    assert d.status is not None
    assert (d.status.phase, d.status.reason, d.status.message) == (api.PENDING, api.REASON_QUOTA_EXCEEDED,
                                                                  QUOTA_MESSAGE)
    assert d.create_children and d.backoff          # try again, and back off if refused again
    assert d.on_created is not None and d.on_created.pod_created
    assert d.requeue_after == pytest.approx(START_DEADLINE - 10)


def test_quota_refusal_waits_for_the_backoff():
    refused = CreateRefusal.of(403, QUOTA_MESSAGE)
    d = decide(agent(api.PENDING, pod_name=False), seen(refusal=refused, retry_in=4.0), NOW)
    assert not d.create_children and d.requeue_after == pytest.approx(4.0)
    assert d.status is not None and d.status.reason == api.REASON_QUOTA_EXCEEDED


def test_quota_backoff_never_outlasts_the_start_deadline():
    refused = CreateRefusal.of(403, QUOTA_MESSAGE)
    d = decide(agent(api.PENDING, pod_name=False, created_ago=START_DEADLINE - 2), seen(refusal=refused,
                                                                                        retry_in=30.0), NOW)
    assert not d.create_children and d.requeue_after == pytest.approx(2.0)


def test_quota_note_not_written_again():
    a = agent(api.PENDING, pod_name=False, status={"reason": api.REASON_QUOTA_EXCEEDED, "message": QUOTA_MESSAGE})
    d = decide(a, seen(refusal=CreateRefusal.of(403, QUOTA_MESSAGE)), NOW)
    assert d.status is None and d.create_children and d.backoff


def test_quota_until_the_start_deadline_then_start_timeout():
    a = agent(api.PENDING, pod_name=False, created_ago=START_DEADLINE + 1,
              status={"reason": api.REASON_QUOTA_EXCEEDED, "message": QUOTA_MESSAGE})
    d = decide(a, seen(refusal=CreateRefusal.of(403, QUOTA_MESSAGE)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_START_TIMEOUT)
    assert api.REASON_QUOTA_EXCEEDED in d.status.message and QUOTA_MESSAGE in d.status.message
    assert not d.create_children


def test_name_taken_by_another_owner_is_pending_with_backoff():
    taken = CreateRefusal.of(409, "pods/a1 exists and belongs to another owner", name_taken=True)
    d = decide(agent(api.PENDING, pod_name=False), seen(refusal=taken), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.PENDING, api.REASON_POD_NAME_TAKEN)
    assert "another owner" in d.status.message
    assert d.create_children and d.backoff


def test_name_taken_until_the_start_deadline():
    taken = CreateRefusal.of(409, "pods/a1 exists and belongs to another owner", name_taken=True)
    d = decide(agent(api.PENDING, pod_name=False, created_ago=START_DEADLINE + 1),
               seen(pod("Running", owner=OTHER_UID), refusal=taken), NOW)
    assert d.status is not None and d.status.reason == api.REASON_START_TIMEOUT
    assert api.REASON_POD_NAME_TAKEN in d.status.message


# ---------------------------------------------------------------- a pod of the same name, another owner

def test_pod_of_another_agent_before_ours_was_created_is_not_ours():
    """The name is held by another agent's pod: not our pod (no Completed from its exit); create, which
    the API refuses with 409 -> PodNameTaken."""
    d = decide(agent(), seen(pod("Succeeded", terminated(0), owner=OTHER_UID)), NOW)
    assert d.status is None and d.create_children


def test_pod_of_another_agent_after_ours_was_created_means_ours_is_lost():
    d = decide(agent(api.RUNNING), seen(pod("Running", owner=OTHER_UID)), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.ERROR, api.REASON_POD_LOST)
    assert "another owner" in d.status.message


# ---------------------------------------------------------------- InvalidSpec (children.pod)

@pytest.mark.parametrize("template,field", [
    ("not-an-object", "podTemplate"),
    ({"spec": {"volumes": "not-a-list"}}, "volumes"),
    ({"spec": {"containers": [{"name": "side"}]}}, "image"),
    ({"spec": {"securityContext": "x"}}, "securityContext"),
])
def test_invalid_pod_template_fails_with_invalid_spec(template, field):
    d = decide(agent(spec={"podTemplate": template}), seen(), NOW)
    assert d.status is not None and (d.status.phase, d.status.reason) == (api.FAILED, api.REASON_INVALID_SPEC)
    assert field in d.status.message
    assert not d.create_children


def test_invalid_spec_wins_over_an_earlier_refusal():
    d = decide(agent(spec={"podTemplate": "x"}), seen(refusal=CreateRefusal.of(403, QUOTA_MESSAGE)), NOW)
    assert d.status is not None and d.status.reason == api.REASON_INVALID_SPEC


# ---------------------------------------------------------------- terminal phases are final

OBSERVATIONS = {
    "pod_running": lambda: seen(pod("Running")),
    "pod_succeeded": lambda: seen(pod("Succeeded", terminated(0))),
    "pod_failed": lambda: seen(pod("Failed", terminated(1))),
    "pod_gone": lambda: seen(),
    "pod_deleting": lambda: seen(pod("Running", deleting=True)),
    "evicted": lambda: seen(pod("Failed", reason="Evicted")),
    "other_owner": lambda: seen(pod("Running", owner=OTHER_UID)),
    "waiting": lambda: seen(pod("Pending", waiting("ImagePullBackOff", "x"))),
    "refused": lambda: seen(refusal=CreateRefusal.of(403, PSA_MESSAGE)),
    "quota": lambda: seen(refusal=CreateRefusal.of(403, QUOTA_MESSAGE)),
    "leftovers": lambda: seen(leftovers=True),
    "retrying": lambda: seen(retry_in=5.0),
}
SPECS = {
    "plain": {},
    "terminate": {"terminate": True},
    "deadline_passed": {"activeDeadlineSeconds": 1},
    "invalid": {"podTemplate": "x"},
    "delay": {"cleanup": {"delaySeconds": 30}},
    "ttl": {"ttlSecondsAfterFinished": 0},
}


@pytest.mark.parametrize("phase", TERMINAL)
@pytest.mark.parametrize("observed", sorted(OBSERVATIONS))
def test_terminal_phase_is_final(phase, observed):
    """Whatever happens to the pod, the spec or the Agent, decide() never records another phase."""
    for spec, deleting, cleanup_state in itertools.product(
            sorted(SPECS), (False, True), (api.CLEANUP_PENDING, api.CLEANUP_RETRYING, api.CLEANUP_SUCCEEDED)):
        a = agent(phase, spec=SPECS[spec], deleting=deleting, created_ago=START_DEADLINE * 2,
                  status={"cleanup": {"state": cleanup_state, "completionTime": ago(1)}})
        d = decide(a, OBSERVATIONS[observed](), NOW)
        assert d.status is None and d.on_created is None and not d.create_children, (spec, deleting, cleanup_state)


# ---------------------------------------------------------------- cleanup: triggers, delay, retry

@pytest.mark.parametrize("phase", TERMINAL)
@pytest.mark.parametrize("state", [None, api.CLEANUP_PENDING, api.CLEANUP_RUNNING, api.CLEANUP_RETRYING])
def test_terminal_agent_not_cleaned_up_is_cleaned_up_with_its_phase_as_trigger(phase, state):
    a = agent(phase, status={"reason": "Whatever", "cleanup": {"state": state} if state else None})
    d = decide(a, seen(), NOW)
    assert d.cleanup and d.cleanup_trigger == phase and d.status is None and not d.delete_agent


def test_deleted_agent_cleans_up_with_trigger_deleted():
    d = decide(agent(api.TERMINATED, status={"reason": api.REASON_DELETED}, deleting=True), seen(), NOW)
    assert d.cleanup and d.cleanup_trigger == api.TRIGGER_DELETED


def test_completed_agent_deleted_before_its_cleanup_keeps_its_trigger():
    d = decide(agent(api.COMPLETED, deleting=True), seen(), NOW)
    assert d.cleanup and d.cleanup_trigger == api.COMPLETED


def test_cleanup_trigger_rules():
    assert api.cleanup_trigger(api.TERMINATED, api.REASON_DELETED, False) == api.TRIGGER_DELETED
    assert api.cleanup_trigger(api.TERMINATED, api.REASON_KILLED, False) == api.TERMINATED
    assert api.cleanup_trigger(api.RUNNING, None, True) == api.TRIGGER_DELETED
    assert api.cleanup_trigger(api.FAILED, api.REASON_DEADLINE, True) == api.FAILED
    assert api.cleanup_trigger(None, None, False) == api.TRIGGER_SWEEP


def test_cleanup_delay_requeues_until_it_passed():
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 10}}, status={"completionTime": ago(4)})
    d = decide(a, seen(), NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(6)
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 10}}, status={"completionTime": ago(10)})
    d = decide(a, seen(), NOW)
    assert d.cleanup and d.cleanup_trigger == api.COMPLETED


def test_cleanup_delay_does_not_hold_a_deleted_agent():
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 100}}, status={"completionTime": ago(1)},
              deleting=True)
    assert decide(a, seen(), NOW).cleanup
    a = agent(api.TERMINATED, spec={"cleanup": {"delaySeconds": 100}},
              status={"completionTime": ago(1), "reason": api.REASON_DELETED})
    assert decide(a, seen(), NOW).cleanup


def test_cleanup_delay_holds_an_agent_that_reported_its_own_end():
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 60}},
              status={"completionTime": None, "cleanup": None, "reason": "Done"})
    d = decide(a, seen(), NOW)
    assert not d.cleanup


def test_failed_attempt_is_not_retried_before_its_backoff():
    d = decide(agent(api.FAILED, status={"cleanup": {"state": api.CLEANUP_RETRYING, "attempts": 2}}),
               seen(retry_in=3.5), NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(3.5)
    d = decide(agent(api.FAILED, status={"cleanup": {"state": api.CLEANUP_RETRYING, "attempts": 2}}),
               seen(retry_in=0.0), NOW)
    assert d.cleanup


def test_deleted_agent_waits_for_the_backoff_too():
    d = decide(agent(api.TERMINATED, status={"reason": api.REASON_DELETED}, deleting=True), seen(retry_in=2.0), NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(2.0)


def test_cleanup_delay_comes_before_the_backoff():
    a = agent(api.COMPLETED, spec={"cleanup": {"delaySeconds": 10}}, status={"completionTime": ago(4)})
    d = decide(a, seen(retry_in=1.0), NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(6)


# ---------------------------------------------------------------- cleaned up: leftovers, TTL

def cleaned(phase: str = api.COMPLETED, done_ago: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    return agent(phase, status={"cleanup": {"state": api.CLEANUP_SUCCEEDED, "verifiedNoLeaks": True,
                                            "completionTime": ago(done_ago)}}, **kwargs)


@pytest.mark.parametrize("phase", TERMINAL)
def test_cleaned_up_agent_needs_nothing(phase):
    assert decide(cleaned(phase), seen(), NOW) == Decision()


def test_leftovers_of_a_cleaned_up_agent_are_cleaned_up_with_trigger_sweep():
    d = decide(cleaned(), seen(leftovers=True), NOW)
    assert d.cleanup and d.cleanup_trigger == api.TRIGGER_SWEEP


def test_leftovers_before_the_first_cleanup_keep_the_phase_trigger():
    d = decide(agent(api.FAILED), seen(leftovers=True), NOW)
    assert d.cleanup and d.cleanup_trigger == api.FAILED


def test_leftovers_wait_for_the_backoff():
    d = decide(cleaned(), seen(leftovers=True, retry_in=5.0), NOW)
    assert not d.cleanup and d.requeue_after == pytest.approx(5.0)


def test_ttl_requeues_then_deletes():
    d = decide(cleaned(done_ago=4, spec={"ttlSecondsAfterFinished": 10}), seen(), NOW)
    assert not d.delete_agent and d.requeue_after == pytest.approx(6)
    d = decide(cleaned(done_ago=10, spec={"ttlSecondsAfterFinished": 10}), seen(), NOW)
    assert d.delete_agent and not d.cleanup and d.status is None


def test_ttl_zero_deletes_at_once():
    d = decide(cleaned(done_ago=0, spec={"ttlSecondsAfterFinished": 0}), seen(), NOW)
    assert d.delete_agent


def test_ttl_counts_from_the_cleanup_not_from_the_end():
    a = cleaned(done_ago=2, spec={"ttlSecondsAfterFinished": 5})
    a["status"]["completionTime"] = ago(1000)
    d = decide(a, seen(), NOW)
    assert not d.delete_agent and d.requeue_after == pytest.approx(3)


def test_no_ttl_while_not_cleaned_up():
    d = decide(agent(api.COMPLETED, spec={"ttlSecondsAfterFinished": 0}), seen(), NOW)
    assert d.cleanup and not d.delete_agent


def test_no_ttl_delete_of_an_agent_being_deleted():
    d = decide(cleaned(done_ago=100, spec={"ttlSecondsAfterFinished": 1}, deleting=True), seen(), NOW)
    assert d == Decision()


def test_leftovers_come_before_the_ttl():
    d = decide(cleaned(done_ago=100, spec={"ttlSecondsAfterFinished": 1}), seen(leftovers=True), NOW)
    assert d.cleanup and not d.delete_agent


def test_decide_does_not_modify_its_inputs():
    import copy
    a = agent(api.PENDING, spec={"podTemplate": {"spec": {"nodeSelector": {"x": "y"}}}})
    before = copy.deepcopy(a)
    decide(a, seen(pod("Running")), NOW)
    assert a == before


def test_a_new_agent_waits_for_its_finalizer_before_any_child_exists():
    """kopf puts the finalizer on a new Agent first; until then nothing is created (a child created
    before the finalizer could outlive an Agent deleted at once)."""
    body = agent(created_ago=4)
    body["metadata"].pop("finalizers")
    assert decide(body, Observed(), NOW) == Decision(requeue_after=6.0)     # look again then
    body["metadata"]["finalizers"] = ["example.com/other"]
    assert decide(body, Observed(), NOW) == Decision(requeue_after=6.0)
    body["metadata"]["finalizers"].append("agentcontroller.dev/cleanup")
    assert decide(body, Observed(), NOW).create_children


def test_a_new_agent_kopf_left_without_our_finalizer_gets_it_from_us():
    """kopf's finalizer patch can fail for good (a 409 it does not retry: found by the chaos run);
    after FINALIZER_GRACE_SECONDS the controller adds the finalizer itself — still before any child."""
    from controller.decide import FINALIZER_GRACE_SECONDS

    body = agent(created_ago=FINALIZER_GRACE_SECONDS)
    body["metadata"]["finalizers"] = ["example.com/other"]
    decision = decide(body, Observed(), NOW)
    assert decision == Decision(add_finalizer=True) and not decision.create_children


def test_wants_capture_only_while_the_agents_pod_runs_and_its_logs_are_kept():
    from controller.decide import Observed, PodState, wants_capture

    running = Observed(pod=PodState(uid="p", phase="Running", agent_running=True))
    agent = {"metadata": {"uid": "u"}, "spec": {"image": "a"}, "status": {"phase": "Working"}}
    assert wants_capture(agent, running)
    assert not wants_capture({**agent, "status": {"phase": "Completed"}}, running)
    assert not wants_capture({**agent, "spec": {"image": "a", "cleanup": {"logs": "Delete"}}}, running)
    assert not wants_capture(agent, Observed(pod=PodState(uid="p", phase="Pending")))
    assert not wants_capture(agent, Observed())
