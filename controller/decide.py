"""THE decision. One pure function looks at an Agent, at what the controller observed of its world
(its pod, a refused pod creation, leftovers the sweep found) and at the clock, and says what happens
next: the status to record, whether to create the children, whether to clean up, whether to delete
the Agent (TTL), and when to look again.

Everything else gathers these inputs (`sync.observe`) or carries the result out (`sync.act`).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import FINALIZER, api, children
from .names import AGENT_UID_LABEL, POD_CONTAINER, label_value

# Waiting reasons of a container that will not start by itself (shown in the status while the
# agent is Pending, and the reason of a StartTimeout).
CONTAINER_WAITING_ERRORS = frozenset({
    "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull", "CreateContainerConfigError",
    "CreateContainerError", "RunContainerError", "CrashLoopBackOff", "PreCreateHookError", "PreStartHookError",
})


# Why a kubelet or the control plane ended a pod that the agent did not end: the pod is lost.
POD_LOST_REASONS = {
    "Evicted": "evicted",
    "Terminated": "terminated by a node shutdown",     # graceful node shutdown (kubelet)
    "Shutdown": "terminated by a node shutdown",
    "NodeShutdown": "terminated by a node shutdown",
    "NodeLost": "lost with its node",
    "UnexpectedAdmissionError": "rejected by its node",
}


@dataclass(frozen=True, slots=True)
class PodState:
    """What the controller sees of an agent's pod (pure data, from a pod body)."""

    uid: str
    name: str = ""
    phase: str | None = None          # Pending, Running, Succeeded, Failed, Unknown
    reason: str | None = None         # e.g. Evicted
    message: str | None = None
    deleting: bool = False
    owner_uid: str | None = None      # the agent-uid label
    node: str = ""
    agent_exit_code: int | None = None   # the agent container's exit code, once it terminated
    agent_running: bool = False          # the agent container is running
    waiting_reason: str | None = None    # why a container does not start (ImagePullBackOff, Unschedulable, ...)
    waiting_message: str | None = None
    started_at: str | None = None        # when the agent container started (running or since terminated)
    finished_at: str | None = None       # when the agent container terminated

    @classmethod
    def from_body(cls, pod: Mapping[str, Any]) -> PodState:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        agent_exit: int | None = None
        agent_running = False
        started_at: str | None = None
        finished_at: str | None = None
        waiting: tuple[str | None, str | None] = (None, None)
        statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
        for cs in statuses:
            state = cs.get("state") or {}
            if cs.get("name") == POD_CONTAINER:
                if "terminated" in state:
                    agent_exit = int((state["terminated"] or {}).get("exitCode") or 0)
                agent_running = "running" in state
                started_at = (state.get("running") or state.get("terminated") or {}).get("startedAt") or None
                finished_at = (state.get("terminated") or {}).get("finishedAt") or None
            wait = state.get("waiting")
            if wait and wait.get("reason") and wait.get("reason") != "ContainerCreating" and waiting[0] is None:
                waiting = (str(wait.get("reason")), str(wait.get("message") or "") or None)
        if waiting[0] is None:
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    waiting = (str(cond.get("reason") or api.REASON_UNSCHEDULABLE), cond.get("message"))
        return cls(
            uid=str(meta.get("uid", "")),
            name=str(meta.get("name", "")),
            phase=status.get("phase"),
            reason=status.get("reason"),
            message=status.get("message"),
            deleting=meta.get("deletionTimestamp") is not None,
            owner_uid=(meta.get("labels") or {}).get(AGENT_UID_LABEL),
            node=str(spec.get("nodeName") or ""),
            agent_exit_code=agent_exit,
            agent_running=agent_running,
            waiting_reason=waiting[0],
            waiting_message=waiting[1],
            started_at=started_at,
            finished_at=finished_at,
        )


@dataclass(frozen=True)
class CreateRefusal:
    """The API refused to create the agent's pod (or a child it needs)."""

    status: int        # 403, 422, 400, ... (409: the name is held by an object of another owner)
    message: str
    quota: bool = False         # a ResourceQuota refusal: not final, retried until the start deadline
    name_taken: bool = False    # 409: an object of another owner holds the name

    @property
    def reason(self) -> str:
        """The Agent's reason for this refusal (its status and its Warning Event)."""
        return (api.REASON_QUOTA_EXCEEDED if self.quota else
                api.REASON_POD_NAME_TAKEN if self.name_taken else api.REASON_POD_REJECTED)

    @classmethod
    def of(cls, status: int, message: str, name_taken: bool = False) -> CreateRefusal:
        return cls(status, message, quota=status == 403 and "exceeded quota" in message, name_taken=name_taken)


@dataclass(frozen=True)
class Observed:
    """What `sync` saw of the Agent's world, besides the Agent itself."""

    pod: PodState | None = None              # the pod of the agent's pod name, if one exists
    refusal: CreateRefusal | None = None     # the last refused creation of a child, if any
    leftovers: bool = False                  # the sweep found children of this terminal Agent
    pod_security: str = "restricted"         # the controller's --pod-security level
    retry_in: float = 0.0                    # seconds until a failed attempt may be tried again


@dataclass(frozen=True)
class StatusChange:
    """The status fields to record (merge-patched; the controller-owned ones derived by `sync.act`)."""

    phase: str
    reason: str
    message: str
    start_time: bool = False      # stamp status.startTime (the agent is up)
    pod_created: bool = False     # status.podName: the children exist now


@dataclass(frozen=True)
class Decision:
    status: StatusChange | None = None
    create_children: bool = False
    on_created: StatusChange | None = None     # the status to record once the children were created
    cleanup: bool = False
    cleanup_trigger: str | None = None
    delete_agent: bool = False
    requeue_after: float | None = None     # look again then (the earliest clock-driven trigger)
    backoff: bool = False                  # a retried attempt: if it fails again, back off longer
    capture_logs: bool = False             # read the pod's logs now, while it runs (wants_capture)
    add_finalizer: bool = False            # kopf did not put our finalizer on a new Agent in time: we do


FINALIZER_GRACE_SECONDS = 10.0


def _age(agent: Mapping[str, Any], now: datetime.datetime) -> float | None:
    created = api.parse_time((agent.get("metadata") or {}).get("creationTimestamp"))
    return None if created is None else (now - created).total_seconds()


def _earliest(*delays: float | None) -> float | None:
    due = [d for d in delays if d is not None]
    return max(0.0, min(due)) if due else None


def decide(agent: Mapping[str, Any], seen: Observed, now: datetime.datetime) -> Decision:
    """Next step for one Agent (and whether its logs are to be read while it runs)."""
    decision = _next_step(agent, seen, now)
    return dataclasses.replace(decision, capture_logs=True) if wants_capture(agent, seen) else decision


def _next_step(agent: Mapping[str, Any], seen: Observed, now: datetime.datetime) -> Decision:
    meta = agent.get("metadata") or {}
    status = agent.get("status") or {}
    spec = api.AgentSpec.from_dict(agent.get("spec") or {})
    phase = status.get("phase")
    deleting = meta.get("deletionTimestamp") is not None

    if api.is_terminal(phase):
        return _decide_terminal(agent, spec, seen, now, deleting)

    # ---- not terminal: the first trigger that applies wins.
    if phase in (None, api.PENDING) and not status.get("podName") and not deleting \
            and FINALIZER not in (meta.get("finalizers") or ()):
        # A new Agent: kopf puts our finalizer on it first (its own watch event brings the Agent back),
        # so that no child exists before the finalizer that guarantees their cleanup. Should kopf's
        # patch fail for good (a 409 it does not retry), the Agent would wait forever: after
        # FINALIZER_GRACE_SECONDS the controller adds the finalizer itself.
        age = _age(agent, now)
        if age is not None and age < FINALIZER_GRACE_SECONDS:
            return Decision(requeue_after=FINALIZER_GRACE_SECONDS - age)
        return Decision(add_finalizer=True)
    if deleting:
        return Decision(status=StatusChange(api.TERMINATED, api.REASON_DELETED, "The Agent was deleted."))
    if spec.terminate:
        return Decision(status=StatusChange(api.TERMINATED, api.REASON_KILLED, "spec.terminate was set."))

    pod = seen.pod
    uid_label = label_value(meta.get("uid", ""))
    if pod is not None and pod.owner_uid != uid_label:
        if status.get("podName"):
            return Decision(status=StatusChange(api.ERROR, api.REASON_POD_LOST,
                                                "The agent's pod was replaced by a pod of another owner."))
        pod = None   # the name is held by another pod: like a refused creation (below)

    age = _age(agent, now)
    deadline_in = None
    if spec.active_deadline_seconds is not None and age is not None:
        deadline_in = spec.active_deadline_seconds - age
        created = api.parse_time(meta.get("creationTimestamp"))
        exited = api.parse_time(pod.finished_at) if pod is not None and pod.agent_exit_code is not None else None
        exited_first = exited is not None and created is not None and \
            (exited - created).total_seconds() <= spec.active_deadline_seconds
        if deadline_in <= 0 and not exited_first:    # (an exit seen late still came first)
            return Decision(status=StatusChange(
                api.FAILED, api.REASON_DEADLINE,
                f"The agent ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}."))

    started = bool(status.get("startTime")) or phase in api.ACTIVE_PHASES or (
        pod is not None and (pod.agent_running or pod.agent_exit_code is not None
                             or pod.phase in ("Running", "Succeeded", "Failed")))
    start_in = None
    if not started and age is not None:
        start_in = spec.start_deadline_seconds - age
        if start_in <= 0:
            why = _waiting(pod, seen.refusal, status)
            return Decision(status=StatusChange(
                api.FAILED, api.REASON_START_TIMEOUT,
                f"The agent's pod was not running {spec.start_deadline_seconds}s after the Agent was created"
                + (f" (last: {why[0]}: {why[1]})" if why[0] else "") + "."))
    clock = _earliest(deadline_in, start_in)

    if pod is None:
        if status.get("podName"):
            return Decision(status=StatusChange(api.ERROR, api.REASON_POD_LOST,
                                                "The agent's pod disappeared while the agent was running."))
        try:
            children.pod(agent, pod_security=seen.pod_security)
        except children.InvalidSpec as exc:
            return Decision(status=StatusChange(api.FAILED, api.REASON_INVALID_SPEC, str(exc)))
        except RecursionError:
            return Decision(status=StatusChange(api.FAILED, api.REASON_INVALID_SPEC,
                                                "spec.podTemplate is nested too deeply"))
        refusal = seen.refusal
        if refusal is not None and not refusal.quota and not refusal.name_taken and refusal.status in (400, 403, 422):
            return Decision(status=StatusChange(api.FAILED, api.REASON_POD_REJECTED,
                                                f"The API refused the agent's pod: {refusal.message}"))
        if refusal is not None and (refusal.quota or refusal.name_taken):
            note = _note(status, refusal.reason, refusal.message)
            if seen.retry_in > 0:
                return Decision(status=note, requeue_after=_earliest(seen.retry_in, clock))
            return Decision(status=note, create_children=True, on_created=_created(phase), backoff=True,
                            requeue_after=clock)
        return Decision(create_children=True, on_created=_created(phase), requeue_after=clock)

    # The agent's pod exists.
    if pod.reason in POD_LOST_REASONS:
        return Decision(status=StatusChange(api.ERROR, api.REASON_POD_LOST,
                                            f"The agent's pod was {POD_LOST_REASONS[pod.reason]}: "
                                            f"{pod.message or ''}".strip().rstrip(":")))
    if pod.deleting:
        return Decision(status=StatusChange(api.ERROR, api.REASON_POD_LOST,
                                            "The agent's pod was deleted while the agent was running."))
    # The agent container's end is the agent's end (sidecars are stopped by the teardown).
    exit_code = pod.agent_exit_code
    if exit_code is None and pod.phase in ("Succeeded", "Failed"):
        exit_code = 0 if pod.phase == "Succeeded" else -1
    if exit_code == 0:
        return Decision(status=StatusChange(api.COMPLETED, api.REASON_POD_SUCCEEDED,
                                            "The agent's process exited with code 0."))
    if exit_code is not None:
        code = "unknown" if exit_code < 0 else str(exit_code)
        return Decision(status=StatusChange(api.FAILED, api.REASON_POD_FAILED,
                                            f"The agent's process exited with code {code}."))
    if not status.get("podName") or not phase:
        # The pod exists but the status was never written (a crash in between): finish the creation.
        return Decision(create_children=True, on_created=_created(phase), requeue_after=clock)
    if pod.agent_running or pod.phase == "Running":
        if phase == api.PENDING:
            return Decision(status=StatusChange(api.RUNNING, api.REASON_POD_RUNNING, "The agent's pod is running.",
                                                start_time=True), requeue_after=deadline_in)
        reported = str(status.get("reason") or "")
        fitting = api.phase_reason(phase, reported) if reported else ""
        if not status.get("startTime") or fitting != reported:
            # The agent reported before the controller saw its pod running (stamp the start all the
            # same), or without a reason of its own (the controller's last one describes another phase).
            return Decision(status=StatusChange(phase, fitting or phase, str(status.get("message") or ""),
                                                start_time=not status.get("startTime")),
                            requeue_after=deadline_in)
        return Decision(requeue_after=deadline_in)
    if phase == api.PENDING and pod.waiting_reason:
        reason = pod.waiting_reason
        return Decision(status=_note(status, reason, pod.waiting_message or reason), requeue_after=clock)
    return Decision(requeue_after=clock)


def _created(phase: str | None) -> StatusChange:
    """The status to record once the children are created (podName with it)."""
    return StatusChange(phase or api.PENDING, api.REASON_CREATED, "The agent's pod was created.", pod_created=True)


def _note(status: Mapping[str, Any], reason: str, message: str) -> StatusChange | None:
    """Pending, with why: only if that is news (the same note is not written again)."""
    if status.get("phase") == api.PENDING and status.get("reason") == reason and status.get("message") == message:
        return None
    return StatusChange(api.PENDING, reason, message)


def _waiting(pod: PodState | None, refusal: CreateRefusal | None, status: Mapping[str, Any]) -> tuple[str, str]:
    if pod is not None and pod.waiting_reason:
        return pod.waiting_reason, pod.waiting_message or ""
    if refusal is not None:
        return refusal.reason, refusal.message
    reason = status.get("reason")
    if reason and reason != api.REASON_CREATED:
        return str(reason), str(status.get("message") or "")
    return "", ""


def _decide_terminal(agent: Mapping[str, Any], spec: api.AgentSpec, seen: Observed, now: datetime.datetime,
                     deleting: bool) -> Decision:
    status = agent.get("status") or {}
    cleanup = status.get("cleanup") or {}
    if cleanup.get("state") != api.CLEANUP_SUCCEEDED:
        trigger = api.cleanup_trigger(status.get("phase"), status.get("reason"), deleting)
        if spec.cleanup.delay_seconds > 0 and not deleting and trigger != api.TRIGGER_DELETED:
            finished = api.parse_time(status.get("completionTime"))
            if finished is None:
                # The agent reported its end itself: record when, so that the delay counts from it.
                return Decision(status=StatusChange(str(status.get("phase")), str(status.get("reason") or ""),
                                                    str(status.get("message") or "")))
            else:
                remaining = spec.cleanup.delay_seconds - (now - finished).total_seconds()
                if remaining > 0:
                    return Decision(requeue_after=remaining)
        if seen.retry_in > 0:
            return Decision(requeue_after=seen.retry_in)      # the last attempt failed: not yet
        return Decision(cleanup=True, cleanup_trigger=trigger)
    if seen.leftovers:
        # Cleaned up, and yet the sweep found children (re-created by hand, a missed delete): again.
        if seen.retry_in > 0:
            return Decision(requeue_after=seen.retry_in)
        return Decision(cleanup=True, cleanup_trigger=api.TRIGGER_SWEEP)
    if spec.ttl_seconds_after_finished is not None and not deleting:
        done = api.parse_time(cleanup.get("completionTime"))
        if done is not None:
            remaining = spec.ttl_seconds_after_finished - (now - done).total_seconds()
            if remaining <= 0:
                return Decision(delete_agent=True)
            return Decision(requeue_after=remaining)
    return Decision()


def wants_capture(agent: Mapping[str, Any], seen: Observed) -> bool:
    """Should the agent's logs be read now, while it runs (logs.start_capture)? Its pod runs, it
    has not ended, and its logs are to be kept."""
    status = agent.get("status") or {}
    if api.is_terminal(status.get("phase")) or (agent.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if api.AgentSpec.from_dict(agent.get("spec") or {}).cleanup.logs != api.LOGS_ARCHIVE:
        return False
    pod = seen.pod
    return pod is not None and not pod.deleting and (pod.agent_running or pod.phase == "Running")
