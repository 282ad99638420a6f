"""kopf handlers. Thin: they notice changes and hand over to reconcile()/clean_up(); they decide nothing.

- Agent created/resumed/spec changed/status.phase changed -> reconcile
- Agent deleted (finalizer agentcontroller.dev/cleanup) -> reconcile (Terminated/Deleted, then cleanup)
- Pod of an agent changed or vanished -> reconcile that agent
- Clock-driven triggers (deadline, cleanup delay, TTL) -> one daemon per Agent that has one pending
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from . import FINALIZER, GROUP, PLURAL, VERSION, api
from .cleanup import CleanupFailed
from .decide import PodState, next_wakeup
from .kube.client import AGENTS, ApiError
from .names import AGENT_UID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from .reconcile import ChildConflict, reconcile
from .runtime import Runtime

log = logging.getLogger(__name__)

registry = kopf.OperatorRegistry()
AGENT = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: our finalizer name; progress and diff-base in annotations (never in status,
    which the structural schema prunes); only warnings become Kubernetes Events."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.worker_limit = None
    settings.networking.request_timeout = 60


def runtime(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


async def _reconcile(memo: Any, body: Any, pod: Any = None, *, retry: int = 0) -> None:
    rt = runtime(memo)
    try:
        if pod is None:
            await reconcile(rt, dict(body))
        else:
            await reconcile(rt, dict(body), pod=pod)
    except CleanupFailed as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except ChildConflict as exc:
        raise kopf.TemporaryError(str(exc), delay=min(60.0, 2.0 ** retry)) from exc
    except ApiError as exc:
        if exc.status in (401, 403):
            raise kopf.TemporaryError(f"not allowed: {exc}", delay=api.backoff_seconds(retry + 1)) from exc
        raise kopf.TemporaryError(str(exc), delay=min(api.BACKOFF_CAP_SECONDS, 1.0 * 2 ** retry)) from exc


# --------------------------------------------------------------------------- indexes


@kopf.index(*AGENT, registry=registry)
def agent_phases(body: kopf.Body, status: kopf.Status, **_: Any) -> dict[str, str]:
    """Phase of every Agent, from the watch stream (feeds the agents-by-phase gauge)."""
    return {str(status.get("phase") or api.PENDING): body.metadata.uid or ""}


@kopf.index(*AGENT, registry=registry)
def agents_by_uid(body: kopf.Body, status: kopf.Status, **_: Any) -> dict[str, tuple[str, str, str, bool]]:
    """uid -> (namespace, name, phase, deleting), so pod events find their Agent without a request."""
    meta = body.metadata
    return {meta.uid or "": (meta.namespace or "", meta.name or "", str(status.get("phase") or ""),
                             meta.deletion_timestamp is not None)}


# --------------------------------------------------------------------------- agents


@kopf.on.create(*AGENT, registry=registry)
@kopf.on.resume(*AGENT, registry=registry)
@kopf.on.update(*AGENT, field="spec", registry=registry)
async def agent_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    await _reconcile(memo, body, retry=retry)


@kopf.on.field(*AGENT, field="status.phase", registry=registry)
async def agent_phase_changed(body: kopf.Body, memo: kopf.Memo, new: Any, retry: int, **_: Any) -> None:
    rt = runtime(memo)
    if new and retry == 0:
        rt.metrics.phase_transitions.labels(to=str(new)).inc()
        if api.is_terminal(str(new)):
            rt.terminal_at.setdefault(body.metadata.uid or "", rt.clock())
    await _reconcile(memo, body, retry=retry)


@kopf.on.delete(*AGENT, registry=registry)
async def agent_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """The finalizer: the Agent object stays until its cleanup succeeded."""
    await _reconcile(memo, body, retry=retry)


def _clock_pending(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    return next_wakeup(body, runtime(memo).clock()) is not None


@kopf.daemon(*AGENT, when=_clock_pending, cancellation_timeout=1.0, registry=registry)
async def agent_clock(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    """Sleeps until the deadline, the cleanup delay or the TTL is due, then reconciles."""
    rt = runtime(memo)
    failures = 0
    while not stopped:
        wake = next_wakeup(body, rt.clock())
        if wake is None:
            return
        if wake > 0:
            await stopped.wait(wake)
            continue
        try:
            fresh = await rt.client.get_same(AGENTS, body)
            if fresh is None:
                return
            # A terminal phase (deadline) is only recorded here; the cleanup it triggers runs in the
            # Agent's phase handler. A due cleanup delay or TTL is executed here.
            await reconcile(rt, fresh, clean_up_now=api.is_terminal((fresh.get("status") or {}).get("phase")))
            failures = 0
            if next_wakeup(fresh, rt.clock()) is None:
                return
            await stopped.wait(1.0)    # let the watch deliver the new state into `body`
        except ApiError as exc:
            if exc.not_found:
                return
            failures += 1
            await stopped.wait(api.backoff_seconds(failures))
        except CleanupFailed as exc:
            await stopped.wait(exc.delay)


# --------------------------------------------------------------------------- pods


@kopf.on.event("", "v1", "pods", labels=MANAGED, registry=registry)
async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pod of ours changed or vanished: tell the waiting cleanup, or reconcile its Agent."""
    rt = runtime(memo)
    agents_by_uid: kopf.Index[str, tuple[str, str, str, bool]] = kwargs["agents_by_uid"]
    etype = event.get("type")
    pod_uid = body.metadata.uid or ""
    if etype == "DELETED":
        rt.pods.pod_deleted(pod_uid)
    owner_uid = (body.metadata.labels or {}).get(AGENT_UID_LABEL, "")
    found = agents_by_uid.get(owner_uid)
    if not found:
        return   # no Agent: an orphan, the sweep's business
    for ns, name, phase, deleting in found:
        if api.is_terminal(phase) or deleting:
            return
        state = None if etype == "DELETED" else PodState.from_body(body)
        if state is not None and not _pod_news(phase, state):
            return
        agent = await rt.client.get_same(AGENTS, {"metadata": {"namespace": ns, "name": name, "uid": owner_uid}})
        if agent is None:
            return
        await reconcile(rt, agent, pod=state, clean_up_now=False)


def _pod_news(agent_phase: str, pod: PodState) -> bool:
    """Does this pod state possibly move the Agent's phase?"""
    if pod.deleting or pod.reason == "Evicted" or pod.phase in ("Succeeded", "Failed"):
        return True
    return pod.phase == "Running" and agent_phase in ("", api.PENDING)


# --------------------------------------------------------------------------- lifecycle


@kopf.on.startup(registry=registry)
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    agent_phases: kopf.Index[str, str] = kwargs["agent_phases"]
    configure(settings)
    rt = runtime(memo)
    rt.metrics.set_phase_source(lambda: {phase: len(agent_phases.get(phase, ())) for phase in api.PHASES})
    starter = getattr(memo, "on_startup", None)
    if starter is not None:
        await starter(rt)


@kopf.on.cleanup(registry=registry)
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    stopper = getattr(memo, "on_shutdown", None)
    if stopper is not None:
        await stopper(runtime(memo))
    await asyncio.sleep(0)
