"""The four measurements: burst, idle latency, API cost (from the idle runs), scale.

Every scenario gets its own namespace and its own controller process (`agent-controller run
--namespace NS`), so one scenario's state never leaks into another's figures.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .backends import Backend, Recorder
from .client import HttpError, gather_limited
from .process import ControllerProcess

log = logging.getLogger("bench")


@dataclass
class Sizes:
    burst: int = 1000
    idle: int = 100
    scale: tuple[int, ...] = (1000, 2000, 10000)
    sweep_interval: float = 15.0
    timeout_per_agent: float = 0.2      # burst wait budget on top of a fixed minimum
    create_concurrency: int = 32


@dataclass
class Env:
    backend: Backend
    workdir: Path
    sizes: Sizes
    notes: list[str] = field(default_factory=list)
    profile_dir: Path | None = None     # py-spy profiles of the controller during the burst


# ------------------------------------------------------------------ helpers


async def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return predicate()


async def settle(rec: Recorder, quiet: float = 0.15, timeout: float = 30.0) -> bool:
    """Until the controller has sent no request for `quiet` seconds; False if it never went quiet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if time.monotonic() - rec.last_request >= quiet:
            return True
        await asyncio.sleep(quiet / 5)
    return False


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def dist_ms(values_s: list[float]) -> dict[str, Any]:
    ms = [v * 1000.0 for v in values_s]
    return {"n": len(ms), "p50": _r(percentile(ms, 50)), "p90": _r(percentile(ms, 90)),
            "p99": _r(percentile(ms, 99)), "max": _r(max(ms) if ms else None),
            "mean": _r(sum(ms) / len(ms) if ms else None)}


def _r(v: float | None, nd: int = 1) -> float | None:
    return None if v is None else round(v, nd)


def by_request(counter: Counter[tuple[str, str]], divide: float = 1.0) -> dict[str, float]:
    return {f"{verb} {res}": round(n / divide, 2)
            for (verb, res), n in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            if verb != "watch"}


def total(counter: Counter[tuple[str, str]]) -> int:
    return sum(n for (verb, _), n in counter.items() if verb != "watch")


def latencies(rec: Recorder, names: list[str], end: dict[str, float]) -> list[float]:
    out = []
    for n in names:
        start, stop = rec.start_of(n), end.get(n)
        if start is not None and stop is not None:
            out.append(max(0.0, stop - start))
    return out


class Controller:
    """Context manager: the controller process for one scenario namespace."""

    def __init__(self, env: Env, ns: str, sweep_interval: float = 3600.0):
        self.env = env
        self.ns = ns
        self.proc = ControllerProcess(env.backend.controller_kubeconfig(ns), ns,
                                      str(env.workdir / f"archive-{ns}"), str(env.workdir / f"controller-{ns}.log"),
                                      sweep_interval=sweep_interval)

    async def __aenter__(self) -> ControllerProcess:
        await asyncio.to_thread(self.proc.start)
        return self.proc

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.proc.stop)


async def create_all(factories: list[Callable[[], Awaitable[Any]]], limit: int, what: str) -> None:
    """Run the creations `limit` at a time; raise if any failed."""
    results = await gather_limited(factories, limit)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise RuntimeError(f"{len(errors)} {what} could not be created, e.g. {errors[0]!r}")


async def create_running(env: Env, rec: Recorder, ns: str, names: list[str], first_index: int = 0,
                         timeout: float | None = None) -> float:
    """Create the agents and wait until every one is Running; returns the seconds it took."""
    backend = env.backend
    began = time.monotonic()
    factories: list[Callable[[], Awaitable[Any]]] = [
        functools.partial(backend.create_agent, ns, n, backend.agent_spec(first_index + i))
        for i, n in enumerate(names)]
    await create_all(factories, env.sizes.create_concurrency, "agents")
    budget = timeout if timeout is not None else 60.0 + 0.05 * len(names)
    ok = await wait_until(lambda: all(rec.phase.get(n) == "Running" for n in names), budget, 0.05)
    if not ok:
        missing = [n for n in names if rec.phase.get(n) != "Running"]
        raise RuntimeError(f"{len(missing)} agents not Running after {budget:.0f}s, e.g. {missing[:3]}")
    return time.monotonic() - began


async def warm_up(env: Env, rec: Recorder, ns: str) -> None:
    """One full lifecycle before measuring (imports, connections, kopf's first-sight work)."""
    name = "warmup"
    rec.path[name] = "report"
    await create_running(env, rec, ns, [name], first_index=999_999)
    tokens = await env.backend.report_tokens(ns, [name])
    await env.backend.report(ns, name, tokens.get(name))
    if not await wait_until(lambda: name in rec.verified, 60.0):
        raise RuntimeError("warm-up agent was not cleaned up within 60 s: is the controller working?")
    await settle(rec, 0.3)


async def trigger(env: Env, rec: Recorder, ns: str, report: list[str], by_pod: list[str]) -> None:
    """Make the agents terminal: `report` by the agents' own status report, `by_pod` by their pods."""
    backend = env.backend
    for n in report:
        rec.path[n] = "report"
    for n in by_pod:
        rec.path[n] = "pod"
    tokens = await backend.report_tokens(ns, report) if report else {}

    async def one(n: str) -> None:
        await backend.report(ns, n, tokens.get(n))
        rec.triggered[n] = time.monotonic()

    jobs: list[Awaitable[Any]] = []
    if report:
        jobs.append(gather_limited([functools.partial(one, n) for n in report], 64))
    if by_pod:
        jobs.append(backend.end_by_pod(ns, by_pod))
    for result in await asyncio.gather(*jobs, return_exceptions=True):
        if isinstance(result, BaseException):
            raise result
        for item in result or []:
            if isinstance(item, BaseException):
                raise item


async def drop_namespace(env: Env, ns: str, ctl: ControllerProcess | None) -> None:
    """With the controller still running, so that the Agents' finalizers are honoured."""
    wait = 0.0 if env.backend.name == "emulator" else 300.0
    try:
        await env.backend.delete_namespace(ns, wait=wait)
    except HttpError as exc:
        env.notes.append(f"namespace {ns} not deleted: {exc}")


def own_cpu_seconds() -> float:
    import psutil

    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def start_profiler(env: Env, ctl: ControllerProcess, label: str) -> Any:
    """py-spy on the controller process (optional: --profile DIR), raw collapsed stacks."""
    if env.profile_dir is None:
        return None
    import subprocess

    env.profile_dir.mkdir(parents=True, exist_ok=True)
    out = env.profile_dir / f"controller-{label}.txt"
    proc = subprocess.Popen(["py-spy", "record", "-p", str(ctl.pid), "-r", "200", "-f", "raw", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)   # attached
    return proc


def stop_profiler(proc: Any) -> None:
    if proc is None:
        return
    import signal

    proc.send_signal(signal.SIGINT)
    proc.wait(30)


# ------------------------------------------------------------------ 1. burst


async def burst(env: Env) -> dict[str, Any]:
    backend, n = env.backend, env.sizes.burst
    ns = await backend.create_namespace("bench-burst")
    rec = Recorder(ns, precise=backend.name == "emulator")
    await backend.observe(rec)
    try:
        async with Controller(env, ns) as ctl:
            await warm_up(env, rec, ns)
            names = [f"b{i:05d}" for i in range(n)]
            create_seconds = await create_running(env, rec, ns, names)
            await settle(rec, 0.5)
            rss_running = ctl.rss_mb()
            report, by_pod = names[0::2], names[1::2]
            before, cpu0, own0 = rec.snapshot(), ctl.cpu_seconds(), own_cpu_seconds()
            profiler = start_profiler(env, ctl, "burst")
            t0 = time.monotonic()
            await trigger(env, rec, ns, report, by_pod)
            t_triggered = time.monotonic()
            budget = 60.0 + env.sizes.timeout_per_agent * n
            done = await wait_until(lambda: all(x in rec.verified for x in names), budget, 0.02)
            stop_profiler(profiler)
            verified = [x for x in names if x in rec.verified]
            t_end = max((rec.verified[x] for x in verified), default=time.monotonic())
            starts = [s for s in (rec.start_of(x) for x in names) if s is not None]
            first = min(starts + [t0])
            seconds = t_end - first
            await settle(rec, 0.5)
            cost = rec.snapshot() - before
            cpu = ctl.cpu_seconds() - cpu0
            own_cpu = own_cpu_seconds() - own0
            rss_after = ctl.rss_mb()
            await drop_namespace(env, ns, ctl)
    finally:
        await backend.unobserve()
    delete_lat = latencies(rec, names, rec.pod_delete)
    verify_lat = latencies(rec, names, rec.verified)
    result: dict[str, Any] = {
        "agents": n,
        "all_verified": done,
        "verified": len(verified),
        "seconds": round(seconds, 3),
        "cleanups_per_second": round(len(verified) / seconds, 1) if seconds > 0 else None,
        "trigger_seconds": round(t_triggered - t0, 3),
        "trigger_spread_seconds": round(max(starts) - min(starts), 3) if starts else None,
        "create_seconds": round(create_seconds, 2),
        "teardown_p50_ms": dist_ms(delete_lat)["p50"],
        "teardown_p99_ms": dist_ms(delete_lat)["p99"],
        "teardown_max_ms": dist_ms(delete_lat)["max"],
        "terminal_to_pod_delete_ms": dist_ms(delete_lat),
        "terminal_to_verified_ms": dist_ms(verify_lat),
        "by_path": {
            path: {"terminal_to_pod_delete_ms": dist_ms(latencies(rec, group, rec.pod_delete)),
                   "terminal_to_verified_ms": dist_ms(latencies(rec, group, rec.verified))}
            for path, group in (("report", report), ("pod", by_pod))},
        "requests_total": total(cost),
        "requests_per_cleanup": round(total(cost) / max(1, len(verified)), 2),
        "requests_per_cleanup_by_request": by_request(cost, max(1, len(verified))),
        "controller_cpu_seconds": round(cpu, 2),
        "controller_cpu_ms_per_cleanup": round(1000 * cpu / max(1, len(verified)), 2),
        # The bench's own process: the emulator (API server + kubelet) when it is the backend, and the driver.
        "bench_process_cpu_seconds": round(own_cpu, 2),
        "controller_rss_mb_running": round(rss_running, 1),
        "controller_rss_mb_after": round(rss_after, 1),
        "_samples": {"terminal_to_pod_delete_s": delete_lat, "terminal_to_verified_s": verify_lat},
    }
    return result


# ------------------------------------------------------------------ 2 + 3. idle latency, API cost


async def idle(env: Env) -> tuple[dict[str, Any], dict[str, Any]]:
    backend, count = env.backend, env.sizes.idle
    ns = await backend.create_namespace("bench-idle")
    rec = Recorder(ns, precise=backend.name == "emulator")
    await backend.observe(rec)
    lifecycle: Counter[tuple[str, str]] = Counter()
    creation: Counter[tuple[str, str]] = Counter()
    cleanup: dict[str, Counter[tuple[str, str]]] = {"report": Counter(), "pod": Counter()}
    runs = {"report": 0, "pod": 0}
    names: list[str] = []
    cleanup_cpu = 0.0
    try:
        async with Controller(env, ns) as ctl:
            await warm_up(env, rec, ns)
            for i in range(count):
                name = f"i{i:04d}"
                names.append(name)
                path = "report" if i % 2 == 0 else "pod"
                await settle(rec, 0.15)
                c0 = rec.snapshot()
                await create_running(env, rec, ns, [name], first_index=i, timeout=60.0)
                await settle(rec, 0.15)
                c1 = rec.snapshot()
                cpu1 = ctl.cpu_seconds()
                await trigger(env, rec, ns, [name] if path == "report" else [], [name] if path == "pod" else [])
                if not await wait_until(functools.partial(rec.verified.__contains__, name), 60.0, 0.002):
                    raise RuntimeError(f"idle agent {name} not cleaned up within 60 s")
                await settle(rec, 0.15)
                c2 = rec.snapshot()
                cleanup_cpu += ctl.cpu_seconds() - cpu1
                lifecycle += c2 - c0
                creation += c1 - c0
                cleanup[path] += c2 - c1
                runs[path] += 1
            await drop_namespace(env, ns, None)
    finally:
        await backend.unobserve()
    delete_lat = latencies(rec, names, rec.pod_delete)
    verify_lat = latencies(rec, names, rec.verified)
    by_path = {}
    for path in ("report", "pod"):
        group = [n for n in names if rec.path.get(n) == path]
        by_path[path] = {"terminal_to_pod_delete_ms": dist_ms(latencies(rec, group, rec.pod_delete)),
                         "terminal_to_verified_ms": dist_ms(latencies(rec, group, rec.verified))}
    idle_result = {
        "agents": count,
        "teardown_p50_ms": dist_ms(delete_lat)["p50"],
        "teardown_p99_ms": dist_ms(delete_lat)["p99"],
        "teardown_max_ms": dist_ms(delete_lat)["max"],
        "terminal_to_pod_delete_ms": dist_ms(delete_lat),
        "terminal_to_verified_ms": dist_ms(verify_lat),
        "by_path": by_path,
        "controller_cpu_ms_per_cleanup": round(1000 * cleanup_cpu / max(1, count), 2),
        "_samples": {"terminal_to_pod_delete_s": delete_lat, "terminal_to_verified_s": verify_lat},
    }
    all_cleanups = cleanup["report"] + cleanup["pod"]
    n_clean = max(1, runs["report"] + runs["pod"])
    api = {
        "source": "emulator request log, controller's user" if backend.name == "emulator"
        else "counting proxy in front of the API server",
        "lifecycles": count,
        "requests_per_lifecycle": round(total(lifecycle) / max(1, count), 2),
        "requests_per_creation": round(total(creation) / max(1, count), 2),
        "requests_per_cleanup": round(total(all_cleanups) / n_clean, 2),
        "requests_per_cleanup_report": round(total(cleanup["report"]) / max(1, runs["report"]), 2),
        "requests_per_cleanup_pod": round(total(cleanup["pod"]) / max(1, runs["pod"]), 2),
        "lifecycle_by_request": by_request(lifecycle, max(1, count)),
        "creation_by_request": by_request(creation, max(1, count)),
        "cleanup_report_by_request": by_request(cleanup["report"], max(1, runs["report"])),
        "cleanup_pod_by_request": by_request(cleanup["pod"], max(1, runs["pod"])),
    }
    return idle_result, api


# ------------------------------------------------------------------ 4. scale


async def scale(env: Env) -> dict[str, Any]:
    backend, sizes = env.backend, env.sizes
    ns = await backend.create_namespace("bench-scale")
    rec = Recorder(ns, precise=backend.name == "emulator")
    await backend.observe(rec)
    steps: list[dict[str, Any]] = []
    try:
        async with Controller(env, ns, sweep_interval=sizes.sweep_interval) as ctl:
            await warm_up(env, rec, ns)
            present = 0
            for target in sizes.scale:
                names = [f"s{i:05d}" for i in range(present, target)]
                peak = [ctl.rss_mb()]
                sampler = asyncio.create_task(_sample_rss(ctl, peak))
                create_seconds = await create_running(env, rec, ns, names, first_index=present,
                                                      timeout=120.0 + 0.1 * len(names))
                present = target
                # Idle: the controller has finished with every agent (no request for a while), and has
                # been idle long enough to hand back what the burst of creations left (it does every 10 s).
                quiet = min(2.0, sizes.sweep_interval / 3)
                settled = await settle(rec, quiet, timeout=300.0 + 0.05 * target)
                sampler.cancel()
                if not settled:
                    env.notes.append(f"scale: the controller was still busy {300 + 0.05 * target:.0f} s after "
                                     f"{target} agents were Running")
                await asyncio.sleep(min(IDLE_SETTLE, sizes.sweep_interval))
                rss_idle = ctl.rss_mb()
                sweep = await _next_sweep(ctl, rec, sizes.sweep_interval)
                sweep["sweep_objects"] = await backend.count_managed(ns)
                await settle(rec, 0.5)
                rss_after_sweep = ctl.rss_mb()
                steps.append({"agents": target, "create_seconds": round(create_seconds, 1), "settled": settled,
                              "rss_mb_idle": round(rss_idle, 1), "rss_mb_after_sweep": round(rss_after_sweep, 1),
                              "rss_mb": round(max(rss_idle, rss_after_sweep), 1),
                              "rss_mb_peak_while_creating": round(max(peak), 1), **sweep})
                log.info("scale: %d agents: %s", target, steps[-1])
            await drop_namespace(env, ns, ctl)
    finally:
        await backend.unobserve()
    result: dict[str, Any] = {"steps": steps, "sweep_interval": sizes.sweep_interval}
    by_agents = {s["agents"]: s for s in steps}
    first, last = steps[0], steps[-1]
    result["rss_mb_1k"] = by_agents.get(1000, first)["rss_mb"]
    result["rss_mb_10k"] = by_agents.get(10000, last)["rss_mb"]
    # "10 000 managed objects": the step whose sweep saw the closest number of objects to 10 000
    ten_k = min(steps, key=lambda s: abs((s.get("sweep_objects") or 0) - 10_000))
    result["sweep_seconds_10k"] = ten_k.get("sweep_seconds")
    result["sweep_objects_10k"] = ten_k.get("sweep_objects")
    result["sweep_requests_10k"] = ten_k.get("sweep_requests")
    result["sweep_seconds_10k_agents"] = by_agents.get(10000, last).get("sweep_seconds")
    result["sweep_objects_10k_agents"] = by_agents.get(10000, last).get("sweep_objects")
    return result


IDLE_SETTLE = 11.0    # seconds idle before the RSS is read: the controller releases free memory every 10 s


async def _sample_rss(ctl: ControllerProcess, peak: list[float]) -> None:
    while True:
        try:
            peak.append(ctl.rss_mb())
        except Exception:  # noqa: BLE001 - the process may be gone at the very end
            return
        await asyncio.sleep(0.5)


async def _next_sweep(ctl: ControllerProcess, rec: Recorder, interval: float) -> dict[str, Any]:
    """Wait for a sweep that started after now (the second completion from now) and report its
    duration (the controller's own histogram) and its requests (the controller's, in between)."""
    count0, _ = await asyncio.to_thread(ctl.sweeps)

    async def completion(after: float) -> tuple[float, float]:
        deadline = time.monotonic() + 3 * interval + 120
        while time.monotonic() < deadline:
            c, s = await asyncio.to_thread(ctl.sweeps)
            if c > after:
                return c, s
            await asyncio.sleep(0.05)
        raise RuntimeError("the controller ran no sweep")

    c1, s1 = await completion(count0)
    before = rec.snapshot()
    c2, s2 = await completion(c1)
    cost = rec.snapshot() - before
    lists = Counter({k: v for k, v in cost.items() if k[0] in ("list", "get")})
    return {"sweep_seconds": round((s2 - s1) / max(1.0, c2 - c1), 3),
            "sweep_requests": total(cost),
            "sweep_by_request": by_request(cost),
            "sweep_lists": total(lists),
            "sweep_objects": None}
