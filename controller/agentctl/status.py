"""Talking to the Kubernetes API from inside an agent pod: report the agent's phase, kill an agent.

Credentials: the in-cluster service account when ``KUBERNETES_SERVICE_HOST`` is set, else the
kubeconfig (``KUBECONFIG``, default ``~/.kube/config``); see :mod:`controller.agentctl.kubeapi`.
Inside a pod these are the agent's own credentials, which allow only ``get`` on its own Agent and
``get``/``patch`` on its own ``agents/status``; nothing here needs more.

Standard library only (the requests go through :mod:`controller.agentctl.kubeapi`, ``urllib``).
"""

from __future__ import annotations

import os
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.agentctl import GROUP, PLURAL, VERSION, kubeapi
from controller.agentctl.kubeapi import SA_DIR, SA_DIR_ENV, in_cluster, sa_dir

AGENT_PHASES: tuple[str, ...] = ("Running", "Working", "Blocked", "Completed", "Failed", "Error")
"""Phases an agent may report about itself."""

TERMINAL_PHASES: frozenset[str] = frozenset({"Completed", "Failed", "Error", "Terminated"})
"""A terminal phase is final: nobody may change it afterwards."""

REASON_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
MAX_REASON = 128
MAX_MESSAGE = 32768
CONFLICT_RETRIES = 5
REQUEST_TIMEOUT = 5.0
MAX_RETRY_DELAY = 1.0
"""Longest pause between two attempts, unless the API asks for more (``Retry-After``)."""

__all__ = [
    "AGENT_PHASES",
    "SA_DIR",
    "SA_DIR_ENV",
    "TERMINAL_PHASES",
    "KillResult",
    "ReportResult",
    "StatusError",
    "UsageError",
    "agent_identity",
    "api_client",
    "default_namespace",
    "in_cluster",
    "kill",
    "report",
    "sa_dir",
    "validate_report",
]

T = TypeVar("T")


class StatusError(Exception):
    """A one-line, user-facing error talking to the API (never shown as a traceback)."""


class UsageError(StatusError):
    """Invalid arguments or environment (the CLI exits 2)."""


@dataclass(frozen=True)
class ReportResult:
    """Outcome of :func:`report`."""

    written: bool
    """True when the status was patched; False when a terminal phase was already there."""
    phase: str
    """The phase now in the Agent's status."""
    previous_phase: str | None


@dataclass(frozen=True)
class KillResult:
    """Outcome of :func:`kill`."""

    requested: bool
    """True when ``spec.terminate: true`` was written; False when the agent had already ended."""
    phase: str | None
    """The terminal phase the agent had already reached (when not requested)."""


def validate_report(phase: str, progress: int | None, message: str | None, reason: str | None) -> None:
    """Raise :class:`UsageError` unless the values are ones an agent may report."""
    if phase not in AGENT_PHASES:
        raise UsageError(f"invalid phase {phase!r}: an agent may report one of {', '.join(AGENT_PHASES)}")
    if progress is not None and (isinstance(progress, bool) or not 0 <= progress <= 100):
        raise UsageError(f"invalid progress {progress!r}: must be an integer 0..100")
    if reason is not None and (len(reason) > MAX_REASON or not REASON_RE.match(reason)):
        raise UsageError(f"invalid reason {reason!r}: must be CamelCase ([A-Z][A-Za-z0-9]*, at most 128)")
    if message is not None and len(message) > MAX_MESSAGE:
        raise UsageError(f"message too long ({len(message)} characters, at most {MAX_MESSAGE})")


# --------------------------------------------------------------------------- configuration


def api_client() -> kubeapi.Client:
    """A client for the in-cluster config or the kubeconfig (:mod:`controller.agentctl.kubeapi`)."""
    try:
        return kubeapi.Client(kubeapi.load_config())
    except kubeapi.ConfigError as exc:
        where = "in-cluster config" if in_cluster() else f"kubeconfig {kubeapi.kubeconfig_paths()}"
        raise StatusError(f"cannot load {where}: {exc}") from None


def default_namespace() -> str:
    """The namespace of the current kubeconfig context, the pod's namespace in-cluster, else "default"."""
    if in_cluster():
        try:
            with open(os.path.join(sa_dir(), "namespace"), encoding="utf-8") as f:
                ns = f.read().strip()
            if ns:
                return ns
        except OSError:
            pass
        return "default"
    try:
        return kubeapi.kubeconfig_namespace() or "default"
    except Exception:  # noqa: BLE001 - a broken kubeconfig surfaces when it is loaded
        return "default"


def agent_identity() -> tuple[str, str]:
    """``(AGENT_NAME, AGENT_NAMESPACE)`` from the environment (namespace falls back to the pod's)."""
    name = os.environ.get("AGENT_NAME", "").strip()
    if not name:
        raise UsageError("AGENT_NAME is not set (agentctl report runs inside an agent pod)")
    ns = os.environ.get("AGENT_NAMESPACE", "").strip() or default_namespace()
    return name, ns


def _path(ns: str, name: str, sub: str = "") -> str:
    q = urllib.parse.quote
    return f"/apis/{GROUP}/{VERSION}/namespaces/{q(ns, safe='')}/{PLURAL}/{q(name, safe='')}{sub}"


MERGE_PATCH = "application/merge-patch+json"


# --------------------------------------------------------------------------- errors and retries


def _api_status(exc: BaseException) -> int | None:
    return exc.status if isinstance(exc, kubeapi.ApiError) else None


def _api_message(exc: BaseException) -> str:
    """The API's own message of an :class:`~kubeapi.ApiError` (its Status body), else the exception text."""
    if isinstance(exc, kubeapi.ApiError):
        return exc.message()
    return kubeapi.one_line(str(exc)) or type(exc).__name__


def _transient(exc: BaseException) -> bool:
    """Worth retrying: connection problems, timeouts, 429 and 5xx."""
    if isinstance(exc, kubeapi.ApiError):
        return exc.status == 429 or exc.status >= 500
    return isinstance(exc, kubeapi.TransportError)


def _with_retries(call: Callable[[float], T], deadline: float) -> T:
    """Run ``call(timeout)`` until it succeeds, fails permanently, or ``deadline`` passes.

    The pause between attempts grows from 0.2 s to 1 s; an answer with ``Retry-After`` (429, 503)
    is not retried before that time — nor at all when that is past the deadline.
    """
    delay = 0.2
    while True:
        remaining = deadline - time.monotonic()
        timeout = max(0.5, min(REQUEST_TIMEOUT, remaining))
        try:
            return call(timeout)
        except Exception as exc:  # classified by _transient, re-raised when permanent
            wait = delay
            if isinstance(exc, kubeapi.ApiError) and exc.retry_after is not None:
                wait = max(wait, exc.retry_after)
            if not _transient(exc) or time.monotonic() + wait >= deadline:
                raise
            time.sleep(wait)
            delay = min(delay * 2, MAX_RETRY_DELAY)


def _describe(exc: BaseException, what: str, ns: str, name: str) -> StatusError:
    status = _api_status(exc)
    if status == 404:
        return StatusError(f"{what}: agent {ns}/{name} not found")
    if status in (401, 403):
        return StatusError(f"{what}: forbidden: {_api_message(exc)}")
    if status is not None:
        return StatusError(f"{what}: {_api_message(exc)}")
    if isinstance(exc, (kubeapi.ConfigError, kubeapi.ResponseError)):
        return StatusError(f"{what}: {_api_message(exc)}")
    return StatusError(f"{what}: API unreachable: {_api_message(exc)}")


# --------------------------------------------------------------------------- operations


def report(
    phase: str,
    progress: int | None = None,
    message: str | None = None,
    reason: str | None = None,
    *,
    retry_seconds: float = 10.0,
    output: dict[str, int] | None = None,
) -> ReportResult:
    """Merge-patch ``status`` of the agent ``AGENT_NAME`` in ``AGENT_NAMESPACE``.

    Reads the status first and never overwrites a terminal phase; writes with the
    ``resourceVersion`` read (optimistic concurrency), re-reading on 409 a few times.
    Transient failures (API down, 5xx, 429) are retried until ``retry_seconds`` have passed.
    When the phase changes, ``reason`` and ``message`` not given are cleared (they describe the
    latest phase). ``completionTime`` is the controller's to set (it is one of the status fields
    only the controller may write): an agent's report never carries it.
    """
    validate_report(phase, progress, message, reason)
    name, ns = agent_identity()
    deadline = time.monotonic() + retry_seconds
    api = api_client()
    path = _path(ns, name, "/status")
    for _ in range(CONFLICT_RETRIES):
        try:
            current: Any = _with_retries(lambda t: api.request("GET", path, timeout=t), deadline)
        except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
            raise _describe(exc, f"cannot read status of agent {ns}/{name}", ns, name) from None
        if not isinstance(current, dict):
            raise StatusError(f"cannot read status of agent {ns}/{name}: unexpected response")
        status: dict[str, Any] = current.get("status") or {}
        old_phase = status.get("phase")
        if old_phase in TERMINAL_PHASES:
            if output is not None:
                # The agent reported its end itself: the counts are added, the phase stays its own.
                _patch(api, path, {"status": {"output": output}}, deadline,
                       f"cannot report the output counts of agent {ns}/{name}", ns, name)
            return ReportResult(written=False, phase=str(old_phase), previous_phase=str(old_phase))
        rv = (current.get("metadata") or {}).get("resourceVersion")
        body = _status_patch(phase, progress, message, reason, changed=old_phase != phase, rv=rv)
        if output is not None:
            body["status"]["output"] = output
        try:
            _with_retries(
                lambda t, body=body: api.request(  # type: ignore[misc]
                    "PATCH", path, body, content_type=MERGE_PATCH, timeout=t),
                deadline,
            )
        except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
            if _api_status(exc) == 409:
                continue  # someone wrote in between: re-read and decide again
            raise _describe(exc, f"cannot report {phase} for agent {ns}/{name}", ns, name) from None
        return ReportResult(written=True, phase=phase, previous_phase=old_phase)
    raise StatusError(
        f"cannot report {phase} for agent {ns}/{name}: conflicting updates ({CONFLICT_RETRIES} attempts)"
    )


def _patch(api: kubeapi.Client, path: str, body: dict[str, Any], deadline: float, what: str, ns: str,
           name: str) -> None:
    try:
        _with_retries(lambda t: api.request("PATCH", path, body, content_type=MERGE_PATCH, timeout=t), deadline)
    except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
        raise _describe(exc, what, ns, name) from None


def _status_patch(
    phase: str,
    progress: int | None,
    message: str | None,
    reason: str | None,
    *,
    changed: bool,
    rv: str | None,
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase}
    if progress is not None:
        status["progress"] = progress
    if message is not None or changed:
        status["message"] = message  # None clears a stale message (merge-patch null)
    if reason is not None or changed:
        status["reason"] = reason
    body: dict[str, Any] = {"status": status}
    if rv:
        body["metadata"] = {"resourceVersion": rv}
    return body


def kill(name: str, namespace: str, *, retry_seconds: float = 10.0) -> KillResult:
    """Merge-patch ``spec.terminate: true`` on the Agent (the controller then terminates it).

    An agent that already ended (a terminal phase) is left alone: nothing is written and the
    result says which phase it ended in. The Agent is read first; when the credentials may not
    read it (403) but perhaps patch it, the patch is tried all the same.
    """
    if not name:
        raise UsageError("agent name must not be empty")
    deadline = time.monotonic() + retry_seconds
    api = api_client()
    path = _path(namespace, name)
    what = f"cannot kill agent {namespace}/{name}"
    try:
        current: Any = _with_retries(lambda t: api.request("GET", path, timeout=t), deadline)
    except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
        if _api_status(exc) != 403:
            raise _describe(exc, what, namespace, name) from None
        current = None
    phase = ((current.get("status") or {}).get("phase")) if isinstance(current, dict) else None
    if phase in TERMINAL_PHASES:
        return KillResult(requested=False, phase=str(phase))
    try:
        _with_retries(
            lambda t: api.request("PATCH", path, {"spec": {"terminate": True}}, content_type=MERGE_PATCH,
                                  timeout=t),
            deadline,
        )
    except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
        raise _describe(exc, what, namespace, name) from None
    return KillResult(requested=True, phase=None)
