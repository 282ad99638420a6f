"""The Agent API: types, phase rules and conditions. Pure: no I/O, no clock (callers pass `now`)."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

PENDING, RUNNING, WORKING, BLOCKED = "Pending", "Running", "Working", "Blocked"
COMPLETED, FAILED, ERROR, TERMINATED = "Completed", "Failed", "Error", "Terminated"

PHASES = (PENDING, RUNNING, WORKING, BLOCKED, COMPLETED, FAILED, ERROR, TERMINATED)
TERMINAL_PHASES = frozenset({COMPLETED, FAILED, ERROR, TERMINATED})
ACTIVE_PHASES = frozenset({RUNNING, WORKING, BLOCKED})      # the agent is up (condition Ready)

# Reasons the controller sets.
REASON_CREATED = "Created"
REASON_POD_RUNNING = "PodRunning"
REASON_POD_SUCCEEDED = "PodSucceeded"
REASON_POD_FAILED = "PodFailed"
REASON_POD_LOST = "PodLost"
REASON_DEADLINE = "DeadlineExceeded"
REASON_KILLED = "Killed"
REASON_DELETED = "Deleted"
REASON_INVALID_SPEC = "InvalidSpec"
REASON_POD_REJECTED = "PodRejected"
REASON_QUOTA_EXCEEDED = "QuotaExceeded"
REASON_START_TIMEOUT = "StartTimeout"
REASON_POD_NAME_TAKEN = "PodNameTaken"
REASON_UNSCHEDULABLE = "Unschedulable"

# Cleanup states and triggers.
CLEANUP_PENDING, CLEANUP_RUNNING, CLEANUP_RETRYING, CLEANUP_SUCCEEDED = "Pending", "Running", "Retrying", "Succeeded"
TRIGGER_DELETED, TRIGGER_SWEEP = "Deleted", "Sweep"
TRIGGERS = (COMPLETED, FAILED, ERROR, TERMINATED, TRIGGER_DELETED, TRIGGER_SWEEP)

LOGS_ARCHIVE = "Archive"
MAX_RECORDED_ERRORS = 10
FORCE_DELETE_AFTER_GRACE_SECONDS = 30.0     # SPEC §4: force-delete the pod grace + 30 s after asking

# The spec's defaults, by field path. The CRD declares the same defaults (the API server applies
# them); tests/unit/test_api.py checks that the two agree. The controller applies them too, for
# objects written before a default existed.
DEFAULTS: dict[str, Any] = {
    "terminate": False,
    "startDeadlineSeconds": 600,
    "cleanup.logs": LOGS_ARCHIVE,
    "cleanup.gracePeriodSeconds": 5,
    "cleanup.delaySeconds": 0,
    "cleanup.logTimeoutSeconds": 300,
}
DEFAULT_GRACE_SECONDS: int = DEFAULTS["cleanup.gracePeriodSeconds"]


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL_PHASES


def parse_time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def format_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CleanupSpec:
    logs: str = DEFAULTS["cleanup.logs"]
    grace_period_seconds: int = DEFAULTS["cleanup.gracePeriodSeconds"]
    delay_seconds: int = DEFAULTS["cleanup.delaySeconds"]
    log_timeout_seconds: int = DEFAULTS["cleanup.logTimeoutSeconds"]


@dataclass(frozen=True)
class AgentSpec:
    """The parts of `spec` the controller's decisions depend on (the rest goes into the pod as-is)."""

    image: str
    terminate: bool = DEFAULTS["terminate"]
    active_deadline_seconds: int | None = None
    start_deadline_seconds: int = DEFAULTS["startDeadlineSeconds"]
    ttl_seconds_after_finished: int | None = None
    prompt: str | None = None
    cleanup: CleanupSpec = field(default_factory=CleanupSpec)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> AgentSpec:
        cleanup = spec.get("cleanup") or {}

        def num(source: Mapping[str, Any], key: str, default: int) -> int:
            value = source.get(key)
            return default if value is None else int(value)

        return cls(
            image=str(spec.get("image") or ""),
            terminate=bool(spec.get("terminate", DEFAULTS["terminate"])),
            active_deadline_seconds=_opt_int(spec.get("activeDeadlineSeconds")),
            start_deadline_seconds=num(spec, "startDeadlineSeconds", DEFAULTS["startDeadlineSeconds"]),
            ttl_seconds_after_finished=_opt_int(spec.get("ttlSecondsAfterFinished")),
            prompt=spec.get("prompt"),
            cleanup=CleanupSpec(
                logs=str(cleanup.get("logs") or DEFAULTS["cleanup.logs"]),
                grace_period_seconds=num(cleanup, "gracePeriodSeconds", DEFAULTS["cleanup.gracePeriodSeconds"]),
                delay_seconds=num(cleanup, "delaySeconds", DEFAULTS["cleanup.delaySeconds"]),
                log_timeout_seconds=num(cleanup, "logTimeoutSeconds", DEFAULTS["cleanup.logTimeoutSeconds"]),
            ),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def cleanup_trigger(phase: str | None, reason: str | None, deleting: bool) -> str:
    """Which trigger a cleanup of an agent in this state records."""
    if reason == REASON_DELETED or (deleting and not is_terminal(phase)):
        return TRIGGER_DELETED
    if is_terminal(phase):
        return str(phase)
    return TRIGGER_SWEEP


# ---------------------------------------------------------------- conditions

# The reasons the controller writes together with a phase other than their own: a reason left over
# from an earlier phase (the agent reported `Completed` without a reason of its own, after the
# controller had written `PodRunning`) does not describe the new phase.
_REASON_PHASES = {
    REASON_CREATED: PENDING, REASON_QUOTA_EXCEEDED: PENDING, REASON_POD_NAME_TAKEN: PENDING,
    REASON_UNSCHEDULABLE: PENDING, REASON_POD_RUNNING: RUNNING,
}


def phase_reason(phase: str | None, reason: str | None) -> str:
    """The reason that goes with `phase`: `reason` unless it is a controller reason of another phase."""
    phase = phase or PENDING
    if not reason or _REASON_PHASES.get(reason, phase) != phase:
        return phase
    return reason


CONDITION_READY, CONDITION_FINISHED, CONDITION_CLEANED_UP = "Ready", "Finished", "CleanedUp"


def conditions_for(
    phase: str | None,
    reason: str | None,
    cleanup_state: str | None,
    previous: list[Mapping[str, Any]] | None,
    now: datetime.datetime,
    message: str = "",
) -> list[dict[str, Any]]:
    """The standard conditions derived from phase and cleanup state.

    `lastTransitionTime` only moves when a condition's status changes.
    """
    terminal = is_terminal(phase)
    why = phase_reason(phase, reason)
    ready = "True" if phase in ACTIVE_PHASES else "False"
    finished = "True" if terminal else "False"
    cleaned = "True" if cleanup_state == CLEANUP_SUCCEEDED else "False"
    desired = [
        (CONDITION_READY, ready, why, "" if terminal or ready == "True" else message),
        (CONDITION_FINISHED, finished, why if terminal else "NotFinished", message if terminal else ""),
        (CONDITION_CLEANED_UP, cleaned, cleanup_state or "NotStarted", ""),
    ]
    old = {c.get("type"): c for c in (previous or [])}
    result = []
    for ctype, status, why, msg in desired:
        before = old.get(ctype)
        ltt = before.get("lastTransitionTime") if before and before.get("status") == status else None
        result.append({
            "type": ctype,
            "status": status,
            "reason": _camel(why),
            "message": msg[:1024],
            "lastTransitionTime": ltt or format_time(now),
        })
    return result


def _camel(text: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in text.replace("-", " ").split()) or "Unknown"
