"""Leader election on a `coordination.k8s.io/v1` Lease, as Kubernetes' own controllers do it
(client-go's leaderelection): with `--leader-election`, at most one replica acts at a time.

- A candidate reads the Lease; it takes it when nobody holds it, or when the holder has not renewed
  it for `lease_duration` seconds — measured on the candidate's own clock from the moment it *saw*
  the Lease change (never by comparing the holder's timestamps with ours: clocks differ).
- The leader renews every `retry_period` seconds. If it could not renew for `renew_deadline`
  seconds (< lease_duration), it has lost the lease: it stops acting *before* another replica may
  take over. `valid()` is the fence every destructive step and every archive write checks: it
  turns False as soon as the last successful renewal is older than the renew deadline — also right
  after the process was paused (SIGSTOP, a frozen VM) for longer than that, before any renewal
  could happen again.
- On a clean stop the leader releases the Lease (an empty holder), so a standby takes over at once.

Every write carries the Lease's resourceVersion: two candidates can never both win one round.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

from .kube.client import ApiError, KubeClient
from .kube.resources import LEASES

log = logging.getLogger(__name__)


def own_identity() -> str:
    pod = os.environ.get("POD_NAME") or socket.gethostname()
    return f"{pod}_{uuid.uuid4().hex[:8]}"


def _micro(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, client: KubeClient, namespace: str, name: str, *, identity: str | None = None,
                 lease_duration: float = 15.0, renew_deadline: float = 10.0, retry_period: float = 2.0,
                 monotonic: Callable[[], float] = time.monotonic):
        if not retry_period < renew_deadline < lease_duration:
            raise ValueError("leader election needs retry_period < renew_deadline < lease_duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity or own_identity()
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry_period = retry_period
        self.monotonic = monotonic
        self._renewed_at: float | None = None      # monotonic time the last successful renewal was *sent*
        self._observed: tuple[str, float] | None = None   # (the Lease's resourceVersion, when we saw it change)
        self.transitions = 0

    # ------------------------------------------------------------------ the fence

    def valid(self) -> bool:
        """May this replica act? True while it holds the Lease and renewed it recently enough."""
        return self._renewed_at is not None and self.monotonic() - self._renewed_at < self.renew_deadline

    @property
    def leading(self) -> bool:
        return self._renewed_at is not None

    # ------------------------------------------------------------------ acquiring and renewing

    async def acquire(self, on_standby: Callable[[], Any] | None = None) -> None:
        """Return once this replica holds the Lease (`on_standby` is called once if it must wait)."""
        logged = False
        while True:
            if await self._try():
                log.info("leader election: acquired lease %s/%s as %s", self.namespace, self.name, self.identity)
                return
            if not logged:
                log.info("leader election: lease %s/%s is held by another replica; standing by",
                         self.namespace, self.name)
                logged = True
                if on_standby is not None:
                    on_standby()
            await asyncio.sleep(self.retry_period)

    async def hold(self) -> None:
        """Renew the Lease until it is lost; returns when it was (the caller stops everything)."""
        while True:
            await asyncio.sleep(self.retry_period)
            deadline = (self._renewed_at or self.monotonic()) + self.renew_deadline
            while True:
                if self.monotonic() >= deadline:
                    log.error("leader election: could not renew lease %s/%s for %.0fs: stopping",
                              self.namespace, self.name, self.renew_deadline)
                    self._renewed_at = None
                    return
                if await self._try():
                    break
                if not self.valid():
                    self._renewed_at = None
                    log.error("leader election: lease %s/%s lost", self.namespace, self.name)
                    return
                await asyncio.sleep(min(self.retry_period / 2, max(0.0, deadline - self.monotonic())))

    async def release(self) -> None:
        """Give the Lease up (a clean stop): a standby takes over without waiting for it to expire."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            lease = await self.client.get(LEASES, self.namespace, self.name)
            spec = lease.get("spec") or {}
            if spec.get("holderIdentity") != self.identity:
                return
            spec.update({"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": _micro(_now())})
            await self.client.replace(LEASES, self.namespace, self.name, lease)
        except ApiError as exc:
            log.info("leader election: could not release the lease: %s", exc)

    async def _try(self) -> bool:
        """One round: take or renew the Lease. True if this replica holds it (renewed just now)."""
        sent = self.monotonic()
        now = _now()
        try:
            lease = await self.client.get_or_none(LEASES, self.namespace, self.name)
            if lease is None:
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": self.name, "namespace": self.namespace},
                        "spec": self._spec(now, acquire=now, transitions=0)}
                await self.client.create(LEASES, self.namespace, body)
                self._renewed_at = sent
                return True
            spec = lease.get("spec") or {}
            version = str((lease.get("metadata") or {}).get("resourceVersion"))
            holder = spec.get("holderIdentity") or ""
            if self._observed is None or self._observed[0] != version:
                self._observed = (version, sent)
            if holder and holder != self.identity:
                duration = float(spec.get("leaseDurationSeconds") or self.lease_duration)
                if sent - self._observed[1] < duration:
                    return False        # held, and renewed within its duration as far as we have seen
            transitions = int(spec.get("leaseTransitions") or 0)
            acquire = spec.get("acquireTime") if holder == self.identity else None
            if holder != self.identity:
                transitions += 1
                self.transitions += 1
            lease["spec"] = self._spec(now, acquire=acquire or now, transitions=transitions)
            await self.client.replace(LEASES, self.namespace, self.name, lease)
            self._renewed_at = sent
            return True
        except ApiError as exc:
            if exc.status not in (409, 404):
                log.warning("leader election: %s", exc)
            return False

    def _spec(self, now: datetime.datetime, acquire: Any, transitions: int) -> dict[str, Any]:
        return {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.lease_duration),
                "acquireTime": acquire if isinstance(acquire, str) else _micro(acquire),
                "renewTime": _micro(now), "leaseTransitions": transitions}


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)
