"""controller/workqueue.py: coalescing, per-key exclusivity, delays, retries, wait(), pause, stop.

Delays are milliseconds; the assertions are about order and counts, never about durations.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from aiotest import async_test, until
from controller import workqueue
from controller.workqueue import Retry, WorkQueue, retry_delay

FAST = 0.001     # a retry delay that is as good as "at once"


class Recorder:
    """A worker that records its runs (key, hint), may block on a gate, and may fail as told."""

    def __init__(self) -> None:
        self.runs: list[tuple[Any, Any]] = []
        self.active: dict[Any, int] = {}
        self.max_active: dict[Any, int] = {}
        self.max_total = 0
        self.gates: dict[Any, asyncio.Event] = {}
        self.outcomes: dict[Any, list[Any]] = {}      # key -> what successive runs return or raise
        self.started = asyncio.Event()

    def keys(self) -> list[Any]:
        return [k for k, _ in self.runs]

    def count(self, key: Any) -> int:
        return self.keys().count(key)

    def gate(self, key: Any) -> asyncio.Event:
        return self.gates.setdefault(key, asyncio.Event())

    async def __call__(self, key: Any, hint: Any) -> float | None:
        self.runs.append((key, hint))
        self.active[key] = self.active.get(key, 0) + 1
        self.max_active[key] = max(self.max_active.get(key, 0), self.active[key])
        self.max_total = max(self.max_total, sum(self.active.values()))
        self.started.set()
        try:
            gate = self.gates.get(key)
            if gate is not None:
                await gate.wait()
            else:
                await asyncio.sleep(0)
            pending = self.outcomes.get(key)
            outcome = pending.pop(0) if pending else None
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        finally:
            self.active[key] -= 1


@contextlib.asynccontextmanager
async def started(worker: Any, **kwargs: Any) -> AsyncIterator[WorkQueue[Any]]:
    kwargs.setdefault("delay_for", lambda failures, exc: FAST)
    q: WorkQueue[Any] = WorkQueue(worker, **kwargs)
    q.start()
    try:
        yield q
    finally:
        await q.stop()


async def idle(q: WorkQueue[Any]) -> None:
    """Nothing waiting, running or delayed any more."""
    await until(lambda: len(q) == 0)


# ---------------------------------------------------------------- coalescing

@async_test
async def test_adds_before_start_coalesce_into_one_run():
    w = Recorder()
    q: WorkQueue[str] = WorkQueue(w)
    for _ in range(10):
        q.add("a")
    q.add("b")
    q.start()
    try:
        await idle(q)
        await asyncio.sleep(0.01)
        assert sorted(w.keys()) == ["a", "b"]
    finally:
        await q.stop()


@async_test
async def test_a_burst_of_adds_is_one_run():
    w = Recorder()
    async with started(w) as q:
        for _ in range(100):
            q.add("a")
        await idle(q)
        await asyncio.sleep(0.01)
        assert w.keys() == ["a"]
        assert q.processed == 1


@async_test
async def test_separate_adds_after_a_run_run_again():
    w = Recorder()
    async with started(w) as q:
        q.add("a")
        await idle(q)
        q.add("a")
        await idle(q)
        assert w.keys() == ["a", "a"]


# ---------------------------------------------------------------- per-key exclusivity

@async_test
async def test_an_add_during_a_run_means_exactly_one_more_run_after_it():
    w = Recorder()
    gate = w.gate("a")
    async with started(w) as q:
        q.add("a")
        await w.started.wait()
        for _ in range(5):
            q.add("a")            # during the run: marked dirty, not started beside it
        await asyncio.sleep(0.01)
        assert w.count("a") == 1 and q.pending("a")
        gate.set()
        await idle(q)
        await asyncio.sleep(0.01)
        assert w.count("a") == 2
        assert w.max_active["a"] == 1


@async_test
async def test_never_two_runs_of_one_key_at_once_under_load():
    w = Recorder()
    async with started(w) as q:
        for round_ in range(50):
            for key in ("a", "b", "c"):
                q.add(key)
            if round_ % 7 == 0:
                q.add_after("a", FAST)
            await asyncio.sleep(0)
        await idle(q)
        assert all(n == 1 for n in w.max_active.values()), w.max_active
        assert {"a", "b", "c"} == set(w.keys())


@async_test
async def test_different_keys_run_concurrently():
    w = Recorder()
    w.gate("a")
    async with started(w) as q:
        q.add("a")
        q.add("b")
        # b ran to its end while a is held (its task's done callback, which the running count
        # follows, runs a loop turn after its entry is gone)
        await until(lambda: w.count("b") == 1 and len(q) == 1 and q.running() == 1)
        assert q.pending("a") and not q.pending("b")
        w.gate("a").set()
        await idle(q)


@async_test
async def test_concurrency_bounds_the_keys_processed_at_once():
    w = Recorder()
    for key in range(6):
        w.gate(key)
    async with started(w, concurrency=2) as q:
        for key in range(6):
            q.add(key)
        await until(lambda: len(w.runs) == 2)
        await asyncio.sleep(0.01)
        assert len(w.runs) == 2 and q.running() == 2
        for key in range(6):
            w.gate(key).set()
        await idle(q)
        assert sorted(w.keys()) == list(range(6)) and w.max_total <= 2


# ---------------------------------------------------------------- delays

@async_test
async def test_add_after_runs_later_in_due_order():
    w = Recorder()
    async with started(w) as q:
        q.add_after("late", 0.05)
        q.add_after("early", 0.01)
        assert w.runs == [] and q.pending("late") and q.pending("early")
        await idle(q)
        assert w.keys() == ["early", "late"]


@async_test
async def test_add_after_keeps_the_earliest_time():
    w = Recorder()
    async with started(w) as q:
        q.add_after("a", 0.05)
        q.add_after("b", 0.03)
        q.add_after("a", 0.01)      # earlier: replaces 0.05
        q.add_after("a", 10.0)      # later: ignored
        await until(lambda: w.count("b") == 1)
        assert w.keys() == ["a", "b"]
        await asyncio.sleep(0.05)   # the superseded 0.05 passes: no second run
        assert w.keys() == ["a", "b"] and len(q) == 0


@async_test
async def test_add_supersedes_a_pending_delay():
    w = Recorder()
    async with started(w) as q:
        q.add_after("a", 0.02)
        q.add("a")
        await idle(q)
        await asyncio.sleep(0.04)
        assert w.keys() == ["a"]


@async_test
async def test_add_after_zero_or_less_is_now():
    w = Recorder()
    async with started(w) as q:
        q.add_after("a", 0)
        q.add_after("b", -5)
        await idle(q)
        assert sorted(w.keys()) == ["a", "b"]


@async_test
async def test_add_after_while_running_runs_once_more_after_the_run():
    w = Recorder()
    gate = w.gate("a")
    async with started(w) as q:
        q.add("a")
        await w.started.wait()
        q.add_after("a", FAST)
        await asyncio.sleep(0.01)
        assert w.count("a") == 1
        gate.set()
        await idle(q)
        assert w.count("a") == 2 and w.max_active["a"] == 1


@async_test
async def test_worker_result_requeues_after_that_many_seconds():
    w = Recorder()
    w.outcomes["a"] = [FAST, 0.0, None]
    async with started(w) as q:
        q.add("a")
        await idle(q)
        assert w.count("a") == 3


@async_test
async def test_forget_drops_a_pending_delay_and_the_failure_count():
    w = Recorder()
    w.outcomes["a"] = [RuntimeError("boom")]
    async with started(w, delay_for=lambda failures, exc: 60.0) as q:
        q.add("a")
        await until(lambda: q.failures("a") == 1)      # failed: due again in 60 s
        assert q.pending("a")
        q.forget("a")
        assert not q.pending("a") and q.failures("a") == 0 and len(q) == 0
        q.add_after("b", 0.02)
        q.forget("b")
        await asyncio.sleep(0.06)
        assert w.keys() == ["a"]


@async_test
async def test_forget_leaves_a_run_in_progress_alone():
    w = Recorder()
    gate = w.gate("a")
    async with started(w) as q:
        q.add("a")
        await w.started.wait()
        q.add("a")
        q.forget("a")
        assert q.pending("a")
        gate.set()
        await idle(q)
        assert w.count("a") == 2


# ---------------------------------------------------------------- hints

def body(rv: Any) -> dict[str, Any]:
    return {"metadata": {"name": "a", "resourceVersion": rv}}


@async_test
async def test_the_hint_kept_is_the_one_with_the_highest_resource_version():
    w = Recorder()
    q: WorkQueue[str] = WorkQueue(w)
    for rv in ("5", "3", "12", "7"):
        q.add("a", hint=body(rv))
    q.add("a")                  # no hint: keeps the one it has
    q.start()
    try:
        await idle(q)
        assert w.runs == [("a", body("12"))]
    finally:
        await q.stop()


@async_test
async def test_the_hint_is_dropped_after_the_run():
    w = Recorder()
    async with started(w) as q:
        q.add("a", hint=body("1"))
        await idle(q)
        q.add("a")
        await idle(q)
        assert [h for _, h in w.runs] == [body("1"), None]


@async_test
async def test_a_hint_given_during_a_run_goes_to_the_next_run():
    w = Recorder()
    gate = w.gate("a")
    async with started(w) as q:
        q.add("a", hint=body("1"))
        await w.started.wait()
        q.add("a", hint=body("2"))
        gate.set()
        await idle(q)
        assert [h for _, h in w.runs] == [body("1"), body("2")]


def test_newer_of_two_bodies():
    newer = workqueue._newer
    assert newer(None, body("1")) == body("1")
    assert newer(body("9"), body("10")) == body("10")       # compared as numbers, not strings
    assert newer(body("10"), body("9")) == body("10")
    assert newer(body("x"), body("y")) == body("y")         # not comparable: the newer one
    assert newer(body("4"), body("4")) == body("4")


# ---------------------------------------------------------------- wait()

@async_test
async def test_wait_adds_the_key_and_returns_after_its_run():
    w = Recorder()
    async with started(w) as q:
        await q.wait("a")
        assert w.keys() == ["a"]


@async_test
async def test_wait_waits_for_a_run_that_starts_after_the_call():
    w = Recorder()
    gate = w.gate("a")
    seen_done: list[bool] = []
    async with started(w) as q:
        q.add("a")
        await w.started.wait()
        waiter = asyncio.ensure_future(q.wait("a"))
        await asyncio.sleep(0.01)
        w.gates.pop("a")             # the next run does not block
        w.outcomes["a"] = [None]

        original = w.__call__

        async def watching(key: Any, hint: Any) -> float | None:
            seen_done.append(waiter.done())
            return await original(key, hint)
        q._worker = watching         # observe the waiter at the start of the second run
        gate.set()                   # the run in progress ends: the waiter is not satisfied by it
        await waiter
        assert w.count("a") == 2 and seen_done == [False]


@async_test
async def test_wait_raises_what_the_run_raised():
    w = Recorder()
    w.outcomes["a"] = [ValueError("boom")]
    async with started(w, delay_for=lambda failures, exc: 60.0) as q:
        with pytest.raises(ValueError, match="boom"):
            await q.wait("a")
        assert q.failures("a") == 1 and q.pending("a")     # retried later


@async_test
async def test_wait_raises_a_retry():
    w = Recorder()
    w.outcomes["a"] = [Retry("not yet", delay=60.0)]
    async with started(w) as q:
        with pytest.raises(Retry):
            await q.wait("a")


@async_test
async def test_wait_with_a_timeout():
    w = Recorder()
    w.gate("a")
    async with started(w) as q:
        with pytest.raises(TimeoutError):
            await q.wait("a", timeout=0.01)
        w.gate("a").set()


@async_test
async def test_several_waiters_of_one_run():
    w = Recorder()
    async with started(w) as q:
        await asyncio.gather(q.wait("a"), q.wait("a"), q.wait("a"))
        assert w.keys() == ["a"]


# ---------------------------------------------------------------- retries

@async_test
async def test_retry_with_a_delay_runs_again_and_counts_a_failure():
    w = Recorder()
    w.outcomes["a"] = [Retry("again", delay=FAST), None]
    failures: list[int] = []
    async with started(w, delay_for=lambda f, e: pytest.fail("the Retry's delay is used")) as q:
        original = w.__call__

        async def watching(key: Any, hint: Any) -> float | None:
            failures.append(q.failures(key))
            return await original(key, hint)
        q._worker = watching
        q.add("a")
        await idle(q)
    assert w.count("a") == 2 and failures == [0, 1]


@async_test
async def test_retry_that_does_not_count():
    w = Recorder()
    w.outcomes["a"] = [Retry("conflict", delay=0.0, counts=False), Retry("conflict", counts=False), None]
    calls: list[int] = []
    failures: list[int] = []

    def delay_for(f: int, exc: BaseException) -> float:
        calls.append(f)
        return FAST
    async with started(w, delay_for=delay_for) as q:
        original = w.__call__

        async def watching(key: Any, hint: Any) -> float | None:
            failures.append(q.failures(key))
            return await original(key, hint)
        q._worker = watching
        q.add("a")
        await idle(q)
    assert failures == [0, 0, 0]
    assert calls == [1]        # no delay given: the policy's, for at least one failure


@async_test
async def test_exceptions_are_retried_with_retry_delay_of_the_failures_so_far(monkeypatch):
    calls: list[int] = []

    def fake_retry_delay(failures: int, **kwargs: Any) -> float:
        calls.append(failures)
        return FAST
    monkeypatch.setattr(workqueue, "retry_delay", fake_retry_delay)
    w = Recorder()
    w.outcomes["a"] = [RuntimeError("1"), OSError("2"), KeyError("3"), None]
    q: WorkQueue[str] = WorkQueue(w)        # the default policy
    q.start()
    try:
        q.add("a")
        await idle(q)
    finally:
        await q.stop()
    assert w.count("a") == 4 and calls == [1, 2, 3]


@async_test
async def test_success_resets_the_failure_count():
    w = Recorder()
    w.outcomes["a"] = [RuntimeError("x"), RuntimeError("y"), None, RuntimeError("z")]
    calls: list[int] = []

    def delay_for(f: int, exc: BaseException) -> float:
        calls.append(f)
        return FAST
    async with started(w, delay_for=delay_for) as q:
        q.add("a")
        await idle(q)
        q.add("a")
        await until(lambda: w.count("a") == 5)
        await idle(q)
    assert calls == [1, 2, 1]


# ---------------------------------------------------------------- pause, stop

@async_test
async def test_paused_queue_holds_due_keys_until_resumed():
    w = Recorder()
    q: WorkQueue[str] = WorkQueue(w, delay_for=lambda f, e: FAST)
    q.pause()
    q.start()
    try:
        q.add("a")
        q.add_after("b", FAST)
        await asyncio.sleep(0.05)
        assert w.runs == [] and q.pending("a") and q.pending("b")
        q.pause(False)
        await idle(q)
        assert sorted(w.keys()) == ["a", "b"]
    finally:
        await q.stop()


@async_test
async def test_pause_does_not_stop_a_run_in_progress():
    w = Recorder()
    gate = w.gate("a")
    async with started(w) as q:
        q.add("a")
        await w.started.wait()
        q.pause()
        gate.set()
        await until(lambda: not q.pending("a"))
        assert w.count("a") == 1
        q.add("a")
        await asyncio.sleep(0.05)
        assert w.count("a") == 1
        q.pause(False)
        await idle(q)
        assert w.count("a") == 2


def cancel_recording(w: Recorder, cancelled: list[Any]) -> Any:
    original = w.__call__

    async def worker(key: Any, hint: Any) -> float | None:
        try:
            return await original(key, hint)
        except asyncio.CancelledError:
            cancelled.append(key)
            raise
    return worker


@async_test
async def test_stop_cancels_the_runs_in_progress():
    w = Recorder()
    w.gate("a")
    cancelled: list[str] = []
    q: WorkQueue[str] = WorkQueue(cancel_recording(w, cancelled))
    q.start()
    q.add("a")
    q.add_after("b", 60.0)
    await w.started.wait()
    await q.stop()
    assert cancelled == ["a"] and w.keys() == ["a"]
    assert q.running() == 0


@async_test
async def test_stop_ends_the_waits():
    w = Recorder()
    w.gate("a")
    q: WorkQueue[str] = WorkQueue(w)
    q.start()
    q.add("a")
    await w.started.wait()
    during = asyncio.ensure_future(q.wait("a"))          # waits for the run after the one in progress
    q.pause()
    never = asyncio.ensure_future(q.wait("b"))           # its run never starts
    await asyncio.sleep(0.01)
    await q.stop()
    for waiter in (during, never):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiter, 0.5)          # failsafe: stop() must have ended it


# ---------------------------------------------------------------- retry_delay

def test_retry_delay_is_exponential_from_base_without_jitter():
    no_jitter = dict(rand=lambda: 0.5)
    assert [retry_delay(n, **no_jitter) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert retry_delay(0, **no_jitter) == retry_delay(1, **no_jitter) == workqueue.RETRY_BASE_SECONDS
    assert [retry_delay(n, base=1.0, cap=10.0, jitter=0.0) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_retry_delay_is_capped():
    assert retry_delay(30, rand=lambda: 0.5) == workqueue.RETRY_CAP_SECONDS == 300.0
    assert retry_delay(12, base=1.0, cap=30.0, rand=lambda: 0.5) == 30.0


@pytest.mark.parametrize("failures", [1, 2, 5, 9, 10, 11, 40])
@pytest.mark.parametrize("r", [0.0, 0.1, 0.5, 0.9, 0.999999])
def test_retry_delay_jitter_stays_within_its_fraction(failures, r):
    plain = retry_delay(failures, jitter=0.0)
    delay = retry_delay(failures, rand=lambda: r)
    assert plain * 0.9 - 1e-9 <= delay <= plain * 1.1 + 1e-9
    assert delay > 0


def test_retry_delay_jitter_spreads_a_burst():
    import random
    rng = random.Random(7)
    delays = {retry_delay(3, rand=rng.random) for _ in range(50)}
    assert len(delays) > 10


def test_retry_delay_never_exceeds_its_cap():
    assert retry_delay(30, rand=lambda: 0.999999) <= workqueue.RETRY_CAP_SECONDS


def test_retry_delay_of_very_many_failures_is_the_cap():
    assert retry_delay(5000, rand=lambda: 0.5) == workqueue.RETRY_CAP_SECONDS
