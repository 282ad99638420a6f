"""What the controller's moving parts share at run time: the API client, the archive, the metrics,
the clock, the work queue, the pod cache, and the little each Agent's sync remembers between runs."""

from __future__ import annotations

import asyncio
import ctypes
import datetime
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api
from .archive import Archive
from .decide import CreateRefusal
from .events import EventRecorder
from .kinds import BY_LABEL
from .kube.client import KubeClient
from .metrics import Metrics
from .names import label_value
from .podwatch import PodCache
from .workqueue import WorkQueue, retry_delay

log = logging.getLogger(__name__)
_GONE_REMEMBERED = 10_000     # uids of Agents seen deleted, kept so that a list made before is not believed

_malloc_trim: Any = None

AgentKey = tuple[str, str]      # (namespace, name): the work queue's key
PARTIAL = "__partial__"         # marks an Agent body that holds only what remember() keeps
_SLIM_META = ("name", "namespace", "uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")
_SLIM_SPEC = ("terminate", "activeDeadlineSeconds", "startDeadlineSeconds", "ttlSecondsAfterFinished", "cleanup")


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


class ChildCache:
    """Which children other than the pod each Agent has, as far as this process knows for sure
    (agent-uid label value -> ((kind label, uid), ...)), so that a first cleanup needs no list before
    its deletes. The pods are the pod cache's (the watch keeps them current).

    An entry is only ever complete: it is recorded after `create_children()` created (or found) every
    child of the agent in this process. An agent without one (created before this process started)
    is cleaned up the thorough way (a list per kind before and after the deletes). The cleanup's
    verdict never rests on it: the deletes' answers and a fresh pod list decide. Entries go with the
    cleanup's success or the Agent's deletion.
    """

    def __init__(self) -> None:
        self._known: dict[str, tuple[tuple[str, str], ...]] = {}

    def __len__(self) -> int:
        return len(self._known)

    def get(self, agent_uid: str) -> tuple[tuple[str, str], ...] | None:
        return self._known.get(label_value(agent_uid))

    def record(self, agent_uid: str, children: tuple[tuple[str, str], ...]) -> None:
        assert all(kind in BY_LABEL and kind != "pod" for kind, _ in children)
        self._known[label_value(agent_uid)] = children

    def forget(self, agent_uid: str) -> None:
        self._known.pop(label_value(agent_uid), None)


@dataclass
class Runtime:
    client: KubeClient
    archive: Archive
    metrics: Metrics
    clock: Callable[[], datetime.datetime] = utcnow
    force_delete_after: float = api.FORCE_DELETE_AFTER_GRACE_SECONDS
    pod_security: str = "restricted"
    namespaces: tuple[str, ...] = ()                  # empty: all namespaces
    queue: WorkQueue[AgentKey] = field(init=False)
    pods: PodCache = field(default_factory=PodCache)
    events: EventRecorder = field(init=False)
    children: ChildCache = field(default_factory=ChildCache)
    refusals: dict[str, CreateRefusal] = field(default_factory=dict)   # agent uid -> last refused creation
    leftovers: set[str] = field(default_factory=set)   # agent uids the sweep found leftovers of
    phases: dict[str, str] = field(default_factory=dict)      # agent uid -> phase last seen on the watch
    gone: OrderedDict[str, None] = field(default_factory=OrderedDict)   # agent uids seen deleted (latest)
    terminal_at: dict[str, datetime.datetime] = field(default_factory=dict)  # uid -> when this process saw it end
    archive_failing: set[str] = field(default_factory=set)   # agent uids whose pod is kept: archive failing
    retrying: dict[str, float] = field(default_factory=dict)   # agent uid -> Unix time its cleanup first failed
    backoffs: dict[str, tuple[int, float]] = field(default_factory=dict)   # agent uid -> (failures, retry at)
    recent: dict[AgentKey, bytes] = field(default_factory=dict)   # the last state of each Agent, slim (remember)
    cleanup_durations: list[float] = field(default_factory=list)   # seconds, for the demo's summary (last 10 000)
    cleaned: dict[str, asyncio.Future[None]] = field(default_factory=dict)   # uid -> resolved on cleanup success
    captures: dict[str, Any] = field(default_factory=dict)   # agent uid -> logs.LiveCapture of its running pod
    cleaned_at: dict[str, float] = field(default_factory=dict)   # uid -> time.monotonic() of its last cleanup success
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)   # background work, by name
    fence: Callable[[], bool] = lambda: True          # False once this replica may have lost its lease
    ship: Any = None              # ship.ShipTarget: where agentctl run ships output (None: not offered)
    shipments: dict[str, Any] = field(default_factory=dict)   # archive dir -> ship.Shipment (agentctl run output)

    def __post_init__(self) -> None:
        from .sync import sync

        self.events = EventRecorder(self.client, self.clock)
        self.queue = WorkQueue(lambda key, hint: sync(self, key, hint))
        self.metrics.set_phase_source(lambda: Counter(p or api.PENDING for p in self.phases.values()))
        self.metrics.set_retrying_source(lambda: self.retrying.values())

    def cleanup_done(self, uid: str) -> asyncio.Future[None]:
        """A future resolved when this Agent's cleanup succeeded (the finalizer waits on it)."""
        future = self.cleaned.get(uid)
        if future is None or (future.done() and future.cancelled()):
            future = self.cleaned[uid] = asyncio.get_running_loop().create_future()
        return future

    def mark_cleaned(self, uid: str) -> None:
        self.cleaned_at[uid] = time.monotonic()
        self.retrying.pop(uid, None)
        self.backoffs.pop(uid, None)
        future = self.cleaned.get(uid)
        if future is not None and not future.done():
            future.set_result(None)

    def observe_phase(self, uid: str, phase: str) -> None:
        """The Agent's phase as last seen (on the watch, or as this process wrote it): a change is a
        transition (counted once, whichever is seen first)."""
        previous = self.phases.get(uid)
        self.phases[uid] = phase
        if previous is not None and phase and phase != previous:
            self.metrics.phase_transitions.labels(to=phase).inc()
            if api.is_terminal(phase):
                self.terminal_at.setdefault(uid, self.clock())

    def phases_listed(self, agents: Iterable[Mapping[str, Any]]) -> None:
        """The sweep's list of the Agents: one the watch never showed this process is added to the
        phase gauge (as an informer's resync would), and said — the gauge counts every Agent."""
        missed = []
        for agent in agents:
            uid = str((agent.get("metadata") or {}).get("uid", ""))
            if uid and uid not in self.phases and uid not in self.gone:
                self.phases[uid] = str((agent.get("status") or {}).get("phase") or "")
                missed.append((agent.get("metadata") or {}).get("name", ""))
        if missed:
            log.warning("the Agent watch had not shown %d Agents the sweep listed (now counted): %s",
                        len(missed), ", ".join(sorted(missed)[:20]))

    def remember(self, body: Mapping[str, Any]) -> None:
        """Keep the little of an Agent that a sync started by a pod event needs (compact JSON): what
        decide() reads and what a status write needs (resourceVersion, conditions) — not the pod
        template, env or prompt. A sync that must create children or clean up reads the whole Agent."""
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        slim = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                "metadata": {k: meta[k] for k in _SLIM_META if k in meta},
                "spec": {k: spec[k] for k in _SLIM_SPEC if k in spec},
                "status": body.get("status") or {}}
        self.recent[(str(meta.get("namespace", "")), str(meta.get("name", "")))] = json.dumps(slim).encode()

    def recall(self, key: AgentKey) -> dict[str, Any] | None:
        """The remembered part of an Agent (see remember), marked partial."""
        raw = self.recent.get(key)
        if raw is None:
            return None
        body: dict[str, Any] = json.loads(raw)
        body[PARTIAL] = True
        return body

    def back_off(self, uid: str, delay: float | None = None) -> float:
        """An attempt for this Agent failed (a refused creation, a failed cleanup): the next one waits
        `delay` seconds, or the retry policy's delay for the failures so far. Returns the delay."""
        failures = self.backoffs.get(uid, (0, 0.0))[0] + 1
        if delay is None:
            delay = retry_delay(failures, base=1.0)
        self.backoffs[uid] = (failures, time.monotonic() + delay)
        return delay

    def retry_in(self, uid: str) -> float:
        """Seconds until the next attempt for this Agent may run (0: now)."""
        entry = self.backoffs.get(uid)
        return max(0.0, entry[1] - time.monotonic()) if entry else 0.0

    def forget_agent(self, uid: str) -> None:
        """The Agent is gone: drop what this process remembered of it."""
        self.phases.pop(uid, None)
        self.gone[uid] = None
        while len(self.gone) > _GONE_REMEMBERED:
            self.gone.popitem(last=False)
        self.children.forget(uid)
        self.refusals.pop(uid, None)
        self.leftovers.discard(uid)
        self.terminal_at.pop(uid, None)
        self.archive_failing.discard(uid)
        self.retrying.pop(uid, None)
        self.backoffs.pop(uid, None)
        self.events.forget(uid)
        self.cleaned_at.pop(uid, None)
        live = self.captures.pop(uid, None)
        if live is not None:
            live.cancel()
        future = self.cleaned.pop(uid, None)
        if future is not None and not future.done():
            future.cancel()

    def spawn(self, key: str, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` in the background unless work for `key` is still running (then it is dropped)."""
        running = self.tasks.get(key)
        if running is not None and not running.done():
            work.close()
            return False
        task = asyncio.get_running_loop().create_task(work, name=key)
        self.tasks[key] = task
        task.add_done_callback(lambda t: self.tasks.pop(key, None) if self.tasks.get(key) is t else None)
        return True

    async def release_memory_periodically(self, every: float = 10.0) -> None:
        """Keep the resident size close to what is in use after bursts of work (see release_free_memory)."""
        while True:
            await asyncio.sleep(every)
            release_free_memory()

    async def cancel_tasks(self) -> None:
        reading = [t for live in list(self.captures.values()) for t in live.cancel()]
        await asyncio.gather(*reading, return_exceptions=True)   # (their in-progress files stay)
        tasks = [t for t in self.tasks.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
