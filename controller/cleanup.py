"""What happens when an agent ends — the one place.

`clean_up()` is the only cleanup implementation: `sync` runs it for a terminal Agent (whatever made
it terminal, the finalizer's deletion and the sweep's findings included). The work queue never runs
two syncs of one Agent at once, and every step is idempotent: after a crash at any line, running it
again finishes the job.

The steps (SPEC §4), each a function below:

1. `begin`: count the attempt; publish `cleanup.state: Running` (a first attempt only if it takes
   longer than RUNNING_MARK_AFTER — see `running_mark`).
2. `archive_and_stop` (logs.py): open every container's log stream (and the previous instance's)
   *before* the pod is asked to stop; delete the pod with its grace period and a UID precondition,
   force it after grace + 30 s; write into a temporary directory, then prompt.txt, agent.json,
   MANIFEST.json last; make it durable; rename. An archive whose MANIFEST.json exists is never
   written again. Data first: if the archive cannot be written, nothing is deleted.
3. `delete_and_verify`: delete the prompt ConfigMap and the credentials (UID preconditions); then
   verify that nothing is left: the pods by a fresh list on the agent-uid label (a pod still
   terminating counts as left), the prompt and the credentials by the API server's answer to each
   delete (removed, 404, or 409 = the name holds another UID now; an object still being finalized
   counts as left) — or, on the thorough path, one list per kind.
4. `record_success` / `record_failure`: status.cleanup Succeeded with `verifiedNoLeaks`, condition
   CleanedUp, an Event, metrics — or Retrying with the error, and the delay before the next attempt.

Which children exist is known without a request when this process created them (`rt.children` and
the pod cache). Otherwise — after a restart, on any retry, on the sweep's recheck — the cleanup is
thorough: one list per managed kind by the agent-uid label before the deletes, and again after them.

Requests of a first attempt for an agent this process created, with a prompt: 9 — a log stream per
container, 5 deletes, 1 pod list, status Succeeded, the Event — plus status Running if it takes
longer than RUNNING_MARK_AFTER (a pod that takes its grace period). Retries and thorough runs write
Running first, and list (5 + 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import api
from .archive import ArchiveError, ArchiveResult
from .events import NORMAL, WARNING
from .kinds import BY_LABEL, CHILD_KINDS, LABELS
from .kube.client import ApiError
from .kube.resources import AGENTS, PODS
from .logs import archive_and_stop_pods, stop_pods
from .names import POD_CONTAINER, PROMPT_KEY, uid_selector
from .runtime import Runtime
from .workqueue import retry_delay

log = logging.getLogger(__name__)

# Why a log could not be read at all (MANIFEST `missing`): `logsArchived` is false then.
UNREAD = frozenset({"kubelet_unreachable", "pod_gone", "container_gone"})

RUNNING_MARK_AFTER = 1.0   # seconds: a fast-path cleanup that takes longer publishes state Running
RUNNING_MARK_MAX_IN_FLIGHT = 100   # ... unless this many syncs are running (a burst)
RETRY_BASE_SECONDS = 1.0   # cleanup retries: 1, 2, 4, ... s (with jitter), capped at 5 minutes

Children = dict[str, list[dict[str, Any]]]     # kind label -> objects


class CleanupFailed(Exception):
    """A cleanup attempt failed; it was recorded, and should be retried after `delay` seconds."""

    def __init__(self, message: str, delay: float):
        super().__init__(message)
        self.delay = delay


@dataclass
class Outcome:
    trigger: str
    done: bool = False
    archive: ArchiveResult | None = None
    new_bytes: int = 0
    left: dict[str, list[str]] = field(default_factory=dict)
    final: dict[str, Any] | None = None      # the Agent as the success write left it


@dataclass
class Attempt:
    """One cleanup attempt of one Agent: what `begin` established, what the steps add."""

    agent: Mapping[str, Any]
    trigger: str
    number: int
    errors: list[str]
    finished_at: datetime.datetime      # when the Agent ended (this process's precise moment if it saw it)
    start: dict[str, Any]               # the status fields this attempt records from its start
    recorded: dict[str, Any]            # status.cleanup as it will be written
    snapshot: Mapping[str, Any]         # the Agent as archived in agent.json
    fast: bool                          # the children are known: no list before the deletes
    reported: bool = False              # the agent reported its end itself (no trigger recorded yet)

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.agent["metadata"]

    @property
    def spec(self) -> api.AgentSpec:
        return api.AgentSpec.from_dict(self.agent.get("spec") or {})


# ------------------------------------------------------------------------ the cleanup


async def clean_up(rt: Runtime, agent: Mapping[str, Any], trigger: str, thorough: bool = False) -> Outcome:
    """Run one cleanup attempt of a terminal (or deleted) Agent to success, or raise CleanupFailed."""
    attempt = begin(rt, agent, trigger, thorough)
    status = agent.get("status") or {}
    if attempt.reported and status.get("phase") != api.COMPLETED:
        # The agent reported an end other than success: an Event of its own (a reported success is
        # told by the CleanedUp Event, one request less per cleanup on the common path).
        await rt.events.post(agent, WARNING, "Reported", _ending(status))
    async with running_mark(rt, attempt) as mark:
        try:
            if not attempt.fast:
                attempt.snapshot = await mark.write_now()
            found = await children_of(rt, attempt)
            archived = await archive_and_stop(rt, attempt, found["pod"])
            left = await delete_and_verify(rt, attempt, found)
            if left:
                raise RuntimeError("resources still present after cleanup: " + ", ".join(
                    f"{kind}/{name}" for kind, names in sorted(left.items()) for name in names))
        except Exception as exc:
            await mark.settle()
            raise await record_failure(rt, attempt, exc) from exc
        await mark.settle()
    return await record_success(rt, attempt, archived)


def begin(rt: Runtime, agent: Mapping[str, Any], trigger: str, thorough: bool) -> Attempt:
    meta = agent["metadata"]
    status = agent.get("status") or {}
    cleanup = status.get("cleanup") or {}
    number = int(cleanup.get("attempts") or 0) + 1
    now = rt.clock()
    finished_at = rt.terminal_at.get(meta["uid"]) or api.parse_time(status.get("completionTime")) or now
    recorded: dict[str, Any] = {"state": api.CLEANUP_RUNNING, "trigger": cleanup.get("trigger") or trigger,
                                "attempts": number}
    start: dict[str, Any] = {"cleanup": recorded}
    if not status.get("completionTime"):
        start["completionTime"] = api.format_time(finished_at)
    if not status.get("startTime"):
        # The agent reported its end before the controller saw it running: when did it start?
        started = next((p.state.started_at for p in rt.pods.owned_by(meta["uid"]) if p.state.started_at), None)
        if started:
            start["startTime"] = started
    fitting = api.phase_reason(status.get("phase"), status.get("reason"))
    if fitting != status.get("reason"):
        # The agent reported its end without a reason of its own: the controller's last one (say
        # PodRunning) does not describe it.
        start["reason"] = fitting
    start["conditions"] = api.conditions_for(status.get("phase"), fitting, api.CLEANUP_RUNNING,
                                             status.get("conditions"), now, status.get("message") or "")
    fast = not thorough and number == 1 and rt.children.get(meta["uid"]) is not None
    snapshot = {**agent, "status": {**status, **start}}
    return Attempt(agent, trigger, number, list(cleanup.get("errors") or []), finished_at, start, recorded,
                   snapshot, fast, reported=number == 1 and not cleanup.get("trigger"))


class _Mark:
    """The `cleanup.state: Running` write of one attempt (see running_mark)."""

    def __init__(self, rt: Runtime, attempt: Attempt):
        self.rt = rt
        self.attempt = attempt
        self.task: asyncio.Task[Any] | None = None
        self.sending = False

    async def write_now(self) -> Mapping[str, Any]:
        """Publish the start now (retries and thorough runs do, before anything else)."""
        try:
            return await patch_status(self.rt, self.attempt.agent, self.attempt.start)
        except ApiError as exc:
            if exc.not_found:
                raise CleanupFailed("the Agent is gone", 0.0) from exc
            raise

    def later(self, delay: float) -> None:
        async def send() -> None:
            await asyncio.sleep(delay)
            self.sending = True
            with contextlib.suppress(ApiError):
                await patch_status(self.rt, self.attempt.agent, self.attempt.start)
        self.task = asyncio.create_task(send())

    async def settle(self) -> None:
        """Before the attempt's last write: a `Running` write on its way lands first; one not yet sent
        never will be."""
        if self.task is None:
            return
        if self.sending:
            with contextlib.suppress(Exception):
                await self.task
        else:
            self.task.cancel()
        self.task = None


@contextlib.asynccontextmanager
async def running_mark(rt: Runtime, attempt: Attempt) -> AsyncIterator[_Mark]:
    """`cleanup.state: Running` for this attempt. A fast first attempt publishes it only if it takes
    longer than RUNNING_MARK_AFTER (a pod using its grace period): a quick one goes from Pending to
    Succeeded in one write; in a burst (many syncs running) not at all, as one more status write per
    agent would only add to the work that delays them all. Other attempts write it first
    (`write_now`)."""
    mark = _Mark(rt, attempt)
    if attempt.fast and rt.queue.running() < RUNNING_MARK_MAX_IN_FLIGHT:
        mark.later(RUNNING_MARK_AFTER)
    try:
        yield mark
    finally:
        if mark.task is not None and not mark.sending:
            mark.task.cancel()


async def children_of(rt: Runtime, attempt: Attempt) -> Children:
    """The Agent's children before the deletes: what this process created (no request), else one list
    per kind by the agent-uid label."""
    ns, uid = attempt.meta["namespace"], attempt.meta["uid"]
    known = rt.children.get(uid) if attempt.fast else None
    if known is None:
        return await list_children(rt, ns, uid)
    found: Children = {kind: [] for kind in LABELS}
    found["pod"] = [p.body() for p in rt.pods.owned_by(uid)]
    name = attempt.meta["name"]
    for kind, child_uid in known:
        found[kind].append({"metadata": {"name": BY_LABEL[kind].name(name), "namespace": ns, "uid": child_uid}})
    return found


async def archive_and_stop(rt: Runtime, attempt: Attempt, pods: list[dict[str, Any]]) -> ArchiveResult | None:
    """Step 1 and 2: the archive (unless `cleanup.logs: Delete`) and the pods stopped."""
    spec = attempt.spec
    grace = spec.cleanup.grace_period_seconds
    if spec.cleanup.logs != api.LOGS_ARCHIVE:
        live = rt.captures.pop(attempt.meta["uid"], None)
        if live is not None:
            live.cancel()
        await stop_pods(rt, pods, grace)
        return None
    meta = attempt.meta
    directory = rt.archive.agent_dir(meta["namespace"], meta["name"], meta["uid"])
    status = attempt.agent.get("status") or {}
    output = status.get("output") or {}
    expected = {POD_CONTAINER: int(output["bytes"])} if isinstance(output.get("bytes"), int) else None
    # Its pod existed and is gone: its log is recorded as lost unless something read it.
    gone = ((POD_CONTAINER, False),) if not pods and (status.get("podName") or status.get("startTime")) else ()
    return await archive_and_stop_pods(rt, directory, pods, grace, extra_files=lambda: agent_files(attempt),
                                       log_timeout=spec.cleanup.log_timeout_seconds, expected=expected,
                                       live=rt.captures.pop(meta["uid"], None), gone_logs=gone)


async def delete_and_verify(rt: Runtime, attempt: Attempt, found: Children) -> dict[str, list[str]]:
    """Step 3 and 4: delete the prompt and the credentials, then what is left (names by kind)."""
    ns, uid = attempt.meta["namespace"], attempt.meta["uid"]
    deletes = [(kind, obj) for kind in LABELS if kind != "pod" for obj in found[kind]]
    gone = list(await asyncio.gather(*(delete_child(rt, kind, obj) for kind, obj in deletes)))
    if not attempt.fast:
        left = await list_children(rt, ns, uid)
    else:
        left = {kind: [] for kind in LABELS}
        left["pod"] = list((await rt.client.list(PODS, ns, label_selector=uid_selector(uid))).get("items") or [])
        for (kind, obj), ok in zip(deletes, gone):
            if not ok:
                left[kind].append(obj)
    names = {kind: [_name(o) for o in objs] for kind, objs in left.items() if objs}
    had_pod = bool(found["pod"]) or bool((attempt.agent.get("status") or {}).get("podName"))
    attempt.recorded.update({
        # Only a pod that existed can have been deleted: an agent whose pod was never created (its name
        # held by another object, a rejected spec) does not claim a deletion it did not make.
        "podDeleted": had_pod and not left["pod"],
        "promptDeleted": not left["configmap"],
        "credentialsDeleted": not any(left[k.label] for k in CHILD_KINDS if k.credential),
        "verifiedNoLeaks": not names,
    })
    return names


async def record_success(rt: Runtime, attempt: Attempt, archived: ArchiveResult | None) -> Outcome:
    meta = attempt.meta
    ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
    status = attempt.agent.get("status") or {}
    done_at = rt.clock()
    recorded = attempt.recorded
    # Logs the node could not serve at all are not "read and sealed"; what is missing otherwise
    # (rotated away, a stream that could not be resumed) `logsComplete` tells.
    recorded["logsArchived"] = archived is not None and not any(m in UNREAD for m in archived.missing)
    if archived is not None:
        recorded["logsComplete"] = archived.logs_complete
        recorded["archivedFiles"] = archived.files
        recorded["archivedBytes"] = archived.bytes
    recorded.update({"state": api.CLEANUP_SUCCEEDED, "completionTime": api.format_time(done_at),
                     "errors": attempt.errors})
    final = await patch_status(rt, attempt.agent, {
        **attempt.start,
        "cleanup": recorded,
        "conditions": api.conditions_for(status.get("phase"), attempt.start.get("reason", status.get("reason")),
                                         api.CLEANUP_SUCCEEDED, status.get("conditions"), done_at,
                                         status.get("message") or ""),
    })
    new_bytes = archived.bytes if archived is not None and not archived.already_existed else 0
    rt.archive_failing.discard(uid)
    rt.terminal_at.pop(uid, None)
    rt.children.forget(uid)
    rt.leftovers.discard(uid)
    rt.mark_cleaned(uid)
    trigger = attempt.trigger
    rt.metrics.cleanups.labels(trigger=trigger, result="success").inc()
    duration = max(0.0, (done_at - attempt.finished_at).total_seconds())
    rt.metrics.cleanup_duration.labels(trigger=trigger).observe(duration)
    rt.cleanup_durations.append(duration)
    del rt.cleanup_durations[:-10_000]
    if new_bytes:
        rt.metrics.archived_bytes.inc(new_bytes)
    files = len(archived.files) if archived else 0
    what = f"{files} files archived" if archived else "logs not kept (cleanup.logs: Delete)"
    if archived is not None and not archived.logs_complete:
        what += f" (logs incomplete: {', '.join(sorted(set(archived.missing)))})"
        await rt.events.post(final, WARNING, "LogsIncomplete",
                             f"The archive of this agent's logs is incomplete ({', '.join(archived.missing)}): "
                             f"MANIFEST.json in {archived.directory.name} says which log misses what.")
    pod = "pod, " if recorded.get("podDeleted") else ""
    if attempt.reported and status.get("phase") == api.COMPLETED:
        ended = f"{_ending(status)} "
    elif status.get("reason") == api.REASON_POD_SUCCEEDED:
        ended = f"{_sentence(str(status.get('message') or ''))} "
    else:
        ended = ""
    after = "deletion" if trigger == api.TRIGGER_DELETED else "the sweep's finding" \
        if trigger == api.TRIGGER_SWEEP else str(trigger)
    await rt.events.post(final, NORMAL, "CleanedUp",
                         f"{ended}Cleaned up after {after}: {pod}prompt and credentials deleted, {what}, "
                         f"no leaks.")
    log.info("cleanup succeeded", extra={"agent": f"{ns}/{name}", "trigger": trigger, "archived_bytes": new_bytes})
    return Outcome(trigger=trigger, done=True, archive=archived, new_bytes=new_bytes, final=final)


async def record_failure(rt: Runtime, attempt: Attempt, exc: BaseException) -> CleanupFailed:
    """Record the failed attempt (state Retrying, the error) and say when to try again."""
    if isinstance(exc, CleanupFailed):
        return exc
    meta = attempt.meta
    uid = meta["uid"]
    message = f"attempt {attempt.number}: {exc}"
    errors = (attempt.errors + [message[:1000]])[-api.MAX_RECORDED_ERRORS:]
    reason = exc.reason if isinstance(exc, ArchiveError) else None
    if reason:
        rt.metrics.archive_errors.labels(reason=reason).inc()
        rt.archive_failing.add(uid)
    # Failing since the agent ended (its completionTime): the same after a restart of the controller.
    rt.retrying.setdefault(uid, attempt.finished_at.timestamp())
    rt.metrics.cleanups.labels(trigger=attempt.trigger, result="failure").inc()
    attempt.recorded.update({"state": api.CLEANUP_RETRYING, "errors": errors})
    with contextlib.suppress(ApiError):
        await patch_status(rt, attempt.agent, {**attempt.start, "cleanup": attempt.recorded})
    advice = exc.retry_after if isinstance(exc, ApiError) else None
    delay = advice if advice is not None else retry_delay(attempt.number, base=RETRY_BASE_SECONDS)
    kept = "; the pod is kept until its logs are archived" if reason else ""
    await rt.events.post(attempt.agent, WARNING, "CleanupRetrying", f"{message}{kept}; retrying in {delay:.0f}s",
                         aggregate=True)
    log.warning("cleanup of %s/%s failed (%s); retrying in %.0fs", meta["namespace"], meta["name"], exc, delay)
    return CleanupFailed(message, delay)


# ------------------------------------------------------------------------ helpers


def _ending(status: Mapping[str, Any]) -> str:
    message = str(status.get("message") or "").strip().rstrip(".")
    return f"The agent reported {status.get('phase')}" + (f": {message}." if message else ".")


def _sentence(text: str) -> str:
    text = text.strip()
    return text if not text or text.endswith((".", "!", "?")) else text + "."


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


async def patch_status(rt: Runtime, agent: Mapping[str, Any], status: Mapping[str, Any],
                       resource_version: str | None = None) -> dict[str, Any]:
    meta = agent["metadata"]
    body: dict[str, Any] = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    return await rt.client.patch(AGENTS, meta["namespace"], meta["name"], body, sub="status")


async def list_children(rt: Runtime, namespace: str, agent_uid: str) -> Children:
    """One list per managed kind, by the agent-uid label."""
    selector = uid_selector(agent_uid)
    lists = await asyncio.gather(*(rt.client.list(k.resource, namespace, label_selector=selector)
                                   for k in CHILD_KINDS))
    return {k.label: list(result.get("items") or []) for k, result in zip(CHILD_KINDS, lists)}


async def delete_child(rt: Runtime, kind: str, obj: Mapping[str, Any], grace: int | None = None) -> bool:
    """Delete with a UID precondition. Returns True when the API server's answer says this object (this
    UID) no longer exists: removed (a Status, or the deleted object without deletionTimestamp), 404, or
    409 (the name now holds another UID). False: it still exists, terminating (finalizers, a pod's grace)."""
    meta = obj["metadata"]
    try:
        answer = await rt.client.delete(BY_LABEL[kind].resource, meta.get("namespace"), meta["name"],
                                        uid=meta["uid"], grace_period_seconds=grace)
    except ApiError as exc:
        if exc.status in (404, 409):
            return True
        raise
    return not (answer.get("metadata") or {}).get("deletionTimestamp")


def agent_files(attempt: Attempt) -> dict[str, bytes]:
    """agent.json (the final Agent object, without managedFields) and prompt.txt."""
    agent = attempt.snapshot
    body = dict(agent)      # nothing is modified: only serialised
    body["metadata"] = {k: v for k, v in (agent.get("metadata") or {}).items() if k != "managedFields"}
    files = {"agent.json": json.dumps(body, indent=2, sort_keys=True).encode() + b"\n"}
    prompt = (agent.get("spec") or {}).get("prompt")
    if prompt is not None:
        files[PROMPT_KEY] = str(prompt).encode()
    return files
