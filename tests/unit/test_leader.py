"""controller/leader.py against an in-memory Lease API and a fake monotonic clock.

Time is the fake clock's: `asyncio.sleep` inside the elector advances it (and yields once), so
"15 s without a renewal" takes no real time, and every assertion about when something happened is
about the fake clock, never the wall clock.
"""

from __future__ import annotations

import asyncio
import copy
import random
import types
from typing import Any

import pytest

from aiotest import async_test
from controller import leader as leader_mod
from controller.kube.client import ApiError
from controller.kube.resources import LEASES
from controller.leader import LeaderElector

NS, NAME = "ctl", "agent-controller"
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 15.0, 10.0, 2.0


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeLeases:
    """The Lease API of one namespace: get / create / replace with resourceVersion conflicts.
    `yielding` makes every call suspend once (to interleave two electors' rounds)."""

    def __init__(self) -> None:
        self.leases: dict[str, dict[str, Any]] = {}
        self.version = 0
        self.fail = False            # every call answers 500
        self.yielding = False
        self.writes: list[tuple[str, dict[str, Any]]] = []

    async def _enter(self, res: Any, ns: Any) -> None:
        assert res is LEASES and ns == NS
        if self.yielding:
            await asyncio.sleep(0)
        if self.fail:
            raise ApiError(500, "InternalError", "etcd is down")

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.leases[stored["metadata"]["name"]] = stored
        return copy.deepcopy(stored)

    async def get_or_none(self, res: Any, ns: str, name: str) -> dict[str, Any] | None:
        await self._enter(res, ns)
        lease = self.leases.get(name)
        return copy.deepcopy(lease) if lease is not None else None

    async def get(self, res: Any, ns: str, name: str) -> dict[str, Any]:
        lease = await self.get_or_none(res, ns, name)
        if lease is None:
            raise ApiError(404, "NotFound", f'leases "{name}" not found')
        return lease

    async def create(self, res: Any, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._enter(res, ns)
        name = body["metadata"]["name"]
        if name in self.leases:
            raise ApiError(409, "AlreadyExists", f'leases "{name}" already exists')
        self.writes.append(("create", copy.deepcopy(body)))
        return self._stored(body)

    async def replace(self, res: Any, ns: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._enter(res, ns)
        current = self.leases.get(name)
        if current is None:
            raise ApiError(404, "NotFound", f'leases "{name}" not found')
        if (body.get("metadata") or {}).get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise ApiError(409, "Conflict", "the object has been modified; please apply your changes to the "
                                            "latest version and try again")
        self.writes.append(("replace", copy.deepcopy(body)))
        return self._stored(body)

    def holder(self) -> str | None:
        lease = self.leases.get(NAME)
        return None if lease is None else lease["spec"].get("holderIdentity")


def elector(api: FakeLeases, clock: Clock, identity: str) -> LeaderElector:
    return LeaderElector(api, NS, NAME, identity=identity, lease_duration=LEASE_DURATION,  # type: ignore[arg-type]
                         renew_deadline=RENEW_DEADLINE, retry_period=RETRY_PERIOD, monotonic=clock)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api() -> FakeLeases:
    return FakeLeases()


@pytest.fixture
def fake_sleep(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> list[Any]:
    """The elector's asyncio.sleep advances the fake clock. Append callables to the returned list to
    run them (they may be coroutine functions) after every sleep: other replicas' rounds."""
    real_sleep = asyncio.sleep
    hooks: list[Any] = []

    async def sleep(seconds: float) -> None:
        clock.t += seconds
        for hook in list(hooks):
            result = hook()
            if asyncio.iscoroutine(result):
                await result
        await real_sleep(0)
    monkeypatch.setattr(leader_mod, "asyncio", types.SimpleNamespace(sleep=sleep))
    return hooks


def test_timings_must_be_ordered(api, clock):
    for duration, deadline, period in ((15, 10, 10), (10, 10, 2), (10, 15, 2)):
        with pytest.raises(ValueError):
            LeaderElector(api, NS, NAME, lease_duration=duration, renew_deadline=deadline,  # type: ignore[arg-type]
                          retry_period=period, monotonic=clock)


# ---------------------------------------------------------------- acquiring

@async_test
async def test_acquires_a_lease_that_does_not_exist(api, clock):
    a = elector(api, clock, "a")
    assert not a.valid() and not a.leading
    assert await a._try()
    assert a.valid() and a.leading and api.holder() == "a"
    spec = api.leases[NAME]["spec"]
    assert spec["leaseDurationSeconds"] == 15 and spec["leaseTransitions"] == 0
    assert spec["acquireTime"] and spec["renewTime"]
    assert api.leases[NAME]["metadata"]["namespace"] == NS


@async_test
async def test_acquire_returns_at_once_when_free(api, clock, fake_sleep):
    a = elector(api, clock, "a")
    await a.acquire()
    assert clock.t == 0.0 and a.valid() and api.holder() == "a"


@async_test
async def test_acquires_a_released_lease_at_once(api, clock):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    await a.release()
    assert api.holder() == "" and not a.leading and not a.valid()
    assert await b._try()                 # no lease_duration wait: the holder gave it up
    assert api.holder() == "b" and b.valid()
    assert api.leases[NAME]["spec"]["leaseTransitions"] == 1 and b.transitions == 1


@async_test
async def test_renewing_keeps_the_acquire_time(api, clock):
    a = elector(api, clock, "a")
    assert await a._try()
    acquired = api.leases[NAME]["spec"]["acquireTime"]
    clock.t += 2
    assert await a._try()
    assert api.leases[NAME]["spec"]["acquireTime"] == acquired
    assert api.leases[NAME]["spec"]["leaseTransitions"] == 0 and a.transitions == 0


@async_test
async def test_stands_by_while_the_lease_is_held_and_renewed(api, clock):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    for _ in range(60):                    # two minutes of the holder renewing every retry period
        clock.t += RETRY_PERIOD
        assert await a._try()
        assert not await b._try()
        assert a.valid() and not b.valid() and not b.leading
    assert api.holder() == "a"


@async_test
async def test_acquire_stands_by_then_takes_over_after_lease_duration_without_renewals(api, clock, fake_sleep):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    renewals: list[float] = []

    async def a_renews() -> None:
        if clock.t <= 20.0 and await a._try():
            renewals.append(clock.t)
    fake_sleep.append(a_renews)
    both: list[float] = []
    fake_sleep.append(lambda: both.append(clock.t) if a.valid() and b.valid() else None)
    await b.acquire()
    assert renewals[-1] == 20.0                          # a's last renewal (then a hung)
    assert clock.t - renewals[-1] >= LEASE_DURATION      # b waited a lease duration on its own clock
    assert clock.t - renewals[-1] < LEASE_DURATION + 2 * RETRY_PERIOD
    assert api.holder() == "b" and b.valid() and not a.valid()
    assert both == []


@async_test
async def test_takes_over_as_measured_on_its_own_clock_not_by_the_holders_timestamps(api, clock):
    """A lease renewed (by its timestamps) a day ago, or a day in the future (clock skew): either
    way a newcomer waits lease_duration from when it first saw the Lease unchanged."""
    for renew_time in ("2000-01-01T00:00:00.000000Z", "2999-01-01T00:00:00.000000Z"):
        api.leases.clear()
        clock.t = 1000.0
        await api.create(LEASES, NS, {"metadata": {"name": NAME, "namespace": NS},
                                      "spec": {"holderIdentity": "dead", "leaseDurationSeconds": 15,
                                               "renewTime": renew_time, "acquireTime": renew_time,
                                               "leaseTransitions": 4}})
        b = elector(api, clock, "b")
        assert not await b._try()
        clock.t += LEASE_DURATION - 0.1
        assert not await b._try()
        clock.t += 0.1
        assert await b._try()
        assert api.holder() == "b" and api.leases[NAME]["spec"]["leaseTransitions"] == 5


@async_test
async def test_uses_the_lease_duration_the_holder_wrote(api, clock):
    await api.create(LEASES, NS, {"metadata": {"name": NAME, "namespace": NS},
                                  "spec": {"holderIdentity": "slow", "leaseDurationSeconds": 40}})
    b = elector(api, clock, "b")
    assert not await b._try()
    clock.t = 39.9
    assert not await b._try()
    clock.t = 40.0
    assert await b._try()


@async_test
async def test_a_renewal_seen_restarts_the_count(api, clock):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    assert not await b._try()              # b sees version 1 at t=0
    clock.t = 10.0
    assert await a._try()                  # a renews at t=10 (b does not look)
    clock.t = 12.0
    assert not await b._try()              # b sees the new version at t=12: counts from there
    clock.t = 26.9
    assert not await b._try()
    clock.t = 27.0
    assert await b._try()


@async_test
async def test_two_candidates_in_one_round_never_both_win(api, clock):
    api.yielding = True                    # both read the same version before either writes
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    results = await asyncio.gather(a._try(), b._try())
    assert sorted(results) == [False, True]
    assert api.holder() == ("a" if results[0] else "b")
    # And again over a released lease (both replace the same resourceVersion).
    winner, loser = (a, b) if results[0] else (b, a)
    await winner.release()
    results = await asyncio.gather(a._try(), b._try())
    assert sorted(results) == [False, True]
    assert sum(1 for e in (a, b) if e.valid()) == 1


@pytest.mark.parametrize("seed", range(20))
@async_test
async def test_two_electors_never_both_hold(api, clock, seed):
    """Random interleavings of rounds, pauses (SIGSTOP: no rounds), releases and clock steps: at no
    point are both valid(), and a valid() elector is the holder of record."""
    rng = random.Random(seed)
    electors = [elector(api, clock, "a"), elector(api, clock, "b")]
    paused = [False, False]
    leaderships = 0
    for _ in range(400):
        i = rng.randrange(2)
        action = rng.random()
        if action < 0.35:
            clock.t += rng.choice([0.5, 1.0, 2.0, 3.0, 7.0, 11.0])
        elif action < 0.45:
            paused[i] = not paused[i]
        elif action < 0.48:
            if not paused[i]:
                await electors[i].release()
        elif not paused[i]:
            was = electors[i].valid()
            if await electors[i]._try() and not was:
                leaderships += 1
        valid = [e.valid() for e in electors]
        assert not all(valid), f"both hold at t={clock.t}"
        for e, v in zip(electors, valid):
            if v:
                assert api.holder() == e.identity
    assert leaderships >= 2          # the scenario did move the lease around


# ---------------------------------------------------------------- holding

@async_test
async def test_hold_renews_every_retry_period(api, clock, fake_sleep):
    a = elector(api, clock, "a")
    await a.acquire()
    fake_sleep.append(lambda: a.valid() or pytest.fail(f"not valid at t={clock.t}"))
    task = asyncio.ensure_future(a.hold())
    while clock.t < 60:
        await asyncio.sleep(0)
    task.cancel()
    renewals = [w for w in api.writes if w[0] == "replace"]
    assert len(renewals) >= 60 / RETRY_PERIOD - 1
    assert api.holder() == "a" and a.leading


@async_test
async def test_hold_returns_after_renew_deadline_without_a_successful_renewal(api, clock, fake_sleep):
    a = elector(api, clock, "a")
    await a.acquire()
    last_success = [0.0]

    def outage() -> None:
        if clock.t >= 7.0:
            api.fail = True              # the API server goes away after t=7
        elif a.valid():
            last_success[0] = clock.t
    fake_sleep.append(outage)
    await a.hold()
    assert not a.leading and not a.valid()
    assert clock.t - last_success[0] >= RENEW_DEADLINE           # it tried until the renew deadline
    assert clock.t - last_success[0] < LEASE_DURATION            # and stopped before another may take over


@async_test
async def test_hold_returns_when_another_replica_holds_the_lease(api, clock, fake_sleep):
    a = elector(api, clock, "a")
    await a.acquire()

    def stolen() -> None:
        if clock.t >= 4.0 and api.holder() == "a":
            lease = api.leases[NAME]
            lease["spec"]["holderIdentity"] = "usurper"
            api.version += 1
            lease["metadata"]["resourceVersion"] = str(api.version)
    fake_sleep.append(stolen)
    await a.hold()
    assert not a.leading and api.holder() == "usurper"
    assert clock.t < 4.0 + LEASE_DURATION


def test_valid_is_false_right_after_a_pause_longer_than_the_renew_deadline(api, clock):
    a = elector(api, clock, "a")
    assert asyncio.run(a._try())
    clock.t += RENEW_DEADLINE - 0.1
    assert a.valid()
    clock.t += 0.2          # the process was stopped: no renewal could run, and none has
    assert not a.valid()
    assert a.leading        # hold() has not noticed yet; the fence already says no


@async_test
async def test_a_leader_that_resumes_after_a_takeover_does_not_get_the_lease_back(api, clock):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    assert not await b._try()
    clock.t = LEASE_DURATION            # a was paused all along
    assert not a.valid()
    assert await b._try()
    assert not await a._try()           # a wakes up: b holds it, renewed as far as a has seen
    assert not a.valid() and b.valid()


# ---------------------------------------------------------------- releasing

@async_test
async def test_release_empties_the_holder(api, clock):
    a = elector(api, clock, "a")
    assert await a._try()
    await a.release()
    spec = api.leases[NAME]["spec"]
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert not a.leading and not a.valid()


@async_test
async def test_release_without_holding_does_nothing(api, clock):
    a, b = elector(api, clock, "a"), elector(api, clock, "b")
    assert await a._try()
    writes = len(api.writes)
    await b.release()
    assert len(api.writes) == writes and api.holder() == "a"


@async_test
async def test_release_never_clears_another_holder(api, clock):
    a = elector(api, clock, "a")
    assert await a._try()
    api.leases[NAME]["spec"]["holderIdentity"] = "b"       # b took over meanwhile
    await a.release()
    assert api.holder() == "b" and not a.leading


@async_test
async def test_release_survives_an_api_error(api, clock):
    a = elector(api, clock, "a")
    assert await a._try()
    api.fail = True
    await a.release()
    assert not a.leading
