"""Talking to the Kubernetes API from inside an agent pod: report the agent's phase, kill an agent.

Credentials: the in-cluster service account when ``KUBERNETES_SERVICE_HOST`` is set, else the
kubeconfig (``KUBECONFIG``, default ``~/.kube/config``). Inside a pod these are the agent's own
credentials, which allow only ``get`` on its own Agent and ``get``/``patch`` on its own
``agents/status``; nothing here needs more.

The ``kubernetes`` package is imported lazily so that ``agentctl run`` starts its child at once.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from controller import GROUP, PLURAL, VERSION

AGENT_PHASES: tuple[str, ...] = ("Running", "Working", "Blocked", "Completed", "Failed", "Error")
"""Phases an agent may report about itself."""

TERMINAL_PHASES: frozenset[str] = frozenset({"Completed", "Failed", "Error", "Terminated"})
"""A terminal phase is final: nobody may change it afterwards."""

REASON_RE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
MAX_REASON = 128
MAX_MESSAGE = 32768
CONFLICT_RETRIES = 5
REQUEST_TIMEOUT = 5.0
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
SA_DIR_ENV = "AGENT_SERVICEACCOUNT_DIR"
"""Where the pod's service-account files (token, ca.crt, namespace) are, when not at SA_DIR (the node
simulator's local-process mode sets it; a real kubelet mounts them at SA_DIR)."""
SA_NAMESPACE_FILE = SA_DIR + "/namespace"


def sa_dir() -> str:
    """The service-account directory: ``$AGENT_SERVICEACCOUNT_DIR``, else the standard mount path."""
    return os.environ.get(SA_DIR_ENV) or SA_DIR

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


def utc_now() -> str:
    """The current time in RFC 3339, UTC, with a ``Z`` suffix (second precision)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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


def _kubeconfig_file() -> str:
    return os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")


def in_cluster() -> bool:
    """True inside a pod (the in-cluster config is used then)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def api_client() -> Any:
    """A ``kubernetes.client.ApiClient`` for the in-cluster config or the kubeconfig."""
    from kubernetes import client, config

    cfg = client.Configuration()
    try:
        if in_cluster():
            from kubernetes.config.incluster_config import InClusterConfigLoader

            d = sa_dir()
            InClusterConfigLoader(
                token_filename=os.path.join(d, "token"), cert_filename=os.path.join(d, "ca.crt")
            ).load_and_set(cfg)
        else:
            config.load_kube_config(config_file=_kubeconfig_file(), client_configuration=cfg)
    except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as exc:
        where = "in-cluster config" if in_cluster() else f"kubeconfig {_kubeconfig_file()}"
        raise StatusError(f"cannot load {where}: {_one_line(str(exc))}") from None
    cfg.retries = 0  # our own loops retry; urllib3's silent retries would blow the time budget
    return client.ApiClient(cfg)


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
        from kubernetes import config

        _, active = config.list_kube_config_contexts(config_file=_kubeconfig_file())
        ns = (active or {}).get("context", {}).get("namespace")
        return str(ns) if ns else "default"
    except Exception:  # noqa: BLE001 - a broken kubeconfig surfaces when it is loaded
        return "default"


def agent_identity() -> tuple[str, str]:
    """``(AGENT_NAME, AGENT_NAMESPACE)`` from the environment (namespace falls back to the pod's)."""
    name = os.environ.get("AGENT_NAME", "").strip()
    if not name:
        raise UsageError("AGENT_NAME is not set (agentctl report runs inside an agent pod)")
    ns = os.environ.get("AGENT_NAMESPACE", "").strip() or default_namespace()
    return name, ns


# --------------------------------------------------------------------------- errors and retries


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _api_status(exc: BaseException) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _api_message(exc: BaseException) -> str:
    """The API's own message of an ``ApiException`` (its Status body), else the exception text."""
    body = getattr(exc, "body", None)
    if body:
        try:
            data = json.loads(body)
            if isinstance(data, dict) and data.get("message"):
                return _one_line(str(data["message"]))
        except ValueError:
            pass
    status = _api_status(exc)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '') or ''}".strip()
    return _one_line(str(exc)) or type(exc).__name__


def _is_api_exception(exc: BaseException) -> bool:
    from kubernetes.client.exceptions import ApiException

    return isinstance(exc, ApiException)


def _transient(exc: BaseException) -> bool:
    """Worth retrying: connection problems, timeouts, 429 and 5xx."""
    if _is_api_exception(exc):
        status = _api_status(exc)
        return status is None or status == 429 or status >= 500
    return True  # urllib3 / socket level errors


def _with_retries(call: Callable[[float], T], deadline: float) -> T:
    """Run ``call(timeout)`` until it succeeds, fails permanently, or ``deadline`` passes."""
    delay = 0.2
    while True:
        remaining = deadline - time.monotonic()
        timeout = max(0.5, min(REQUEST_TIMEOUT, remaining))
        try:
            return call(timeout)
        except Exception as exc:  # classified by _transient, re-raised when permanent
            if not _transient(exc) or time.monotonic() + delay >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _describe(exc: BaseException, what: str, ns: str, name: str) -> StatusError:
    status = _api_status(exc) if _is_api_exception(exc) else None
    if status == 404:
        return StatusError(f"{what}: agent {ns}/{name} not found")
    if status in (401, 403):
        return StatusError(f"{what}: forbidden: {_api_message(exc)}")
    if status is not None:
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
    Transient failures (API down, 5xx) are retried until ``retry_seconds`` have passed.
    When the phase changes, ``reason`` and ``message`` not given are cleared (they describe the
    latest phase). ``completionTime`` is the controller's to set (it is one of the status fields
    only the controller may write): an agent's report never carries it.
    """
    validate_report(phase, progress, message, reason)
    name, ns = agent_identity()
    deadline = time.monotonic() + retry_seconds
    api = api_client()
    try:
        from kubernetes import client

        co = client.CustomObjectsApi(api)
        for _ in range(CONFLICT_RETRIES):
            try:
                current: Any = _with_retries(
                    lambda t: co.get_namespaced_custom_object_status(
                        GROUP, VERSION, ns, PLURAL, name, _request_timeout=t
                    ),
                    deadline,
                )
            except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
                raise _describe(exc, f"cannot read status of agent {ns}/{name}", ns, name) from None
            if not isinstance(current, dict):
                raise StatusError(f"cannot read status of agent {ns}/{name}: unexpected response")
            status: dict[str, Any] = current.get("status") or {}
            old_phase = status.get("phase")
            if old_phase in TERMINAL_PHASES:
                return ReportResult(written=False, phase=str(old_phase), previous_phase=str(old_phase))
            rv = (current.get("metadata") or {}).get("resourceVersion")
            body = _status_patch(phase, progress, message, reason, changed=old_phase != phase, rv=rv)
            if output is not None:
                body["status"]["output"] = output
            try:
                _with_retries(
                    lambda t, body=body: co.patch_namespaced_custom_object_status(  # type: ignore[misc]
                        GROUP,
                        VERSION,
                        ns,
                        PLURAL,
                        name,
                        body,
                        _content_type="application/merge-patch+json",
                        _request_timeout=t,
                    ),
                    deadline,
                )
            except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
                if _is_api_exception(exc) and _api_status(exc) == 409:
                    continue  # someone wrote in between: re-read and decide again
                raise _describe(exc, f"cannot report {phase} for agent {ns}/{name}", ns, name) from None
            return ReportResult(written=True, phase=phase, previous_phase=old_phase)
        raise StatusError(
            f"cannot report {phase} for agent {ns}/{name}: conflicting updates ({CONFLICT_RETRIES} attempts)"
        )
    finally:
        api.close()


def report_output(output: dict[str, int], *, retry_seconds: float = 10.0) -> None:
    """Record ``status.output`` alone (the agent had reported its terminal phase itself)."""
    name, ns = agent_identity()
    deadline = time.monotonic() + retry_seconds
    api = api_client()
    try:
        from kubernetes import client

        co = client.CustomObjectsApi(api)
        try:
            _with_retries(
                lambda t: co.patch_namespaced_custom_object_status(
                    GROUP, VERSION, ns, PLURAL, name, {"status": {"output": output}},
                    _content_type="application/merge-patch+json", _request_timeout=t,
                ),
                deadline,
            )
        except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
            raise _describe(exc, f"cannot report the output counts of agent {ns}/{name}", ns, name) from None
    finally:
        api.close()


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


def kill(name: str, namespace: str, *, retry_seconds: float = 10.0) -> None:
    """Merge-patch ``spec.terminate: true`` on the Agent (the controller then terminates it)."""
    if not name:
        raise UsageError("agent name must not be empty")
    deadline = time.monotonic() + retry_seconds
    api = api_client()
    try:
        from kubernetes import client

        co = client.CustomObjectsApi(api)
        try:
            _with_retries(
                lambda t: co.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    name,
                    {"spec": {"terminate": True}},
                    _content_type="application/merge-patch+json",
                    _request_timeout=t,
                ),
                deadline,
            )
        except Exception as exc:  # noqa: BLE001 - turned into a one-line StatusError
            raise _describe(exc, f"cannot kill agent {namespace}/{name}", namespace, name) from None
    finally:
        api.close()
