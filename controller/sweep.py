"""The periodic safety net (SPEC §4 "Sweep").

Every interval: one list of Agents and one metadata-only list per managed kind by the managed-by
label (chunked; no per-object GETs), joined in memory. What should not exist is classified:

- `orphaned`: its Agent (by UID) does not exist. Confirmed by a read of the Agent made *after* the
  object was listed (an Agent created while the sweep ran is not in its list of Agents), and objects
  younger than one interval are left alone. Orphan pods are archived under `_orphans/<pod uid>/`,
  then everything is deleted (UID preconditions);
- `terminal`: its Agent is terminal and past its grace period + 60 s: the Agent's key is enqueued
  with the finding, and its `sync` runs the same cleanup as always (thorough: lists again);
- `archive_failed`: a pod kept because its archive keeps failing: its cleanup is tried again.

The listing runs under a timeout: a hanging API makes that sweep fail visibly, never hang. Reaping
runs apart from it, one task per object (or Agent): a slow or stuck reap never fails a sweep, is
reported on its own (a log line and an Event naming the object) and tried again by a later sweep;
only what was really removed counts as reaped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import api
from .events import WARNING
from .kinds import BY_LABEL, CHILD_KINDS, LABELS
from .kube.client import ApiError
from .kube.resources import AGENTS, PODS
from .cleanup import delete_child
from .logs import archive_and_stop_pods
from .metrics import LEAK_REASONS
from .names import AGENT_UID_LABEL, MANAGED_SELECTOR
from .runtime import Runtime, release_free_memory

log = logging.getLogger(__name__)

TERMINAL_GRACE_EXTRA = 60.0
LIST_PAGE = 500
REAP_WAIT_SECONDS = 600.0      # how long a terminal Agent's reap waits for its cleanup before the next sweep


@dataclass
class Leak:
    kind: str
    reason: str
    obj: dict[str, Any]
    agent: dict[str, Any] | None = None
    owner_name: str = ""       # the controlling Agent's name (ownerReferences), to confirm an orphan
    listed_at: float = 0.0     # time.monotonic() when the sweep began to list (see _reap_agent)

    @property
    def key(self) -> str:
        return str(self.obj["metadata"].get("uid"))


@dataclass
class SweepReport:
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    reaped: Counter[str] = field(default_factory=Counter)      # filled in as the reaps finish
    errors: list[str] = field(default_factory=list)
    objects: int = 0
    young: int = 0                 # orphan candidates left alone: younger than one interval
    confirmed_alive: int = 0       # orphan candidates whose Agent a fresh read found
    seconds: float = 0.0


class Classifier:
    """Pure: should this managed object exist, given the Agents and the time? A Leak if not (an
    `orphaned` one only a candidate: `Sweeper` confirms it with a fresh read)."""

    def __init__(self, agents: Sequence[Mapping[str, Any]], now: Any, archive_failing: set[str]):
        self.by_uid = {a["metadata"]["uid"]: a for a in agents}
        self.now = now
        self.archive_failing = archive_failing

    def __call__(self, kind: str, obj: Mapping[str, Any]) -> Leak | None:
        owner = (obj["metadata"].get("labels") or {}).get(AGENT_UID_LABEL, "")
        agent = self.by_uid.get(owner)
        if agent is None:
            return Leak(kind, "orphaned", dict(obj))
        status = agent.get("status") or {}
        if not api.is_terminal(status.get("phase")):
            return None
        spec = api.AgentSpec.from_dict(agent.get("spec") or {})
        if kind == "pod" and spec.cleanup.logs == api.LOGS_ARCHIVE and owner in self.archive_failing:
            return Leak(kind, "archive_failed", dict(obj), dict(agent))
        finished = api.parse_time(status.get("completionTime"))
        if finished is None:
            return None     # the agent reported its end just now: its cleanup has not even begun
        allowance = spec.cleanup.grace_period_seconds + spec.cleanup.delay_seconds + TERMINAL_GRACE_EXTRA
        if (self.now - finished).total_seconds() > allowance:
            return Leak(kind, "terminal", dict(obj), dict(agent))
        return None


class Sweeper:
    def __init__(self, rt: Runtime, interval: float = 60.0, timeout: float | None = None,
                 acting: Callable[[], bool] = lambda: True, orphan_min_age: float | None = None):
        self.rt = rt
        self.orphan_min_age = interval if orphan_min_age is None else orphan_min_age
        self.acting = acting             # with leader election: only the leader sweeps
        self.interval = interval
        rt.metrics.sweep_interval.set(interval)
        self.timeout = timeout if timeout is not None else 30.0
        self.started_at = time.time()
        self.last_success: float | None = None
        self.last_report: SweepReport | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()      # one sweep at a time (periodic or on demand)
        self._detected: dict[str, None] = {}     # leak keys already counted (bounded, insertion-ordered)
        self._reaps: set[asyncio.Task[None]] = set()
        self._reaping: set[str] = set()          # objects (or Agents) being reaped now

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.started_at = time.time()
        self._task = asyncio.create_task(self._loop(), name="sweep")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._reaps) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def healthy(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if not self.acting():
            return True            # a standby replica: nothing to sweep, nothing wrong
        reference = self.last_success if self.last_success is not None else self.started_at
        return now - reference <= 3 * self.interval

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)   # the first sweep after one interval: let the watches settle
            await self.run_once()

    async def run_once(self) -> SweepReport | None:
        """One sweep (the listing under the timeout; the reaps start and go on apart).
        Failures are recorded, never raised."""
        async with self._lock:
            return await self._run_once_locked()

    async def reaps_settled(self) -> None:
        """Wait for the reaps started so far (tests and the demo)."""
        while self._reaps:
            await asyncio.gather(*list(self._reaps), return_exceptions=True)

    async def _run_once_locked(self) -> SweepReport | None:
        began = time.perf_counter()
        if not self.acting():
            return SweepReport()
        try:
            report, leaks = await asyncio.wait_for(self.find(), timeout=self.timeout)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - a sweep failure must not kill the loop
            self.last_error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log.warning("sweep failed: %s", self.last_error)
            self.rt.metrics.sweep_duration.observe(time.perf_counter() - began)
            return None
        report.seconds = time.perf_counter() - began
        release_free_memory()       # the lists are garbage now: give the heap back
        self.rt.metrics.sweep_duration.observe(report.seconds)
        self.last_success = time.time()
        self.rt.metrics.last_sweep_success.set(self.last_success)
        self.last_report = report
        self.last_error = None
        self._reap(leaks, report)
        return report

    # ----------------------------------------------------------------- finding

    async def _list_agents(self, scopes: list[str | None]) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = []
        for ns in scopes:
            async for page in self.rt.client.list_pages(AGENTS, ns, limit=LIST_PAGE):
                agents.extend(_slim_agent(a) for a in page.get("items") or [])
        return agents

    async def _classify_children(self, scopes: list[str | None], classifier: Classifier,
                                 report: SweepReport) -> list[Leak]:
        """One list per managed kind (by the managed-by label), per namespace, as metadata only
        (PartialObjectMetadataList, in pages): a full pod is several KB. Each page is classified and
        dropped before the next: only the leaks are kept."""
        leaks: list[Leak] = []
        for kind in CHILD_KINDS:
            for ns in scopes:
                async for page in self.rt.client.list_pages(kind.resource, ns, label_selector=MANAGED_SELECTOR,
                                                            metadata_only=True, limit=LIST_PAGE):
                    items = page.get("items") or []
                    report.objects += len(items)
                    for obj in items:
                        leak = classifier(kind.label, obj)
                        if leak is not None:
                            leak.owner_name = _owner_name(leak.obj)
                            leak.obj = _slim_child(kind.label, leak.obj)
                            leaks.append(leak)
        return leaks

    async def _confirm_orphans(self, leaks: list[Leak], report: SweepReport) -> list[Leak]:
        """An orphan is one only if its Agent's absence is confirmed by a read made after the object
        was listed, and the object is older than one interval."""
        now = self.rt.clock()
        confirmed: list[Leak] = []
        agents: dict[tuple[str, str], dict[str, Any] | None] = {}
        for leak in leaks:
            if leak.reason != "orphaned":
                confirmed.append(leak)
                continue
            meta = leak.obj["metadata"]
            created = api.parse_time(meta.get("creationTimestamp"))
            if created is not None and (now - created).total_seconds() < self.orphan_min_age:
                report.young += 1
                continue
            owner_uid = (meta.get("labels") or {}).get(AGENT_UID_LABEL, "")
            if leak.owner_name:
                where = (meta.get("namespace", ""), leak.owner_name)
                if where not in agents:
                    agents[where] = await self.rt.client.get_or_none(AGENTS, *where)
                agent = agents[where]
                if agent is not None and agent["metadata"].get("uid", "")[:63] == owner_uid:
                    report.confirmed_alive += 1
                    continue
            confirmed.append(leak)
        return confirmed

    async def find(self) -> tuple[SweepReport, list[Leak]]:
        rt = self.rt
        # Memory, not time, is the cost of a sweep over 10 000s of objects: one list at a time (the
        # Agents first, cut down at once to what classification needs), and of the managed objects
        # only the leaks are kept. Still one list per kind (and of the Agents), per namespace.
        scopes: list[str | None] = list(rt.namespaces) or [None]
        report = SweepReport()
        listed_at = time.monotonic()
        agents = await self._list_agents(scopes)
        rt.phases_listed(agents)
        classifier = Classifier(agents, rt.clock(), set(rt.archive_failing))
        del agents
        leaks = await self._classify_children(scopes, classifier, report)
        del classifier
        leaks = await self._confirm_orphans(leaks, report)
        for leak in leaks:
            leak.listed_at = listed_at
            report.found[(leak.kind, leak.reason)] += 1
            if leak.key not in self._detected:
                self._detected[leak.key] = None
                rt.metrics.leaks_detected.labels(kind=leak.kind, reason=leak.reason).inc()
        while len(self._detected) > 100_000:
            self._detected.pop(next(iter(self._detected)))
        for kind in LABELS:
            for reason in LEAK_REASONS:
                rt.metrics.leaked.labels(kind=kind, reason=reason).set(report.found.get((kind, reason), 0))
        if leaks:
            log.info("sweep: %d leaked resources found", len(leaks),
                     extra={"found": {f"{k}/{r}": n for (k, r), n in report.found.items()}})
        return report, leaks

    # ----------------------------------------------------------------- reaping (apart from the listing)

    def _reap(self, leaks: list[Leak], report: SweepReport) -> None:
        by_agent: dict[str, list[Leak]] = {}
        for leak in leaks:
            if leak.agent is None:
                self._start(f"object/{leak.key}", self._reap_orphan(leak, report))
            else:
                by_agent.setdefault(leak.agent["metadata"]["uid"], []).append(leak)
        for uid, items in by_agent.items():
            self._start(f"agent/{uid}", self._reap_agent(items, report))

    def _start(self, key: str, work: Any) -> None:
        if key in self._reaping:
            work.close()        # still being reaped since an earlier sweep
            return
        self._reaping.add(key)

        async def run() -> None:
            try:
                await work
            finally:
                self._reaping.discard(key)

        task = asyncio.create_task(run(), name=f"reap-{key}")
        self._reaps.add(task)
        task.add_done_callback(self._reaps.discard)

    def _reaped(self, leak: Leak, report: SweepReport) -> None:
        report.reaped[leak.kind] += 1
        self.rt.metrics.leaks_reaped.labels(kind=leak.kind).inc()

    async def _reap_orphan(self, leak: Leak, report: SweepReport) -> None:
        rt = self.rt
        obj = leak.obj
        meta = obj["metadata"]
        what = f"{leak.kind} {meta.get('namespace')}/{meta.get('name')}"
        try:
            if leak.kind == "pod":
                pod = await rt.client.get_same(PODS, obj)   # listed as metadata: containers, grace
                if pod is None:
                    return      # gone meanwhile
                directory = rt.archive.orphan_dir(meta["namespace"], meta["uid"])
                archived = await archive_and_stop_pods(rt, directory, [pod], _grace(pod), extra_files={})
                if not archived.already_existed:      # an orphan's archive counts like an Agent's
                    rt.metrics.archived_bytes.inc(archived.bytes)
                if await rt.client.get_same(PODS, pod) is not None:
                    raise RuntimeError("still present after its deletion (a finalizer, or its node is gone)")
            else:
                if not await delete_child(rt, leak.kind, obj):
                    raise RuntimeError("still present after its deletion (a finalizer holds it)")
        except Exception as exc:  # noqa: BLE001 - reported per object, tried again by a later sweep
            report.errors.append(f"{what}: {exc}")
            log.warning("sweep: could not reap orphaned %s: %s", what, exc)
            await rt.events.post(obj, WARNING, "ReapFailed", f"The sweep could not remove this orphaned "
                                 f"{leak.kind} (its Agent no longer exists): {exc}", aggregate=True)
            return
        self._reaped(leak, report)
        await rt.events.post(obj, WARNING, "LeakReaped",
                             f"Orphaned {leak.kind} {meta.get('name')} (its Agent no longer exists) was "
                             f"{'archived and ' if leak.kind == 'pod' else ''}deleted by the sweep.")
        log.info("sweep reaped orphaned %s", leak.kind,
                 extra={"kind": leak.kind, "reason": leak.reason, "object": f"{meta.get('namespace')}/{meta.get('name')}"})

    async def _reap_agent(self, leaks: list[Leak], report: SweepReport) -> None:
        """Leftovers of a terminal Agent: its own sync cleans them up (the same cleanup as always)."""
        rt = self.rt
        agent = leaks[0].agent
        assert agent is not None
        meta = agent["metadata"]
        key = (meta["namespace"], meta["name"])
        if rt.cleaned_at.get(meta["uid"], -1.0) >= leaks[0].listed_at:
            # Its cleanup succeeded after this sweep began to list: the finding predates it (what is
            # left, if anything, the next sweep finds again).
            return
        rt.leftovers.add(meta["uid"])
        rt.backoffs.pop(meta["uid"], None)      # the sweep's finding is tried now, whatever the last failure
        try:
            await rt.queue.wait(key, timeout=REAP_WAIT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - reported; the Agent's own retries go on
            report.errors.append(f"agent {meta['namespace']}/{meta['name']}: {exc}")
            return
        if meta["uid"] in rt.leftovers:
            return
        for leak in leaks:
            self._reaped(leak, report)
        await rt.events.post(agent, WARNING, "LeakReaped",
                             f"The sweep reaped {len(leaks)} leftover resource(s) of this terminal Agent "
                             f"({', '.join(sorted({leak.reason for leak in leaks}))}).")


def _owner_name(obj: Mapping[str, Any]) -> str:
    return str(next((r.get("name", "") for r in (obj.get("metadata") or {}).get("ownerReferences") or []
                     if r.get("controller") and r.get("kind") == "Agent"), ""))


def _slim_child(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """A listed managed object (full, or metadata only), as the sweep keeps it."""
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    slim_meta = {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                 "creationTimestamp": meta.get("creationTimestamp"),
                 "labels": {AGENT_UID_LABEL: labels[AGENT_UID_LABEL]} if AGENT_UID_LABEL in labels else {}}
    child = BY_LABEL[kind]
    return {"apiVersion": child.api_version, "kind": child.kind, "metadata": slim_meta}


def _slim_agent(agent: Mapping[str, Any]) -> dict[str, Any]:
    """A listed Agent, as classification needs it (the reaping reads the whole Agent again)."""
    meta = agent.get("metadata") or {}
    spec = agent.get("spec") or {}
    status = agent.get("status") or {}
    return {"apiVersion": agent.get("apiVersion"), "kind": agent.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "deletionTimestamp") if k in meta},
            "spec": {k: spec[k] for k in ("image", "cleanup") if k in spec},
            "status": {k: status[k] for k in ("phase", "completionTime") if k in status}}


def _grace(pod: Mapping[str, Any]) -> int:
    return int((pod.get("spec") or {}).get("terminationGracePeriodSeconds") or api.DEFAULT_GRACE_SECONDS)
