"""High availability: is this replica the active one among its kopf peers?

With `--peering NAME`, kopf pauses every replica but the one with the highest priority. kopf pauses
only its own handlers: the sweep, the alarms (deadlines, cleanup delays, TTLs) and the retries of
background cleanups ask the same question themselves before acting (`Runtime.standing_by()`): they
read the peering object kopf maintains (`status` holds each live peer's priority and keep-alive) and
act only when no other live peer has a higher (or equal) priority, and the object exists (without it
kopf stays paused).
"""

from __future__ import annotations

import datetime
import logging
import os
import random
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .kube.client import ApiError, KubeClient, Resource

log = logging.getLogger(__name__)

CLUSTER_PEERINGS = Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)
NAMESPACED_PEERINGS = Resource("kopf.dev", "v1", "kopfpeerings")


def own_identity() -> str:
    pod = os.environ.get("POD_ID") or os.environ.get("POD_NAME")
    base = pod or f"{socket.gethostname()}-{os.getpid()}"
    return f"{base}/{random.randrange(16 ** 6):06x}"


@dataclass
class Peering:
    name: str
    namespace: str | None                 # None: cluster-wide (ClusterKopfPeering)
    identity: str = field(default_factory=own_identity)
    priority: int = field(default_factory=lambda: random.randint(1, 1_000_000))

    def outranked(self, status: Mapping[str, Any], now: datetime.datetime) -> bool:
        """Pure: does a live peer other than us have a priority >= ours?"""
        for peer_id, info in (status or {}).items():
            if peer_id == self.identity or not isinstance(info, dict):
                continue
            try:
                seen = datetime.datetime.fromisoformat(str(info.get("lastseen")).replace("Z", "+00:00"))
                alive = seen + datetime.timedelta(seconds=int(info.get("lifetime", 60))) > now
            except (TypeError, ValueError):
                continue
            if alive and int(info.get("priority", 0)) >= self.priority:
                return True
        return False

    async def active(self, client: KubeClient, now: datetime.datetime) -> bool:
        res = NAMESPACED_PEERINGS if self.namespace else CLUSTER_PEERINGS
        try:
            body = await client.get(res, self.namespace, self.name)
        except ApiError as exc:
            if exc.not_found:
                # kopf (whose peering is mandatory with a name) pauses without it: so do we.
                where = f"KopfPeering {self.namespace}/{self.name}" if self.namespace else \
                    f"ClusterKopfPeering {self.name}"
                log.warning("%s not found: standing by (create it, as the Helm chart does)", where)
                return False
            raise
        return not self.outranked(body.get("status") or {}, now)
