"""Kubernetes Events about Agents (and orphaned objects), as `kubectl describe` / `kubectl events`
show them: CamelCase reasons, `Normal` or `Warning`, and repeats aggregated into one Event whose
`count` and `lastTimestamp` move (as client-go's event recorder does), not one Event per retry.

Best effort: an Event that cannot be posted is logged (a warning if RBAC refused it), never raised.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .kube.client import ApiError, KubeClient
from .kube.resources import EVENTS

log = logging.getLogger(__name__)

NORMAL, WARNING = "Normal", "Warning"
COMPONENT = "agent-controller"
AGGREGATE_WITHIN_SECONDS = 600.0     # a repeat within this window updates the earlier Event
_REMEMBERED = 10_000                 # (object, reason) pairs whose last Event is remembered


@dataclass
class _Posted:
    name: str
    namespace: str
    count: int
    first: str
    at: datetime.datetime


def _ts(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    def __init__(self, client: KubeClient, clock: Callable[[], datetime.datetime]):
        self.client = client
        self.clock = clock
        # object uid -> (reason, type) -> its last aggregated Event (oldest objects forgotten first)
        self._posted: OrderedDict[str, dict[tuple[str, str], _Posted]] = OrderedDict()

    async def post(self, obj: Mapping[str, Any], type_: str, reason: str, message: str,
                   aggregate: bool = False) -> None:
        """Post an Event about `obj`. With `aggregate`, a repeat (same object and reason) within
        AGGREGATE_WITHIN_SECONDS updates the earlier Event (count, message, lastTimestamp)."""
        meta = obj.get("metadata") or {}
        now = self.clock()
        uid = str(meta.get("uid", ""))
        key = (reason, type_)
        earlier = self._posted.get(uid, {}).get(key) if aggregate else None
        if earlier is not None and (now - earlier.at).total_seconds() <= AGGREGATE_WITHIN_SECONDS:
            earlier.count += 1
            earlier.at = now
            try:
                await self.client.patch(EVENTS, earlier.namespace, earlier.name, {
                    "count": earlier.count, "lastTimestamp": _ts(now), "message": message[:1024]})
                self._posted.move_to_end(uid)
                return
            except ApiError as exc:
                if exc.status == 403:
                    # A role without `patch` on events: every repeat becomes an Event of its own.
                    log.warning("event %s of %s/%s not aggregated, posting a new one (does the controller's "
                                "role grant patch on events?): %s", reason, meta.get("namespace"),
                                meta.get("name"), exc)
                else:
                    log.debug("event %s not updated (%s): posting a new one", reason, exc)
        stamp = _ts(now)
        event = {
            "apiVersion": "v1", "kind": "Event",
            # Named as client-go names Events (<object>.<unix nanos in hex>): they sort in the order posted.
            "metadata": {"name": f"{str(meta.get('name', 'object'))[:236]}.{time.time_ns():x}",
                         "namespace": meta.get("namespace")},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                               "name": meta.get("name"), "namespace": meta.get("namespace"),
                               "uid": meta.get("uid"), "resourceVersion": meta.get("resourceVersion")},
            "type": type_, "reason": reason, "message": message[:1024],
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT, "action": reason,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        }
        try:
            created = await self.client.create(EVENTS, meta.get("namespace"), event)
        except ApiError as exc:
            # (a role without `create` on events is the administrator's to fix: said, not hidden)
            (log.warning if exc.status == 403 else log.debug)("event %s not posted: %s", reason, exc)
            return
        if aggregate:
            cmeta = created.get("metadata") or {}
            self._posted.setdefault(uid, {})[key] = _Posted(str(cmeta.get("name", "")),
                                                            str(cmeta.get("namespace", "")), 1, stamp, now)
            self._posted.move_to_end(uid)
            while len(self._posted) > _REMEMBERED:
                self._posted.popitem(last=False)

    def forget(self, uid: str) -> None:
        self._posted.pop(uid, None)
