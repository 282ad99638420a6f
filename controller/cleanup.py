"""What happens when an agent ends — the one place.

`clean_up()` is the only cleanup implementation. The reconcile loop (terminal phase), the finalizer
(deletion) and the sweep (leftovers of terminal agents) all call it. For one agent it runs under a
per-UID lock and is idempotent: after a crash at any line, running it again finishes the job.

Order (SPEC §4):
1. Archive: open every container's log stream (and the previous instance's) *before* the pod is
   asked to stop, write into a temporary directory, then prompt.txt, agent.json, MANIFEST.json last,
   fsync, rename. An archive whose MANIFEST.json exists is never written again.
2. Stop the pod: delete with its grace period and a UID precondition; force (grace 0) after
   grace + 30 s.
3. Delete the prompt ConfigMap and the credentials (UID preconditions).
4. Verify: nothing may be left. The pods: a fresh list by the agent-uid label (a pod still
   terminating counts as left). The prompt and the credentials: the API server's answer to each
   delete (removed, 404, or 409 = the name holds another UID now; an object still being finalized
   counts as left).
5. Record: status.cleanup Succeeded, condition CleanedUp, an Event, metrics.

Which children exist is known without a request when this process created them (`rt.children`,
see runtime.ChildCache). Otherwise — after a restart, on any retry, on the sweep's recheck — the
cleanup is thorough: one list per managed kind by the agent-uid label before the deletes, and again
after them.

Requests of a first attempt for an agent this process created, with a prompt: 9 — a log stream per
container, 5 deletes, 1 pod list, status Succeeded, the Event — plus status Running if it takes
longer than RUNNING_MARK_AFTER (a pod that takes its grace period). Retries and thorough runs write
Running first, and list (5 + 5).

Data first: if archiving fails, nothing is deleted; the error is recorded, state is Retrying, and
the caller retries with exponential backoff (cap 5 min).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api
from .archive import Archive, ArchiveError, ArchiveResult, PendingArchive, log_filename
from .kube.client import AGENTS, EVENTS, KIND_RESOURCES, PODS, ApiError, LogStream
from .names import PROMPT_KEY, uid_selector
from .runtime import POD_FINISHED, Child, Runtime

log = logging.getLogger(__name__)

CREDENTIAL_KINDS = ("serviceaccount", "role", "rolebinding")
DELETE_ORDER = ("configmap",) + CREDENTIAL_KINDS


class CleanupFailed(Exception):
    """A cleanup attempt failed; it was recorded, and should be retried after `delay` seconds."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


@dataclass
class Outcome:
    trigger: str
    done: bool = False
    already: bool = False          # nothing to do: it had succeeded before
    archive: ArchiveResult | None = None
    new_bytes: int = 0
    left: dict[str, list[str]] = field(default_factory=dict)


def _obj_uid(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid", ""))


def _obj_name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


async def patch_status(rt: Runtime, agent: Mapping[str, Any], status: Mapping[str, Any],
                       resource_version: str | None = None) -> dict[str, Any]:
    meta = agent["metadata"]
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return await rt.client.patch(AGENTS, meta["namespace"], meta["name"], body, sub="status")


async def list_children(rt: Runtime, namespace: str, agent_uid: str) -> dict[str, list[dict[str, Any]]]:
    """One list per managed kind, by the agent-uid label."""
    selector = uid_selector(agent_uid)
    kinds = list(KIND_RESOURCES)
    lists = await asyncio.gather(*(rt.client.list(KIND_RESOURCES[k], namespace, label_selector=selector)
                                   for k in kinds))
    return {k: list(result.get("items") or []) for k, result in zip(kinds, lists)}


async def delete_child(rt: Runtime, kind: str, obj: Mapping[str, Any], grace: int | None = None) -> bool:
    """Delete with a UID precondition. Returns True when the API server's answer says this object (this
    UID) no longer exists: removed (a Status, or the deleted object without deletionTimestamp), 404, or
    409 (the name now holds another UID). False: it still exists, terminating (finalizers, a pod's grace)."""
    meta = obj["metadata"]
    try:
        answer = await rt.client.delete(KIND_RESOURCES[kind], meta.get("namespace"), meta["name"],
                                        uid=meta["uid"], grace_period_seconds=grace)
    except ApiError as exc:
        if exc.status in (404, 409):
            return True
        raise
    return not (answer.get("metadata") or {}).get("deletionTimestamp")


async def post_event(rt: Runtime, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """A Kubernetes Event (core/v1) about `obj`. Best effort: a failure is logged, never raised."""
    meta = obj.get("metadata") or {}
    now = api.format_time(rt.clock())
    event = {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name', 'object')}.", "namespace": meta.get("namespace")},
        "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta.get("name"),
                           "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                           "resourceVersion": meta.get("resourceVersion")},
        "type": type_, "reason": reason, "message": message[:1024],
        "source": {"component": "agent-controller"}, "reportingComponent": "agent-controller",
        "firstTimestamp": now, "lastTimestamp": now, "count": 1,
    }
    try:
        await rt.client.create(EVENTS, meta.get("namespace"), event)
    except ApiError as exc:
        log.debug("event %s not posted: %s", reason, exc)


async def clean_up(rt: Runtime, agent: Mapping[str, Any], trigger: str | None = None,
                   recheck: bool = False) -> Outcome:
    """Run the cleanup of one terminal (or deleted) agent to success, or raise CleanupFailed.

    `recheck` (the sweep found leftovers) runs the steps again even after an earlier success;
    the archive is still written only once.
    """
    meta = agent["metadata"]
    uid = meta["uid"]
    async with rt.locks.get(uid):
        status = agent.get("status") or {}
        cleanup = status.get("cleanup") or {}
        if recheck:
            trigger = trigger or api.TRIGGER_SWEEP
            if uid in rt.cleaned or cleanup.get("state") == api.CLEANUP_SUCCEEDED:
                # Done meanwhile (e.g. by the reconcile loop that held the lock): anything left?
                if not any((await list_children(rt, meta["namespace"], uid)).values()):
                    return Outcome(trigger=trigger, done=True, already=True)
        else:
            trigger = cleanup.get("trigger") or trigger or api.cleanup_trigger(
                status.get("phase"), status.get("reason"), meta.get("deletionTimestamp") is not None)
            if uid in rt.cleaned or cleanup.get("state") == api.CLEANUP_SUCCEEDED:
                rt.cleaned.add(uid)
                return Outcome(trigger=trigger, done=True, already=True)
        return await _clean_up_locked(rt, agent, trigger, thorough=recheck)


async def _children_of(rt: Runtime, ns: str, uid: str,
                       known: tuple[Child, ...] | None) -> tuple[dict[str, list[dict[str, Any]]], bool]:
    """The agent's children before the deletes: what this process created (`known`, no request), else
    one list per kind. Returns (children, listed)."""
    if known is None:
        return await list_children(rt, ns, uid), True
    found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_RESOURCES}
    for child in known:
        found[child.kind].append(child.body(ns))
    return found, False


async def _left_after(rt: Runtime, ns: str, uid: str, listed: bool, deletes: list[tuple[str, dict[str, Any]]],
                      gone: list[bool]) -> dict[str, list[dict[str, Any]]]:
    """What is left after the deletes. After a thorough run: one list per kind. Otherwise the deletes'
    own answers for the prompt and the credentials (authoritative for each object this process created)
    and a fresh list of the pods by the agent-uid label (a pod still terminating counts as left)."""
    if listed:
        return await list_children(rt, ns, uid)
    left: dict[str, list[dict[str, Any]]] = {kind: [] for kind in KIND_RESOURCES}
    pods = await rt.client.list(PODS, ns, label_selector=uid_selector(uid))
    left["pod"] = list(pods.get("items") or [])
    for (kind, obj), ok in zip(deletes, gone):
        if not ok:
            left[kind].append(obj)
    return left


async def _clean_up_locked(rt: Runtime, agent: Mapping[str, Any], trigger: str, thorough: bool = False) -> Outcome:
    meta = agent["metadata"]
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    spec = api.AgentSpec.from_dict(agent.get("spec") or {})
    status = agent.get("status") or {}
    cleanup = status.get("cleanup") or {}
    attempts = int(cleanup.get("attempts") or 0) + 1
    errors = list(cleanup.get("errors") or [])
    now = rt.clock()
    # The precise moment this process saw the terminal phase, else the (second-precision) completionTime.
    finished_at = rt.terminal_at.get(uid) or api.parse_time(status.get("completionTime")) or now
    outcome = Outcome(trigger=trigger)
    recorded: dict[str, Any] = {"state": api.CLEANUP_RUNNING, "trigger": cleanup.get("trigger") or trigger,
                                "attempts": attempts}

    start: dict[str, Any] = {"cleanup": recorded}
    if not status.get("completionTime"):
        start["completionTime"] = api.format_time(finished_at)
    # The fast path: the first attempt for an agent whose children this process created. Its state
    # `Running` is published only if it takes longer than RUNNING_MARK_AFTER (e.g. a pod that uses
    # its grace period); a quick one goes from Pending to Succeeded in one write. In a burst (many
    # cleanups in flight) it is not published at all: a status write per agent would only add to
    # the work that delays them all. Any other attempt records it first.
    known = None if thorough or attempts > 1 else rt.children.get(uid, name)
    fast = known is not None
    marker: RunningMark | None = None
    try:
        if fast:
            snapshot = {**agent, "status": {**status, **start}}
            if len(rt.tasks) < RUNNING_MARK_MAX_IN_FLIGHT:
                marker = RunningMark(rt, agent, start, RUNNING_MARK_AFTER)
        else:
            try:
                snapshot = await patch_status(rt, agent, start)
            except ApiError as exc:
                if exc.not_found:   # the Agent is gone for good; the sweep owns whatever is left
                    return Outcome(trigger=trigger, done=True, already=True)
                raise
            if snapshot.get("metadata", {}).get("uid") != uid:
                return Outcome(trigger=trigger, done=True, already=True)   # re-created under the same name

        # Not the fast path (a retry, the sweep's recheck, an agent from before this process): lists.
        found, listed = await _children_of(rt, ns, uid, known)
        directory = rt.archive.agent_dir(ns, name, uid)
        archived = None
        if spec.cleanup.logs == api.LOGS_ARCHIVE:
            archived = await archive_and_stop_pods(rt, directory, found["pod"], spec.cleanup.grace_period_seconds,
                                                   extra_files=lambda: _agent_files(snapshot, spec))
            outcome.archive = archived
            outcome.new_bytes = 0 if archived.already_existed else archived.bytes
        else:
            await stop_pods(rt, found["pod"], spec.cleanup.grace_period_seconds)

        deletes = [(kind, obj) for kind in DELETE_ORDER for obj in found[kind]]
        gone = list(await asyncio.gather(*(delete_child(rt, kind, obj) for kind, obj in deletes)))

        left = await _left_after(rt, ns, uid, listed, deletes, gone)
        outcome.left = {k: [_obj_name(o) for o in v] for k, v in left.items() if v}
        recorded.update({
            "podDeleted": not left["pod"],
            "promptDeleted": not left["configmap"],
            "credentialsDeleted": not any(left[k] for k in CREDENTIAL_KINDS),
            "logsArchived": archived is not None,
            "verifiedNoLeaks": not outcome.left,
        })
        if archived is not None:
            recorded["archivedFiles"] = archived.files
            recorded["archivedBytes"] = archived.bytes
        if outcome.left:
            raise RuntimeError("resources still present after cleanup: " + ", ".join(
                f"{k}/{n}" for k, names in sorted(outcome.left.items()) for n in names))

        done_at = rt.clock()
        recorded.update({"state": api.CLEANUP_SUCCEEDED, "completionTime": api.format_time(done_at),
                         "errors": errors})
        if marker is not None:
            await marker.settle()     # a `Running` write in flight lands before `Succeeded`
        final = await patch_status(rt, agent, {
            **start,
            "cleanup": recorded,
            "conditions": api.conditions_for(status.get("phase"), status.get("reason"), api.CLEANUP_SUCCEEDED,
                                             status.get("conditions"), done_at, status.get("message") or ""),
        })
        rt.cleaned.add(uid)
        rt.archive_failing.discard(uid)
        rt.terminal_at.pop(uid, None)
        rt.children.forget(uid)
        outcome.done = True
        rt.metrics.cleanups.labels(trigger=trigger, result="success").inc()
        duration = max(0.0, (done_at - finished_at).total_seconds())
        rt.metrics.cleanup_duration.labels(trigger=trigger).observe(duration)
        rt.cleanup_durations.append(duration)
        del rt.cleanup_durations[:-10_000]
        if outcome.new_bytes:
            rt.metrics.archived_bytes.inc(outcome.new_bytes)
        files = len(archived.files) if archived else 0
        await post_event(rt, final, "Normal", "CleanedUp",
                   f"Cleanup ({trigger}) succeeded: pod, prompt and credentials deleted, {files} files archived, "
                   f"no leaks.")
        log.info("cleanup succeeded", extra={"agent": f"{ns}/{name}", "trigger": trigger,
                                             "archived_bytes": outcome.new_bytes})
        return outcome
    except asyncio.CancelledError:
        if marker is not None:
            marker.cancel()
        raise
    except Exception as exc:
        if marker is not None:
            await marker.settle()
        message = f"attempt {attempts}: {exc}"
        errors = (errors + [message[:1000]])[-api.MAX_RECORDED_ERRORS:]
        reason = exc.reason if isinstance(exc, ArchiveError) else None
        if reason:
            rt.metrics.archive_errors.labels(reason=reason).inc()
            rt.archive_failing.add(uid)
        rt.metrics.cleanups.labels(trigger=trigger, result="failure").inc()
        recorded.update({"state": api.CLEANUP_RETRYING, "errors": errors})
        with contextlib.suppress(ApiError):
            await patch_status(rt, agent, {**start, "cleanup": recorded})
        delay = api.backoff_seconds(attempts)
        await post_event(rt, agent, "Warning", "CleanupFailed", f"{message}; retrying in {delay:.0f}s")
        log.warning("cleanup of %s/%s failed (%s); retrying in %.0fs", ns, name, exc, delay)
        raise CleanupFailed(message, delay) from exc


RUNNING_MARK_AFTER = 1.0   # seconds: a fast-path cleanup that takes longer publishes state Running
RUNNING_MARK_MAX_IN_FLIGHT = 100   # ... unless this many background tasks (cleanups) are in flight


class RunningMark:
    """Writes the cleanup's start (state Running, attempts, completionTime) after `delay` seconds,
    unless settled before. Once the write is on its way it is awaited, never cancelled, so that it
    cannot land after a later write (Succeeded, Retrying)."""

    def __init__(self, rt: Runtime, agent: Mapping[str, Any], start: Mapping[str, Any], delay: float):
        self.sending = False
        self._task = asyncio.create_task(self._run(rt, agent, dict(start), delay))

    async def _run(self, rt: Runtime, agent: Mapping[str, Any], start: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        self.sending = True
        with contextlib.suppress(ApiError):
            await patch_status(rt, agent, start)

    async def settle(self) -> None:
        if self.sending:
            with contextlib.suppress(Exception):
                await self._task
        else:
            self._task.cancel()

    def cancel(self) -> None:
        if not self.sending:
            self._task.cancel()


def _agent_files(agent: Mapping[str, Any], spec: api.AgentSpec) -> dict[str, bytes]:
    body = dict(agent)      # without managedFields (nothing is modified: only serialised)
    body["metadata"] = {k: v for k, v in (agent.get("metadata") or {}).items() if k != "managedFields"}
    files = {"agent.json": json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"}
    if spec.prompt is not None:
        files[PROMPT_KEY] = spec.prompt.encode()
    return files


# ------------------------------------------------------------------ archive + stop, interleaved

async def archive_and_stop_pods(rt: Runtime, directory: Any, pods: list[dict[str, Any]], grace: int,
                                extra_files: Mapping[str, bytes] | Callable[[], Mapping[str, bytes]]) -> ArchiveResult:
    """Archive logs of `pods` into `directory` while stopping them. Nothing is deleted if the
    archive cannot be started (directory not writable, log stream refused).

    File system work runs in threads, never on the event loop: a slow archive volume (a network
    file system) must not stall every other agent's handling."""

    def prepare() -> PendingArchive | None:
        if Archive.is_complete(directory):
            return None
        # With no pod left there is nothing to stream: keep what an interrupted run had streamed.
        return rt.archive.begin(directory, salvage=not pods)

    pending = await asyncio.to_thread(prepare)
    if pending is None:
        await stop_pods(rt, pods, grace)
        return await asyncio.to_thread(rt.archive.existing, directory)
    if pending.salvaged:
        log.warning("archive %s: pod gone, finishing the log files an interrupted run had streamed: %s",
                    directory, ", ".join(pending.salvaged))
    pumps: list[asyncio.Task[None]] = []
    try:
        for pod in pods:
            pumps += await _open_log_pumps(rt, pending, pod)
    except BaseException:
        for task in pumps:
            task.cancel()
        pending.abort()
        raise
    try:
        await stop_pods(rt, pods, grace)
        if pumps:
            done, still = await asyncio.wait(pumps, timeout=10.0)
            for task in still:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    log.warning("log stream ended with an error: %s", task.exception())

        def finish() -> ArchiveResult:
            files = extra_files() if callable(extra_files) else extra_files   # (agent.json: made here)
            for filename, data in files.items():
                pending.write_file(filename, data)
            return pending.commit()

        return await asyncio.to_thread(finish)
    except BaseException:
        # The pod was asked to stop: what was streamed may exist nowhere else. Keep the partial
        # archive for the next run to finish (Archive.begin(salvage=True)).
        for task in pumps:
            task.cancel()
        pending.close()
        raise


async def _open_log_pumps(rt: Runtime, pending: PendingArchive, pod: Mapping[str, Any]) -> list[asyncio.Task[None]]:
    meta = pod["metadata"]
    spec = pod.get("spec") or {}
    restarts = {cs.get("name"): int(cs.get("restartCount") or 0)
                for cs in (pod.get("status") or {}).get("containerStatuses") or []}
    containers = [c["name"] for c in spec.get("initContainers") or []] + [c["name"] for c in spec.get("containers") or []]
    tasks: list[asyncio.Task[None]] = []
    for container in containers:
        for previous in ((True, False) if restarts.get(container) else (False,)):
            filename = log_filename(container, previous)
            try:
                stream = await rt.client.stream_log(meta["namespace"], meta["name"], container,
                                                    follow=not previous, previous=previous)
            except ApiError as exc:
                if exc.status in (404, 400) and previous:
                    continue
                if exc.not_found:
                    return tasks   # the pod is already gone: there is nothing left to read
                if exc.status == 400 and "waiting to start" in exc.message:
                    continue       # the container never started (ContainerCreating, image pull): no log
                raise ArchiveError("log_read", f"cannot read log of {meta['name']}/{container}: {exc}") from exc
            try:
                handle = await asyncio.to_thread(pending.open, filename)
            except BaseException:
                stream.close()
                raise
            tasks.append(asyncio.create_task(_pump(stream, handle)))
    return tasks


async def _pump(stream: LogStream, handle: Any) -> None:
    async for chunk in stream.chunks():
        handle.write(chunk)


async def stop_pods(rt: Runtime, pods: list[dict[str, Any]], grace: int) -> None:
    await asyncio.gather(*(stop_pod(rt, pod, grace) for pod in pods))


async def stop_pod(rt: Runtime, pod: Mapping[str, Any], grace: int) -> None:
    """Delete with the grace period; if still there after grace + 30 s, delete with grace 0.

    A pod whose containers have all ended (phase Succeeded or Failed) has nothing left to stop: it is
    deleted at once (grace 0), instead of going through a termination that has nothing to do."""
    if (pod.get("status") or {}).get("phase") in POD_FINISHED:
        grace = 0
    pod_uid = _obj_uid(pod)
    waiter = rt.pods.waiter(pod_uid)
    try:
        if await delete_child(rt, "pod", pod, grace=grace):
            return
        if await _wait_gone(rt, pod, waiter, grace + rt.force_delete_after):
            return
        log.warning("pod %s still present %ss after its grace period: force-deleting", _obj_name(pod),
                    rt.force_delete_after)
        await delete_child(rt, "pod", pod, grace=0)
        await _wait_gone(rt, pod, waiter, rt.force_delete_after)
    finally:
        rt.pods.forget(pod_uid)


async def _wait_gone(rt: Runtime, pod: Mapping[str, Any], waiter: asyncio.Event, timeout: float) -> bool:
    """True once the pod (this UID) no longer exists. Woken by the pod watch; polls as a fallback."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(waiter.wait(), timeout=min(remaining, rt.pod_poll_interval))
        if waiter.is_set():
            return True
        if await rt.client.get_same(PODS, pod) is None:
            return True
