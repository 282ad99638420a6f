"""Archiving a pod's logs (SPEC §4 step 1 and 2, and "Completeness of the archive").

- **While the agent runs** (`start_capture`, from sync): its pod's logs are read from when it runs
  into the archive's in-progress directory — the kubelet serves only a container's current log file,
  so what a rotation takes away is kept, or at least noticed. Each log file has a `.state` beside it:
  a restarted controller (or the next leader) resumes it without a duplicated or missing line.
- **At cleanup** (`archive_and_stop_pods`): the live captures are adopted (or, without one, every
  container's log — and a restarted container's previous one — is opened) *before* the pod is
  stopped, so what it writes in its grace period is kept; the streams end when the containers do.
- **Every stream is distrusted**: read with timestamps (stripped again: the archive holds the
  container's bytes), resumed where it broke (`sinceTime`), and its end confirmed by the log's last
  line as the node serves it (a kubelet connection cut short ends the API's answer as if complete).
  What cannot be read is recorded per log in MANIFEST.json (`complete`, `missing`, `missingBytes`):
  the archive never claims more than it holds.

Nothing is deleted if the archive cannot be started (directory not writable, a log stream refused):
data first. Logs the node cannot serve are waited for `cleanup.logTimeoutSeconds`, then recorded as
lost. File-system work never runs on the event loop: a slow archive volume (NFS, EFS) must not stall
the handling of every other agent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import aiohttp

from . import api, ship
from .archive import Archive, ArchiveError, ArchiveResult, PendingArchive, log_filename
from .kube.client import ApiError, LogStream
from .kube.resources import PODS
from .logformat import KUBELET_TEXT, LogLines
from .names import POD_CONTAINER
from .podwatch import PodInfo
from .runtime import Runtime

log = logging.getLogger(__name__)

POD_FINISHED = ("Succeeded", "Failed")
STREAM_DRAIN_SECONDS = 10.0      # after the pod is gone, how long its log streams may take to end
MAX_RESUMES = 20                 # broken streams resumed per log before it is recorded incomplete
DEFAULT_LOG_TIMEOUT = float(api.DEFAULTS["cleanup.logTimeoutSeconds"])
SHIPMENT_POLL_SECONDS = 0.2     # how often a cleanup waiting for agentctl run's last bytes looks
CAPTURE_RETRY_SECONDS = 2.0      # a running pod whose logs could not be opened yet: try again this soon
STILL_RUNNING_WAIT_SECONDS = 1.0  # a stream that keeps ending while its container runs: retried this often
STATE_EVERY_SECONDS = 1.0        # how often a log's resume state (.state) is saved while it streams

ExtraFiles = Mapping[str, bytes] | Callable[[], Mapping[str, bytes]]


class LiveCapture:
    """The logs of an Agent's pod, read from when it runs into the archive's in-progress directory.

    The kubelet serves only a container's current log file: reading from the start is what keeps
    the output a rotation would take away at cleanup time (up to the kubelet's own limits: a follow
    stream that stops at a rotation is noticed and resumed, and what the node no longer has is
    recorded as `rotated`). The cleanup adopts these captures (archive_and_stop_pods)."""

    def __init__(self, pod_uid: str) -> None:
        self.pod_uid = pod_uid
        self.pending: PendingArchive | None = None
        self.captures: dict[tuple[str, bool], tuple[Capture, asyncio.Task[None]]] = {}
        self.ready = asyncio.Event()
        self.deadline = float("inf")      # for the log being opened; the cleanup sets its log timeout
        self.opening: Capture | None = None

    def end_by(self, deadline: float) -> None:
        """From now on (the cleanup has begun) a log the node does not serve is waited for until
        `deadline` only: a capture begun while the pod ran waits no longer than one begun now."""
        self.deadline = deadline
        if self.opening is not None:
            self.opening.deadline = deadline

    def cancel(self) -> list[asyncio.Task[None]]:
        """Stop reading (the in-progress files stay: a later run resumes them); the tasks to await."""
        tasks = []
        for capture, task in self.captures.values():
            task.cancel()
            capture.close()
            tasks.append(task)
        return tasks


def start_capture(rt: Runtime, agent: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
    """Begin capturing the logs of the Agent's running pod (once; in the background)."""
    meta = agent["metadata"]
    uid = meta["uid"]
    if uid in rt.captures:
        return
    live = rt.captures[uid] = LiveCapture(str(pod["metadata"].get("uid", "")))

    async def begin() -> None:
        try:
            directory = rt.archive.agent_dir(meta["namespace"], meta["name"], uid)

            def prepare() -> PendingArchive | None:
                return None if Archive.is_complete(directory) else rt.archive.begin(directory)

            live.pending = await asyncio.to_thread(prepare)
            if live.pending is None:
                return
            for container, previous in _logs_of(pod):
                capture = live.opening = Capture(rt, live.pending, pod, container, previous, live.deadline)
                if await capture.open():
                    live.captures[(container, previous)] = (capture, asyncio.create_task(capture.run()))
                live.opening = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the cleanup reads the logs itself (and reports)
            log.warning("agent %s/%s: cannot capture its logs while it runs: %s", meta["namespace"], meta["name"], exc)
        finally:
            live.ready.set()
        if not live.captures and live.pending is not None and rt.captures.get(uid) is live:
            # Nothing to read yet (a container not started, the node not serving it): a later sync
            # tries again.
            del rt.captures[uid]
            rt.queue.add_after((meta["namespace"], meta["name"]), CAPTURE_RETRY_SECONDS)

    rt.spawn(f"capture/{uid}", begin())


async def archive_and_stop_pods(rt: Runtime, directory: Path, pods: list[dict[str, Any]], grace: int,
                                extra_files: ExtraFiles, log_timeout: float = DEFAULT_LOG_TIMEOUT,
                                expected: Mapping[str, int] | None = None,
                                live: LiveCapture | None = None,
                                gone_logs: tuple[tuple[str, bool], ...] = ()) -> ArchiveResult:
    """Archive the logs of `pods` into `directory` while stopping them; returns the sealed archive.

    `log_timeout`: how long logs the node cannot serve (kubelet unreachable) are waited for before
    they are recorded as lost and the pods are stopped anyway. `expected`: bytes the agent's own
    process reported writing, by container (`status.output`), to check the capture against.
    `live`: what was captured while the pod ran (start_capture); its streams go on here.
    `gone_logs`: (container, previous) logs a pod no longer there had: any that nothing read is
    recorded as lost (`pod_gone`), not left out."""
    deadline = asyncio.get_running_loop().time() + max(0.0, log_timeout)
    if live is not None:
        live.end_by(deadline)       # a log still being opened (the node not answering) waits no longer
        await live.ready.wait()

    def prepare() -> PendingArchive | None:
        if Archive.is_complete(directory):
            return None
        return rt.archive.begin(directory)

    pending = live.pending if live is not None and live.pending is not None else await asyncio.to_thread(prepare)
    if pending is None:
        if live is not None:
            live.cancel()
        await stop_pods(rt, pods, grace)
        return await asyncio.to_thread(rt.archive.existing, directory)
    adopted = dict(live.captures) if live is not None else {}
    captures: list[Capture] = []
    pumps: list[asyncio.Task[None]] = []
    try:
        for pod in pods:
            ours = live is not None and pod["metadata"].get("uid") == live.pod_uid
            for container, previous in _logs_of(pod):
                if ours and (container, previous) in adopted:
                    capture, task = adopted.pop((container, previous))
                    capture.deadline = deadline
                else:
                    capture = Capture(rt, pending, pod, container, previous, deadline)
                    if not await capture.open():
                        continue
                    task = asyncio.create_task(capture.run())
                captures.append(capture)
                pumps.append(task)
        for capture, task in adopted.values():      # a pod gone meanwhile: its streams end by themselves
            capture.deadline = deadline
            captures.append(capture)
            pumps.append(task)
    except BaseException:
        for task in pumps:
            task.cancel()
        for capture in captures:
            capture.close()
        await asyncio.to_thread(pending.close)
        raise
    if pending.salvaged and not pods:
        log.warning("archive %s: pod gone, finishing the log files an earlier run had streamed: %s",
                    directory, ", ".join(pending.salvaged))
    try:
        await _await_shipment(rt, directory, pods, expected, deadline)
        # A pod whose containers have all ended is deleted at once (grace 0): read its logs to the
        # end — confirmed by the log's last line — before it goes. A running pod's streams are
        # checked to be up to date first (a follow stream that stopped at a rotation resumes now,
        # while the node still serves the log).
        finished = {p["metadata"].get("uid") for p in pods if (p.get("status") or {}).get("phase") in POD_FINISHED}
        ended = [t for t, c in zip(pumps, captures) if c.pod_uid in finished]
        running = [c for t, c in zip(pumps, captures) if c.pod_uid not in finished and not t.done()]
        await asyncio.gather(*(c.catch_up() for c in running))
        if ended:
            await asyncio.wait(ended, timeout=STREAM_DRAIN_SECONDS)
        for task in pumps:
            # Data first: a capture that could not be written (the volume full, unwritable) keeps
            # its pod, and with it the node's copy of the log, for the next attempt.
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.to_thread(pending.reserve)
        await stop_pods(rt, pods, grace)
        await asyncio.to_thread(pending.release)
        if pumps:
            done, still = await asyncio.wait(pumps, timeout=STREAM_DRAIN_SECONDS)
            for task in still:
                task.cancel()
            await asyncio.gather(*still, return_exceptions=True)
            for task in done:
                failure = task.exception()
                if failure is not None:
                    raise failure        # an archive write failed, a log refused: data first
        shipped = await _take_shipped(rt, pending, expected)
        for capture in captures:
            if capture.filename == shipped:
                continue          # the copy agentctl run shipped is the log (whole): the API-read one is not kept
            capture.settle(expected)
            pending.logs[capture.filename] = capture.entry()
            if not capture.complete:
                log.warning("log %s/%s of %s is incomplete (%s)%s", capture.container,
                            "previous" if capture.previous else "current", capture.pod_name, capture.missing,
                            f": {capture.detail}" if capture.detail else "")
        for container, previous in gone_logs:
            filename = log_filename(container, previous)
            if filename not in pending.logs and filename not in pending.salvaged:
                detail = "the pod was gone before any of its log could be read"
                await asyncio.to_thread(pending.never_read, filename, {
                    "container": container, "previous": previous, "missing": "pod_gone", "detail": detail})
                log.warning("log %s of %s is lost (pod_gone): %s", filename, directory.name, detail)

        def finish() -> ArchiveResult:
            files = extra_files() if callable(extra_files) else extra_files   # (agent.json: made here)
            for filename, data in files.items():
                pending.write_file(filename, data)
            if not rt.fence():
                raise ArchiveError("write", "this replica lost its lease: the archive is left to the leader")
            return pending.commit()

        result = await asyncio.to_thread(finish)
        ship.forget(rt, directory)
        if not result.already_existed:
            for reason in result.missing:
                rt.metrics.incomplete_logs.labels(reason=reason).inc()
        return result
    except BaseException:
        # The pod was asked to stop: what was streamed may exist nowhere else. The in-progress
        # directory stays for the next attempt to resume (Archive.begin).
        for task in pumps:
            task.cancel()
        await asyncio.to_thread(pending.close)
        raise


async def _await_shipment(rt: Runtime, directory: Path, pods: list[dict[str, Any]],
                          expected: Mapping[str, int] | None, deadline: float) -> None:
    """`agentctl run` reported its byte counts (`status.output`) and is still sending the rest (a
    controller kill, a failover or an API server restart held it up): its pod — and with it the
    wrapper — is not stopped before the shipped copy holds them all, the agent container ends (the
    wrapper gave up or finished), or the log deadline passes. Without counts there is nothing to wait
    for: the wrapper ships the rest within the grace period."""
    want = expected.get(POD_CONTAINER) if expected else None
    if rt.ship is None or want is None:
        return
    running = [str(p["metadata"].get("uid", "")) for p in pods
               if (p.get("status") or {}).get("phase") not in POD_FINISHED]
    if not running:
        return
    s = ship.shipment(rt, directory)
    loop = asyncio.get_running_loop()
    told = False
    while True:
        if s.size is None and not s.sealed:
            await asyncio.to_thread(s.load)
        if s.sealed or s.final or (s.size or 0) >= want:
            break
        alive = [info for info in map(rt.pods.get, running)
                 if info is not None and POD_CONTAINER not in info.terminated and not info.state.deleting]
        if not alive:
            break
        if loop.time() >= deadline:
            log.warning("archive %s: agentctl run had shipped %d of the %d bytes it reported when the log "
                        "timeout passed: stopping its pod", directory, s.size or 0, want)
            break
        if not told:
            told = True
            log.info("archive %s: waiting for agentctl run to ship the rest (%d of %d bytes arrived)",
                     directory, s.size or 0, want)
        await asyncio.sleep(SHIPMENT_POLL_SECONDS)


async def _take_shipped(rt: Runtime, pending: PendingArchive, expected: Mapping[str, int] | None) -> str | None:
    """The agent container's log when it is known whole, or None. Shipping ends here.

    - The copy `agentctl run` shipped (controller/ship.py), when all of it arrived: it holds what
      rotation or a lost node took from the node's copy.
    - Else the log as an earlier run left it finished but not committed (it took the shipped copy,
      or read all of it, then was killed or lost its lease), when it holds exactly the bytes the
      agent reported (`status.output`): a capture or a shipped copy never holds a byte twice.
      Found by the chaos run: such logs were marked `pod_gone`."""
    await ship.seal(rt, pending.final)
    filename = log_filename(POD_CONTAINER, False)
    want = expected.get(POD_CONTAINER) if expected else None

    def take() -> bool:
        if pending.shipped(filename, want) is not None:
            pending.use_shipped(filename)
            return True
        return want is not None and filename in pending.salvaged and pending.size(filename) == want

    if not await asyncio.to_thread(take):
        return None
    pending.logs[filename] = {"container": POD_CONTAINER, "previous": False, "complete": True}
    return filename


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
        self.namespace, self.pod_name, self.pod_uid = meta["namespace"], meta["name"], meta.get("uid")
        self.filename = log_filename(container, previous)
        self.lines = LogLines()
        self.stream: LogStream | None = None     # the stream being read (set by _connect)
        self.handle: IO[bytes] | None = None
        self.missing: str | None = None
        self.missing_bytes: int | None = None
        self.detail = ""
        self.unreachable = False      # the node did not answer since the last stream was opened
        self.resumes = 0
        self._state_saved_at = float("-inf")

    @property
    def complete(self) -> bool:
        return self.missing is None

    async def open(self) -> bool:
        """Open the first stream, retrying what the node cannot serve yet until the log timeout.
        False: this log does not exist (no previous container, a container that never started)."""
        state = await asyncio.to_thread(self.pending.log_state, self.filename)
        if state is not None:
            # An earlier run (or replica) got this far: go on from there.
            self.lines = LogLines.restore(state)
            if self.lines.mid_line:
                self._lose("stream_broken", "resumed inside a line too long to hold")
        outcome = await self._connect()
        if outcome == "absent" and state is None:
            return False
        if outcome == "gone":
            self._lose("kubelet_unreachable" if self.unreachable else
                       "pod_gone" if state is None else "stream_broken", self.detail)
        self.handle = await asyncio.to_thread(self.pending.open_log, self.filename, state)
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
                # The node answers again: what ends this stream is judged on its own (an earlier
                # refusal, a 500 on the way, says nothing about how this one ends).
                self.unreachable = False
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
        ends is not trusted (a kubelet connection cut short ends the API's answer as if complete): the
        log has ended when its last line, as the node serves it now, is the last one read (_ended)."""
        quiet = False        # the last stream ended where the node's log ends, the container running
        try:
            while self.stream is not None:
                read = self.lines.bytes
                try:
                    await self._pump(self.stream)
                    if self.lines.bytes != read:
                        quiet = False
                except _STREAM_ERRORS as exc:
                    self.stream = None
                    exact = self.lines.broken()
                    self.detail = f"{type(exc).__name__}: {exc}"
                    if not exact:
                        self._lose("stream_broken", f"broke inside a long line: {self.detail}")
                    if not await self._resume(broken=True):
                        self._lose(self._cut_off(), self.detail)
                        return
                    continue
                self.stream = None
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
                        self._lose(self._cut_off(), "the log stream ended before its end could be "
                                                    "confirmed, and the pod is gone")
                    break
                if ended and await self._stopped_writing():
                    break
                if ended:
                    # The last line read is the node's last line, but the container still runs: a
                    # stream cut at a line boundary while the agent is quiet looks just like the
                    # end. Follow it again — at once the first time (the pod may be stopped any
                    # moment: the stream must be open by then), and after that once the pod
                    # changes (its container's end reported) or a second has passed.
                    if quiet:
                        await self.rt.pods.wait_changed(str(self.pod_uid), STILL_RUNNING_WAIT_SECONDS)
                    quiet = True
                if not await self._resume():
                    self._lose(self._cut_off(), "the log stream kept ending before the log's end")
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

    async def _stopped_writing(self) -> bool:
        """Has this log's container stopped (so a stream that ended at its last line saw its end)?
        A previous log always has; otherwise the pod cache, then the API server, says."""
        if self.previous:
            return True
        info = self.rt.pods.get(str(self.pod_uid))
        if info is not None and info.stopped(self.container):
            return True
        try:
            pod = await self.rt.client.get_same(PODS, {"metadata": {
                "namespace": self.namespace, "name": self.pod_name, "uid": self.pod_uid}})
        except (ApiError, *_STREAM_ERRORS):
            return False
        if pod is None:
            return True
        self.rt.pods.upsert(pod)        # (newer than the watch may have it: the cache keeps the newest)
        return PodInfo.of(pod).stopped(self.container)

    def _cut_off(self) -> str:
        """Why the rest could not be read: the node did not answer (at some point), or the stream."""
        return "kubelet_unreachable" if self.unreachable else "stream_broken"

    async def catch_up(self) -> None:
        """Before the pod is stopped: does the node serve a newer last line than the stream brought?
        Then the stream is reconnected (resumed where it was): a follow stream that stopped at a
        rotation goes on, and what the rotation took away is noticed while the pod still exists."""
        if self.stream is not None and await self._ended() is False and self.stream is not None:
            self.stream.close()        # run() resumes it

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
                    writing = asyncio.ensure_future(self._write(data, self._state_due()))
        finally:
            if writing is not None:
                await writing
            if waiting:
                await self._write(bytes(waiting), self.lines.snapshot())
            if self.lines.gap:
                self._lose("rotated", "the node no longer had the log's earlier lines when the stream "
                                      "was resumed (log rotation)")

    def _state_due(self) -> dict[str, Any] | None:
        """The resume state to save with the next write, at most every STATE_EVERY_SECONDS: an older
        state is as good (a later run cuts the file back to it and reads the rest again), and saving
        one with every chunk costs a file write and a rename per chunk."""
        now = asyncio.get_running_loop().time()
        if now - self._state_saved_at < STATE_EVERY_SECONDS:
            return None
        self._state_saved_at = now
        return self.lines.snapshot()

    async def _write(self, data: bytes, state: dict[str, Any] | None = None) -> None:
        """`data`, then the state after it (what a later run resumes from), from a thread."""
        if not data or self.handle is None:
            return
        handle = self.handle

        def write() -> None:
            handle.write(data)
            if state is not None:
                self.pending.save_state(self.filename, state)

        try:
            await asyncio.to_thread(write)
        except (OSError, ValueError) as exc:
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
