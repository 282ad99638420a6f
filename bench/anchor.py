"""anchor: our controller side by side with Kubernetes' own TTL-after-finished controller (issue #18).

On the project's real control plane (``--backend control-plane``), one after the other, on the same
API server and simulated nodes, each in a fresh namespace:

1. **theirs** — N Jobs (``ttlSecondsAfterFinished: 0``, ``backoffLimit: 0``), one pod each. Once
   every pod runs, the bench tells the nodes to end every container at once (exit 0); the Job
   controller marks the Jobs complete, the TTL-after-finished controller deletes them
   (``propagationPolicy: Foreground``) and the garbage collector deletes their pods —
   kube-controller-manager with its default flags (``--concurrent-ttl-after-finished-syncs`` 5,
   ``--kube-api-qps`` 20 / ``--kube-api-burst`` 30, one client per controller).
2. **ours** — N Agents whose pods end the same way, drained by our controller (one process, its
   default flags): archive, teardown of pod, prompt and credentials, verification.

Measured for each side, from the moment the last pod was seen finished (the bench's pod watch) to
the last object gone (every Job and pod deleted) / the last Agent ``verifiedNoLeaks`` (every child
deleted and verified by list): seconds, objects per second, API requests (theirs: the API server's
audit log, kube-controller-manager's controllers in that namespace; ours: the counting proxy in
front of the controller), CPU seconds of kube-controller-manager / of our controller, and the API
server's CPU during each drain. The headline is ``ratio`` = ours ÷ theirs in objects per second.
The pods are scripted (they only sleep until told to exit) on both sides.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .backends import Recorder
from .scenarios import Controller, Env, create_all, drop_namespace, settle, total, wait_until, warm_up

KCM_USERS = "system:serviceaccount:kube-system:"     # --use-service-account-credentials
AUDIT_POLICY = {"apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
                "rules": [{"level": "Metadata"}]}
SLEEP = [{"name": "DEVCLUSTER_SCRIPT", "value": json.dumps({"steps": [{"sleep": 86400}]})}]
IMAGE = "anchor:1"
log = logging.getLogger("bench")


@dataclass
class LocalControlPlane:
    """What the anchor needs of the bench's own control plane."""

    cp: Any          # controller.controlplane.ControlPlane
    nodes: Any       # controller.nodesim.sim.NodeSimulator
    audit_log: Path


def audit_args(workdir: Path) -> tuple[dict[str, list[str]], Path]:
    """kube-apiserver flags for an audit log of every request (metadata only) and its path."""
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "audit-policy.json"
    policy.write_text(json.dumps(AUDIT_POLICY))
    log = workdir / "audit.log"
    return {"kube-apiserver": [f"--audit-policy-file={policy}", f"--audit-log-path={log}",
                               "--audit-log-maxsize=0"]}, log


def cpu_of(pid: int | None) -> float:
    if pid is None:
        return 0.0
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def audit_requests(log: Path, namespace: str, since: datetime.datetime, until: datetime.datetime,
                   user_prefix: str) -> dict[str, int]:
    """Requests in `namespace` by users starting with `user_prefix`, received in [since, until],
    by "user verb resource"."""
    out: dict[str, int] = {}
    with log.open() as fh:
        for line in fh:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            ref = ev.get("objectRef") or {}
            user = (ev.get("user") or {}).get("username", "")
            if ref.get("namespace") != namespace or not user.startswith(user_prefix):
                continue
            if ev.get("stage") not in ("ResponseComplete", "Panic"):
                continue
            received = datetime.datetime.fromisoformat(ev["requestReceivedTimestamp"].replace("Z", "+00:00"))
            if not since <= received <= until:
                continue
            resource = ref.get("resource", "") + ("/" + ref["subresource"] if ref.get("subresource") else "")
            key = f"{user.removeprefix(user_prefix)} {ev.get('verb')} {resource}"
            out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


class Gone:
    """Watch-fed: the names alive of one kind, and when the last went away."""

    def __init__(self) -> None:
        self.alive: set[str] = set()
        self.phase: dict[str, str] = {}
        self.finished: dict[str, float] = {}
        self.last_gone = 0.0

    def on_event(self, etype: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        now = time.monotonic()
        if etype == "DELETED":
            self.alive.discard(name)
            self.last_gone = now
            return
        self.alive.add(name)
        phase = (obj.get("status") or {}).get("phase") or ""
        self.phase[name] = phase
        if phase in ("Succeeded", "Failed"):
            self.finished.setdefault(name, now)


async def end_all(local: LocalControlPlane, ns: str, pods: list[str]) -> None:
    """Every container exits 0, as fast as the node simulator takes it."""
    def go() -> None:
        for pod in pods:
            local.nodes.exit(ns, pod, 0)

    await asyncio.to_thread(go)


async def theirs(env: Env, local: LocalControlPlane, n: int) -> dict[str, Any]:
    client = env.backend.client
    assert client is not None
    ns = await env.backend.create_namespace("bench-anchor-jobs")
    jobs, pods = Gone(), Gone()
    stop = asyncio.Event()
    watches = [asyncio.create_task(client.watch(f"/apis/batch/v1/namespaces/{ns}/jobs", jobs.on_event, stop=stop)),
               asyncio.create_task(client.watch(f"/api/v1/namespaces/{ns}/pods", pods.on_event, stop=stop))]
    try:
        def job(i: int) -> Any:
            return client.call("POST", f"/apis/batch/v1/namespaces/{ns}/jobs", {
                "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": f"j{i:05d}"},
                "spec": {"ttlSecondsAfterFinished": 0, "backoffLimit": 0, "template": {"spec": {
                    "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                    "containers": [{"name": "job", "image": IMAGE, "env": SLEEP}]}}}})

        await create_all([functools.partial(job, i) for i in range(n)], env.sizes.create_concurrency, "Jobs")
        budget = 120.0 + 0.3 * n
        if not await wait_until(lambda: sum(p == "Running" for p in pods.phase.values()) >= n, budget, 0.1):
            raise RuntimeError(f"the Jobs' pods did not all run within {budget:.0f}s "
                               f"({sum(p == 'Running' for p in pods.phase.values())}/{n})")
        running = [name for name, phase in pods.phase.items() if phase == "Running"]
        return await _drain(env, local, ns, running, lambda: not jobs.alive and not pods.alive,
                            lambda: max(jobs.last_gone, pods.last_gone), pods.finished, n)
    finally:
        stop.set()
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await drop_namespace(env, ns, None)


async def _drain(env: Env, local: LocalControlPlane, ns: str, pods: list[str], done: Any, end: Any,
                 finished: dict[str, float], n: int) -> dict[str, Any]:
    """Theirs: end the pods, wait until `done()`; the figures."""
    pids = local.cp.pids
    kcm0, api0 = cpu_of(pids.get("kube-controller-manager")), cpu_of(pids.get("kube-apiserver"))
    since = datetime.datetime.now(datetime.UTC)
    await end_all(local, ns, pods)
    budget = 300.0 + 0.5 * n
    ok = await wait_until(done, budget, 0.05)
    until = datetime.datetime.now(datetime.UTC)
    kcm = cpu_of(pids.get("kube-controller-manager")) - kcm0
    api = cpu_of(pids.get("kube-apiserver")) - api0
    seconds = end() - max(finished.values(), default=end())
    await asyncio.sleep(1.0)     # the audit log's last lines
    by = audit_requests(local.audit_log, ns, since, until, KCM_USERS)
    return {"all_gone": ok, "seconds": round(seconds, 3), "per_second": round(n / seconds, 2) if seconds > 0 else None,
            "requests": sum(by.values()), "requests_by": by, "controller_cpu_seconds": round(kcm, 2),
            "apiserver_cpu_seconds": round(api, 2)}


async def ours(env: Env, local: LocalControlPlane, n: int) -> dict[str, Any]:
    backend = env.backend
    ns = await backend.create_namespace("bench-anchor-agents")
    rec = Recorder(ns, precise=False)
    await backend.observe(rec)
    try:
        async with Controller(env, ns) as ctl:
            await warm_up(env, rec, ns)
            names = [f"a{i:05d}" for i in range(n)]
            spec = {"image": IMAGE, "env": SLEEP, "podTemplate": {"spec": {"terminationGracePeriodSeconds": 1}}}
            await create_all([functools.partial(backend.create_agent, ns, x, spec) for x in names],
                             env.sizes.create_concurrency, "Agents")
            budget = 120.0 + 0.3 * n
            if not await wait_until(lambda: all(rec.phase.get(x) == "Running" for x in names), budget, 0.1):
                phases: dict[str, int] = {}
                for x in names:
                    phases[rec.phase.get(x) or "none"] = phases.get(rec.phase.get(x) or "none", 0) + 1
                raise RuntimeError(f"the Agents did not all run within {budget:.0f}s: {phases}")
            await settle(rec, 0.5)
            pids = local.cp.pids
            cpu0, api0, before = ctl.cpu_seconds(), cpu_of(pids.get("kube-apiserver")), rec.snapshot()
            await end_all(local, ns, names)
            ok = await wait_until(lambda: all(x in rec.verified for x in names), 300.0 + 0.5 * n, 0.05)
            cpu = ctl.cpu_seconds() - cpu0
            api = cpu_of(pids.get("kube-apiserver")) - api0
            finished = [rec.pod_finished[x] for x in names if x in rec.pod_finished]
            last = max((rec.verified[x] for x in names if x in rec.verified), default=time.monotonic())
            seconds = last - max(finished, default=last)
            await settle(rec, 0.5)
            cost = rec.snapshot() - before
            await drop_namespace(env, ns, ctl)
    finally:
        await backend.unobserve()
    return {"all_gone": ok, "seconds": round(seconds, 3), "per_second": round(n / seconds, 2) if seconds > 0 else None,
            "requests": total(cost), "requests_by": {f"{v} {r}": c for (v, r), c in sorted(cost.items())},
            "controller_cpu_seconds": round(cpu, 2), "apiserver_cpu_seconds": round(api, 2)}


async def anchor(env: Env, local: LocalControlPlane, n: int) -> dict[str, Any]:
    them = await theirs(env, local, n)
    log.info("anchor, theirs: %s", {k: v for k, v in them.items() if k != "requests_by"})
    us = await ours(env, local, n)
    log.info("anchor, ours: %s", {k: v for k, v in us.items() if k != "requests_by"})
    ratio = (us["per_second"] / them["per_second"]) if us["per_second"] and them["per_second"] else None
    return {
        "agents": n,
        "ours_per_second": us["per_second"], "theirs_per_second": them["per_second"],
        "ratio": round(ratio, 2) if ratio is not None else None,
        "ours_requests": us["requests"], "theirs_requests": them["requests"],
        "ours_seconds": us["seconds"], "theirs_seconds": them["seconds"],
        "ours_cpu_seconds": us["controller_cpu_seconds"], "theirs_cpu_seconds": them["controller_cpu_seconds"],
        "ours_apiserver_cpu_seconds": us["apiserver_cpu_seconds"],
        "theirs_apiserver_cpu_seconds": them["apiserver_cpu_seconds"],
        "ours_all_gone": us["all_gone"], "theirs_all_gone": them["all_gone"],
        "ours_requests_by": us["requests_by"], "theirs_requests_by": them["requests_by"],
        "theirs_flags": "kube-controller-manager defaults: --concurrent-ttl-after-finished-syncs=5, "
                        "--concurrent-gc-syncs=20, --kube-api-qps=20, --kube-api-burst=30",
    }
