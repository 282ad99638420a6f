"""The node simulator behind the devcluster emulator: ``DevCluster.kubelet``.

No HTTP hop: pods come from the store's listeners (no polling), statuses are written with
``Store.internal_update``, the final delete goes straight to the store, and ``pods/log`` is served
from the runtime's log files by :meth:`EmulatorKubelet.pods_log` — with the answers a real
kube-apiserver gives in front of a real kubelet (its PodLogOptions validation, ``sinceTime``
truncated to seconds on the way to the kubelet, the kubelet's error texts as ``BadRequest``, the
HTTP 200 error body of a garbage-collected container, and the ``connection refused`` error of a
lost node).

The emulator has one node, ``devcluster-node``, and every pod is bound to it at once (no
scheduler). Losing "the node" is therefore per pod: :meth:`EmulatorKubelet.lose_node` (or the
``lose-node-after-seconds`` annotation / ``loseNode`` step) makes the kubelet stop acting on that
pod only.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from .core import ApiEndpoint, LogUnavailable, NodeRuntime, SimPod
from .logs import STDERR, STDOUT, LogQuery, parse_rfc3339_ns, read_log

if TYPE_CHECKING:
    from aiohttp import web

    from controller.devcluster.store import Bucket, Store, WatchEvent

__all__ = ["EmulatorKubelet"]

PODS = ("", "pods")
KUBELET_PORT = 10250


def _store() -> Any:
    from controller.devcluster import store

    return store


def _errors() -> Any:
    from controller.devcluster import errors

    return errors


class EmulatorKubelet:
    """The simulated kubelet of the devcluster (one node, ``devcluster-node``).

    The public methods are thread-safe (they run on the server loop); the rest runs on the loop.
    """

    writes_pod_scheduled = True

    def __init__(
        self,
        store: Store,
        *,
        run_sync: Callable[[Callable[[], Any]], Any],
        base_url: Callable[[], str],
        request_token: Callable[[str, str, dict[str, Any]], dict[str, Any]],
        https_url: Callable[[], str | None] | None = None,
        ca_pem: Callable[[], bytes | None] | None = None,
        start_delay: float = 0.05,
        restart_backoff: float = 0.2,
        node_name: str = "devcluster-node",
        host_ip: str = "10.0.0.1",
        **runtime_options: Any,
    ) -> None:
        self.store = store
        self._run_sync = run_sync
        self._base_url = base_url
        self._https_url = https_url or (lambda: None)
        self._ca_pem = ca_pem or (lambda: None)
        self._request_token = request_token    # (namespace, service account, TokenRequest) -> its answer
        self.node_name = node_name
        self.host_ip = host_ip
        runtime_options.setdefault("max_backoff", 10.0)
        self.runtime = NodeRuntime(self, start_delay=start_delay, restart_backoff=restart_backoff, **runtime_options)
        self.waiting: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
        self.reachable_when_lost: set[tuple[str, str]] = set()

    # ------------------------------------------------------------------ compatibility

    @property
    def pods(self) -> dict[tuple[str, str], SimPod]:
        return self.runtime.pods

    @property
    def reports(self) -> deque[dict[str, Any]]:
        return self.runtime.reports

    @property
    def start_delay(self) -> float:
        return self.runtime.start_delay

    @start_delay.setter
    def start_delay(self, value: float) -> None:
        self.runtime.start_delay = value

    # ------------------------------------------------------------------ wiring

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to the store (call on the loop)."""
        self.runtime.attach(loop)
        self.store.add_listener(PODS, self._on_pod_event)
        self.store.add_listener(("", "configmaps"), self._on_volume_source)
        self.store.add_listener(("", "secrets"), self._on_volume_source)

    async def close(self) -> None:
        """Stop every container (and local process) and the HTTP session."""
        await self.runtime.close()
        for p in list(self.runtime.pods.values()):
            for c in p.containers.values():
                c.log.close()

    # ------------------------------------------------------------------ Host

    def publish(self, p: SimPod) -> None:
        if p.dirty:
            return
        p.dirty = True

        def go() -> None:
            p.dirty = False
            if self.runtime.alive(p) and not p.lost:
                self._write_status(p)

        self.runtime.soon(go)

    def finalize(self, p: SimPod) -> None:
        self._write_status(p)
        rt = self.store.buckets[PODS].rt
        try:
            self.store.delete(rt, p.ns, p.name, {"gracePeriodSeconds": 0, "preconditions": {"uid": p.uid}})
        except _errors().ApiError:
            pass

    def check_volumes(self, p: SimPod) -> bool:
        missing = []
        for kind, name in p.required_volumes():
            b = self.store.buckets.get(("", kind))
            if b is not None and (p.ns, name) not in b.objects:
                missing.append((kind, name))
        for kind, name in missing:
            self.waiting.setdefault((p.ns, kind, name), set()).add(p.key)
        return not missing

    async def read_object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        b = self.store.buckets.get(("", resource))
        e = b.objects.get((namespace, name)) if b is not None else None
        return e.copy() if e is not None else None

    async def pod_token(self, p: SimPod, audiences: list[str] | None, expiration: int) -> str:
        """As a kubelet gets it: a TokenRequest bound to the pod, for the volume's audience and
        expiration (runs on the server loop)."""
        spec: dict[str, Any] = {"expirationSeconds": expiration, "boundObjectRef": {
            "apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": p.uid}}
        if audiences:
            spec["audiences"] = list(audiences)
        answer = self._request_token(p.ns, p.sa, {"apiVersion": "authentication.k8s.io/v1",
                                                  "kind": "TokenRequest", "spec": spec})
        return str(answer["status"]["token"])

    def api_endpoint(self) -> ApiEndpoint:
        https = self._https_url()
        hostport = (https or self._base_url()).split("://", 1)[1]
        host, _, port = hostport.rpartition(":")
        return ApiEndpoint(url=self._base_url(), ssl=None, service_host=host, service_port=int(port),
                           ca_pem=self._ca_pem() or b"")

    def lose_requested(self, p: SimPod) -> None:
        self.runtime.lose_pod(p)

    # ------------------------------------------------------------------ public (thread-safe)

    def append_log(self, ns: str, pod: str, container: str | None, data: bytes, stream: str = "stdout") -> None:
        """The container writes ``data`` to stdout (or ``stream="stderr"``)."""

        def fn() -> None:
            p = self._pod(ns, pod)
            c = p.containers[self._cname(p, container)]
            try:
                self.runtime.append_log(p, c, bytes(data), STDERR if stream == "stderr" else STDOUT)
            except LogUnavailable as e:
                raise _errors().ApiError(400, "BadRequest", e.text) from None

        self._run_sync(fn)

    def exit(self, ns: str, pod: str, code: int, container: str | None = None) -> None:
        """The container process (all running ones when ``container`` is None) exits with ``code``."""

        def fn() -> None:
            p = self._pod(ns, pod)
            self.runtime.exit(p, code, self._cname(p, container) if container else None)

        self._run_sync(fn)

    def evict(self, ns: str, pod: str, message: str | None = None) -> None:
        """Evict the pod: containers killed, phase Failed, reason Evicted (the object stays)."""
        self._run_sync(lambda: self.runtime.evict(self._pod(ns, pod), message))

    def lose_node(self, ns: str, pod: str, *, logs_reachable: bool = False) -> None:
        """The pod's node is gone: its kubelet never finishes a graceful deletion (the pod stays
        Terminating; only a force delete removes it), writes no status, and — as with a real lost
        node — its logs cannot be read (``logs_reachable=True`` keeps them readable, an older
        emulator behaviour no real node has)."""

        def fn() -> None:
            p = self._pod(ns, pod)
            if logs_reachable:
                self.reachable_when_lost.add(p.key)
            self.runtime.lose_pod(p)

        self._run_sync(fn)

    def gc_container(self, ns: str, pod: str, container: str | None = None) -> None:
        """The runtime garbage-collects the container's exited instances (their logs become unreadable)."""

        def fn() -> None:
            p = self._pod(ns, pod)
            self.runtime.gc_container(p, p.containers[self._cname(p, container)])

        self._run_sync(fn)

    def served_log(self, ns: str, pod: str, container: str | None = None, previous: bool = False) -> bytes:
        """Everything the container instance logged, across rotations (also after the pod is gone)."""
        return self._record(ns, pod, container, previous, lambda inst: inst.content())

    def written_output(
        self, ns: str, pod: str, container: str | None = None, previous: bool = False, stream: str | None = None
    ) -> bytes:
        """The bytes the container wrote, in the order written (``stream``: only ``stdout`` or ``stderr``)."""
        if stream is None:
            return self._record(ns, pod, container, previous, lambda inst: inst.written_output())
        s = STDERR if stream == "stderr" else STDOUT
        return self._record(ns, pod, container, previous, lambda inst: inst.stream_output(s))

    def current_log(self, ns: str, pod: str, container: str | None = None, previous: bool = False) -> bytes:
        """The current log file only (what the kubelet serves after rotations)."""
        return self._record(ns, pod, container, previous, lambda inst: inst.current_file())

    def container_state(self, ns: str, pod: str, container: str | None = None) -> str:
        """``waiting`` / ``running`` / ``terminated`` (for tests)."""

        def fn() -> str:
            p = self._pod(ns, pod)
            return p.containers[self._cname(p, container)].state

        state: str = self._run_sync(fn)
        return state

    def _record(self, ns: str, pod: str, container: str | None, previous: bool, get: Callable[[Any], bytes]) -> bytes:
        def fn() -> bytes:
            try:
                cur, prev = self.runtime.instances(ns, pod, container)
            except KeyError:
                raise _errors().ApiError(404, "NotFound", f'pods "{pod}" not found', {"name": pod, "kind": "pods"}) from None
            except ValueError as e:
                raise _errors().ApiError(400, "BadRequest", str(e)) from None
            inst = prev if previous else cur
            return get(inst) if inst is not None else b""

        out: bytes = self._run_sync(fn)
        return out

    # ------------------------------------------------------------------ pods/log (on the loop)

    async def pods_log(self, request: web.Request, ns: str, name: str, pod_obj: dict[str, Any]) -> web.StreamResponse:
        """``GET pods/{name}/log`` as kube-apiserver + kubelet answer it."""
        from aiohttp import web

        st = _errors()
        q = request.query
        opts = _log_options(q, name)
        container = _validate_container(pod_obj, q.get("container") or None)
        previous = _truthy(q.get("previous"))
        p = self.runtime.pods.get((ns, name))
        if p is None or p.uid != (pod_obj.get("metadata") or {}).get("uid"):
            raise st.ApiError(404, "NotFound", f'pod "{name}" does not exist')
        if p.lost and p.key not in self.reachable_when_lost:
            params = _kubelet_params(q)
            url = f"https://{self.host_ip}:{KUBELET_PORT}/containerLogs/{ns}/{name}/{quote(container)}" + (
                "?" + params if params else ""
            )
            raise st.ApiError(500, "", f'Get "{url}": dial tcp {self.host_ip}:{KUBELET_PORT}: connect: connection refused')
        try:
            c, inst = self.runtime.log_for(p, container, previous)
        except LogUnavailable as e:
            if e.status == 200:
                return web.Response(body=e.text.encode(), content_type="text/plain")
            if e.status == 404:
                raise st.ApiError(404, "NotFound", e.text) from None
            raise st.ApiError(400, "BadRequest", e.text) from None
        cut = self.runtime.take_break(p, c)
        stalled = None
        if p.key not in self.reachable_when_lost:
            stalled = lambda: p.lost  # noqa: E731
        mode = self.runtime.follow_mode(p)
        if not opts.follow and cut is None:
            body = b"".join([chunk async for chunk in read_log(inst, opts, at_rotation=mode)])
            return web.Response(body=body, content_type="text/plain")
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        sent = 0
        try:
            await resp.prepare(request)
            async for chunk in read_log(inst, opts, at_rotation=mode, stalled=stalled):
                if cut is not None and sent + len(chunk) >= cut:
                    # the kubelet's connection broke: kube-apiserver ends its answer as if complete
                    await resp.write(chunk[: cut - sent])
                    break
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    # ------------------------------------------------------------------ internals

    def _pod(self, ns: str, name: str) -> SimPod:
        p = self.runtime.pods.get((ns, name))
        if p is None:
            raise _errors().ApiError(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        return p

    @staticmethod
    def _cname(p: SimPod, name: str | None) -> str:
        try:
            return NodeRuntime._pick(p.name, list(p.containers), name)
        except ValueError as e:
            raise _errors().ApiError(400, "BadRequest", str(e)) from None

    def _on_pod_event(self, bucket: Bucket, ev: WatchEvent) -> None:
        st = _store()
        key = (ev.ns, ev.name)
        obj = ev.entry.obj
        if ev.type == st.ADDED:
            self.reachable_when_lost.discard(key)
            self.runtime.add(obj)
        elif ev.type == st.MODIFIED:
            p = self.runtime.pods.get(key)
            if p is None or p.uid != ev.entry.uid:
                return
            p.obj = obj           # share the store's current object (the old one can go)
            md = obj["metadata"]
            if "deletionTimestamp" in md:
                self.runtime.request_deletion(p, int(md.get("deletionGracePeriodSeconds") or 0))
        elif ev.type == st.DELETED:
            p3 = self.runtime.pods.get(key)
            if p3 is None or p3.uid != ev.entry.uid:
                return
            self.reachable_when_lost.discard(key)
            self.runtime.remove(p3)

    def _on_volume_source(self, bucket: Bucket, ev: WatchEvent) -> None:
        if ev.type != _store().ADDED:
            return
        waiting = self.waiting.pop((ev.ns, bucket.key[1], ev.name), None)
        for key in waiting or ():
            p = self.runtime.pods.get(key)
            if p is not None and not p.started:
                self.runtime.soon(lambda p=p: self.runtime.start(p))  # type: ignore[misc]

    def _write_status(self, p: SimPod) -> None:
        node = self.node_name
        rt = self.runtime

        def mut(o: dict[str, Any]) -> None:
            o.setdefault("spec", {})["nodeName"] = node
            o["status"] = rt.pod_status(p, o.get("status"))

        self.store.internal_update(PODS, p.ns, p.name, mut, p.uid)


# --------------------------------------------------------------------------- the API server's side of pods/log


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() in ("true", "1", "yes")


def _int_param(q: Any, name: str) -> int | None:
    if name not in q:
        return None
    try:
        return int(q[name])
    except ValueError:
        raise _errors().bad_request(f'strconv.ParseInt: parsing "{q[name]}": invalid syntax') from None


def _invalid(name: str, causes: list[tuple[str, str, str]]) -> Exception:
    """422 Invalid for PodLogOptions, as kube-apiserver words it: causes are (field, reason, message)."""
    texts = [f"{f}: {m}" for f, _, m in causes]
    joined = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    details = {"name": name, "kind": "PodLogOptions",
               "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes]}
    return _errors().ApiError(422, "Invalid", f'PodLogOptions "{name}" is invalid: {joined}', details)


def _log_options(q: Any, name: str) -> LogQuery:
    """PodLogOptions as kube-apiserver v1.37 validates them (its messages; the ``stream`` option's
    feature gate PodLogsQuerySplitStreams is off there by default)."""
    st = _errors()
    tail = _int_param(q, "tailLines")
    limit = _int_param(q, "limitBytes")
    since_s = _int_param(q, "sinceSeconds")
    since_t = q.get("sinceTime")
    since_ns: int | None = None
    if since_t is not None:
        since_ns = parse_rfc3339_ns(since_t)
        if since_ns is None:
            raise st.bad_request(
                f'parsing time "{since_t}" as "2006-01-02T15:04:05Z07:00": cannot parse "{since_t}" as "2006"'
            )
        since_ns = since_ns // 1_000_000_000 * 1_000_000_000     # sent on to the kubelet with second precision
    causes: list[tuple[str, str, str]] = []
    if tail is not None and tail < 0:
        causes.append(("tailLines", "FieldValueInvalid", f"Invalid value: {tail}: must be greater than or equal to 0"))
    if limit is not None and limit < 1:
        causes.append(("limitBytes", "FieldValueInvalid", f"Invalid value: {limit}: must be greater than 0"))
    if since_s is not None and since_s < 1:
        causes.append(("sinceSeconds", "FieldValueInvalid", f"Invalid value: {since_s}: must be greater than 0"))
    if since_s is not None and since_t is not None:
        causes.append(("[]", "FieldValueForbidden", "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified"))
    if q.get("stream") is not None:
        causes.append(("stream", "FieldValueForbidden", "Forbidden: may not be specified"))
    if causes:
        raise _invalid(name, causes)
    if since_ns is None and since_s is not None:
        since_ns = time.time_ns() - since_s * 1_000_000_000
    return LogQuery(
        follow=_truthy(q.get("follow")),
        timestamps=_truthy(q.get("timestamps")),
        since_ns=since_ns,
        tail_lines=tail,
        limit_bytes=limit,
    )


def _validate_container(pod_obj: dict[str, Any], container: str | None) -> str:
    st = _errors()
    spec = pod_obj.get("spec") or {}
    regular = [c.get("name") for c in spec.get("containers") or ()]
    init = [c.get("name") for c in spec.get("initContainers") or ()]
    name = pod_obj["metadata"]["name"]
    if not container:
        if len(regular) == 1:
            return str(regular[0])
        names = " ".join(str(n) for n in regular)
        msg = f"a container name must be specified for pod {name}, choose one of: [{names}]"
        if init:
            msg += f" or one of the init containers: [{' '.join(str(n) for n in init)}]"
        raise st.ApiError(400, "BadRequest", msg)
    if container not in regular and container not in init:
        raise st.ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
    return container


def _kubelet_params(q: Any) -> str:
    params: list[tuple[str, str]] = []
    for key in ("follow", "previous", "timestamps"):
        if _truthy(q.get(key)):
            params.append((key, "true"))
    for key in ("sinceSeconds", "tailLines", "limitBytes"):
        if key in q:
            params.append((key, q[key]))
    if "sinceTime" in q:
        ns_ = parse_rfc3339_ns(q["sinceTime"]) or 0
        params.append(("sinceTime", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns_ // 1_000_000_000))))
    return urlencode(sorted(params))
