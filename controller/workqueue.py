"""The work queue: every trigger enqueues an Agent's key; one `sync(key)` at a time per key.

Modelled on client-go's rate-limited delaying work queue, as Kubernetes' own controllers use it
(the TTL-after-finished controller: handlers `enqueue`, a worker runs `processJob(key)`, "not yet"
is `enqueueAfter(t)`, an error is `AddRateLimited(key)`):

- `add(key, hint)`: the key is due now. A key already waiting is not added twice (bursts coalesce);
  a key being processed is marked dirty and processed once more after the current run, never by two
  workers at once.
- `add_after(key, seconds)`: due later (a deadline, a cleanup delay, a TTL: whatever `decide()` asked
  for). Only the earliest pending time of a key is kept.
- the worker's result: `None` (done), a number (look again then), or an exception (retry after
  `retry_delay(failures)`, or the `Retry-After` an API answer asked for).
- `wait(key)`: wait until a run of `key` that started after this call has finished; the finalizer
  uses it to hold the Agent until its cleanup succeeded.

`hint` is the newest body of the object the caller saw (a watch event's, a write's answer), kept only
while the key waits: `sync` uses it instead of reading the object again, and drops it after the run.
A hint older than (or as old as) one already seen for the key is old news — a watch that lags behind
the controller's own writes — and is dropped with its add: the newer state was, or will be, synced.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)

RETRY_BASE_SECONDS = 0.5
RETRY_CAP_SECONDS = 300.0


def retry_delay(failures: int, *, base: float = RETRY_BASE_SECONDS, cap: float = RETRY_CAP_SECONDS,
                jitter: float = 0.1, rand: Callable[[], float] = random.random) -> float:
    """The one retry policy: exponential (base, 2 base, 4 base, ...) capped at `cap`, with +-`jitter`
    (a fraction) so that a burst of failures does not retry in lockstep. `failures` counts from 1."""
    delay = base * 2.0 ** min(max(0, failures - 1), 64)       # (no overflow after thousands of failures)
    return max(0.0, min(cap, delay * (1.0 + jitter * (2.0 * rand() - 1.0))))


class Retry(Exception):
    """Raised by a worker: try this key again after `delay` seconds (None: the retry policy decides).
    `counts` says whether it counts as a failure for the backoff (a conflict does not)."""

    def __init__(self, message: str, delay: float | None = None, counts: bool = True):
        super().__init__(message)
        self.delay = delay
        self.counts = counts


@dataclass
class _Entry:
    hint: Any = None
    waiting: bool = False          # in the ready deque
    running: bool = False
    dirty: bool = False            # added while running: run again afterwards
    due: float | None = None       # earliest pending add_after (loop time)
    failures: int = 0
    generation: int = 0            # bumped by each run that starts (for wait())
    finished: int = 0              # generation of the latest finished run
    waiters: list[tuple[int, asyncio.Future[Any]]] = field(default_factory=list)
    last_error: BaseException | None = None


Worker = Callable[[Any, Any], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    """An asyncio work queue with per-key exclusivity, coalescing, delays and retries.

    `concurrency` bounds how many keys are processed at once (each run is a task)."""

    def __init__(self, worker: Worker, *, concurrency: int = 1000, name: str = "agents",
                 delay_for: Callable[[int, BaseException], float] | None = None):
        self._worker = worker
        self._name = name
        self._entries: dict[K, _Entry] = {}
        self._ready: asyncio.Queue[K] | None = None
        self._delayed: list[tuple[float, int, K]] = []       # heap of (due, seq, key)
        self._seq = itertools.count()
        self._wake: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._concurrency = concurrency
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._timer: asyncio.Task[None] | None = None
        self._paused = False
        self._delay_for = delay_for or (lambda failures, exc: retry_delay(failures))
        self._versions: dict[K, int] = {}       # the newest resourceVersion seen per key (until forget)
        self.processed = 0
        self.dropped = 0                         # adds dropped as old news

    # ------------------------------------------------------------------ producers

    def add(self, key: K, hint: Any = None) -> None:
        if hint is not None:
            version = _version(hint)
            if version is not None:
                if version <= self._versions.get(key, -1):
                    self.dropped += 1
                    return
                self._versions[key] = version
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if hint is not None:
            entry.hint = _newer(entry.hint, hint)
        if entry.running:
            entry.dirty = True
            return
        if not entry.waiting:
            entry.waiting = True
            entry.due = None
            if self._ready is not None:
                self._ready.put_nowait(key)

    def stale(self, key: K, hint: Any) -> bool:
        """Is this body older than (or as old as) one already seen for the key? (old news)"""
        version = _version(hint)
        return version is not None and version <= self._versions.get(key, -1)

    def add_after(self, key: K, seconds: float) -> None:
        if seconds <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + seconds
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        if entry.waiting or (entry.due is not None and entry.due <= due):
            return
        entry.due = due
        heapq.heappush(self._delayed, (due, next(self._seq), key))
        if self._wake is not None:
            self._wake.set()

    def forget(self, key: K) -> None:
        """The object is gone: drop its pending delays, hint and failure count (not a run in progress)."""
        self._versions.pop(key, None)
        entry = self._entries.get(key)
        if entry is not None and not entry.running and not entry.waiting:
            self._entries.pop(key, None)
            self._settle(entry, None)

    async def wait(self, key: K, *, timeout: float | None = None) -> None:
        """Wait for a run of `key` that starts after this call to finish; raises what it raised.
        The key is added if it is not pending."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        entry.waiters.append((entry.generation + 1, future))
        self.add(key)
        await asyncio.wait_for(asyncio.shield(future), timeout)

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self, key: K) -> bool:
        entry = self._entries.get(key)
        return entry is not None and (entry.waiting or entry.running or entry.due is not None)

    def running(self) -> int:
        """How many keys are being synced now."""
        return len(self._tasks)

    def failures(self, key: K) -> int:
        entry = self._entries.get(key)
        return entry.failures if entry else 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self._ready = asyncio.Queue()
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self._concurrency)
        for key, entry in self._entries.items():
            if entry.waiting:
                self._ready.put_nowait(key)
        self._runner = asyncio.create_task(self._run(), name=f"{self._name}-queue")
        self._timer = asyncio.create_task(self._timers(), name=f"{self._name}-timers")

    def pause(self, paused: bool = True) -> None:
        """While paused, due keys wait (a replica that is not the leader)."""
        self._paused = paused
        if not paused and self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        for task in (self._runner, self._timer):
            if task is not None:
                task.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*(t for t in (self._runner, self._timer) if t is not None), *tasks,
                             return_exceptions=True)
        for entry in self._entries.values():      # no run will come: every wait ends
            for _, future in entry.waiters:
                if not future.done():
                    future.set_exception(asyncio.CancelledError())
            entry.waiters = []

    # ------------------------------------------------------------------ internals

    async def _timers(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._delayed and self._delayed[0][0] <= now and not self._paused:
                due, _, key = heapq.heappop(self._delayed)
                entry = self._entries.get(key)
                if entry is None or entry.due != due:
                    continue          # superseded (added meanwhile, or an earlier time was set)
                entry.due = None
                self.add(key)
            self._wake.clear()
            timeout = None if not self._delayed or self._paused else max(0.0, self._delayed[0][0] - now)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _run(self) -> None:
        assert self._ready is not None and self._slots is not None
        while True:
            key = await self._ready.get()
            while self._paused:
                await asyncio.sleep(0.2)
            await self._slots.acquire()
            entry = self._entries.get(key)
            if entry is None or not entry.waiting:
                self._slots.release()
                continue
            entry.waiting = False
            entry.running = True
            entry.generation += 1
            hint, entry.hint = entry.hint, None
            task = asyncio.create_task(self._process(key, entry, hint), name=f"{self._name}-sync")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _process(self, key: K, entry: _Entry, hint: Any) -> None:
        assert self._slots is not None
        error: BaseException | None = None
        again: float | None = None
        try:
            again = await self._worker(key, hint)
            entry.failures = 0
        except asyncio.CancelledError:
            entry.running = False
            self._slots.release()
            raise
        except Retry as exc:
            error = exc
            if exc.counts:
                entry.failures += 1
            again = exc.delay if exc.delay is not None else self._delay_for(max(1, entry.failures), exc)
        except Exception as exc:  # noqa: BLE001 - a worker failure is retried, never fatal
            error = exc
            entry.failures += 1
            again = self._delay_for(entry.failures, exc)
            log.warning("sync of %s failed (%s: %s); retrying in %.1fs", key, type(exc).__name__, exc, again)
        finally:
            self.processed += 1
        entry.running = False
        entry.last_error = error
        entry.finished = entry.generation
        self._slots.release()
        self._settle(entry, error)
        if entry.dirty:
            entry.dirty = False
            self.add(key)
        elif again is not None:
            self.add_after(key, again)
        elif not entry.waiting and entry.due is None and not entry.waiters and entry.hint is None:
            self._entries.pop(key, None)     # nothing pending: keep no state for it

    @staticmethod
    def _settle(entry: _Entry, error: BaseException | None) -> None:
        keep = []
        for generation, future in entry.waiters:
            if future.done():
                continue
            if generation <= entry.finished:
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)
            else:
                keep.append((generation, future))
        entry.waiters = keep


def _version(body: Any) -> int | None:
    try:
        return int(str((body.get("metadata") or {}).get("resourceVersion")))
    except (TypeError, ValueError, AttributeError):
        return None


def _newer(old: Any, new: Any) -> Any:
    """Of two bodies of the same object, the one with the higher resourceVersion (the newer one when
    they cannot be compared)."""
    if old is None:
        return new
    try:
        o = int((old.get("metadata") or {}).get("resourceVersion") or 0)
        n = int((new.get("metadata") or {}).get("resourceVersion") or 0)
    except (TypeError, ValueError, AttributeError):
        return new
    return old if o > n else new
