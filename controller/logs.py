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

import aiohttp
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from .archive import Archive, ArchiveError, ArchiveResult, PendingArchive, log_filename
from .kube.client import ApiError, LogStream
from .logformat import KUBELET_TEXT, LogLines
from .kube.resources import PODS
from .runtime import Runtime

log = logging.getLogger(__name__)

POD_FINISHED = ("Succeeded", "Failed")
STREAM_DRAIN_SECONDS = 10.0      # after the pod is gone, how long its log streams may take to end
MAX_RESUMES = 20                 # broken streams resumed per log before it is recorded incomplete
DEFAULT_LOG_TIMEOUT = 300.0      # cleanup.logTimeoutSeconds' default (api.DEFAULTS)

ExtraFiles = Mapping[str, bytes] | Callable[[], Mapping[str, bytes]]


async def archive_and_stop_pods(rt: Runtime, directory: Path, pods: list[dict[str, Any]], grace: int,
                                extra_files: ExtraFiles, log_timeout: float = DEFAULT_LOG_TIMEOUT,
                                expected: Mapping[str, int] | None = None) -> ArchiveResult:
    """Archive the logs of `pods` into `directory` while stopping them; returns the sealed archive.

    `log_timeout`: how long logs the node cannot serve (kubelet unreachable) are waited for before
    they are recorded as lost and the pods are stopped anyway. `expected`: bytes the agent's own
    process reported writing, by container (`status.output`), to check the capture against."""

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
    deadline = asyncio.get_running_loop().time() + max(0.0, log_timeout)
    captures: list[Capture] = []
    try:
        for pod in pods:
            for container, previous in _logs_of(pod):
                capture = Capture(rt, pending, pod, container, previous, deadline)
                if await capture.open():
                    captures.append(capture)
    except BaseException:
        for capture in captures:
            capture.close()
        await asyncio.to_thread(pending.abort)
        raise
    pumps = [asyncio.create_task(c.run()) for c in captures]
    try:
        # A pod whose containers have all ended is deleted at once (grace 0): read its logs to the
        # end — confirmed by a resumed request — before it goes.
        ended = [t for t, c in zip(pumps, captures) if (c.pod.get("status") or {}).get("phase") in POD_FINISHED]
        if ended:
            await asyncio.wait(ended, timeout=STREAM_DRAIN_SECONDS)
        await stop_pods(rt, pods, grace)
        if pumps:
            done, still = await asyncio.wait(pumps, timeout=STREAM_DRAIN_SECONDS)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise failure        # an archive write failed, a log refused: data first
        for capture in captures:
            capture.settle(expected)
            pending.logs[capture.filename] = capture.entry()
            if not capture.complete:
                log.warning("log %s/%s of %s is incomplete (%s)%s", capture.container,
                            "previous" if capture.previous else "current", capture.pod_name, capture.missing,
                            f": {capture.detail}" if capture.detail else "")

        def finish() -> ArchiveResult:
            files = extra_files() if callable(extra_files) else extra_files   # (agent.json: made here)
            for filename, data in files.items():
                pending.write_file(filename, data)
            if not rt.fence():
                raise ArchiveError("write", "this replica lost its lease: the archive is left to the leader")
            return pending.commit()

        result = await asyncio.to_thread(finish)
        if not result.already_existed:
            for reason in result.missing:
                rt.metrics.incomplete_logs.labels(reason=reason).inc()
        return result
    except BaseException:
        # The pod was asked to stop: what was streamed may exist nowhere else. Keep the partial
        # archive for the next run to finish (Archive.begin(salvage=True)).
        for task in pumps:
            task.cancel()
        await asyncio.to_thread(pending.close)
        raise


def _logs_of(pod: Mapping[str, Any]) -> list[tuple[str, bool]]:
    """(container, previous) of every log the pod may have: a restarted container's previous one too."""
    spec = pod.get("spec") or {}
    restarts = {cs.get("name"): int(cs.get("restartCount") or 0)
                for cs in (pod.get("status") or {}).get("initContainerStatuses", []) +
                ((pod.get("status") or {}).get("containerStatuses") or [])}
    containers = [c["name"] for c in spec.get("initContainers") or []] + [c["name"] for c in spec.get("containers") or []]
    return [(c, previous) for c in containers for previous in ((True, False) if restarts.get(c) else (False,))]


# What makes a stream transient: the node (kubelet) did not answer, or the connection broke.
_STREAM_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class Capture:
    """One container log into one archive file, across as many streams as it takes (SPEC §4
    "Completeness"): opened before the pod is stopped, resumed where a stream broke, and at the end
    an honest entry for MANIFEST.json — `complete`, or what is `missing`."""

    def __init__(self, rt: Runtime, pending: PendingArchive, pod: Mapping[str, Any], container: str,
                 previous: bool, deadline: float):
        meta = pod["metadata"]
        self.rt, self.pending, self.container, self.previous, self.deadline = rt, pending, container, previous, deadline
        self.namespace, self.pod_name, self.pod = meta["namespace"], meta["name"], pod
        self.filename = log_filename(container, previous)
        self.lines = LogLines()
        self.stream: LogStream | None = None
        self.handle: IO[bytes] | None = None
        self.missing: str | None = None
        self.missing_bytes: int | None = None
        self.detail = ""
        self.unreachable = False      # the node did not answer at some point
        self.resumes = 0

    @property
    def complete(self) -> bool:
        return self.missing is None

    async def open(self) -> bool:
        """Open the first stream, retrying what the node cannot serve yet until the log timeout.
        False: this log does not exist (no previous container, a container that never started)."""
        outcome = await self._connect()
        if outcome == "absent":
            return False
        if outcome == "gone":
            self._lose("kubelet_unreachable" if self.unreachable else "pod_gone", self.detail)
        self.handle = await asyncio.to_thread(self.pending.open, self.filename)
        return True

    async def _connect(self) -> str:
        """'open'; 'absent' (no such log); 'gone' (the pod is); 'lost' (self.missing says why)."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                self.stream = await self.rt.client.stream_log(
                    self.namespace, self.pod_name, self.container, follow=not self.previous,
                    previous=self.previous, timestamps=True, since_time=self.lines.resume_since())
                return "open"
            except ApiError as exc:
                if exc.status in (404, 400) and self.previous and self.lines.last_ts is None:
                    return "absent"
                if exc.not_found:
                    self.detail = self.detail or str(exc)
                    return "gone"
                if exc.status == 400 and "waiting to start" in exc.message:
                    return "absent"       # the container never started (ContainerCreating, image pull): no log
                if exc.status != 0 and exc.status < 500:
                    raise ArchiveError("log_read", f"cannot read log of {self.pod_name}/{self.container}: "
                                                   f"{exc}") from exc
                self.unreachable = True
                self.detail = str(exc)
            except _STREAM_ERRORS as exc:
                self.unreachable = True
                self.detail = f"{type(exc).__name__}: {exc}"
            if loop.time() + delay > self.deadline:
                self._lose("kubelet_unreachable", self.detail)
                return "lost"
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _lose(self, missing: str, detail: str = "") -> None:
        if self.missing is None:
            self.missing = missing
            self.detail = " ".join(detail.split())[:300]

    async def run(self) -> None:
        """Stream -> file until the container's log ends. A stream that breaks is resumed; one that
        ends is confirmed by one more (resumed) request, since a kubelet connection cut short ends the
        API's answer as if complete: the log is complete when a resumed stream brings nothing new."""
        try:
            while self.stream is not None:
                stream, self.stream = self.stream, None
                try:
                    await self._pump(stream)
                except _STREAM_ERRORS as exc:
                    exact = self.lines.broken()
                    self.detail = f"{type(exc).__name__}: {exc}"
                    if not exact:
                        self._lose("stream_broken", f"broke inside a long line: {self.detail}")
                    if not await self._resume(broken=True):
                        self._lose("stream_broken", self.detail)
                        return
                    continue
                if self.lines.kubelet_text is not None:
                    break
                if self.lines.mid_line:
                    break         # inside a line too long to hold: no exact resume; this is its end
                self.lines.eof()
                ended = await self._ended()
                if ended is None:
                    # The pod is gone before the end could be confirmed: complete unless the last
                    # stream ended inside a line (where a cut connection most likely ends one).
                    if self.lines.held:
                        self._lose("stream_broken", "the log stream ended inside a line and could not be "
                                                    "resumed: the pod is gone")
                    break
                if ended:
                    break
                if not await self._resume():
                    self._lose("stream_broken", "the log stream kept ending before the log's end")
                    break
            await self._write(self.lines.finish())
            if self.lines.kubelet_text is not None:
                self._lose("container_gone", self.lines.kubelet_text.decode(errors="replace"))
        except asyncio.CancelledError:
            # Still open after the pod was gone and its streams had their time: the node serves no more.
            self._lose("kubelet_unreachable", "the log stream stalled (node lost?)")
            raise
        finally:
            if self.stream is not None:
                self.stream.close()

    async def _ended(self) -> bool | None:
        """Is what was read the whole log? Its last line, as the node serves it now, says (one small
        request, `tailLines=1`). None: the pod is gone, nothing can be confirmed."""
        try:
            stream = await self.rt.client.stream_log(self.namespace, self.pod_name, self.container, follow=False,
                                                     previous=self.previous, timestamps=True, tail_lines=1)
            tail = b"".join([chunk async for chunk in stream.chunks()])
        except ApiError as exc:
            if exc.not_found:
                return None
            return False          # the node did not answer: resume (its retries and timeout apply)
        except _STREAM_ERRORS:
            return False
        if KUBELET_TEXT.match(tail):
            self.lines.kubelet_text = tail[:4096]
            return True
        return self.lines.is_end(tail)

    async def _resume(self, broken: bool = False) -> bool:
        self.resumes += 1
        if self.resumes > MAX_RESUMES or (broken and asyncio.get_running_loop().time() > self.deadline):
            return False
        return await self._connect() == "open"

    async def _pump(self, stream: LogStream) -> None:
        """Each write runs in a thread; chunks that arrive while one is in flight are written together
        by the next, so the file follows the stream closely (a crash loses little) while a fast stream
        costs few thread hops."""
        waiting = bytearray()
        writing: asyncio.Future[Any] | None = None
        try:
            async for chunk in stream.chunks():
                if not self.rt.fence():
                    raise ArchiveError("write", "this replica lost its lease: it writes no more")
                waiting += self.lines.feed(chunk)
                if waiting and (writing is None or writing.done()):
                    if writing is not None:
                        writing.result()          # a failed write fails the capture
                    data, waiting = bytes(waiting), bytearray()
                    writing = asyncio.ensure_future(self._write(data))
        finally:
            if writing is not None:
                await writing
            if waiting:
                await self._write(bytes(waiting))

    async def _write(self, data: bytes) -> None:
        if not data or self.handle is None:
            return
        try:
            await asyncio.to_thread(self.handle.write, data)
        except OSError as exc:
            raise ArchiveError("write", f"cannot write {self.filename}: {exc}") from exc

    def settle(self, expected: Mapping[str, int] | None) -> None:
        """Check against what the agent's process reported writing (agentctl run: exact)."""
        if self.previous or not expected or self.container not in expected:
            return
        short = int(expected[self.container]) - self.lines.bytes
        if short > 0:
            # The kubelet serves the current log file only: what was rotated away before is gone.
            self._lose("rotated" if self.missing is None else self.missing,
                       f"the agent reported {expected[self.container]} bytes, {self.lines.bytes} were served")
            self.missing_bytes = short

    def entry(self) -> dict[str, Any]:
        out: dict[str, Any] = {"container": self.container, "previous": self.previous, "complete": self.complete}
        if self.missing is not None:
            out["missing"] = self.missing
            if self.missing_bytes is not None:
                out["missingBytes"] = self.missing_bytes
            if self.detail:
                out["detail"] = self.detail
        return out

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None
        if self.handle is not None:
            handle, self.handle = self.handle, None
            try:
                handle.close()
            except OSError:
                pass


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
