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
AGENT_REPORTABLE_PHASES = (RUNNING, WORKING, BLOCKED, COMPLETED, FAILED, ERROR)

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

# Cleanup states and triggers.
CLEANUP_PENDING, CLEANUP_RUNNING, CLEANUP_RETRYING, CLEANUP_SUCCEEDED = "Pending", "Running", "Retrying", "Succeeded"
TRIGGER_DELETED, TRIGGER_SWEEP = "Deleted", "Sweep"
TRIGGERS = (COMPLETED, FAILED, ERROR, TERMINATED, TRIGGER_DELETED, TRIGGER_SWEEP)

LOGS_ARCHIVE, LOGS_DELETE = "Archive", "Delete"
DEFAULT_GRACE_SECONDS = 5
FORCE_DELETE_AFTER_GRACE_SECONDS = 30
MAX_RECORDED_ERRORS = 10
BACKOFF_CAP_SECONDS = 300.0


def is_terminal(phase: str | None) -> bool:
    return phase in TERMINAL_PHASES


def backoff_seconds(attempt: int, base: float = 1.0, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Exponential backoff for cleanup retries: 1, 2, 4, ... capped at 5 minutes."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


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
    logs: str = LOGS_ARCHIVE
    grace_period_seconds: int = DEFAULT_GRACE_SECONDS
    delay_seconds: int = 0


@dataclass(frozen=True)
class AgentSpec:
    """The parts of `spec` the controller's decisions depend on (the rest goes into the pod as-is)."""

    image: str
    terminate: bool = False
    active_deadline_seconds: int | None = None
    ttl_seconds_after_finished: int | None = None
    prompt: str | None = None
    cleanup: CleanupSpec = field(default_factory=CleanupSpec)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> AgentSpec:
        cleanup = spec.get("cleanup") or {}
        return cls(
            image=str(spec.get("image") or ""),
            terminate=bool(spec.get("terminate", False)),
            active_deadline_seconds=_opt_int(spec.get("activeDeadlineSeconds")),
            ttl_seconds_after_finished=_opt_int(spec.get("ttlSecondsAfterFinished")),
            prompt=spec.get("prompt"),
            cleanup=CleanupSpec(
                logs=str(cleanup.get("logs") or LOGS_ARCHIVE),
                grace_period_seconds=int(cleanup.get("gracePeriodSeconds", DEFAULT_GRACE_SECONDS)),
                delay_seconds=int(cleanup.get("delaySeconds", 0) or 0),
            ),
        )


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class AgentRef:
    namespace: str
    name: str
    uid: str

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AgentRef:
        meta = body.get("metadata") or {}
        return cls(namespace=meta.get("namespace", ""), name=meta.get("name", ""), uid=meta.get("uid", ""))

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def cleanup_trigger(phase: str | None, reason: str | None, deleting: bool) -> str:
    """Which trigger a cleanup of an agent in this state records."""
    if reason == REASON_DELETED or (deleting and not is_terminal(phase)):
        return TRIGGER_DELETED
    if is_terminal(phase):
        return str(phase)
    return TRIGGER_SWEEP


# ---------------------------------------------------------------- conditions

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
    ready = "True" if phase in (RUNNING, WORKING, BLOCKED) else "False"
    finished = "True" if terminal else "False"
    cleaned = "True" if cleanup_state == CLEANUP_SUCCEEDED else "False"
    desired = [
        (CONDITION_READY, ready, reason or (phase or PENDING), ""),
        (CONDITION_FINISHED, finished, reason or (phase or PENDING), message if terminal else ""),
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
