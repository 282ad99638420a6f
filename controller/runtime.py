"""What the controller's moving parts share at run time: API client, archive, metrics, clock, locks."""

from __future__ import annotations

import asyncio
import datetime
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from .archive import Archive
from .kube.client import KubeClient
from .metrics import Metrics


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class KeyedLocks:
    """One asyncio.Lock per key (an agent UID), dropped when nobody holds a reference."""

    def __init__(self) -> None:
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def get(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[key] = lock
        return lock


class PodTracker:
    """Wakes cleanups that wait for a pod to go away, from the pod watch (no polling requests)."""

    def __init__(self) -> None:
        self._gone: dict[str, asyncio.Event] = {}

    def waiter(self, pod_uid: str) -> asyncio.Event:
        return self._gone.setdefault(pod_uid, asyncio.Event())

    def forget(self, pod_uid: str) -> None:
        self._gone.pop(pod_uid, None)

    def pod_deleted(self, pod_uid: str) -> None:
        event = self._gone.get(pod_uid)
        if event is not None:
            event.set()


@dataclass
class Runtime:
    client: KubeClient
    archive: Archive
    metrics: Metrics
    clock: Callable[[], datetime.datetime] = utcnow
    force_delete_after: float = 30.0      # SPEC: force-delete the pod grace + 30 s after asking
    pod_poll_interval: float = 2.0        # fallback when the pod watch is not running
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    pods: PodTracker = field(default_factory=PodTracker)
    cleaned: set[str] = field(default_factory=set)   # agent UIDs whose cleanup succeeded in this process
    terminal_at: dict[str, datetime.datetime] = field(default_factory=dict)  # uid -> when this process saw it end
    cleanup_durations: list[float] = field(default_factory=list)   # seconds, for the demo's summary (last 10 000)
    archive_failing: set[str] = field(default_factory=set)   # agent UIDs whose pod is kept: archive failing
    namespaces: tuple[str, ...] = ()                  # empty: all namespaces
