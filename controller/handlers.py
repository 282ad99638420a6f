"""kopf handlers. Thin: they notice changes and hand over to reconcile()/clean_up(); they decide nothing.

- Agent created/resumed/spec changed (not terminal) -> reconcile
- Agent event (every watch event; writes nothing back): phase transitions counted; a terminal Agent
  whose cleanup is due -> one background reconcile (= cleanup), retried with backoff until done
- Agent deleted (finalizer agentcontroller.dev/cleanup) -> reconcile (Terminated/Deleted, then cleanup)
- Pod of an agent changed or vanished -> reconcile that agent
- Clock-driven triggers (deadline, cleanup delay, TTL) -> one alarm (asyncio timer) per Agent that has
  one pending, armed from the Agent's events
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, cast

import kopf

from . import FINALIZER, GROUP, KIND, PLURAL, VERSION, api
from .cleanup import CleanupFailed
from .decide import PodState, decide, next_wakeup
from .kube.client import AGENTS, ApiError
from .names import AGENT_UID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from .reconcile import ChildConflict, reconcile
from .runtime import Runtime

log = logging.getLogger(__name__)

registry = kopf.OperatorRegistry()
AGENT = (GROUP, VERSION, PLURAL)
MANAGED = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}


class _Copied(dict[str, Any]):
    """A private JSON copy, made with the C JSON codec; `copy.deepcopy` takes it as it is."""

    def __deepcopy__(self, memo: Any) -> _Copied:
        return self


def _copied(value: Any) -> Any:
    return _Copied(json.loads(json.dumps(value))) if isinstance(value, dict) else copy.deepcopy(value)


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotations diff-base — the same essence, the same annotation — built cheaply.

    kopf builds the essence (spec, labels, annotations, the fields handlers watch) for every event
    of every watched object, pods included, by deep-copying the whole body (status and metadata too,
    only to drop them), then deep-copies it again to clear progress keys. `copy.deepcopy` is slow
    Python; here only the parts kept are copied, once, by the JSON codec (tests/unit/
    test_diffbase.py checks the result against kopf's own). For pods, which have no change-detecting
    handler (kopf builds the essence anyway, and never uses it), the essence is empty."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> Any:
        if body.get("kind") != KIND or body.get("apiVersion") != f"{GROUP}/{VERSION}":
            return {}
        meta = body.get("metadata") or {}
        lean: dict[str, Any] = {k: _copied(v) for k, v in body.items() if k not in ("metadata", "status")}
        lean["metadata"] = {k: _copied(meta[k]) for k in ("labels", "annotations") if k in meta}
        if "ownerReferences" in meta:
            lean["metadata"]["ownerReferences"] = meta["ownerReferences"]
        if "status" in body and any(field and field[0] == "status" for field in extra_fields or ()):
            lean["status"] = _copied(body["status"])
        return super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=extra_fields)


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf settings: our finalizer name; progress and diff-base in annotations (never in status,
    which the structural schema prunes); warnings and errors that kopf logs about an object (a handler
    failing and being retried) also become Kubernetes Events on it, for `kubectl describe`."""
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
    settings.posting.loggers = True        # kopf's default is False: handler failures would be log-only
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.queueing.worker_limit = None
    # No dynamic discovery of CRDs and namespaces: it needs cluster-wide list/watch of CRDs and
    # namespaces, which least privilege does not grant (kopf would log 403s and serve the same
    # fixed set anyway). The Agent CRD must exist when the controller starts (the chart installs it).
    settings.scanning.disabled = True
    settings.networking.request_timeout = 60


def runtime(memo: Any) -> Runtime:
    rt: Runtime = memo.runtime
    return rt


async def _reconcile(memo: Any, body: Any, pod: Any = None, *, retry: int = 0, clean_up_now: bool = True) -> None:
    rt = runtime(memo)
    try:
        if pod is None:
            await reconcile(rt, dict(body), clean_up_now=clean_up_now)
        else:
            await reconcile(rt, dict(body), pod=pod, clean_up_now=clean_up_now)
    except CleanupFailed as exc:
        raise kopf.TemporaryError(str(exc), delay=exc.delay) from exc
    except ChildConflict as exc:
        raise kopf.TemporaryError(str(exc), delay=min(60.0, 2.0 ** retry)) from exc
    except ApiError as exc:
        if exc.status in (401, 403):
            raise kopf.TemporaryError(f"not allowed: {exc}", delay=api.backoff_seconds(retry + 1)) from exc
        raise kopf.TemporaryError(str(exc), delay=min(api.BACKOFF_CAP_SECONDS, 1.0 * 2 ** retry)) from exc


# --------------------------------------------------------------------------- indexes


# Indexes (and every handler) are coroutines: kopf runs a plain function in a thread pool, which
# costs more than the function itself, for every event of every Agent.


@kopf.index(*AGENT, registry=registry)
async def agents_by_uid(body: kopf.Body, status: kopf.Status, **_: Any) -> dict[str, tuple[str, str, str, bool]]:
    """uid -> (namespace, name, phase, deleting), so pod events find their Agent without a request;
    also the source of the agents-by-phase gauge. (One index: each costs kopf work on every event.)"""
    meta = body.metadata
    return {meta.uid or "": (meta.namespace or "", meta.name or "", str(status.get("phase") or ""),
                             meta.deletion_timestamp is not None)}


# --------------------------------------------------------------------------- agents


@kopf.on.create(*AGENT, registry=registry)
@kopf.on.resume(*AGENT, registry=registry)
@kopf.on.update(*AGENT, field="spec", registry=registry)
async def agent_changed(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    if api.is_terminal(body.status.get("phase")) and body.metadata.deletion_timestamp is None:
        return   # a terminal Agent's cleanup is agent_event's, its deletion the finalizer's
    # A terminal phase decided here (spec.terminate, an invalid spec) is only recorded: its cleanup
    # runs from agent_event, not inside this handler, which would hold back kopf's processing of the
    # Agent's next events (and its index, which the pod events read) for the whole cleanup.
    await _reconcile(memo, body, retry=retry, clean_up_now=False)


@kopf.on.event(*AGENT, registry=registry)
async def agent_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Every state of every Agent, as the watch delivers it — phase changes included. An event
    handler writes nothing back (a field handler on status.phase would cost a diff-base annotation
    patch per phase change). Counts phase transitions; a terminal Agent whose cleanup is due gets one
    background cleanup, retried with backoff until it succeeded (also after a restart: the first
    listing delivers every Agent)."""
    rt = runtime(memo)
    uid = body.metadata.uid or ""
    if event.get("type") == "DELETED":
        rt.phases.pop(uid, None)
        rt.children.forget(uid)
        rt.alarms.cancel(uid)
        return
    phase = str(body.status.get("phase") or "")
    # Clock-driven triggers: one alarm per Agent with a deadline, a cleanup delay or a TTL pending
    # (an asyncio timer, not a kopf daemon: a daemon makes kopf keep every Agent's body in memory).
    wake = next_wakeup(body, rt.clock())
    if wake is None:
        rt.alarms.cancel(uid)
    else:
        _arm(rt, body.metadata.namespace or "", body.metadata.name or "", uid, wake)
    previous = rt.phases.get(uid)
    rt.phases[uid] = phase
    if previous is not None and phase and phase != previous:
        rt.metrics.phase_transitions.labels(to=phase).inc()
        if api.is_terminal(phase):
            rt.terminal_at.setdefault(uid, rt.clock())
    if not api.is_terminal(phase) or body.metadata.deletion_timestamp is not None or uid in rt.cleaned:
        return
    if decide(body, None, rt.clock()).cleanup:
        rt.spawn(uid, _clean_up_terminal(rt, dict(body)))


async def _clean_up_terminal(rt: Runtime, agent: dict[str, Any]) -> None:
    """Reconcile a terminal Agent (that is: clean it up) until it is done, backing off between attempts
    as the failed cleanup says. Ends when it succeeded, or the Agent is gone or being deleted (then the
    finalizer handler owns it)."""
    failures = 0
    while True:
        try:
            await reconcile(rt, agent)
            return
        except CleanupFailed as exc:
            delay = exc.delay
        except Exception as exc:  # noqa: BLE001 - an API error, or a bug: never give up on a cleanup
            failures += 1
            delay = api.backoff_seconds(failures)
            log.warning("cleanup of %s/%s: %s; retrying in %.0fs", agent["metadata"].get("namespace"),
                        agent["metadata"].get("name"), exc, delay)
        await asyncio.sleep(delay)
        try:
            if await rt.standing_by():
                return      # kopf paused this replica: the active one cleans up
            fresh = await rt.client.get_same(AGENTS, agent)
        except ApiError:
            continue
        if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
            return
        agent = fresh


@kopf.on.delete(*AGENT, registry=registry)
async def agent_deleted(body: kopf.Body, memo: kopf.Memo, retry: int, **_: Any) -> None:
    """The finalizer: the Agent object stays until its cleanup succeeded."""
    await _reconcile(memo, body, retry=retry)


async def _clock_due(rt: Runtime, namespace: str, name: str, uid: str) -> None:
    """A deadline, a cleanup delay or a TTL came due: reconcile the Agent as it is now."""
    ref = {"metadata": {"namespace": namespace, "name": name, "uid": uid}}
    failures = 0
    while True:
        try:
            if await rt.standing_by():
                return      # kopf paused this replica: the active one has the same alarm
            fresh = await rt.client.get_same(AGENTS, ref)
            if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                return
            wake = next_wakeup(fresh, rt.clock())
            if wake is None:
                return
            if wake > 0:      # not yet (the watch was behind): wait for it
                _arm(rt, namespace, name, uid, wake)
                return
            # A terminal phase (deadline) is only recorded here; the cleanup it triggers starts from
            # the Agent's event. A due cleanup delay or TTL is executed here.
            await reconcile(rt, fresh, clean_up_now=api.is_terminal((fresh.get("status") or {}).get("phase")))
            # The write's watch event re-arms (or cancels) the alarm; should there be none, look again.
            _arm(rt, namespace, name, uid, 1.0)
            return
        except CleanupFailed as exc:
            delay = exc.delay
        except ApiError:
            failures += 1
            delay = api.backoff_seconds(failures)
        await asyncio.sleep(delay)


def _arm(rt: Runtime, namespace: str, name: str, uid: str, delay: float) -> None:
    # Its own task key: sharing the cleanup's key would drop a TTL that comes due while the cleanup
    # task is still finishing (after its final status write), and nothing would re-arm it.
    rt.alarms.set(uid, delay, lambda: rt.spawn(f"clock/{uid}", _clock_due(rt, namespace, name, uid)))


# --------------------------------------------------------------------------- pods


@kopf.on.event("", "v1", "pods", labels=MANAGED, registry=registry)
async def pod_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    """A pod of ours changed or vanished: tell the waiting cleanup, or reconcile its Agent."""
    rt = runtime(memo)
    agents_by_uid: kopf.Index[str, tuple[str, str, str, bool]] = kwargs["agents_by_uid"]
    etype = event.get("type")
    pod_uid = body.metadata.uid or ""
    owner_uid = (body.metadata.labels or {}).get(AGENT_UID_LABEL, "")
    if etype == "DELETED":
        rt.pods.pod_deleted(pod_uid)
    else:
        rt.children.pod_changed(owner_uid, body)
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
    agents: kopf.Index[str, tuple[str, str, str, bool]] = kwargs["agents_by_uid"]
    configure(settings)
    rt = runtime(memo)
    rt.metrics.set_phase_source(lambda: _count_phases(agents))
    starter = getattr(memo, "on_startup", None)
    if starter is not None:
        await starter(rt)


def _count_phases(agents: kopf.Index[str, tuple[str, str, str, bool]]) -> dict[str, int]:
    counts = dict.fromkeys(api.PHASES, 0)
    for entries in agents.values():
        for _, _, phase, _ in entries:
            key = phase or api.PENDING
            counts[key] = counts.get(key, 0) + 1
    return counts


@kopf.on.cleanup(registry=registry)
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    stopper = getattr(memo, "on_shutdown", None)
    if stopper is not None:
        await stopper(runtime(memo))
    await asyncio.sleep(0)
