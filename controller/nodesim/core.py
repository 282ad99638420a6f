"""The node simulator's core: pods and containers as a kubelet runs them, independent of where pods come from.

A backend adapter (the devcluster emulator's, :mod:`controller.nodesim.emulator`, or the real
API server's, :mod:`controller.nodesim.kubeapi`) feeds :class:`NodeRuntime` with the pods bound to
its node and implements :class:`Host` — how a status is written, how the kubelet's final delete is
sent, how a pod's token and volume sources are read. The runtime does the rest, on one asyncio
loop, without polling:

- **containers**: scripted (steps ``log``/``logB64``/``write``/``sleep``/``exit``/``report``/
  ``ignoreTerm``/``loseNode``, ``onTerm`` on SIGTERM — :mod:`controller.nodesim.behaviour`), a real
  local process for images under :data:`LOCAL_IMAGE_PREFIX` (:mod:`controller.nodesim.process`),
  image-pull failures for images under :data:`INVALID_IMAGE_PREFIX`, or idle (runs until deleted);
  init containers run one after the other first;
- **logs**: one :class:`~controller.nodesim.logs.ContainerLog` per container instance, rotated at
  ``containerLogMaxSize``, the previous instance kept for ``previous=true``, garbage collection;
- **status** as the kubelet writes it (:meth:`NodeRuntime.pod_status`): phase by the kubelet's
  rules, the conditions ``PodReadyToStartContainers``/``Initialized``/``Ready``/``ContainersReady``
  (with their reasons and messages), ``containerStatuses`` with ``startedAt``/``finishedAt``/
  ``exitCode``/``reason``, ``lastState``, ``restartCount`` and waiting reasons
  (``ContainerCreating``, ``PodInitializing``, ``CrashLoopBackOff``, ``ErrImagePull``,
  ``ImagePullBackOff``, ``CreateContainerConfigError``, or any the pod asks for);
- **deletion**: SIGTERM, the grace period, SIGKILL (137), then the host's final delete; eviction,
  ``activeDeadlineSeconds``, restart policies with back-off; a **lost node** mutes everything the
  kubelet would send (status, final delete) while the containers go on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import signal
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .behaviour import ContainerPlan, PodBehaviour, Script, write_chunks, write_spec
from .logs import STDERR, STDOUT, ContainerLog

if TYPE_CHECKING:
    import ssl

    from .process import LocalProcess

__all__ = [
    "INVALID_IMAGE_PREFIX",
    "LOCAL_IMAGE_PREFIX",
    "ApiEndpoint",
    "Host",
    "LogUnavailable",
    "NodeRuntime",
    "SimContainer",
    "SimPod",
]

log = logging.getLogger(__name__)

LOCAL_IMAGE_PREFIX = "sim.local/"
"""Images under this registry run the container's command as a real local process."""
INVALID_IMAGE_PREFIX = "sim.invalid/"
"""Images under this registry never pull: ``ErrImagePull``, then ``ImagePullBackOff`` for good."""
DEFAULT_LOG_MAX_SIZE = 10 * 1024 * 1024
"""The kubelet's default ``containerLogMaxSize`` (10Mi)."""
_GRAVEYARD_MAX = 20_000
_CONDITION_ORDER = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled",
                    "DisruptionTarget")


def now_rfc3339(t: float | None = None) -> str:
    """RFC 3339, second precision (metav1.Time)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


REPORT_RETRY_SECONDS = 60.0   # a scripted report tries again this long (see NodeRuntime._report)


@dataclass
class ApiEndpoint:
    """Where a pod reaches the API server."""

    url: str
    """Base URL the ``report`` step uses."""
    ssl: ssl.SSLContext | bool | None
    """TLS for :attr:`url` (``False``/``None``: plain HTTP or the default)."""
    service_host: str
    """``KUBERNETES_SERVICE_HOST`` for local processes."""
    service_port: int
    """``KUBERNETES_SERVICE_PORT``."""
    ca_pem: bytes
    """The API server's CA (the pod's ``ca.crt``)."""


class LogUnavailable(Exception):
    """The kubelet cannot serve a log: ``status`` (HTTP, as the kubelet answers) and its plain-text ``text``."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


class Host(Protocol):
    """What the runtime needs from its backend. Called on the runtime's loop."""

    node_name: str
    host_ip: str
    writes_pod_scheduled: bool
    """True when no scheduler does it (the emulator): the runtime adds ``PodScheduled``."""

    def publish(self, pod: SimPod) -> None:
        """The pod's status changed: write :meth:`NodeRuntime.pod_status` soon (coalescing is the host's)."""

    def finalize(self, pod: SimPod) -> None:
        """The pod's deletion finished on the node: write the final status, then the kubelet's delete
        (``gracePeriodSeconds: 0``, UID precondition)."""

    def check_volumes(self, pod: SimPod) -> bool:
        """True when the pod's volume sources exist; when False the host calls
        :meth:`NodeRuntime.start` again once they may."""

    async def read_object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap or Secret (``resource`` = ``configmaps``/``secrets``), None if absent."""

    async def pod_token(self, pod: SimPod, audiences: list[str] | None, expiration: int) -> str:
        """A service-account token of the pod's ServiceAccount, bound to the pod (TokenRequest)."""

    def api_endpoint(self) -> ApiEndpoint:
        """How the pod reaches the API server."""

    def lose_requested(self, pod: SimPod) -> None:
        """The pod asked for its node to be lost (annotation or ``loseNode`` step)."""


def normalise_image(image: str) -> str:
    """The image reference as the runtime reports it (``busybox:1.36`` -> ``docker.io/library/busybox:1.36``)."""
    ref = image or ""
    first = ref.split("/", 1)[0]
    if "/" not in ref or ("." not in first and ":" not in first and first != "localhost"):
        ref = ("docker.io/library/" if "/" not in ref else "docker.io/") + ref
    last = ref.rsplit("/", 1)[-1]
    if "@" not in last and ":" not in last:
        ref += ":latest"
    return ref


class SimContainer:
    """One container of a pod (its current instance, the previous one, its state)."""

    __slots__ = (
        "breaks",
        "container_id",
        "exit_code",
        "finished_at",
        "gc_done",
        "gc_handle",
        "ignore_term",
        "image",
        "init",
        "last_state",
        "log",
        "message",
        "name",
        "plan",
        "prev",
        "prev_gc",
        "proc",
        "reason",
        "restart_count",
        "restart_handle",
        "sidecar",
        "spec",
        "started_at",
        "state",
        "task",
        "terminating",
        "waiting_handle",
    )

    def __init__(self, spec: dict[str, Any], plan: ContainerPlan, *, init: bool, log_max_size: int | None) -> None:
        self.spec = spec
        self.name: str = str(spec.get("name", ""))
        self.image: str = str(spec.get("image") or "")
        self.plan = plan
        self.init = init
        self.sidecar = init and spec.get("restartPolicy") == "Always"
        self.state = "waiting"
        self.reason = "ContainerCreating"
        self.message: str | None = None
        self.exit_code: int | None = None
        self.started_at: str | None = None
        self.finished_at: str | None = None
        self.restart_count = 0
        self.log = ContainerLog(log_max_size)
        self.prev: ContainerLog | None = None
        self.last_state: dict[str, Any] = {}
        self.task: asyncio.Task[None] | None = None
        self.proc: LocalProcess | None = None
        self.ignore_term = False
        self.terminating = False
        self.container_id = ""
        self.restart_handle: asyncio.TimerHandle | None = None
        self.waiting_handle: asyncio.TimerHandle | None = None
        self.gc_handle: asyncio.TimerHandle | None = None
        self.gc_done = False      # the current (terminated) instance was garbage-collected
        self.prev_gc = False
        self.breaks = 0           # log streams broken so far (break-log-stream-after-bytes)

    @property
    def script(self) -> Script | None:
        return self.plan.script

    @property
    def local(self) -> bool:
        return self.image.startswith(LOCAL_IMAGE_PREFIX)

    def status(self, pod_terminal: bool) -> dict[str, Any]:
        """The ``containerStatuses`` entry."""
        image = normalise_image(self.image)
        st: dict[str, Any] = {
            "name": self.name,
            "state": {},
            "lastState": self.last_state,
            "ready": self.state == "running" and not pod_terminal and not self.terminating,
            "restartCount": self.restart_count,
            "image": image,
            "imageID": "",
            "started": self.state == "running",
        }
        if self.state != "waiting" or self.restart_count or self.last_state:
            repo = image.rsplit("@", 1)[0]
            tail = repo.rsplit("/", 1)[-1]
            if ":" in tail:
                repo = repo[: len(repo) - len(tail)] + tail.split(":", 1)[0]
            st["imageID"] = repo + "@sha256:" + hashlib.sha256(image.encode()).hexdigest()
        if self.container_id and self.state != "waiting":
            st["containerID"] = self.container_id
        if self.state == "running":
            st["state"] = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            st["state"] = {"terminated": self.terminated()}
        else:
            waiting: dict[str, Any] = {"reason": self.reason}
            if self.message:
                waiting["message"] = self.message
            st["state"] = {"waiting": waiting}
        mounts = [
            {"name": m.get("name"), "mountPath": m.get("mountPath"), "readOnly": bool(m.get("readOnly")),
             "recursiveReadOnly": "Disabled"}
            for m in self.spec.get("volumeMounts") or () if isinstance(m, dict)
        ]
        if mounts and self.state != "waiting":
            st["volumeMounts"] = mounts
        return st

    def terminated(self) -> dict[str, Any]:
        t: dict[str, Any] = {"exitCode": self.exit_code, "reason": self.reason}
        if self.message:
            t["message"] = self.message
        t["startedAt"] = self.started_at
        t["finishedAt"] = self.finished_at
        if self.container_id:
            t["containerID"] = self.container_id
        return t


class SimPod:
    """A pod on the simulated node."""

    __slots__ = (
        "behaviour",
        "conditions",
        "containers",
        "deadline_handle",
        "dirty",
        "env",
        "finished",
        "grace",
        "init_order",
        "ip",
        "kill_handle",
        "lost",
        "message",
        "name",
        "node",
        "ns",
        "obj",
        "owner",
        "phase",
        "process_ctx",
        "reason",
        "regular_started",
        "removed",
        "restart_policy",
        "sa",
        "start_time",
        "started",
        "term_done",
        "terminating",
        "timers",
        "uid",
        "waiting_published",
    )

    def required_volumes(self) -> list[tuple[str, str]]:
        """The ConfigMaps and Secrets (resource, name) the pod's volumes need (not `optional`): the
        kubelet does not start its containers until they exist."""
        out = []
        for v in (self.obj.get("spec") or {}).get("volumes") or ():
            if not isinstance(v, dict):
                continue
            for kind, src, key in (("configmaps", "configMap", "name"), ("secrets", "secret", "secretName")):
                s = v.get(src)
                if isinstance(s, dict) and not s.get("optional"):
                    out.append((kind, str(s.get(key, ""))))
        return out

    def __init__(self, obj: dict[str, Any], ip: str, node: str, log_max_size: int | None) -> None:
        md = obj["metadata"]
        spec = obj.get("spec") or {}
        self.obj = obj
        self.ns: str = md.get("namespace", "")
        self.name: str = md["name"]
        self.uid: str = md.get("uid", "")
        self.node = node
        self.behaviour = PodBehaviour.from_pod(obj)
        size = self.behaviour.log_max_size or log_max_size
        self.containers: dict[str, SimContainer] = {}
        self.init_order: list[str] = []
        for c in spec.get("initContainers") or ():
            if isinstance(c, dict):
                ct = SimContainer(c, self.behaviour.containers.get(str(c.get("name")), ContainerPlan()), init=True,
                                  log_max_size=size)
                self.containers[ct.name] = ct
                self.init_order.append(ct.name)
        for c in spec.get("containers") or ():
            if isinstance(c, dict):
                ct = SimContainer(c, self.behaviour.containers.get(str(c.get("name")), ContainerPlan()), init=False,
                                  log_max_size=size)
                self.containers[ct.name] = ct
        for ct in self.containers.values():
            if ct.init and not ct.sidecar:
                continue
            if self.init_order and not ct.sidecar:
                ct.reason = "PodInitializing"
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        self.phase = "Pending"
        self.reason = ""
        self.message = ""
        self.started = False
        self.regular_started = False
        self.start_time: str | None = None
        self.terminating = False
        self.kill_handle: asyncio.TimerHandle | None = None
        self.deadline_handle: asyncio.TimerHandle | None = None
        self.timers: list[asyncio.TimerHandle] = []
        self.removed = False
        self.lost = False
        self.ip = ip
        self.conditions: dict[str, tuple[str, str, str | None, str | None]] = {}
        refs = md.get("ownerReferences") or ()
        self.owner: dict[str, Any] | None = next((r for r in refs if r.get("controller")), None) or next(
            iter(refs), None
        )
        self.sa: str = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        self.env: dict[str, str] = {}
        for c in spec.get("containers") or ():
            for e in c.get("env") or ():
                if isinstance(e, dict) and isinstance(e.get("value"), str):
                    self.env.setdefault(e["name"], e["value"])
        self.dirty = False
        self.grace = 0
        self.finished = False
        self.term_done = False
        self.waiting_published = False
        self.process_ctx: Any = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.ns, self.name)

    def regular(self) -> Iterable[SimContainer]:
        return (c for c in self.containers.values() if not c.init)

    def set_condition(self, type_: str, status: str, reason: str | None = None, message: str | None = None) -> None:
        cur = self.conditions.get(type_)
        if cur is None or cur[0] != status:
            self.conditions[type_] = (status, now_rfc3339(), reason, message)
        elif cur[2] != reason or cur[3] != message:
            self.conditions[type_] = (status, cur[1], reason, message)


class NodeRuntime:
    """The pods of one simulated node. Every method runs on the runtime's loop."""

    def __init__(
        self,
        host: Host,
        *,
        start_delay: float = 0.05,
        restart_backoff: float = 10.0,
        max_backoff: float = 300.0,
        container_log_max_size: int | None = DEFAULT_LOG_MAX_SIZE,
        follow_at_rotation: str = "stall",
        gc_after_exit: float | None = None,
        local_processes: bool = True,
        workdir: str | None = None,
        image_pull_backoff: float = 1.0,
        pod_cidr: int = 0,
    ) -> None:
        self.host = host
        self.start_delay = start_delay
        self.restart_backoff = restart_backoff
        self.max_backoff = max_backoff
        self.container_log_max_size = container_log_max_size
        self.follow_at_rotation = follow_at_rotation
        self.gc_after_exit = gc_after_exit
        self.local_processes = local_processes
        self.workdir = workdir
        self.image_pull_backoff = image_pull_backoff
        self.pod_cidr = pod_cidr
        self.pods: dict[tuple[str, str], SimPod] = {}
        self.graveyard: OrderedDict[tuple[str, str], dict[str, tuple[ContainerLog, ContainerLog | None]]] = (
            OrderedDict()
        )
        self.reports: deque[dict[str, Any]] = deque(maxlen=10_000)
        self._ip = 0
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_change: Callable[[SimPod], None] | None = None   # tests: called after each status change

    # ------------------------------------------------------------------ wiring

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "NodeRuntime.attach(loop) first"
        return self._loop

    async def close(self) -> None:
        """Stop every container (local processes are killed) and the HTTP session."""
        for p in list(self.pods.values()):
            self._cancel(p)
        for p in list(self.pods.values()):
            for c in p.containers.values():
                if c.proc is not None:
                    await c.proc.kill_and_wait()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(max(0.0, delay), fn)

    def soon(self, fn: Callable[[], None]) -> None:
        self.loop.call_soon(fn)

    # ------------------------------------------------------------------ pods from the backend

    def add(self, obj: dict[str, Any]) -> SimPod:
        """A pod bound to this node appeared; it starts after the start delay."""
        self._ip += 1
        if self.pod_cidr:     # node N: 10.N.x.y
            n = self._ip % 65534 + 1
            ip = f"10.{self.pod_cidr & 255}.{n >> 8}.{n & 255}"
        else:
            ip = f"10.244.{(self._ip >> 8) & 255}.{self._ip & 255}"
        p = SimPod(obj, ip, self.host.node_name, self.container_log_max_size)
        key = p.key
        self.pods[key] = p
        self.graveyard.pop(key, None)
        delay = p.behaviour.start_delay if p.behaviour.start_delay is not None else self.start_delay
        p.timers.append(self.later(delay, lambda: self.start(p)))
        b = p.behaviour
        if b.lose_node_after is not None:
            p.timers.append(self.later(b.lose_node_after, lambda: self._lose_requested(p)))
        if b.evict_after is not None:
            p.timers.append(self.later(b.evict_after, lambda: self.evict(p, b.evict_message)))
        return p

    def alive(self, p: SimPod) -> bool:
        return not p.removed and self.pods.get(p.key) is p

    def request_deletion(self, p: SimPod, grace: int) -> None:
        """The API object got a deletionTimestamp (or a shorter grace period)."""
        if not self.alive(p) or p.lost:
            return
        if not p.terminating:
            self.soon(lambda: self._begin_termination(p, grace))
        elif grace < p.grace:
            self.soon(lambda: self._shorten(p, grace))

    def remove(self, p: SimPod) -> None:
        """The API object is gone: stop everything, keep the logs in the graveyard."""
        if self.pods.get(p.key) is not p:
            return
        del self.pods[p.key]
        p.removed = True
        self._cancel(p)
        self.graveyard[p.key] = {c.name: (c.log, c.prev) for c in p.containers.values()}
        while len(self.graveyard) > _GRAVEYARD_MAX:
            self.graveyard.popitem(last=False)

    # ------------------------------------------------------------------ what tests (and scripts) do

    def append_log(self, p: SimPod, c: SimContainer, data: bytes, stream: int = STDOUT) -> None:
        if c.state != "running":
            raise LogUnavailable(400, f'container "{c.name}" in pod "{p.name}" is not running')
        c.log.write(stream, data)

    def exit(self, p: SimPod, code: int, container: str | None = None) -> None:
        targets = [p.containers[container]] if container else [c for c in p.containers.values() if c.state == "running"]
        for c in targets:
            self.container_exit(p, c, code)

    def evict(self, p: SimPod, message: str | None = None) -> None:
        """The kubelet evicts the pod: containers killed, phase Failed, reason Evicted (the object stays)."""
        msg = message or "The node was low on resource: memory. "
        if self.alive(p) and not p.finished:
            p.set_condition("DisruptionTarget", "True", "TerminationByKubelet", msg)
        self.fail_pod(p, "Evicted", msg)

    def lose_pod(self, p: SimPod) -> None:
        """The pod's node is gone for it: no status, no final delete, log streams stall."""
        p.lost = True
        for c in p.containers.values():
            c.log.poke()
            if c.prev is not None:
                c.prev.poke()

    def gc_container(self, p: SimPod, c: SimContainer) -> None:
        """The container runtime removed the container's exited instances (their logs are gone)."""
        if c.state == "terminated" or (c.state == "waiting" and c.last_state):
            c.gc_done = True
        if c.prev is not None:
            c.prev_gc = True

    def _lose_requested(self, p: SimPod) -> None:
        if self.alive(p) and not p.lost:
            self.host.lose_requested(p)

    # ------------------------------------------------------------------ lifecycle

    def start(self, p: SimPod) -> None:
        """Start the pod's containers once its volumes exist (called again by the host when they may)."""
        if not self.alive(p) or p.started or p.terminating or p.finished:
            return
        if p.start_time is None:
            p.start_time = now_rfc3339()
        if not self.host.check_volumes(p):
            if not p.waiting_published:
                p.waiting_published = True
                p.set_condition("PodReadyToStartContainers", "False")
                self._pending_conditions(p)
                self.publish(p)
            return
        p.started = True
        p.set_condition("PodReadyToStartContainers", "True")
        if self.host.writes_pod_scheduled:
            p.set_condition("PodScheduled", "True")
        for c in p.containers.values():
            if c.sidecar:
                self._start_container(p, c)
        nxt = self._next_init(p)
        if nxt is not None:
            p.set_condition("Initialized", "False", "ContainersNotInitialized",
                            f"containers with incomplete status: [{' '.join(self._incomplete_init(p))}]")
            self._start_container(p, nxt)
        else:
            self._start_regular(p)
        deadline = (p.obj.get("spec") or {}).get("activeDeadlineSeconds")
        if deadline:
            p.deadline_handle = self.later(
                float(deadline),
                lambda: self.fail_pod(p, "DeadlineExceeded", "Pod was active on the node longer than the specified deadline"),
            )
        self._after_change(p)

    def _incomplete_init(self, p: SimPod) -> list[str]:
        return [n for n in p.init_order if not (p.containers[n].state == "terminated" and p.containers[n].exit_code == 0)
                and not p.containers[n].sidecar]

    def _next_init(self, p: SimPod) -> SimContainer | None:
        for n in p.init_order:
            c = p.containers[n]
            if c.sidecar:
                continue
            if c.state == "terminated" and c.exit_code == 0:
                continue
            return c
        return None

    def _start_regular(self, p: SimPod) -> None:
        p.regular_started = True
        p.set_condition("Initialized", "True")
        for c in p.regular():
            self._start_container(p, c)

    def _start_container(self, p: SimPod, c: SimContainer) -> None:
        plan = c.plan
        if plan.config_error:
            self._wait(p, c, "CreateContainerConfigError", plan.config_error)
            return
        if plan.waiting_reason:
            self._wait(p, c, plan.waiting_reason, plan.waiting_message)
            return
        if c.image.startswith(INVALID_IMAGE_PREFIX):
            ref = normalise_image(c.image)
            host = ref.split("/", 1)[0]
            self._wait(p, c, "ErrImagePull", f'failed to pull and unpack image "{ref}": failed to resolve reference '
                       f'"{ref}": failed to do request: Head "https://{host}/v2/": dial tcp: lookup {host}: no such host')

            def backoff() -> None:
                c.waiting_handle = None
                if self.alive(p) and c.state == "waiting" and not p.terminating:
                    c.reason, c.message = "ImagePullBackOff", f'Back-off pulling image "{c.image}"'
                    self.publish(p)

            c.waiting_handle = self.later(self.image_pull_backoff, backoff)
            return
        if c.local and not self.local_processes:
            self._wait(p, c, "CreateContainerError", "local processes are disabled on this simulated node")
            return
        self._run_container(p, c)

    def mark_running(self, c: SimContainer) -> None:
        """The container's process started."""
        c.state = "running"
        c.reason = ""
        c.message = None
        c.started_at = now_rfc3339()
        c.container_id = "containerd://" + uuid.uuid4().hex + uuid.uuid4().hex

    def _wait(self, p: SimPod, c: SimContainer, reason: str, message: str | None) -> None:
        c.state = "waiting"
        c.reason = reason
        c.message = message

    def _run_container(self, p: SimPod, c: SimContainer) -> None:
        c.exit_code = None
        c.finished_at = None
        c.ignore_term = False
        c.terminating = False
        c.gc_done = False
        if c.local:
            from .process import start_local

            # waiting (ContainerCreating) until the process runs: start_local calls mark_running
            c.state, c.reason, c.message = "waiting", "ContainerCreating", None
            c.task = asyncio.ensure_future(start_local(self, p, c))
            return
        self.mark_running(c)
        steps = c.script.steps if c.script is not None else []
        if steps:
            c.task = asyncio.ensure_future(self._run_steps(p, c, steps, c.log))
        elif c.init and not c.sidecar and c.script is None:
            # an init container nobody scripted does its job at once
            self.soon(lambda: self.container_exit(p, c, 0))

    async def _run_steps(self, p: SimPod, c: SimContainer, steps: list[Any], inst: ContainerLog) -> None:
        try:
            for step in steps:
                if not isinstance(step, dict):
                    continue
                if c.log is not inst or c.state != "running":
                    return
                stream = STDERR if step.get("stream") == "stderr" else STDOUT
                if "log" in step:
                    inst.write(stream, str(step["log"]).encode())
                if "logB64" in step:
                    inst.write(stream, base64.b64decode(step["logB64"]))
                if "write" in step:
                    spec = write_spec(step["write"])
                    for chunk in write_chunks(spec["bytes"], line_bytes=spec["lineBytes"],
                                              chunk_bytes=spec["chunkBytes"], seed=spec["seed"]):
                        if c.log is not inst or c.state != "running":
                            return
                        inst.write(stream, chunk)
                        await asyncio.sleep(spec["sleep"])
                if "ignoreTerm" in step:
                    c.ignore_term = bool(step["ignoreTerm"])
                if "report" in step:
                    await self._report(p, step["report"])
                if step.get("loseNode"):
                    self._lose_requested(p)
                if "sleep" in step:
                    await asyncio.sleep(float(step["sleep"]))
                if "exit" in step:
                    if c.log is inst and c.state == "running":
                        c.task = None
                        self.container_exit(p, c, int(step["exit"]))
                    return
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception("script of %s/%s[%s] failed", p.ns, p.name, c.name)

    async def _report(self, p: SimPod, report: Any) -> None:
        import aiohttp

        from controller import GROUP, VERSION

        owner = p.owner or {}
        is_agent = owner.get("kind") == "Agent"
        agent = (owner.get("name") if is_agent else None) or p.env.get("AGENT_NAME") or p.name
        api_version = owner.get("apiVersion") if is_agent else f"{GROUP}/{VERSION}"
        ep = self.host.api_endpoint()
        url = f"{ep.url}/apis/{api_version}/namespaces/{p.ns}/agents/{agent}/status"
        rec: dict[str, Any] = {"namespace": p.ns, "pod": p.name, "agent": agent, "report": report}
        # As `agentctl report` does: what may pass (no answer, 429, 5xx) is tried again, here for up
        # to REPORT_RETRY_SECONDS (an API server restart on a loaded control plane takes a while).
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + REPORT_RETRY_SECONDS, 0.2
        while True:
            try:
                token = await self.host.pod_token(p, None, 3607)
                if self._session is None:
                    self._session = aiohttp.ClientSession()
                import json

                async with self._session.patch(
                    url,
                    data=json.dumps({"status": report}),
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"},
                    ssl=ep.ssl if ep.ssl is not None else True,
                ) as resp:
                    rec["code"] = resp.status
                    rec["body"] = await resp.text()
            except Exception as e:  # noqa: BLE001
                rec["code"] = 0
                rec["body"] = repr(e)
            if not (rec["code"] == 0 or rec["code"] == 429 or rec["code"] >= 500) or loop.time() + delay > deadline \
                    or not self.alive(p):
                break
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)
        self.reports.append(rec)

    def container_exit(self, p: SimPod, c: SimContainer, code: int, reason: str | None = None,
                       message: str | None = None, *, from_process: bool = False) -> None:
        """The container's process ended with ``code`` (a local process still running is killed)."""
        if c.state != "running":
            return
        if c.local:
            if c.proc is not None and not from_process:
                c.proc.signal(signal.SIGKILL)
        elif c.task is not None and c.task is not asyncio.current_task():
            c.task.cancel()
        if not c.local:
            c.task = None
        c.state = "terminated"
        c.exit_code = code
        c.reason = reason or ("Completed" if code == 0 else "Error")
        c.message = message
        if message is None and code != 0 and c.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            c.message = _log_tail_message(c.log)
        c.finished_at = now_rfc3339()
        c.log.close()
        self._after_change(p)

    def _after_change(self, p: SimPod) -> None:
        if not self.alive(p):
            return
        if p.terminating:
            if all(c.state != "running" for c in p.containers.values()):
                self._finish_termination(p)
            else:
                self._update_ready(p)
                self.publish(p)
            return
        if p.finished:
            self.publish(p)
            return
        if p.started and not p.regular_started:
            nxt = self._next_init(p)
            failed = next((p.containers[n] for n in p.init_order if p.containers[n].state == "terminated"
                           and p.containers[n].exit_code != 0 and not p.containers[n].sidecar), None)
            if failed is not None:
                if p.restart_policy == "Never":
                    self._finish_pod(p)
                    self._update_ready(p)
                    self.publish(p)
                    return
                if failed.restart_handle is None:
                    self._schedule_restart(p, failed)
            elif nxt is None:
                self._start_regular(p)
            elif nxt.state == "waiting" and nxt.restart_handle is None and not nxt.last_state and \
                    nxt.task is None and nxt.reason in ("ContainerCreating", "PodInitializing"):
                p.set_condition("Initialized", "False", "ContainersNotInitialized",
                                f"containers with incomplete status: [{' '.join(self._incomplete_init(p))}]")
                self._start_container(p, nxt)
        for c in p.containers.values():
            if c.state == "terminated" and c.restart_handle is None and (not c.init or c.sidecar):
                if p.restart_policy == "Always" or c.sidecar or (p.restart_policy == "OnFailure" and c.exit_code != 0):
                    self._schedule_restart(p, c)
                else:
                    self._schedule_gc(p, c)
        regular = list(p.regular())
        if p.regular_started and all(c.state == "terminated" and c.restart_handle is None for c in regular):
            self._finish_pod(p)
        self._update_ready(p)
        self.publish(p)

    def _finish_pod(self, p: SimPod) -> None:
        codes = [c.exit_code for c in p.containers.values() if not c.init or not c.sidecar]
        p.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
        p.finished = True
        if p.deadline_handle is not None:
            p.deadline_handle.cancel()
        for c in p.containers.values():
            if c.sidecar and c.state == "running":
                self._sigterm(p, c)

    def _schedule_gc(self, p: SimPod, c: SimContainer) -> None:
        delay = p.behaviour.gc_after_exit if p.behaviour.gc_after_exit is not None else self.gc_after_exit
        if delay is None or c.gc_handle is not None:
            return

        def gc() -> None:
            c.gc_handle = None
            if self.alive(p):
                self.gc_container(p, c)

        c.gc_handle = self.later(delay, gc)

    def _schedule_restart(self, p: SimPod, c: SimContainer) -> None:
        delay = min(self.restart_backoff * (2 ** min(c.restart_count, 16)), self.max_backoff)
        c.last_state = {"terminated": c.terminated()}
        c.prev = c.log
        c.prev_gc = c.gc_done
        c.log = ContainerLog(c.log.max_size)
        c.state = "waiting"
        c.reason = "CrashLoopBackOff"
        c.message = f"back-off {_duration(delay)} restarting failed container={c.name} pod={p.name}_{p.ns}({p.uid})"

        def restart() -> None:
            c.restart_handle = None
            if not self.alive(p) or p.terminating or p.finished:
                return
            c.restart_count += 1
            self._run_container(p, c)
            self._update_ready(p)
            self.publish(p)

        c.restart_handle = self.later(delay, restart)

    def _pending_conditions(self, p: SimPod) -> None:
        if "Initialized" not in p.conditions:
            if p.init_order:
                p.set_condition("Initialized", "False", "ContainersNotInitialized",
                                f"containers with incomplete status: [{' '.join(self._incomplete_init(p))}]")
            else:
                p.set_condition("Initialized", "True")
        if self.host.writes_pod_scheduled:
            p.set_condition("PodScheduled", "True")
        self._update_ready(p)

    def _update_ready(self, p: SimPod) -> None:
        if p.finished:
            reason = "PodCompleted" if p.phase == "Succeeded" else "PodFailed"
            p.set_condition("ContainersReady", "False", reason)
            p.set_condition("Ready", "False", reason)
            if not p.init_order or p.phase == "Succeeded":
                p.set_condition("Initialized", "True", "PodCompleted" if p.phase == "Succeeded" else None)
            return
        unready = [c.name for c in p.regular() if not (c.state == "running" and not c.terminating)]
        if not unready and p.started and not p.terminating:
            p.set_condition("ContainersReady", "True")
            p.set_condition("Ready", "True")
        else:
            names = unready or [c.name for c in p.regular()]
            msg = f"containers with unready status: [{' '.join(names)}]"
            p.set_condition("ContainersReady", "False", "ContainersNotReady", msg)
            p.set_condition("Ready", "False", "ContainersNotReady", msg)

    def _begin_termination(self, p: SimPod, grace: int) -> None:
        if not self.alive(p) or p.terminating or p.lost:
            return
        p.terminating = True
        p.grace = grace
        for c in p.containers.values():
            for h in (c.restart_handle, c.waiting_handle):
                if h is not None:
                    h.cancel()
            c.restart_handle = c.waiting_handle = None
        if p.deadline_handle is not None:
            p.deadline_handle.cancel()
        running = [c for c in p.containers.values() if c.state == "running"]
        if not running:
            self._finish_termination(p)
            return
        p.kill_handle = self.later(grace, lambda: self._kill_all(p))
        for c in running:
            self._sigterm(p, c)
        if self.alive(p) and any(c.state == "running" for c in p.containers.values()):
            self._update_ready(p)
            self.publish(p)

    def _shorten(self, p: SimPod, grace: int) -> None:
        if not self.alive(p) or p.term_done:
            return
        p.grace = grace
        if p.kill_handle is not None:
            p.kill_handle.cancel()
        p.kill_handle = self.later(grace, lambda: self._kill_all(p))

    def _sigterm(self, p: SimPod, c: SimContainer) -> None:
        if c.state != "running":
            return
        c.terminating = True
        if c.proc is not None:
            c.proc.signal(signal.SIGTERM)
            return
        if c.local:
            return        # the process is still being started; the kill timer ends it
        if c.ignore_term:
            return
        on_term = c.script.on_term if c.script is not None else None
        if on_term:
            if c.task is not None and not c.task.done():
                c.task.cancel()
            c.task = asyncio.ensure_future(self._run_steps(p, c, list(on_term), c.log))
        else:
            self.container_exit(p, c, 143)

    def _kill_all(self, p: SimPod) -> None:
        p.kill_handle = None
        if not self.alive(p):
            return
        for c in list(p.containers.values()):
            if c.state == "running":
                self.kill_container(p, c)

    def kill_container(self, p: SimPod, c: SimContainer) -> None:
        """SIGKILL: a local process gets the signal (its exit is reported when it is reaped)."""
        if c.proc is not None:
            c.proc.signal(signal.SIGKILL)
            return
        if c.local and c.task is not None:
            c.task.cancel()
        self.container_exit(p, c, 137, "Error")

    def _finish_termination(self, p: SimPod) -> None:
        if not self.alive(p) or p.term_done:
            return
        if p.lost:
            return
        p.term_done = True
        if p.kill_handle is not None:
            p.kill_handle.cancel()
            p.kill_handle = None
        for c in p.containers.values():
            if c.state == "waiting":
                had_run = bool(c.last_state)
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "ContainerStatusUnknown"
                c.message = "The container could not be located when the pod was terminated"
                c.finished_at = now_rfc3339()
                if had_run:
                    c.container_id = ""
                c.log.close()
        if not p.finished:
            codes = [c.exit_code for c in p.containers.values() if not c.init or c.sidecar]
            p.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
            p.finished = True
        self._update_ready(p)
        self.host.finalize(p)

    def fail_pod(self, p: SimPod, reason: str, message: str) -> None:
        """The kubelet ends the pod (eviction, deadline): containers killed, phase Failed."""
        if not self.alive(p) or p.finished:
            return
        p.reason = reason
        p.message = message
        p.finished = True
        p.phase = "Failed"
        for c in p.containers.values():
            for h in (c.restart_handle, c.waiting_handle):
                if h is not None:
                    h.cancel()
            c.restart_handle = c.waiting_handle = None
            if c.state == "running":
                if c.proc is not None:
                    c.proc.signal(signal.SIGKILL)
                if c.task is not None and not c.task.done() and not c.local:
                    c.task.cancel()
                c.task = None if not c.local else c.task
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "Error"
                c.finished_at = now_rfc3339()
                c.log.close()
            elif c.state == "waiting" and not c.last_state:
                c.state = "terminated"
                c.exit_code = 137
                c.reason = "ContainerStatusUnknown"
                c.message = "The container could not be located when the pod was terminated"
                c.finished_at = now_rfc3339()
                c.log.close()
        if p.terminating:
            self._finish_termination(p)
            return
        self._update_ready(p)
        self.publish(p)

    def _cancel(self, p: SimPod) -> None:
        for c in p.containers.values():
            if c.task is not None and not c.task.done():
                c.task.cancel()
            c.task = None
            if c.proc is not None:
                c.proc.signal(signal.SIGKILL)
            for h in (c.restart_handle, c.waiting_handle, c.gc_handle):
                if h is not None:
                    h.cancel()
            c.log.close()
            if c.prev is not None:
                c.prev.close()
        for h in (p.kill_handle, p.deadline_handle, *p.timers):
            if h is not None:
                h.cancel()
        if p.process_ctx is not None:
            p.process_ctx.close()

    # ------------------------------------------------------------------ status

    def publish(self, p: SimPod) -> None:
        """Ask the host to write the status (not for a lost node)."""
        if p.lost or not self.alive(p):
            return
        self.host.publish(p)
        if self.on_change is not None:
            self.on_change(p)

    def pod_status(self, p: SimPod, existing: dict[str, Any] | None = None) -> dict[str, Any]:
        """The pod's ``status`` as the kubelet writes it (``existing`` supplies what others set, e.g. ``qosClass``)."""
        existing = existing or {}
        terminal = p.phase in ("Succeeded", "Failed")
        st: dict[str, Any] = {}
        gen = (p.obj.get("metadata") or {}).get("generation")
        if gen is not None:
            st["observedGeneration"] = gen
        st["phase"] = p.phase if p.finished else self._phase(p)
        conds = dict(p.conditions)
        if not self.host.writes_pod_scheduled:
            conds.pop("PodScheduled", None)
        out = []
        for t in _CONDITION_ORDER:
            if t not in conds:
                continue
            status, when, reason, message = conds[t]
            cond: dict[str, Any] = {"type": t, "status": status}
            if gen is not None:
                cond["observedGeneration"] = gen
            cond["lastProbeTime"] = None
            cond["lastTransitionTime"] = when
            if reason:
                cond["reason"] = reason
            if message:
                cond["message"] = message
            out.append(cond)
        if not self.host.writes_pod_scheduled:
            out += [c for c in existing.get("conditions") or () if c.get("type") == "PodScheduled"]
        st["conditions"] = out
        if p.reason:
            st["reason"] = p.reason
        if p.message:
            st["message"] = p.message
        st["hostIP"] = self.host.host_ip
        st["hostIPs"] = [{"ip": self.host.host_ip}]
        if p.started:
            st["podIP"] = p.ip
            st["podIPs"] = [{"ip": p.ip}]
        if p.start_time:
            st["startTime"] = p.start_time
        inits = [c.status(terminal) for c in p.containers.values() if c.init]
        if inits:
            st["initContainerStatuses"] = inits
        st["containerStatuses"] = [c.status(terminal) for c in p.regular()]
        if existing.get("qosClass"):
            st["qosClass"] = existing["qosClass"]
        return st

    def _phase(self, p: SimPod) -> str:
        if p.init_order and not p.regular_started:
            return "Pending"
        waiting = running = stopped = 0
        for c in p.regular():
            if c.state == "running":
                running += 1
            elif c.state == "terminated":
                stopped += 1
            elif c.last_state:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if stopped:
            return "Running"      # all stopped but restarting (a terminal pod is `finished`)
        return "Pending"

    # ------------------------------------------------------------------ logs, as the kubelet serves them

    def log_for(self, p: SimPod, container: str, previous: bool) -> tuple[SimContainer, ContainerLog]:
        """The log instance ``/containerLogs`` serves, or :class:`LogUnavailable` with the kubelet's answer."""
        c = p.containers.get(container)
        if c is None:
            raise LogUnavailable(404, f'container "{container}" not found in pod "{p.name}"')
        pod = p.name
        if previous:
            if c.prev is None or not c.last_state:
                raise LogUnavailable(400, f'previous terminated container "{container}" in pod "{pod}" not found')
            if c.prev_gc:
                cid = c.last_state.get("terminated", {}).get("containerID", "")
                raise LogUnavailable(200, f"unable to retrieve container logs for {cid}")
            return c, c.prev
        if c.state == "running":
            return c, c.log
        if c.state == "terminated":
            if not c.container_id:
                if c.prev is not None and c.last_state:
                    return self._prev_or_gc(c)
                raise LogUnavailable(400, f'container "{container}" in pod "{pod}" is terminated')
            if c.gc_done:
                raise LogUnavailable(200, f"unable to retrieve container logs for {c.container_id}")
            return c, c.log
        if c.last_state and c.prev is not None:
            return self._prev_or_gc(c)
        if c.reason == "ErrImagePull":
            raise LogUnavailable(400, f'container "{container}" in pod "{pod}" is waiting to start: image can\'t be pulled')
        if c.reason == "ImagePullBackOff":
            raise LogUnavailable(
                400, f'container "{container}" in pod "{pod}" is waiting to start: trying and failing to pull image'
            )
        raise LogUnavailable(400, f'container "{container}" in pod "{pod}" is waiting to start: {c.reason}')

    @staticmethod
    def _prev_or_gc(c: SimContainer) -> tuple[SimContainer, ContainerLog]:
        assert c.prev is not None
        if c.prev_gc:
            cid = c.last_state.get("terminated", {}).get("containerID", "")
            raise LogUnavailable(200, f"unable to retrieve container logs for {cid}")
        return c, c.prev

    def follow_mode(self, p: SimPod) -> str:
        return p.behaviour.follow_at_rotation or self.follow_at_rotation

    def take_break(self, p: SimPod, c: SimContainer) -> int | None:
        """Bytes after which this log stream is to be cut (``break-log-stream-after-bytes``), or None."""
        b = p.behaviour
        if b.break_after_bytes is None:
            return None
        if b.break_times >= 0 and c.breaks >= b.break_times:
            return None
        c.breaks += 1
        return b.break_after_bytes

    # ------------------------------------------------------------------ records (tests)

    def instances(self, ns: str, pod: str, container: str | None) -> tuple[ContainerLog, ContainerLog | None]:
        """(current, previous) log instances of a container, live or from the graveyard; KeyError/ValueError."""
        p = self.pods.get((ns, pod))
        if p is not None:
            c = self._pick(p.name, list(p.containers), container)
            ct = p.containers[c]
            return ct.log, ct.prev
        logs = self.graveyard.get((ns, pod))
        if logs is None:
            raise KeyError(f'pods "{pod}" not found')
        name = self._pick(pod, list(logs), container)
        return logs[name]

    @staticmethod
    def _pick(pod: str, names: list[str], container: str | None) -> str:
        if container is None:
            if len(names) != 1:
                raise ValueError(f"a container name must be specified for pod {pod}")
            return names[0]
        if container not in names:
            raise ValueError(f"container {container} is not valid for pod {pod}")
        return container


def _duration(seconds: float) -> str:
    """Go's time.Duration text for whole or fractional seconds (``10s``, ``2m40s``, ``200ms``)."""
    if seconds < 1:
        return f"{int(round(seconds * 1000))}ms"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    m, s = divmod(s, 60)
    return f"{m}m{s}s"


def _log_tail_message(log_: ContainerLog) -> str:
    """``FallbackToLogsOnError``: the last 80 lines (at most 2048 bytes) of the log."""
    data = log_.content()[-2048:]
    lines = data.split(b"\n")
    if len(lines) > 81:
        data = b"\n".join(lines[-81:])
    return data.decode("utf-8", "replace")

