"""The periodic safety net (SPEC §4 "Sweep").

Every interval: one list of Agents and one list per managed kind by the managed-by label (no
per-object GETs), joined in memory. What should not exist is classified:

- `orphaned`: its Agent UID no longer exists -> orphan pods are archived under `_orphans/<pod uid>/`,
  then everything is deleted (UID preconditions);
- `terminal`: its Agent is terminal and past its grace period + 60 s -> the same `clean_up()` as the
  reconcile loop (one code path, same per-agent lock, so never concurrently with it);
- `archive_failed`: a pod kept because its archive keeps failing -> the cleanup is retried.

Each sweep runs under a timeout: a hanging API makes that sweep fail visibly, never hang.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import api
from .cleanup import CleanupFailed, archive_and_stop_pods, clean_up, delete_child, post_event
from .kube.client import AGENTS, KIND_RESOURCES, PODS, ApiError
from .metrics import KINDS, LEAK_REASONS
from .names import AGENT_UID_LABEL, MANAGED_SELECTOR
from .peering import Peering
from .runtime import Runtime, release_free_memory

log = logging.getLogger(__name__)

TERMINAL_GRACE_EXTRA = 60.0


@dataclass
class Leak:
    kind: str
    reason: str
    obj: dict[str, Any]
    agent: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return str(self.obj["metadata"].get("uid"))


@dataclass
class SweepReport:
    found: Counter[tuple[str, str]] = field(default_factory=Counter)
    reaped: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    objects: int = 0
    seconds: float = 0.0


class Classifier:
    """Pure: should this managed object exist, given the Agents and the time? A Leak if not."""

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
        allowance = spec.cleanup.grace_period_seconds + spec.cleanup.delay_seconds + TERMINAL_GRACE_EXTRA
        if finished is None or (self.now - finished).total_seconds() > allowance:
            return Leak(kind, "terminal", dict(obj), dict(agent))
        return None


def classify(agents: Sequence[Mapping[str, Any]], objects: Mapping[str, Sequence[Mapping[str, Any]]],
             now: Any, archive_failing: set[str]) -> list[Leak]:
    """Pure: which managed objects should not exist, and why."""
    classifier = Classifier(agents, now, archive_failing)
    return [leak for kind, items in objects.items() for obj in items if (leak := classifier(kind, obj)) is not None]


class Sweeper:
    def __init__(self, rt: Runtime, interval: float = 60.0, timeout: float | None = None,
                 peering: Peering | None = None):
        self.rt = rt
        self.peering = peering           # with standby replicas, only the active one sweeps
        self.interval = interval
        self.timeout = timeout if timeout is not None else 30.0
        self.started_at = time.time()
        self.last_success: float | None = None
        self.last_report: SweepReport | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()      # one sweep at a time (periodic or on demand)
        self._detected: dict[str, None] = {}     # leak keys already counted (bounded, insertion-ordered)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.started_at = time.time()
        self._task = asyncio.create_task(self._loop(), name="sweep")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    def healthy(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        reference = self.last_success if self.last_success is not None else self.started_at
        return now - reference <= 3 * self.interval

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)   # the first sweep after one interval: let the watches settle
            await self.run_once()

    async def run_once(self) -> SweepReport | None:
        """One sweep under the timeout. Failures are recorded, never raised."""
        async with self._lock:
            return await self._run_once_locked()

    async def _run_once_locked(self) -> SweepReport | None:
        began = time.perf_counter()
        try:
            report = await asyncio.wait_for(self.sweep(), timeout=self.timeout)
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
        return report

    # ----------------------------------------------------------------- one sweep

    async def _list_agents(self, scopes: list[str | None]) -> list[dict[str, Any]]:
        agents: list[dict[str, Any]] = []
        for ns in scopes:
            items = json.loads(await self.rt.client.list_raw(AGENTS, ns)).get("items") or []
            agents.extend(_slim_agent(a) for a in items)
            del items
        return agents

    async def _classify_children(self, scopes: list[str | None], classifier: Classifier,
                                 report: SweepReport) -> list[Leak]:
        """One list per managed kind (by the managed-by label), per namespace, as metadata only
        (PartialObjectMetadataList): a full pod is several KB. Each list is fetched, parsed,
        classified and dropped before the next: only the leaks are kept."""
        leaks: list[Leak] = []
        for kind in KINDS:
            for ns in scopes:
                raw = await self.rt.client.list_raw(KIND_RESOURCES[kind], ns, label_selector=MANAGED_SELECTOR,
                                                    metadata_only=True)
                items = json.loads(raw).get("items") or []
                del raw
                report.objects += len(items)
                for obj in items:
                    leak = classifier(kind, obj)
                    if leak is not None:
                        leak.obj = _slim_child(kind, leak.obj)
                        leaks.append(leak)
                del items
        return leaks

    async def sweep(self) -> SweepReport:
        rt = self.rt
        if self.peering is not None and not await self.peering.active(rt.client, rt.clock()):
            return SweepReport()          # a healthy standby: the active replica sweeps
        # Memory, not time, is the cost of a sweep over 10 000s of objects: one list at a time (the
        # Agents first, cut down at once to what classification needs), and of the managed objects
        # only the leaks are kept. Still one list per kind (and of the Agents), per namespace.
        scopes: list[str | None] = list(rt.namespaces) or [None]
        report = SweepReport()
        classifier = Classifier(await self._list_agents(scopes), rt.clock(), set(rt.archive_failing))
        leaks = await self._classify_children(scopes, classifier, report)
        del classifier
        for leak in leaks:
            report.found[(leak.kind, leak.reason)] += 1
            if leak.key not in self._detected:
                self._detected[leak.key] = None
                rt.metrics.leaks_detected.labels(kind=leak.kind, reason=leak.reason).inc()
        while len(self._detected) > 100_000:
            self._detected.pop(next(iter(self._detected)))
        for kind in KINDS:
            for reason in LEAK_REASONS:
                rt.metrics.leaked.labels(kind=kind, reason=reason).set(report.found.get((kind, reason), 0))
        await self._reap(leaks, report)
        if leaks:
            log.info("sweep: %d leaked resources found, %d reaped", len(leaks), sum(report.reaped.values()),
                     extra={"found": {f"{k}/{r}": n for (k, r), n in report.found.items()},
                            "reaped": dict(report.reaped)})
        return report

    async def _reap(self, leaks: list[Leak], report: SweepReport) -> None:
        by_agent: dict[str, list[Leak]] = {}
        orphans: list[Leak] = []
        for leak in leaks:
            if leak.agent is None:
                orphans.append(leak)
            else:
                by_agent.setdefault(leak.agent["metadata"]["uid"], []).append(leak)
        tasks = [self._reap_orphan(leak, report) for leak in orphans]
        tasks += [self._reap_agent(items, report) for items in by_agent.values()]
        await asyncio.gather(*tasks)

    async def _reap_orphan(self, leak: Leak, report: SweepReport) -> None:
        rt = self.rt
        obj = leak.obj
        meta = obj["metadata"]
        try:
            if leak.kind == "pod":
                pod = await rt.client.get_same(PODS, obj)   # listed as metadata: containers, grace
                if pod is None:
                    return      # gone meanwhile
                directory = rt.archive.orphan_dir(meta["namespace"], meta["uid"])
                await archive_and_stop_pods(rt, directory, [pod], _grace(pod), extra_files={})
            else:
                await delete_child(rt, leak.kind, obj)
        except Exception as exc:  # noqa: BLE001 - reported, retried next sweep
            report.errors.append(f"{leak.kind}/{meta.get('name')}: {exc}")
            log.warning("sweep: could not reap orphaned %s %s/%s: %s", leak.kind, meta.get("namespace"),
                        meta.get("name"), exc)
            return
        report.reaped[leak.kind] += 1
        rt.metrics.leaks_reaped.labels(kind=leak.kind).inc()
        await post_event(rt, obj, "Warning", "LeakReaped",
                   f"Orphaned {leak.kind} {meta.get('name')} (its Agent no longer exists) was "
                   f"{'archived and ' if leak.kind == 'pod' else ''}deleted by the sweep.")
        log.info("sweep reaped orphaned %s", leak.kind,
                 extra={"kind": leak.kind, "reason": leak.reason, "object": f"{meta.get('namespace')}/{meta.get('name')}"})

    async def _reap_agent(self, leaks: list[Leak], report: SweepReport) -> None:
        rt = self.rt
        listed = leaks[0].agent
        assert listed is not None
        try:
            agent = await rt.client.get_same(AGENTS, listed)    # the whole Agent, as it is now
            if agent is None:
                return      # gone meanwhile: its leftovers are orphans for the next sweep
            outcome = await clean_up(rt, agent, trigger=api.TRIGGER_SWEEP, recheck=True)
        except (CleanupFailed, ApiError) as exc:
            report.errors.append(f"agent {listed['metadata'].get('name')}: {exc}")
            return
        if outcome.already:
            return    # the reconcile loop finished it first: nothing was reaped by the sweep
        for leak in leaks:
            report.reaped[leak.kind] += 1
            rt.metrics.leaks_reaped.labels(kind=leak.kind).inc()
        await post_event(rt, agent, "Warning", "LeakReaped",
                   f"The sweep reaped {len(leaks)} leftover resource(s) of this terminal Agent "
                   f"({', '.join(sorted({l.reason for l in leaks}))}).")


KIND_TYPES = {"pod": ("v1", "Pod"), "configmap": ("v1", "ConfigMap"), "serviceaccount": ("v1", "ServiceAccount"),
              "role": ("rbac.authorization.k8s.io/v1", "Role"),
              "rolebinding": ("rbac.authorization.k8s.io/v1", "RoleBinding")}


def _slim_child(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    """A listed managed object (full, or metadata only), as the sweep keeps it."""
    meta = obj.get("metadata") or {}
    api_version, kind_name = KIND_TYPES[kind]
    labels = meta.get("labels") or {}
    slim_meta = {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                 "labels": {AGENT_UID_LABEL: labels[AGENT_UID_LABEL]} if AGENT_UID_LABEL in labels else {}}
    return {"apiVersion": api_version, "kind": kind_name, "metadata": slim_meta}


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
