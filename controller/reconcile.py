"""Executes what `decide()` says for one Agent. No decisions are made here.

Phase writes carry the resourceVersion the decision was based on (optimistic concurrency); on a
409 the Agent is read again and decided again, so a concurrent report from the agent is never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from . import api, children
from .cleanup import clean_up, patch_status
from .decide import Decision, PhaseChange, PodState, decide, needs_pod
from .kube.client import (
    AGENTS,
    CONFIGMAPS,
    KIND_RESOURCES,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    ApiError,
    Resource,
)
from .names import AGENT_UID_LABEL, label_value, pod_name
from .runtime import Child, Runtime

log = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 8
_UNSET: Any = object()


class ChildConflict(Exception):
    """A child's name is held by an object of another owner (usually an old one being collected)."""


async def observe_pod(rt: Runtime, agent: Mapping[str, Any]) -> PodState | None:
    meta = agent["metadata"]
    try:
        return PodState.from_body(await rt.client.get(PODS, meta["namespace"], pod_name(meta["name"])))
    except ApiError as exc:
        if exc.not_found:
            return None
        raise


async def reconcile(rt: Runtime, agent: Mapping[str, Any], pod: Any = _UNSET, *,
                    clean_up_now: bool = True) -> float | None:
    """Bring one Agent a step further. Returns seconds after which to look again, if any.

    `clean_up_now=False` (kopf's create/update handler, the pod watcher, a deadline alarm) only
    records a terminal phase: the cleanup then runs in the background task that the Agent's event
    handler starts on the phase change (so the pod watcher stays free to deliver the pod's deletion
    to that cleanup, and kopf's handlers for the Agent are never held by one).

    Raises CleanupFailed (retry later) or ApiError for anything unexpected.
    """
    for _ in range(MAX_CONFLICT_RETRIES):
        if pod is not _UNSET:
            state = pod
        else:
            state = await observe_pod(rt, agent) if needs_pod(agent) else None
        try:
            return await execute(rt, agent, decide(agent, state, rt.clock()), clean_up_now=clean_up_now)
        except ApiError as exc:
            if not exc.conflict:
                raise
        fresh = await rt.client.get_same(AGENTS, agent)
        if fresh is None:
            return None   # gone, or deleted and re-created under the same name: not ours to touch
        agent, pod = fresh, _UNSET
    raise ApiError(409, "Conflict", f"agent {agent['metadata']['name']} kept changing; will retry")


async def execute(rt: Runtime, agent: Mapping[str, Any], decision: Decision,
                  clean_up_now: bool = True) -> float | None:
    if decision.create_children:
        try:
            await create_children(rt, agent)
        except ApiError as exc:
            if exc.status not in (400, 422):
                raise
            decision = Decision(phase=PhaseChange(api.FAILED, api.REASON_INVALID_SPEC,
                                                  f"The pod was rejected by the API: {exc.message}"))
        else:
            status = agent.get("status") or {}
            if not status.get("phase") or not status.get("podName"):
                change = decision.phase or PhaseChange(
                    status.get("phase") or api.PENDING, api.REASON_CREATED, "The agent's pod was created.")
                agent = await write_phase(rt, agent, change, pod_created=True)
                return decision.requeue_after
    if decision.phase is not None:
        agent = await write_phase(rt, agent, decision.phase)
        if api.is_terminal(decision.phase.phase):
            if not clean_up_now:
                return None
            decision = decide(agent, None, rt.clock())   # terminal: decides cleanup without looking at the pod
    if decision.cleanup:
        if clean_up_now:
            await clean_up(rt, agent)
        return None
    if decision.delete_agent:
        meta = agent["metadata"]
        try:
            await rt.client.delete(AGENTS, meta["namespace"], meta["name"], uid=meta["uid"])
        except ApiError as exc:
            if exc.status not in (404, 409):
                raise
        log.info("deleted agent %s/%s: ttlSecondsAfterFinished passed", meta["namespace"], meta["name"])
        return None
    return decision.requeue_after


async def write_phase(rt: Runtime, agent: Mapping[str, Any], change: PhaseChange,
                      pod_created: bool = False) -> dict[str, Any]:
    meta = agent["metadata"]
    status = agent.get("status") or {}
    now = rt.clock()
    new: dict[str, Any] = {"phase": change.phase, "reason": change.reason, "message": change.message,
                           "observedGeneration": meta.get("generation")}
    if pod_created:
        new["podName"] = pod_name(meta["name"])
    if change.start_time and not status.get("startTime"):
        new["startTime"] = api.format_time(now)
    if api.is_terminal(change.phase):
        rt.terminal_at.setdefault(meta["uid"], now)
        new["completionTime"] = api.format_time(now)
        new["cleanup"] = {"state": api.CLEANUP_PENDING,
                          "trigger": api.cleanup_trigger(change.phase, change.reason, False)}
    new["conditions"] = api.conditions_for(change.phase, change.reason, None, status.get("conditions"), now,
                                           change.message)
    updated = await patch_status(rt, agent, new, resource_version=meta.get("resourceVersion"))
    log.info("agent %s/%s: %s (%s)", meta["namespace"], meta["name"], change.phase, change.reason)
    return updated


KIND_OF_RESOURCE: dict[Resource, str] = {res: kind for kind, res in KIND_RESOURCES.items()}

CHILD_BUILDERS: tuple[tuple[Resource, Any], ...] = (
    (SERVICEACCOUNTS, children.service_account),
    (ROLES, children.role),
    (ROLEBINDINGS, children.role_binding),
    (CONFIGMAPS, children.prompt_configmap),
    (PODS, children.pod),       # last: it needs the others
)


async def create_children(rt: Runtime, agent: Mapping[str, Any]) -> None:
    """Create whatever of the agent's children is missing. Idempotent (409 AlreadyExists is fine
    when the existing object is ours)."""
    ns = agent["metadata"]["namespace"]
    uid_label = label_value(agent["metadata"]["uid"])
    bodies = [(res, build(agent)) for res, build in CHILD_BUILDERS]
    # The credentials and the prompt are independent; the pod goes last.
    first = [(res, body) for res, body in bodies[:-1] if body is not None]
    made = list(await asyncio.gather(*(_create(rt, res, ns, body, uid_label) for res, body in first)))
    made.append(await _create(rt, bodies[-1][0], ns, bodies[-1][1], uid_label))
    # Every child exists and is known by UID: the cleanup can delete them without listing first.
    kinds = [KIND_OF_RESOURCE[res] for res, _ in first] + [KIND_OF_RESOURCE[bodies[-1][0]]]
    rt.children.record(agent["metadata"]["uid"], agent["metadata"]["name"],
                       tuple(Child.of(kind, obj) for kind, obj in zip(kinds, made)))


async def _create(rt: Runtime, res: Resource, ns: str, body: Mapping[str, Any], uid_label: str) -> dict[str, Any]:
    """Create the child (or find it, ours, from an earlier attempt); returns it as the API has it."""
    try:
        created = await rt.client.create(res, ns, body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        existing = await rt.client.get(res, ns, body["metadata"]["name"])
        owner = (existing.get("metadata", {}).get("labels") or {}).get(AGENT_UID_LABEL)
        if owner != uid_label:
            raise ChildConflict(f"{res.plural}/{body['metadata']['name']} exists and belongs to another owner") \
                from exc
        created = existing
    return created
