"""The simulated kubelet of the devcluster: runs pods as scripted fake containers.

It reacts to pod events of the store (no polling): a new pod is scheduled onto the single node
and started after ``start_delay``; its containers run their ``DEVCLUSTER_SCRIPT`` (one asyncio
task per scripted container); graceful deletion delivers SIGTERM (``onTerm``), kills what is
left with exit code 137 when the grace period ends, writes the terminal status and removes the
pod object. Container output is kept byte-exact for ``pods/log``.

Script (JSON in the container env var ``DEVCLUSTER_SCRIPT``)::

    {"steps":  [{"log": "hello\\n"}, {"logB64": "/w=="}, {"sleep": 0.2},
                {"report": {"phase": "Working", "progress": 40}}, {"ignoreTerm": true}, {"exit": 0}],
     "onTerm": [{"log": "bye\\n"}, {"exit": 0}]}

Steps that run out without ``exit`` leave the container running until it is deleted/killed.
Without a script a container runs until deleted; SIGTERM then ends it with exit code 143.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, TypeVar

from .store import (
    ADDED,
    DELETED,
    MODIFIED,
    ApiError,
    Bucket,
    Store,
    WatchEvent,
    dumps,
    now_rfc3339,
)

__all__ = ["Kubelet", "LogInstance"]

log = logging.getLogger(__name__)
T = TypeVar("T")
PODS = ("", "pods")
_GRAVEYARD_MAX = 20_000


class LogInstance:
    """The stdout of one container instance; followers wait on :attr:`changed`."""

    __slots__ = ("buf", "changed", "done")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.done = False
        self.changed = asyncio.Event()

    def append(self, data: bytes) -> None:
        """Write bytes and wake followers."""
        if data and not self.done:
            self.buf += data
            self._notify()

    def finish(self) -> None:
        """The instance ended (container terminated or pod removed)."""
        if not self.done:
            self.done = True
            self._notify()

    def _notify(self) -> None:
        ev = self.changed
        self.changed = asyncio.Event()
        ev.set()


class _Container:
    __slots__ = (
        "container_id",
        "exit_code",
        "finished_at",
        "ignore_term",
        "image",
        "last_state",
        "log",
        "name",
        "prev",
        "reason",
        "restart_count",
        "restart_handle",
        "script",
        "started_at",
        "state",
        "task",
    )

    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec.get("name", "")
        self.image: str = spec.get("image", "")
        self.script: dict[str, Any] | None = None
        for e in spec.get("env") or ():
            if isinstance(e, dict) and e.get("name") == "DEVCLUSTER_SCRIPT" and isinstance(e.get("value"), str):
                try:
                    s = json.loads(e["value"])
                    self.script = s if isinstance(s, dict) else {"steps": s} if isinstance(s, list) else None
                except ValueError:
                    log.warning("bad DEVCLUSTER_SCRIPT in container %s", self.name)
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.exit_code: int | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.restart_count = 0
        self.log = LogInstance()
        self.prev: LogInstance | None = None
        self.last_state: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.ignore_term = False
        self.container_id = ""
        self.restart_handle: asyncio.TimerHandle | None = None

    def status(self, pod_terminal: bool) -> dict[str, Any]:
        st: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "docker.io/library/" + self.image.split("@")[0]
            + "@sha256:" + hashlib.sha256(self.image.encode()).hexdigest(),
            "ready": self.state == "running" and not pod_terminal,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "lastState": self.last_state,
        }
        if self.container_id:
            st["containerID"] = self.container_id
        if self.state == "running":
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            st["state"] = {"terminated": self._terminated()}
        else:
            st["state"] = {"waiting": {"reason": self.reason}}
        return st

    def _terminated(self) -> dict[str, Any]:
        t: dict[str, Any] = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.container_id:
            t["containerID"] = self.container_id
        return t


class _Pod:
    __slots__ = (
        "conditions",
        "containers",
        "deadline",
        "deadline_handle",
        "dirty",
        "env",
        "finished",
        "grace",
        "ip",
        "kill_handle",
        "message",
        "name",
        "ns",
        "owner",
        "phase",
        "reason",
        "removed",
        "restart_policy",
        "sa",
        "start_time",
        "started",
        "term_done",
        "terminating",
        "uid",
        "volumes",
    )

    def __init__(self, pod: dict[str, Any], ip: str) -> None:
        md = pod["metadata"]
        spec = pod.get("spec") or {}
        self.ns: str = md.get("namespace", "")
        self.name: str = md["name"]
        self.uid: str = md["uid"]
        self.containers: dict[str, _Container] = {}
        for c in spec.get("containers") or ():
            ct = _Container(c)
            self.containers[ct.name] = ct
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.started = False
        self.start_time: str | None = None
        self.terminating = False
        self.kill_handle: asyncio.TimerHandle | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.removed = False
        self.ip = ip
        self.conditions: dict[str, tuple[str, str]] = {}
        self.owner: dict[str, Any] | None = next(
            (r for r in md.get("ownerReferences") or () if r.get("controller")), None
        ) or next(iter(md.get("ownerReferences") or ()), None)
        self.sa: str = spec.get("serviceAccountName") or "default"
        self.env: dict[str, str] = {}
        for c in spec.get("containers") or ():
            for e in c.get("env") or ():
                if isinstance(e, dict) and isinstance(e.get("value"), str):
                    self.env.setdefault(e["name"], e["value"])
        self.dirty = False
        self.grace = 0
        self.deadline: int | None = spec.get("activeDeadlineSeconds")
        self.volumes: list[tuple[str, str]] = []
        for v in spec.get("volumes") or ():
            if not isinstance(v, dict):
                continue
            if isinstance(v.get("configMap"), dict) and not v["configMap"].get("optional"):
                self.volumes.append(("configmaps", v["configMap"].get("name", "")))
            if isinstance(v.get("secret"), dict) and not v["secret"].get("optional"):
                self.volumes.append(("secrets", v["secret"].get("secretName", "")))
        self.finished = False
        self.term_done = False

    def set_condition(self, type_: str, status: str) -> None:
        cur = self.conditions.get(type_)
        if cur is None or cur[0] != status:
            self.conditions[type_] = (status, now_rfc3339())


class Kubelet:
    """Simulated kubelet for the single node ``devcluster-node``.

    The public methods are thread-safe (they run on the server loop); the underscored ones
    must be called on the loop.
    """

    def __init__(
        self,
        store: Store,
        *,
        run_sync: Callable[[Callable[[], Any]], Any],
        base_url: Callable[[], str],
        token_for: Callable[[str, str], str],
        start_delay: float = 0.05,
        restart_backoff: float = 0.2,
        node_name: str = "devcluster-node",
    ) -> None:
        self.store = store
        self._run_sync = run_sync
        self._base_url = base_url
        self._token_for = token_for
        self.start_delay = start_delay
        self.restart_backoff = restart_backoff
        self.node_name = node_name
        self.pods: dict[tuple[str, str], _Pod] = {}
        self.graveyard: OrderedDict[tuple[str, str], dict[str, tuple[bytes, bytes | None]]] = OrderedDict()
        self.waiting: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self.reports: deque[dict[str, Any]] = deque(maxlen=10_000)
        self.lost: set[tuple[str, str]] = set()   # pods on a "lost node": the kubelet no longer acts on them
        self._ip = 0
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ wiring

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to the store (call on the loop)."""
        self._loop = loop
        self.store.add_listener(PODS, self._on_pod_event)
        self.store.add_listener(("", "configmaps"), self._on_volume_source)
        self.store.add_listener(("", "secrets"), self._on_volume_source)

    async def close(self) -> None:
        """Stop every container task and the HTTP session."""
        for p in list(self.pods.values()):
            self._cancel(p)
        if self._session is not None:
            await self._session.close()
            self._session = None

    # ------------------------------------------------------------------ public (thread-safe)

    def append_log(self, ns: str, pod: str, container: str | None, data: bytes) -> None:
        """The container writes ``data`` to stdout."""

        def fn() -> None:
            p = self._pod(ns, pod)
            c = self._container(p, container)
            if c.state == "running":
                c.log.append(bytes(data))
            else:
                raise ApiError(400, "BadRequest", f'container "{c.name}" in pod "{pod}" is not running')

        self._run_sync(fn)

    def exit(self, ns: str, pod: str, code: int, container: str | None = None) -> None:
        """The container process (all running ones when ``container`` is None) exits with ``code``."""

        def fn() -> None:
            p = self._pod(ns, pod)
            targets = [self._container(p, container)] if container else [
                c for c in p.containers.values() if c.state == "running"
            ]
            for c in targets:
                self._container_exit(p, c, code)

        self._run_sync(fn)

    def evict(self, ns: str, pod: str) -> None:
        """Evict the pod: containers killed, phase Failed, reason Evicted (the object stays)."""
        self._run_sync(
            lambda: self._fail_pod(
                self._pod(ns, pod), "Evicted", "The node was low on resource: memory. "
            )
        )

    def lose_node(self, ns: str, pod: str) -> None:
        """The pod's node is gone: its kubelet never finishes a graceful deletion (the pod stays
        Terminating) and its log streams stay open; only a force delete (grace 0) removes it."""

        def fn() -> None:
            self.lost.add((ns, pod))

        self._run_sync(fn)

    def served_log(self, ns: str, pod: str, container: str | None = None, previous: bool = False) -> bytes:
        """Everything the container wrote (also after the pod is gone, while remembered)."""

        def fn() -> bytes:
            p = self.pods.get((ns, pod))
            if p is not None:
                c = self._container(p, container)
                inst = c.prev if previous else c.log
                return bytes(inst.buf) if inst is not None else b""
            logs = self.graveyard.get((ns, pod))
            if logs is None:
                raise ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
            cname = container
            if cname is None:
                if len(logs) != 1:
                    raise ApiError(400, "BadRequest", f"a container name must be specified for pod {pod}")
                cname = next(iter(logs))
            cur, prev = logs.get(cname, (b"", None))
            return (prev or b"") if previous else cur

        out: bytes = self._run_sync(fn)
        return out

    def container_state(self, ns: str, pod: str, container: str | None = None) -> str:
        """``waiting`` / ``running`` / ``terminated`` (for tests)."""
        state: str = self._run_sync(lambda: self._container(self._pod(ns, pod), container).state)
        return state

    # ------------------------------------------------------------------ log access (loop)

    def log_instance(self, ns: str, pod: str, container: str | None, previous: bool) -> LogInstance:
        """The log of a container instance, with the apiserver's 400 errors."""
        p = self.pods.get((ns, pod))
        if p is None:
            raise ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"})
        if not container:
            if len(p.containers) != 1:
                names = " ".join(p.containers)
                raise ApiError(
                    400, "BadRequest", f"a container name must be specified for pod {pod}, choose one of: [{names}]"
                )
            container = next(iter(p.containers))
        c = p.containers.get(container)
        if c is None:
            raise ApiError(400, "BadRequest", f"container {container} is not valid for pod {pod}")
        if previous:
            if c.prev is None:
                raise ApiError(
                    400, "BadRequest", f'previous terminated container "{container}" in pod "{pod}" not found'
                )
            return c.prev
        if c.state == "waiting" and not c.log.buf and c.restart_count == 0:
            raise ApiError(
                400, "BadRequest", f'container "{container}" in pod "{pod}" is waiting to start: {c.reason}'
            )
        return c.log

    # ------------------------------------------------------------------ internals

    def _pod(self, ns: str, name: str) -> _Pod:
        p = self.pods.get((ns, name))
        if p is None:
            raise ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        return p

    def _container(self, p: _Pod, name: str | None) -> _Container:
        if name is None:
            if len(p.containers) != 1:
                raise ApiError(400, "BadRequest", f"a container name must be specified for pod {p.name}")
            return next(iter(p.containers.values()))
        c = p.containers.get(name)
        if c is None:
            raise ApiError(400, "BadRequest", f"container {name} is not valid for pod {p.name}")
        return c

    def _later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        assert self._loop is not None
        return self._loop.call_later(max(0.0, delay), fn)

    def _soon(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_soon(fn)

    def _on_pod_event(self, bucket: Bucket, ev: WatchEvent) -> None:
        key = (ev.ns, ev.name)
        obj = ev.entry.obj
        if ev.type == ADDED:
            self._ip += 1
            ip = f"10.244.{(self._ip >> 8) & 255}.{self._ip & 255}"
            p = _Pod(obj, ip)
            self.pods[key] = p
            self.graveyard.pop(key, None)
            self._later(self.start_delay, lambda: self._start(p))
        elif ev.type == MODIFIED:
            p2 = self.pods.get(key)
            if p2 is None or p2.uid != ev.entry.uid:
                return
            md = obj["metadata"]
            if "deletionTimestamp" in md and key not in self.lost:
                grace = int(md.get("deletionGracePeriodSeconds") or 0)
                if not p2.terminating:
                    self._soon(lambda: self._begin_termination(p2, grace))
                elif grace < p2.grace:
                    self._soon(lambda: self._shorten(p2, grace))
        elif ev.type == DELETED:
            p3 = self.pods.get(key)
            if p3 is None or p3.uid != ev.entry.uid:
                return
            del self.pods[key]
            self.lost.discard(key)
            p3.removed = True
            self._cancel(p3)
            self.graveyard[key] = {
                c.name: (bytes(c.log.buf), bytes(c.prev.buf) if c.prev is not None else None)
                for c in p3.containers.values()
            }
            while len(self.graveyard) > _GRAVEYARD_MAX:
                self.graveyard.popitem(last=False)

    def _on_volume_source(self, bucket: Bucket, ev: WatchEvent) -> None:
        if ev.type != ADDED:
            return
        waiting = self.waiting.pop((ev.ns, bucket.key[1], ev.name), None)
        for key in waiting or ():
            p = self.pods.get(key)
            if p is not None and not p.started:
                self._soon(lambda p=p: self._start(p))  # type: ignore[misc]

    def _cancel(self, p: _Pod) -> None:
        for c in p.containers.values():
            if c.task is not None and not c.task.done():
                c.task.cancel()
            c.task = None
            if c.restart_handle is not None:
                c.restart_handle.cancel()
            c.log.finish()
            if c.prev is not None:
                c.prev.finish()
        for h in (p.kill_handle, p.deadline_handle):
            if h is not None:
                h.cancel()

    def _alive(self, p: _Pod) -> bool:
        return not p.removed and self.pods.get((p.ns, p.name)) is p

    def _start(self, p: _Pod) -> None:
        if not self._alive(p) or p.started or p.terminating or p.finished:
            return
        missing = []
        for kind, name in p.volumes:
            b = self.store.buckets.get(("", kind))
            if b is not None and (p.ns, name) not in b.objects:
                missing.append((kind, name))
        if missing:
            for kind, name in missing:
                self.waiting.setdefault((p.ns, kind, name), set()).add((p.ns, p.name))
            p.set_condition("PodScheduled", "True")
            self._flush(p)
            return
        p.started = True
        p.phase = "Running"
        p.start_time = now_rfc3339()
        for k in ("PodReadyToStartContainers", "Initialized", "PodScheduled"):
            p.set_condition(k, "True")
        for c in p.containers.values():
            self._run_container(p, c)
        self._update_ready(p)
        if p.deadline:
            p.deadline_handle = self._later(
                float(p.deadline),
                lambda: self._fail_pod(p, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline"),
            )
        self._flush(p)

    def _run_container(self, p: _Pod, c: _Container) -> None:
        c.state = "running"
        c.reason = ""
        c.exit_code = None
        c.started_at = now_rfc3339()
        c.finished_at = None
        c.container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex
        c.ignore_term = False
        steps = (c.script or {}).get("steps") or []
        if steps:
            c.task = asyncio.ensure_future(self._run_steps(p, c, steps))

    async def _run_steps(self, p: _Pod, c: _Container, steps: list[Any]) -> None:
        inst = c.log
        try:
            for step in steps:
                if not isinstance(step, dict):
                    continue
                if c.log is not inst or c.state != "running":
                    return
                if "log" in step:
                    inst.append(str(step["log"]).encode())
                if "logB64" in step:
                    inst.append(base64.b64decode(step["logB64"]))
                if "ignoreTerm" in step:
                    c.ignore_term = bool(step["ignoreTerm"])
                if "report" in step:
                    await self._report(p, step["report"])
                if "sleep" in step:
                    await asyncio.sleep(float(step["sleep"]))
                if "exit" in step:
                    if c.log is inst and c.state == "running":
                        c.task = None
                        self._container_exit(p, c, int(step["exit"]))
                    return
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("script of %s/%s[%s] failed", p.ns, p.name, c.name)

    async def _report(self, p: _Pod, report: Any) -> None:
        import aiohttp

        owner = p.owner or {}
        agent = owner.get("name") if owner.get("kind") == "Agent" else None
        agent = agent or p.env.get("AGENT_NAME") or p.name
        api_version = owner.get("apiVersion") if owner.get("kind") == "Agent" else None
        plural = "agents"
        if api_version:
            rt = self.store.type_for_kind(api_version, "Agent")
            if rt is not None:
                plural = rt.plural
        else:
            from controller import GROUP, VERSION

            api_version = f"{GROUP}/{VERSION}"
        url = f"{self._base_url()}/apis/{api_version}/namespaces/{p.ns}/{plural}/{agent}/status"
        token = self._token_for(p.ns, p.sa)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        rec: dict[str, Any] = {"namespace": p.ns, "pod": p.name, "agent": agent, "report": report}
        try:
            async with self._session.patch(
                url,
                data=dumps({"status": report}),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
            ) as resp:
                rec["code"] = resp.status
                rec["body"] = await resp.text()
        except Exception as e:  # noqa: BLE001
            rec["code"] = 0
            rec["body"] = repr(e)
        self.reports.append(rec)

    def _container_exit(self, p: _Pod, c: _Container, code: int, reason: str | None = None) -> None:
        if c.state != "running":
            return
        if c.task is not None and c.task is not asyncio.current_task():
            c.task.cancel()
        c.task = None
        c.state = "terminated"
        c.exit_code = code
        c.reason = reason or ("Completed" if code == 0 else "Error")
        c.finished_at = now_rfc3339()
        c.log.finish()
        self._after_change(p)

    def _after_change(self, p: _Pod) -> None:
        if not self._alive(p):
            return
        if p.terminating:
            if all(c.state != "running" for c in p.containers.values()):
                self._finish_termination(p)
            else:
                self._update_ready(p)
                self._flush(p)
            return
        if p.finished:
            self._flush(p)
            return
        for c in p.containers.values():
            if c.state == "terminated" and c.restart_handle is None:
                if p.restart_policy == "Always" or (p.restart_policy == "OnFailure" and c.exit_code != 0):
                    self._schedule_restart(p, c)
        if all(c.state == "terminated" and c.restart_handle is None for c in p.containers.values()):
            p.phase = "Succeeded" if all(c.exit_code == 0 for c in p.containers.values()) else "Failed"
            p.finished = True
            if p.deadline_handle is not None:
                p.deadline_handle.cancel()
        self._update_ready(p)
        self._flush(p)

    def _schedule_restart(self, p: _Pod, c: _Container) -> None:
        delay = min(self.restart_backoff * (2 ** min(c.restart_count, 10)), 10.0)

        def restart() -> None:
            c.restart_handle = None
            if not self._alive(p) or p.terminating or p.finished:
                return
            c.last_state = {"terminated": c._terminated()}
            c.prev = c.log
            c.log = LogInstance()
            c.restart_count += 1
            self._run_container(p, c)
            self._update_ready(p)
            self._flush(p)

        c.restart_handle = self._later(delay, restart)

    def _update_ready(self, p: _Pod) -> None:
        ready = (
            p.started
            and not p.finished
            and not p.terminating
            and all(c.state == "running" for c in p.containers.values())
        )
        p.set_condition("ContainersReady", "True" if ready else "False")
        p.set_condition("Ready", "True" if ready else "False")

    def _begin_termination(self, p: _Pod, grace: int) -> None:
        if not self._alive(p) or p.terminating:
            return
        p.terminating = True
        p.grace = grace
        for c in p.containers.values():
            if c.restart_handle is not None:
                c.restart_handle.cancel()
                c.restart_handle = None
        if p.deadline_handle is not None:
            p.deadline_handle.cancel()
        running = [c for c in p.containers.values() if c.state == "running"]
        if not running:
            self._finish_termination(p)
            return
        p.kill_handle = self._later(grace, lambda: self._kill_all(p))
        for c in running:
            self._sigterm(p, c)
        if self._alive(p) and any(c.state == "running" for c in p.containers.values()):
            self._update_ready(p)
            self._flush(p)

    def _shorten(self, p: _Pod, grace: int) -> None:
        if not self._alive(p) or p.finished:
            return
        p.grace = grace
        if p.kill_handle is not None:
            p.kill_handle.cancel()
        p.kill_handle = self._later(grace, lambda: self._kill_all(p))

    def _sigterm(self, p: _Pod, c: _Container) -> None:
        if c.state != "running" or c.ignore_term:
            return
        on_term = (c.script or {}).get("onTerm")
        if on_term:
            if c.task is not None and not c.task.done():
                c.task.cancel()
            c.task = asyncio.ensure_future(self._run_steps(p, c, list(on_term)))
        else:
            self._container_exit(p, c, 143)

    def _kill_all(self, p: _Pod) -> None:
        p.kill_handle = None
        if not self._alive(p):
            return
        for c in list(p.containers.values()):
            if c.state == "running":
                self._container_exit(p, c, 137, "Error")

    def _finish_termination(self, p: _Pod) -> None:
        if not self._alive(p) or p.term_done:
            return
        p.term_done = True
        if p.kill_handle is not None:
            p.kill_handle.cancel()
            p.kill_handle = None
        for c in p.containers.values():
            if c.state == "waiting":
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "ContainerStatusUnknown"
                c.finished_at = now_rfc3339()
                c.log.finish()
        if not p.finished:
            p.phase = "Succeeded" if all(c.exit_code == 0 for c in p.containers.values()) else "Failed"
            p.finished = True
        self._update_ready(p)
        self._write_status(p)
        # the kubelet's final delete (grace 0, UID precondition)
        rt = self.store.buckets[PODS].rt
        try:
            self.store.delete(rt, p.ns, p.name, {"gracePeriodSeconds": 0, "preconditions": {"uid": p.uid}})
        except ApiError:
            pass

    def _fail_pod(self, p: _Pod, reason: str, message: str) -> None:
        if not self._alive(p) or p.finished:
            return
        p.reason = reason
        p.message = message
        p.finished = True
        p.phase = "Failed"
        for c in p.containers.values():
            if c.restart_handle is not None:
                c.restart_handle.cancel()
                c.restart_handle = None
            if c.state == "running":
                if c.task is not None and not c.task.done():
                    c.task.cancel()
                c.task = None
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "Error"
                c.finished_at = now_rfc3339()
                c.log.finish()
        if p.terminating:
            self._finish_termination(p)
            return
        self._update_ready(p)
        self._flush(p)

    def _flush(self, p: _Pod) -> None:
        """Write the pod status soon (coalesces several changes in one tick into one write)."""
        if p.dirty:
            return
        p.dirty = True

        def go() -> None:
            p.dirty = False
            if self._alive(p):
                self._write_status(p)

        self._soon(go)

    def _status(self, p: _Pod, qos: Any) -> dict[str, Any]:
        terminal = p.phase in ("Succeeded", "Failed")
        st: dict[str, Any] = {"phase": p.phase}
        order = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"]
        st["conditions"] = [
            {"type": t, "status": p.conditions[t][0], "lastProbeTime": None, "lastTransitionTime": p.conditions[t][1]}
            for t in order
            if t in p.conditions
        ]
        if p.reason:
            st["reason"] = p.reason
        if p.message:
            st["message"] = p.message
        st["hostIP"] = "10.0.0.1"
        st["hostIPs"] = [{"ip": "10.0.0.1"}]
        if p.started:
            st["podIP"] = p.ip
            st["podIPs"] = [{"ip": p.ip}]
            st["startTime"] = p.start_time
        st["containerStatuses"] = [c.status(terminal) for c in p.containers.values()]
        if qos:
            st["qosClass"] = qos
        return st

    def _write_status(self, p: _Pod) -> None:
        node = self.node_name

        def mut(o: dict[str, Any]) -> None:
            o.setdefault("spec", {})["nodeName"] = node
            o["status"] = self._status(p, (o.get("status") or {}).get("qosClass"))

        self.store.internal_update(PODS, p.ns, p.name, mut, p.uid)
