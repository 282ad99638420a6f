"""The one way through: `sync(key)` reads what it needs, asks `decide()` once, and acts.

Every trigger — an Agent's watch event, a pod's, a clock-driven requeue, the sweep's finding, the
finalizer — only enqueues the Agent's key (handlers.py); the work queue runs `sync` for it, never twice
at once for one Agent, and hands the returned delay (decide()'s `requeue_after`) or the failure's
retry delay back to itself. After a crash at any line the next sync finds the world as it is and
continues: every action is idempotent and every destructive call carries a UID precondition.

    sync(key)
      agent    = the newest body seen (a watch event's, our last write's) or a fresh GET
      observed = observe(agent)          the pod (watch cache, re-checked by a GET before a PodLost),
                                         a refused creation, leftovers the sweep found
      decision = decide(agent, observed, now)                   (decide.py: pure)
      act(decision): read the logs of the running pod (logs.py) | create the children | record the
                     status | clean up (cleanup.py) | delete (TTL)
      -> requeue after decision.requeue_after, at once after a status change the next step depends on
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from . import FINALIZER, api, ship
from .cleanup import CleanupFailed, clean_up, patch_status
from .decide import CreateRefusal, Decision, Observed, PodState, StatusChange, decide
from .events import NORMAL, WARNING
from .kinds import CREATE_STAGES, POD
from .kube.client import ApiError
from .kube.resources import AGENTS, PODS
from .logs import start_capture
from .names import AGENT_UID_LABEL, label_value, pod_name
from .runtime import PARTIAL, AgentKey, Runtime
from .workqueue import Retry

log = logging.getLogger(__name__)

# The Event each recorded phase change posts (reason = the status reason), and its type.
_WARNING_REASONS = frozenset({api.REASON_POD_FAILED, api.REASON_POD_LOST, api.REASON_DEADLINE,
                              api.REASON_START_TIMEOUT, api.REASON_POD_REJECTED, api.REASON_INVALID_SPEC,
                              api.REASON_QUOTA_EXCEEDED, api.REASON_POD_NAME_TAKEN})


def key_of(agent: Mapping[str, Any]) -> AgentKey:
    meta = agent.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


async def sync(rt: Runtime, key: AgentKey, hint: Mapping[str, Any] | None) -> float | None:
    """Bring one Agent a step further. Returns seconds after which to look again, or None."""
    agent = dict(hint) if hint is not None else rt.recall(key) or await rt.client.get_or_none(AGENTS, *key)
    if agent is None:
        return None          # gone: its finalizer ran; whatever is left is the sweep's
    try:
        seen = await observe(rt, agent)
        decision = decide(agent, seen, rt.clock())
        if agent.pop(PARTIAL, False) and not _remembered_suffices(agent, seen, decision):
            fresh = await rt.client.get_or_none(AGENTS, *key)
            if fresh is None:
                return None
            agent = fresh
            seen = await observe(rt, agent)
            decision = decide(agent, seen, rt.clock())
        if log.isEnabledFor(logging.DEBUG):
            log.debug("sync %s/%s: pod=%s decision=%s", key[0], key[1], seen.pod, decision)
        return await act(rt, key, agent, decision)
    except (Retry, asyncio.CancelledError):
        raise
    except Exception as exc:
        # Retried by the queue; `kubectl describe agent` says why it is stuck (one aggregated Event).
        await rt.events.post(agent, WARNING, "SyncFailed", f"{type(exc).__name__}: {exc}; retrying", aggregate=True)
        raise


def _remembered_suffices(agent: Mapping[str, Any], seen: Observed, decision: Decision) -> bool:
    """What was remembered of an Agent (a few hundred bytes, no pod template or prompt) decides what its
    existing pod did — a status to record. Building the pod, cleaning up or deleting needs all of it."""
    return (seen.pod is not None and bool((agent.get("status") or {}).get("podName"))
            and not (decision.create_children or decision.cleanup or decision.delete_agent))


async def observe(rt: Runtime, agent: Mapping[str, Any]) -> Observed:
    """What decide() needs besides the Agent. A terminal Agent's pod is not needed (the phase is
    final; the cleanup finds the pods itself)."""
    meta = agent["metadata"]
    uid = meta["uid"]
    status = agent.get("status") or {}
    if api.is_terminal(status.get("phase")):
        return Observed(leftovers=uid in rt.leftovers, pod_security=rt.pod_security, retry_in=rt.retry_in(uid))
    name = pod_name(meta["name"])
    cached = rt.pods.named(meta["namespace"], name)
    pod = cached.state if cached is not None else None
    if pod is None and status.get("podName"):
        # The watch may be behind: read the pod before concluding that it is lost.
        body = await rt.client.get_or_none(PODS, meta["namespace"], name)
        if body is not None and (body.get("metadata") or {}).get(
                "labels", {}).get(AGENT_UID_LABEL) == label_value(uid):
            rt.pods.upsert(body)
            pod = PodState.from_body(body)
    return Observed(pod=pod, refusal=rt.refusals.get(uid), pod_security=rt.pod_security, retry_in=rt.retry_in(uid))


async def act(rt: Runtime, key: AgentKey, agent: dict[str, Any], decision: Decision) -> float | None:
    meta = agent["metadata"]
    uid = meta["uid"]
    change = decision.status
    backoff = decision.backoff
    if decision.add_finalizer:
        fresh = await rt.client.get_or_none(AGENTS, *key)
        finalizers = list(((fresh or {}).get("metadata") or {}).get("finalizers") or [])
        if fresh is not None and FINALIZER not in finalizers:
            # With its resourceVersion: a precondition (a 409 if the Agent changed: retried, read again).
            await rt.client.patch(AGENTS, key[0], key[1], {"metadata": {
                "resourceVersion": fresh["metadata"]["resourceVersion"], "finalizers": [*finalizers, FINALIZER]}})
            log.info("agent %s/%s: our finalizer added (kopf had not added it)", *key)
        rt.queue.add(key)
        return None
    if decision.capture_logs and uid not in rt.captures:
        cached = rt.pods.named(meta["namespace"], pod_name(meta["name"]))
        if cached is not None and cached.owner_uid == label_value(uid):
            start_capture(rt, agent, cached.body())
    if decision.create_children:
        refused = await create_children(rt, agent)
        if refused is None:
            rt.refusals.pop(uid, None)
            rt.backoffs.pop(uid, None)
            change, backoff = decision.on_created, False
        else:
            first = rt.refusals.get(uid) != refused
            rt.refusals[uid] = refused
            if first:
                rt.queue.add(key)        # decide again on what the API said (no backoff yet)
                return None
            backoff = True
            if change is None and (refused.quota or refused.name_taken):
                # Refused again, as already recorded: the Event's count says how often (as a
                # ReplicaSet's FailedCreate does); the status is not written again.
                await rt.events.post(agent, WARNING, refused.reason, refused.message, aggregate=True)
    if change is not None:
        agent = await write_status(rt, agent, change)
        if not backoff:
            rt.queue.add(key, hint=agent)    # the next step starts from what was just written
            return None
    if decision.cleanup:
        trigger = decision.cleanup_trigger or api.TRIGGER_SWEEP
        try:
            outcome = await clean_up(rt, agent, trigger, thorough=trigger == api.TRIGGER_SWEEP)
        except CleanupFailed as exc:
            return rt.back_off(uid, exc.delay)       # decide() waits for it, whatever events come
        if outcome.final is not None:
            rt.remember(outcome.final)
        rt.queue.add(key, hint=outcome.final)        # next: the TTL, if any (and older events are old news)
        return None
    if decision.delete_agent:
        try:
            await rt.client.delete(AGENTS, meta["namespace"], meta["name"], uid=uid)
            log.info("deleted agent %s/%s: ttlSecondsAfterFinished passed", meta["namespace"], meta["name"])
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        return None
    if backoff:
        return _earliest(rt.back_off(uid), decision.requeue_after)
    return decision.requeue_after


def _earliest(a: float, b: float | None) -> float:
    return a if b is None else min(a, b)


async def write_status(rt: Runtime, agent: Mapping[str, Any], change: StatusChange) -> dict[str, Any]:
    """Record a phase (and its reason and message), with the controller-owned fields that go with it.
    The write carries the resourceVersion the decision was based on: on a conflict (409) the Agent is
    read again and decided again (a concurrent report of the agent is never overwritten)."""
    meta = agent["metadata"]
    status = agent.get("status") or {}
    now = rt.clock()
    new: dict[str, Any] = {"phase": change.phase, "reason": change.reason, "message": change.message,
                           "observedGeneration": meta.get("generation")}
    if change.pod_created:
        new["podName"] = pod_name(meta["name"])
    cached = rt.pods.named(meta["namespace"], pod_name(meta["name"]))
    ours = cached if cached is not None and cached.owner_uid == label_value(meta["uid"]) else None
    if not status.get("startTime") and (change.start_time or (ours is not None and ours.state.started_at)):
        # When the agent container started, if the pod says (the agent may have reported first).
        new["startTime"] = (ours.state.started_at if ours is not None and ours.state.started_at
                            else api.format_time(now))
    if ours is not None and ours.state.node:
        new["nodeName"] = ours.state.node
    terminal = api.is_terminal(change.phase)
    if terminal:
        rt.terminal_at.setdefault(meta["uid"], now)
        new["completionTime"] = api.format_time(now)
        new["cleanup"] = {"state": api.CLEANUP_PENDING,
                          "trigger": api.cleanup_trigger(change.phase, change.reason, False)}
    new["conditions"] = api.conditions_for(change.phase, change.reason, None, status.get("conditions"), now,
                                           change.message)
    try:
        updated = await patch_status(rt, agent, new, resource_version=meta.get("resourceVersion"))
    except ApiError as exc:
        if exc.conflict:
            rt.recent.pop((meta["namespace"], meta["name"]), None)    # read it again, not from memory
            raise Retry(f"{meta['namespace']}/{meta['name']} changed meanwhile: deciding again", delay=0.0,
                        counts=False) from exc
        raise
    rt.remember(updated)
    rt.observe_phase(meta["uid"], change.phase)
    log.info("agent %s/%s: %s (%s)", meta["namespace"], meta["name"], change.phase, change.reason)
    await _post_transition(rt, updated, status, change)
    return updated


async def _post_transition(rt: Runtime, agent: Mapping[str, Any], before: Mapping[str, Any],
                           change: StatusChange) -> None:
    """The Event a user follows with `kubectl describe` / `kubectl events` for what was recorded."""
    if change.phase == before.get("phase") and change.reason == before.get("reason") and not change.start_time:
        return
    if change.pod_created and change.reason == api.REASON_CREATED:
        await rt.events.post(agent, NORMAL, "PodCreated", f"Created pod {pod_name(agent['metadata']['name'])}.")
    elif change.start_time and not before.get("startTime"):
        await rt.events.post(agent, NORMAL, "Started", "The agent's pod is running." if change.phase == api.RUNNING
                             else f"The agent's pod is running (the agent reported {change.phase} first).")
    elif change.reason in _WARNING_REASONS:
        await rt.events.post(agent, WARNING, change.reason, change.message, aggregate=True)
    elif api.is_terminal(change.phase) and change.reason != api.REASON_POD_SUCCEEDED:
        # (A pod's success is told by the CleanedUp Event that follows: one request less per cleanup.)
        await rt.events.post(agent, NORMAL, change.reason, change.message)


# ------------------------------------------------------------------------ creating the children


async def create_children(rt: Runtime, agent: Mapping[str, Any]) -> CreateRefusal | None:
    """Create whatever of the agent's children is missing, stage by stage (the credentials and the
    prompt, then the RoleBinding — after its Role, which the API server checks it against — then the
    pod). Idempotent: an existing child of ours (409 from an earlier attempt) is found and kept.
    Returns the API's refusal, if it refused one (the decision is decide()'s)."""
    meta = agent["metadata"]
    ns, uid = meta["namespace"], meta["uid"]
    # What this process created already (an attempt whose status write met a conflict) is not created
    # again: the prompt and the credentials by the child cache, the pod by the pod cache.
    known = dict(rt.children.get(uid) or ())
    made: list[tuple[str, str]] = list(known.items())
    pod = rt.pods.named(ns, pod_name(meta["name"]))
    have_pod = known and pod is not None and pod.owner_uid == label_value(uid)
    for stage in CREATE_STAGES:
        bodies = [(kind, kind.build(agent, rt.pod_security)) for kind in stage
                  if kind.label not in known and not (kind is POD and have_pod)]
        if rt.ship is not None:
            for kind, body in bodies:
                if kind is POD and body is not None:
                    ship.inject(body, rt.ship)
        results = await asyncio.gather(*(_create(rt, kind.resource, ns, body, uid)
                                         for kind, body in bodies if body is not None), return_exceptions=True)
        for (kind, _), result in zip([kb for kb in bodies if kb[1] is not None], results):
            if isinstance(result, _Refused):
                return result.refusal
            if isinstance(result, BaseException):
                raise result
            if kind is POD:
                rt.pods.upsert(result)
            else:
                made.append((kind.label, str((result.get("metadata") or {}).get("uid", ""))))
    # Every child exists and is known by UID: a first cleanup can delete them without listing first.
    rt.children.record(uid, tuple(made))
    return None


_TRANSIENT_FORBIDDEN = (
    # Our own RBAC: a misconfiguration of the controller, not the agent's fault; retried (with a
    # Warning Event) until an administrator fixes it.
    " cannot create resource ",
    "cannot set blockOwnerDeletion",     # no `update` on agents/finalizers (OwnerReferencesPermissionEnforcement)
    "attempting to grant RBAC permissions not currently held",   # the agent's Role grants what we lack
    "error looking up service account",  # admission's cache has not seen the new ServiceAccount yet
    "because it is being terminated",    # the namespace is going away
)


def _transient_refusal(exc: ApiError) -> bool:
    return exc.status == 403 and not ("exceeded quota" in exc.message) and any(
        text in exc.message for text in _TRANSIENT_FORBIDDEN)


class _Refused(Exception):
    def __init__(self, refusal: CreateRefusal):
        super().__init__(refusal.message)
        self.refusal = refusal


async def _create(rt: Runtime, res: Any, ns: str, body: Mapping[str, Any], agent_uid: str) -> dict[str, Any]:
    """Create the child (or find it, ours, from an earlier attempt); returns it as the API has it."""
    try:
        return await rt.client.create(res, ns, body)
    except ApiError as exc:
        if exc.status in (400, 403, 422) and not _transient_refusal(exc):
            raise _Refused(CreateRefusal.of(exc.status, exc.message)) from exc
        if exc.status != 409:
            raise
    name = body["metadata"]["name"]
    existing = await rt.client.get_or_none(res, ns, name)
    if existing is None:
        raise Retry(f"{res.plural}/{name} was being deleted; creating again", delay=0.5, counts=False)
    owner = ((existing.get("metadata") or {}).get("labels") or {}).get(AGENT_UID_LABEL)
    if owner != label_value(agent_uid):
        raise _Refused(CreateRefusal.of(409, f"{res.plural}/{name} exists and belongs to another owner",
                                        name_taken=True))
    return existing
