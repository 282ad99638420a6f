"""What the controller's moving parts share at run time: API client, archive, metrics, clock, locks."""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import weakref
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from .archive import Archive
from .kube.client import KubeClient
from .metrics import Metrics
from .names import credentials_name, label_value, pod_name, prompt_configmap_name
from .peering import Peering

_malloc_trim: Any = None


def release_free_memory() -> None:
    """Return the freed parts of the C heap to the OS (glibc's malloc_trim; a no-op elsewhere).

    CPython keeps what it frees in the process: after a sweep's large lists or a burst of work the
    resident size would stay at its high-water mark. Cheap (well under a millisecond when there is
    little to give back): every 10 s, and after each sweep.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


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


@dataclass(frozen=True, slots=True)
class Child:
    """The little a cleanup needs of one child object: which one it is, and for a pod, its containers."""

    kind: str
    name: str
    uid: str
    containers: tuple[str, ...] = ()    # pods: init containers, then containers
    restarted: tuple[str, ...] = ()     # pods: containers that restarted (their previous log is archived too)
    finished: str = ""                  # pods: "Succeeded" / "Failed" once every container has ended

    @classmethod
    def of(cls, kind: str, obj: Mapping[str, Any]) -> Child:
        meta = obj.get("metadata") or {}
        if kind != "pod":
            return cls(kind, str(meta.get("name", "")), str(meta.get("uid", "")))
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        containers = tuple(str(c.get("name")) for c in (spec.get("initContainers") or []) + (spec.get("containers") or []))
        restarted = tuple(str(cs.get("name")) for cs in status.get("containerStatuses") or []
                          if int(cs.get("restartCount") or 0) > 0)
        finished = str(status.get("phase")) if status.get("phase") in POD_FINISHED else ""
        return cls(kind, str(meta.get("name", "")), str(meta.get("uid", "")), containers, restarted, finished)

    def body(self, namespace: str) -> dict[str, Any]:
        """A minimal object body, as the cleanup functions take it (a listed object works the same)."""
        obj: dict[str, Any] = {"metadata": {"name": self.name, "namespace": namespace, "uid": self.uid}}
        if self.kind == "pod":
            obj["spec"] = {"containers": [{"name": c} for c in self.containers]}
            obj["status"] = {"containerStatuses": [{"name": c, "restartCount": 1} for c in self.restarted]}
            if self.finished:
                obj["status"]["phase"] = self.finished
        return obj


POD_FINISHED = ("Succeeded", "Failed")


CHILD_NAMES: dict[str, Callable[[str], str]] = {
    "pod": pod_name, "configmap": prompt_configmap_name, "serviceaccount": credentials_name,
    "role": credentials_name, "rolebinding": credentials_name,
}


class ChildCache:
    """Which children of each Agent exist, as far as this process knows for sure (agent-uid label
    value -> its children), so that a cleanup needs no list before its deletes.

    An entry is only ever *complete*: it is recorded after create_children() created (or found) every
    child of the agent in this process. The pod watch keeps the pods' container restarts current. An
    agent without an entry (created before this process started) is cleaned up the thorough way: a
    list per kind before and after the deletes. Whatever the cache says, a cleanup's verdict never
    rests on it: the deletes' answers and a fresh pod list decide. Entries go with the cleanup's
    success or the Agent's deletion.
    """

    def __init__(self) -> None:
        # agent-uid label -> (pod containers, restarted, finished, kind, uid, kind, uid, ...): compact,
        # as it is held for every running Agent; names follow from the agent's name (names.py).
        self._known: dict[str, tuple[Any, ...]] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}    # shared container-name tuples

    def __len__(self) -> int:
        return len(self._known)

    def get(self, agent_uid: str, agent_name: str) -> tuple[Child, ...] | None:
        entry = self._known.get(label_value(agent_uid))
        if entry is None:
            return None
        pod = entry[:3]
        return tuple(Child(kind, CHILD_NAMES[kind](agent_name), uid, *(pod if kind == "pod" else ()))
                     for kind, uid in zip(entry[3::2], entry[4::2]))

    def record(self, agent_uid: str, agent_name: str, children: tuple[Child, ...]) -> None:
        """Every child of the agent exists, as `children` (what create_children made or found)."""
        flat: list[Any] = [(), (), ""]
        for child in children:
            if child.name != CHILD_NAMES[child.kind](agent_name):
                self.forget(agent_uid)      # not named as this process names them: take the thorough way
                return
            if child.kind == "pod":
                flat[:3] = [self._shapes.setdefault(child.containers, child.containers), child.restarted,
                            child.finished]
            flat += [child.kind, child.uid]
        self._known[label_value(agent_uid)] = tuple(flat)

    def forget(self, agent_uid: str) -> None:
        self._known.pop(label_value(agent_uid), None)

    def pod_changed(self, owner_label: str, pod: Mapping[str, Any]) -> None:
        """A pod event (from the watch): keep a known pod's restarts and end current."""
        entry = self._known.get(owner_label)
        if entry is None:
            return
        uid = (pod.get("metadata") or {}).get("uid")
        if any(kind == "pod" and known == uid for kind, known in zip(entry[3::2], entry[4::2])):
            fresh = Child.of("pod", pod)
            if (fresh.restarted, fresh.finished) != entry[1:3]:
                self._known[owner_label] = (entry[0], fresh.restarted, fresh.finished, *entry[3:])


class Alarms:
    """At most one pending call per key (an agent UID), at a delay: asyncio timers, re-armed or
    cancelled as the Agent changes."""

    def __init__(self) -> None:
        self._handles: dict[str, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return len(self._handles)

    def set(self, key: str, delay: float, fire: Callable[[], Any]) -> None:
        self.cancel(key)

        def run() -> None:
            self._handles.pop(key, None)
            fire()

        self._handles[key] = asyncio.get_running_loop().call_later(max(0.0, delay), run)

    def cancel(self, key: str) -> None:
        handle = self._handles.pop(key, None)
        if handle is not None:
            handle.cancel()

    def cancel_all(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()


@dataclass
class Runtime:
    client: KubeClient
    archive: Archive
    metrics: Metrics
    clock: Callable[[], datetime.datetime] = utcnow
    force_delete_after: float = 30.0      # SPEC: force-delete the pod grace + 30 s after asking
    pod_poll_interval: float = 5.0        # fallback when the pod watch is late or not running (it wakes the wait)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    pods: PodTracker = field(default_factory=PodTracker)
    cleaned: set[str] = field(default_factory=set)   # agent UIDs whose cleanup succeeded in this process
    terminal_at: dict[str, datetime.datetime] = field(default_factory=dict)  # uid -> when this process saw it end
    cleanup_durations: list[float] = field(default_factory=list)   # seconds, for the demo's summary (last 10 000)
    archive_failing: set[str] = field(default_factory=set)   # agent UIDs whose pod is kept: archive failing
    namespaces: tuple[str, ...] = ()                  # empty: all namespaces
    children: ChildCache = field(default_factory=ChildCache)   # what exists of each agent's children
    phases: dict[str, str] = field(default_factory=dict)      # agent uid -> phase last seen on the watch
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)   # background work, by agent uid
    alarms: Alarms = field(default_factory=Alarms)     # deadlines, cleanup delays, TTLs
    peering: Peering | None = None                     # with standby replicas (--peering)

    async def standing_by(self) -> bool:
        """Is another replica the active one? kopf pauses only its own handlers and watches: work this
        process started itself (alarms, cleanup retries, the sweep) asks before it acts. A replica that
        stands by drops such work; kopf lists every Agent again when it resumes, which re-arms it."""
        return self.peering is not None and not await self.peering.active(self.client, self.clock())

    def spawn(self, key: str, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` in the background unless work for `key` is still running (then it is dropped)."""
        running = self.tasks.get(key)
        if running is not None and not running.done():
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work, name=f"agent-{key}")
        self.tasks[key] = task
        task.add_done_callback(lambda t: self.tasks.pop(key, None) if self.tasks.get(key) is t else None)
        return True

    async def release_memory_periodically(self, every: float = 10.0) -> None:
        """Keep the resident size close to what is in use after bursts of work (see release_free_memory)."""
        while True:
            await asyncio.sleep(every)
            release_free_memory()

    async def cancel_tasks(self) -> None:
        self.alarms.cancel_all()
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
