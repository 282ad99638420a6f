"""Noticing: what the handlers and the pod watch do with what they see — count it, enqueue the
Agent's key. Nothing here decides (that is decide.py) or acts (sync.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import api
from .podwatch import PodInfo
from .runtime import Runtime
from .sync import key_of

log = logging.getLogger(__name__)

FINALIZER_WAIT_SECONDS = 60.0     # the finalizer handler waits this long per call, then kopf calls again


def agent_event(rt: Runtime, event: Mapping[str, Any]) -> None:
    """Every state of every Agent, as the watch delivers it: count phase transitions, enqueue."""
    body = event.get("object") or {}
    meta = body.get("metadata") or {}
    uid = str(meta.get("uid", ""))
    if event.get("type") == "DELETED":
        rt.forget_agent(uid)
        rt.recent.pop(key_of(body), None)
        rt.queue.forget(key_of(body))
        return
    key = key_of(body)
    if rt.queue.stale(key, body):
        return          # older than what this process wrote or saw already: old news
    rt.remember(body)
    rt.observe_phase(uid, str((body.get("status") or {}).get("phase") or ""))
    rt.queue.add(key, hint=body)


async def agent_deleted(rt: Runtime, body: Mapping[str, Any]) -> None:
    """The finalizer's handler: enqueue the Agent and wait until its cleanup succeeded (kopf removes
    the finalizer when this returns). A long cleanup (a pod's grace period) outlasts one call: kopf
    calls again."""
    status = body.get("status") or {}
    if (status.get("cleanup") or {}).get("state") == api.CLEANUP_SUCCEEDED:
        return
    uid = str(body["metadata"]["uid"])
    done = rt.cleanup_done(uid)
    rt.queue.add(key_of(body), hint=dict(body))
    try:
        await asyncio.wait_for(asyncio.shield(done), FINALIZER_WAIT_SECONDS)
    except TimeoutError:
        raise kopf.TemporaryError("the cleanup is still running", delay=0.1) from None


def pod_changed(rt: Runtime, old: PodInfo | None, new: PodInfo | None) -> None:
    """The pod watch saw a managed pod change (or go): its Agent decides again, if what the decision
    sees of the pod changed."""
    pod = new or old
    assert pod is not None
    if old is not None and new is not None and old.state == new.state:
        return          # only container names or restarts moved: nothing the decision looks at
    if api.is_terminal(rt.phases.get(pod.owner_uid)):
        return          # a terminal Agent's pod is its cleanup's business (which the watch wakes)
    if pod.owner_name:
        log.debug("pod %s/%s changed (%s): enqueue its agent", pod.namespace, pod.name,
                  new.state.phase if new is not None else "gone")
        rt.queue.add((pod.namespace, pod.owner_name))
