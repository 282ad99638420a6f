"""Archiving a pod's logs while it is stopped (SPEC §4 step 1 and 2, interleaved).

Every container's log stream (and a restarted container's previous log) is opened *before* the pod
is asked to stop, so that what it writes during its grace period is kept; the streams end when the
containers do. Nothing is deleted if the archive cannot be started (directory not writable, a log
stream refused): data first.

File-system work never runs on the event loop: a slow archive volume (NFS, EFS) must not stall the
handling of every other agent. Streamed chunks go to the file from a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from .archive import Archive, ArchiveError, ArchiveResult, PendingArchive, log_filename
from .kube.client import ApiError, LogStream
from .kube.resources import PODS
from .runtime import Runtime

log = logging.getLogger(__name__)

POD_FINISHED = ("Succeeded", "Failed")
STREAM_DRAIN_SECONDS = 10.0      # after the pod is gone, how long its log streams may take to end

ExtraFiles = Mapping[str, bytes] | Callable[[], Mapping[str, bytes]]


async def archive_and_stop_pods(rt: Runtime, directory: Path, pods: list[dict[str, Any]], grace: int,
                                extra_files: ExtraFiles) -> ArchiveResult:
    """Archive the logs of `pods` into `directory` while stopping them; returns the sealed archive."""

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
        await asyncio.to_thread(pending.abort)
        raise
    try:
        await stop_pods(rt, pods, grace)
        if pumps:
            done, still = await asyncio.wait(pumps, timeout=STREAM_DRAIN_SECONDS)
            for task in still:
                task.cancel()
            for task in done:
                if task.exception() is not None:
                    log.warning("log stream ended with an error: %s", task.exception())

        def finish() -> ArchiveResult:
            files = extra_files() if callable(extra_files) else extra_files   # (agent.json: made here)
            for filename, data in files.items():
                pending.write_file(filename, data)
            if not rt.fence():
                raise ArchiveError("write", "this replica lost its lease: the archive is left to the leader")
            return pending.commit()

        return await asyncio.to_thread(finish)
    except BaseException:
        # The pod was asked to stop: what was streamed may exist nowhere else. Keep the partial
        # archive for the next run to finish (Archive.begin(salvage=True)).
        for task in pumps:
            task.cancel()
        await asyncio.to_thread(pending.close)
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
            tasks.append(asyncio.create_task(_pump(rt, stream, handle)))
    return tasks


async def _pump(rt: Runtime, stream: LogStream, handle: IO[bytes]) -> None:
    """Stream -> file. Each write runs in a thread; chunks that arrive while one is in flight are
    written together by the next, so the file follows the stream closely (a crash loses little)
    while a fast stream costs few thread hops."""
    waiting = bytearray()
    writing: asyncio.Future[Any] | None = None
    try:
        async for chunk in stream.chunks():
            if not rt.fence():
                raise ArchiveError("write", "this replica lost its lease: it writes no more")
            waiting += chunk
            if writing is None or writing.done():
                if writing is not None:
                    writing.result()          # a failed write fails the pump
                data, waiting = bytes(waiting), bytearray()
                writing = asyncio.ensure_future(asyncio.to_thread(handle.write, data))
    finally:
        if writing is not None:
            await writing
    if waiting:
        await asyncio.to_thread(handle.write, bytes(waiting))


# ------------------------------------------------------------------ stopping pods


async def stop_pods(rt: Runtime, pods: list[dict[str, Any]], grace: int) -> None:
    await asyncio.gather(*(stop_pod(rt, pod, grace) for pod in pods))


async def stop_pod(rt: Runtime, pod: Mapping[str, Any], grace: int) -> None:
    """Delete with the grace period and a UID precondition; if still there after grace + 30 s, delete
    with grace 0. A pod whose containers have all ended (phase Succeeded or Failed) has nothing left to
    stop: it is deleted at once (grace 0)."""
    from .cleanup import delete_child

    if (pod.get("status") or {}).get("phase") in POD_FINISHED:
        grace = 0
    if await delete_child(rt, "pod", pod, grace=grace):
        return
    if await wait_pod_gone(rt, pod, grace + rt.force_delete_after):
        return
    log.warning("pod %s still present %ss after its grace period: force-deleting",
                (pod.get("metadata") or {}).get("name"), rt.force_delete_after)
    await delete_child(rt, "pod", pod, grace=0)
    await wait_pod_gone(rt, pod, rt.force_delete_after)


POLL_SECONDS = 5.0       # a fallback when the pod watch is late or broken (it wakes the wait)


async def wait_pod_gone(rt: Runtime, pod: Mapping[str, Any], timeout: float) -> bool:
    """True once the pod (this UID) no longer exists. Woken by the pod watch; polls as a fallback."""
    uid = str((pod.get("metadata") or {}).get("uid", ""))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        if await rt.pods.wait_gone(uid, min(remaining, POLL_SECONDS)):
            return True
        if await rt.client.get_same(PODS, pod) is None:
            return True
