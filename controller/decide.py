"""THE decision. One pure function looks at an Agent, at what exists of its pod, and at the clock,
and says what happens next: the phase to record, whether to create children, whether to clean up,
whether to delete the Agent (TTL), and when to look again.

Handlers, the pod watcher, timers and the sweep only gather these inputs and execute the result.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api, children
from .names import AGENT_UID_LABEL, label_value


@dataclass(frozen=True)
class PodState:
    """What the controller sees of an agent's pod."""

    uid: str
    phase: str | None = None          # Pending, Running, Succeeded, Failed, Unknown
    reason: str | None = None         # e.g. Evicted
    message: str | None = None
    deleting: bool = False
    exit_code: int | None = None
    owner_uid: str | None = None      # the agent-uid label

    @classmethod
    def from_body(cls, pod: Mapping[str, Any]) -> PodState:
        meta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        exit_code = None
        for cs in status.get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term is not None and (exit_code is None or term.get("exitCode", 0) != 0):
                exit_code = term.get("exitCode")
        return cls(
            uid=meta.get("uid", ""),
            phase=status.get("phase"),
            reason=status.get("reason"),
            message=status.get("message"),
            deleting=meta.get("deletionTimestamp") is not None,
            exit_code=exit_code,
            owner_uid=(meta.get("labels") or {}).get(AGENT_UID_LABEL),
        )


@dataclass(frozen=True)
class PhaseChange:
    phase: str
    reason: str
    message: str
    start_time: bool = False   # stamp status.startTime


@dataclass(frozen=True)
class Decision:
    phase: PhaseChange | None = None
    create_children: bool = False
    cleanup: bool = False
    delete_agent: bool = False
    requeue_after: float | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def _age(agent: Mapping[str, Any], now: datetime.datetime) -> float | None:
    created = api.parse_time((agent.get("metadata") or {}).get("creationTimestamp"))
    return None if created is None else (now - created).total_seconds()


def decide(
    agent: Mapping[str, Any],
    pod: PodState | None,
    now: datetime.datetime,
    pod_create_error: str | None = None,
) -> Decision:
    """Next step for one Agent. `pod` is None when no pod of that name exists."""
    meta = agent.get("metadata") or {}
    status = agent.get("status") or {}
    spec = api.AgentSpec.from_dict(agent.get("spec") or {})
    phase = status.get("phase")
    deleting = meta.get("deletionTimestamp") is not None

    if api.is_terminal(phase):
        return _decide_terminal(agent, spec, now, deleting)

    # ---- not terminal: the first trigger that applies wins.
    if deleting:
        return Decision(phase=PhaseChange(api.TERMINATED, api.REASON_DELETED, "The Agent was deleted."))
    if spec.terminate:
        return Decision(phase=PhaseChange(api.TERMINATED, api.REASON_KILLED, "spec.terminate was set."))

    requeue = None
    if spec.active_deadline_seconds is not None:
        age = _age(agent, now)
        if age is not None:
            remaining = spec.active_deadline_seconds - age
            if remaining <= 0:
                return Decision(phase=PhaseChange(
                    api.FAILED, api.REASON_DEADLINE,
                    f"The agent ran longer than activeDeadlineSeconds={spec.active_deadline_seconds}."))
            requeue = remaining

    if pod_create_error is not None:
        return Decision(phase=PhaseChange(api.FAILED, api.REASON_INVALID_SPEC, pod_create_error))

    uid_label = label_value(meta.get("uid", ""))
    pod_was_created = bool(status.get("podName"))
    if pod is None:
        if pod_was_created:
            return Decision(phase=PhaseChange(api.ERROR, api.REASON_POD_LOST,
                                              "The agent's pod disappeared while the agent was running."))
        try:
            children.pod(agent)
        except children.InvalidSpec as exc:
            return Decision(phase=PhaseChange(api.FAILED, api.REASON_INVALID_SPEC, str(exc)))
        change = None if phase else PhaseChange(api.PENDING, api.REASON_CREATED, "Creating the agent's pod.")
        return Decision(phase=change, create_children=True, requeue_after=requeue)

    if pod.owner_uid is not None and pod.owner_uid != uid_label:
        # A pod of the same name that belongs to an earlier Agent is still going away.
        if pod_was_created:
            return Decision(phase=PhaseChange(api.ERROR, api.REASON_POD_LOST,
                                              "The agent's pod was replaced by a pod of another owner."))
        return Decision(requeue_after=1.0, notes=("pod name held by another owner",))

    if pod.reason == "Evicted":
        return Decision(phase=PhaseChange(api.ERROR, api.REASON_POD_LOST,
                                          f"The agent's pod was evicted: {pod.message or ''}".strip()))
    if pod.deleting:
        return Decision(phase=PhaseChange(api.ERROR, api.REASON_POD_LOST,
                                          "The agent's pod was deleted while the agent was running."))
    if pod.phase == "Succeeded":
        return Decision(phase=PhaseChange(api.COMPLETED, api.REASON_POD_SUCCEEDED,
                                          "The agent's process exited with code 0."))
    if pod.phase == "Failed":
        code = "unknown" if pod.exit_code is None else str(pod.exit_code)
        return Decision(phase=PhaseChange(api.FAILED, api.REASON_POD_FAILED,
                                          f"The agent's process exited with code {code}."))
    if pod.phase == "Running" and phase in (None, api.PENDING):
        return Decision(phase=PhaseChange(api.RUNNING, api.REASON_POD_RUNNING, "The agent's pod is running.",
                                          start_time=True), requeue_after=requeue)
    if not phase:   # the pod exists but the status was never written (a crash in between): finish the job
        return Decision(phase=PhaseChange(api.PENDING, api.REASON_CREATED, "Creating the agent's pod."),
                        create_children=True, requeue_after=requeue)
    return Decision(requeue_after=requeue)


def needs_pod(agent: Mapping[str, Any]) -> bool:
    """Does the next step depend on the agent's pod? Not once the phase is terminal: it is final, and
    the cleanup finds the pods itself (so the caller need not read the pod)."""
    return not api.is_terminal((agent.get("status") or {}).get("phase"))


def next_wakeup(agent: Mapping[str, Any], now: datetime.datetime) -> float | None:
    """Seconds until a clock-driven trigger is due for this Agent (0 = now), or None if none is
    pending: the deadline of a running agent, cleanup.delaySeconds, ttlSecondsAfterFinished."""
    meta = agent.get("metadata") or {}
    status = agent.get("status") or {}
    spec = api.AgentSpec.from_dict(agent.get("spec") or {})
    phase = status.get("phase")
    if meta.get("deletionTimestamp") is not None:
        return None
    if not api.is_terminal(phase):
        if spec.active_deadline_seconds is None or spec.terminate:
            return None
        age = _age(agent, now)
        return None if age is None else max(0.0, spec.active_deadline_seconds - age)
    cleanup = status.get("cleanup") or {}
    if cleanup.get("state") != api.CLEANUP_SUCCEEDED:
        finished = api.parse_time(status.get("completionTime"))
        if spec.cleanup.delay_seconds <= 0 or finished is None or status.get("reason") == api.REASON_DELETED:
            return None
        return max(0.0, spec.cleanup.delay_seconds - (now - finished).total_seconds())
    done = api.parse_time(cleanup.get("completionTime"))
    if spec.ttl_seconds_after_finished is None or done is None:
        return None
    return max(0.0, spec.ttl_seconds_after_finished - (now - done).total_seconds())


def _decide_terminal(agent: Mapping[str, Any], spec: api.AgentSpec, now: datetime.datetime,
                     deleting: bool) -> Decision:
    status = agent.get("status") or {}
    cleanup = status.get("cleanup") or {}
    if cleanup.get("state") != api.CLEANUP_SUCCEEDED:
        trigger = api.cleanup_trigger(status.get("phase"), status.get("reason"), deleting)
        if spec.cleanup.delay_seconds > 0 and not deleting and trigger != api.TRIGGER_DELETED:
            finished = api.parse_time(status.get("completionTime"))
            if finished is not None:
                remaining = spec.cleanup.delay_seconds - (now - finished).total_seconds()
                if remaining > 0:
                    return Decision(requeue_after=remaining, notes=("cleanup.delaySeconds",))
        return Decision(cleanup=True)
    if spec.ttl_seconds_after_finished is not None and not deleting:
        done = api.parse_time(cleanup.get("completionTime"))
        if done is not None:
            remaining = spec.ttl_seconds_after_finished - (now - done).total_seconds()
            if remaining <= 0:
                return Decision(delete_agent=True)
            return Decision(requeue_after=remaining, notes=("ttlSecondsAfterFinished",))
    return Decision()
