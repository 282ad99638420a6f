"""Simulated nodes against a real kube-apiserver: what a kubelet sends and reads, nothing more.

An :class:`ApiNode`, with the node's own credentials (``system:node:<name>`` in group
``system:nodes`` passes the Node authorizer and NodeRestriction; an administrator works too):

- **registers** its Node (capacity/allocatable, ``InternalIP`` address, the conditions
  ``MemoryPressure``/``DiskPressure``/``PIDPressure`` False and ``Ready`` True with the kubelet's
  reasons, ``status.daemonEndpoints.kubeletEndpoint.Port``, ``nodeInfo``), renews its heartbeat
  Lease in ``kube-node-lease`` every ``heartbeat_seconds`` and reports its status every
  ``status_seconds``;
- **watches its pods** (``fieldSelector=spec.nodeName=<node>``; list, then watch from the
  resourceVersion, resumed after a disconnect, a new list after ``410 Gone``);
- for each pod waits for its ConfigMap/Secret volumes (GET, as the kubelet's volume manager),
  gets service-account tokens by **TokenRequest** bound to the pod, runs it in the
  :class:`~controller.nodesim.core.NodeRuntime`, and writes ``pods/status`` with a strategic
  merge patch carrying the pod's UID as precondition (as the kubelet's status manager does);
- **graceful deletion**: a ``deletionTimestamp`` starts the termination; when the containers are
  gone it writes the final status and sends the kubelet's own ``DELETE`` with
  ``gracePeriodSeconds: 0`` and a UID precondition;
- **serves the kubelet API** over HTTPS (:class:`~controller.nodesim.kubeletserver.KubeletServer`);
- **node loss** (:meth:`ApiNode.lose`): Lease renewals and status reports stop, the kubelet port
  refuses connections (streams already open stall), nothing more is written for its pods — a
  deletion then only ends by force (``gracePeriodSeconds: 0`` from someone else).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
import uuid
from collections.abc import Mapping
from typing import Any

from controller.kube.client import ApiError, KubeClient
from controller.kube.resources import PODS

from .core import ApiEndpoint, NodeRuntime, SimPod
from .kubeletserver import KubeletServer

__all__ = ["ApiNode"]

log = logging.getLogger(__name__)

KUBELET_VERSION = "v1.37.2"
WATCH_TIMEOUT = 300


def now_micro() -> str:
    """metav1.MicroTime."""
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def now_rfc3339() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ApiNode:
    """One simulated node on a real API server (see the module docstring). Runs on one asyncio loop."""

    writes_pod_scheduled = False

    def __init__(
        self,
        name: str,
        client: KubeClient,
        *,
        host_ip: str = "127.0.0.1",
        kubelet_port: int = 0,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_ca: str | None = None,
        labels: Mapping[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        max_pods: int = 110,
        cpu: str = "8",
        memory: str = "32Gi",
        heartbeat_seconds: float = 10.0,
        lease_duration_seconds: int = 40,
        status_seconds: float = 60.0,
        index: int = 1,
        **runtime_options: Any,
    ) -> None:
        self.node_name = name
        self.host_ip = host_ip
        self.client = client
        self.labels = dict(labels or {})
        self.taints = list(taints or [])
        self.max_pods = max_pods
        self.cpu = cpu
        self.memory = memory
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_duration_seconds = lease_duration_seconds
        self.status_seconds = status_seconds
        runtime_options.setdefault("pod_cidr", index)
        self.runtime = NodeRuntime(self, **runtime_options)
        self.server = KubeletServer(self.runtime, host=host_ip, port=kubelet_port, cert_file=cert_file,
                                    key_file=key_file, client_ca=client_ca)
        self.lost = False
        self.node_uid = ""
        self.lease_renewals = 0
        self.status_reports = 0
        self._lease: dict[str, Any] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._volume_checks: dict[str, asyncio.Task[None]] = {}
        self._volumes_ok: set[str] = set()
        self._finalized: set[str] = set()
        self._tokens: dict[tuple[str, tuple[str, ...], int], tuple[str, float]] = {}
        self._ca_pem: bytes = b""
        if client.config.ca_file:
            with open(client.config.ca_file, "rb") as f:
                self._ca_pem = f.read()
        self.synced = asyncio.Event()
        self._since: dict[str, str] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Serve the kubelet API, register the Node and its Lease, watch the pods."""
        self.runtime.attach(asyncio.get_running_loop())
        await self.server.start()
        await self._register()
        await self._renew_lease()
        self._tasks = [
            asyncio.ensure_future(self._lease_loop()),
            asyncio.ensure_future(self._status_loop()),
            asyncio.ensure_future(self._watch_loop()),
        ]

    async def stop(self) -> None:
        """Stop every loop, container and process; the Node object stays (as a stopped kubelet leaves it)."""
        for t in [*self._tasks, *self._writers.values(), *self._volume_checks.values()]:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        await self.runtime.close()
        await self.server.stop()

    async def lose(self) -> None:
        """The node is lost: heartbeats stop, the kubelet port refuses connections, its pods are left as they are."""
        if self.lost:
            return
        self.lost = True
        await self.server.refuse()
        for p in list(self.runtime.pods.values()):
            self.runtime.lose_pod(p)

    async def restore(self) -> None:
        """The node comes back: heartbeats, the kubelet port and pod updates resume."""
        if not self.lost:
            return
        self.lost = False
        await self.server.resume()
        for p in list(self.runtime.pods.values()):
            p.lost = False
            self.publish(p)
            md = p.obj.get("metadata") or {}
            if "deletionTimestamp" in md:
                self.runtime.request_deletion(p, int(md.get("deletionGracePeriodSeconds") or 0))
        await self._renew_lease()
        await self._report_status()

    # ------------------------------------------------------------------ the Node and its Lease

    def _conditions(self) -> list[dict[str, Any]]:
        now = now_rfc3339()
        rows = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            ("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        ]
        return [{"type": t, "status": s, "lastHeartbeatTime": now, "lastTransitionTime": self._since.get(t, now),
                 "reason": r, "message": m} for t, s, r, m in rows]

    def _node_status(self) -> dict[str, Any]:
        res = {"cpu": self.cpu, "memory": self.memory, "pods": str(self.max_pods), "ephemeral-storage": "100Gi",
               "hugepages-1Gi": "0", "hugepages-2Mi": "0"}
        return {
            "capacity": res,
            "allocatable": dict(res),
            "conditions": self._conditions(),
            "addresses": [{"type": "InternalIP", "address": self.host_ip}, {"type": "Hostname", "address": self.node_name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.server.port}},
            "nodeInfo": {
                "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, self.node_name).hex,
                "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, self.node_name)),
                "bootID": str(uuid.uuid4()),
                "kernelVersion": os.uname().release,
                "osImage": "agent-controller node simulator",
                "containerRuntimeVersion": "containerd://2.1.0-nodesim",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": "",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        }

    async def _register(self) -> None:
        now = now_rfc3339()
        self._since = {t: now for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")}
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": "amd64",
            **self.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": labels,
                "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                "volumes.kubernetes.io/controller-managed-attach-detach": "true"},
            },
            "spec": {"taints": self.taints} if self.taints else {},
            "status": self._node_status(),
        }
        try:
            node = await self.client.request("POST", "/api/v1/nodes", body=body)
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.client.request("PATCH", f"/api/v1/nodes/{self.node_name}",
                                             body={"metadata": {"labels": labels}},
                                             content_type="application/strategic-merge-patch+json")
            await self._report_status()
        self.node_uid = node["metadata"]["uid"]

    async def _report_status(self) -> None:
        await self.client.request("PATCH", f"/api/v1/nodes/{self.node_name}/status",
                                  body={"status": self._node_status()},
                                  content_type="application/strategic-merge-patch+json")
        self.status_reports += 1

    async def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node_name}"
        for _ in range(3):
            if self._lease is None:
                try:
                    self._lease = await self.client.request("GET", path)
                except ApiError as e:
                    if e.status != 404:
                        raise
                    body = {
                        "apiVersion": "coordination.k8s.io/v1",
                        "kind": "Lease",
                        "metadata": {
                            "name": self.node_name,
                            "namespace": "kube-node-lease",
                            "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": self.node_name,
                                                 "uid": self.node_uid}],
                        },
                        "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": self.lease_duration_seconds,
                                 "renewTime": now_micro()},
                    }
                    try:
                        self._lease = await self.client.request(
                            "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", body=body)
                        self.lease_renewals += 1
                        return
                    except ApiError as e2:
                        if e2.status != 409:
                            raise
                        continue
            lease = self._lease
            lease.setdefault("spec", {}).update({"holderIdentity": self.node_name,
                                                 "leaseDurationSeconds": self.lease_duration_seconds,
                                                 "renewTime": now_micro()})
            try:
                self._lease = await self.client.request("PUT", path, body=lease)
                self.lease_renewals += 1
                return
            except ApiError as e:
                self._lease = None
                if e.status not in (404, 409):
                    raise

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            if self.lost:
                continue
            try:
                await self._renew_lease()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.warning("node %s: lease renewal failed: %s", self.node_name, e)

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.status_seconds)
            if self.lost:
                continue
            try:
                await self._report_status()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.warning("node %s: status report failed: %s", self.node_name, e)

    # ------------------------------------------------------------------ pods

    async def _watch_loop(self) -> None:
        rv: str | None = None
        selector = f"spec.nodeName={self.node_name}"
        while True:
            try:
                if rv is None:
                    lst = await self.client.request("GET", "/api/v1/pods", params={"fieldSelector": selector})
                    rv = str(lst["metadata"]["resourceVersion"])
                    self._resync(lst.get("items") or [])
                    self.synced.set()
                rv = await self._watch(selector, rv)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001
                log.warning("node %s: pod watch failed: %s", self.node_name, e)
                await asyncio.sleep(1.0)

    async def _watch(self, selector: str, rv: str) -> str | None:
        """Watch from ``rv``; returns the last resourceVersion seen, or None when a new list is needed."""
        try:
            async for ev in self.client.watch(PODS, None, resource_version=rv, field_selector=selector,
                                              timeout_seconds=WATCH_TIMEOUT):
                etype, obj = ev.get("type"), ev.get("object") or {}
                new_rv = (obj.get("metadata") or {}).get("resourceVersion")
                if new_rv:
                    rv = str(new_rv)
                if etype == "BOOKMARK":
                    continue
                self._on_pod(str(etype), obj)
        except ApiError as exc:
            if exc.status == 410:
                return None
            raise
        return rv

    def _resync(self, items: list[dict[str, Any]]) -> None:
        seen = set()
        for obj in items:
            md = obj.get("metadata") or {}
            seen.add((md.get("namespace", ""), md.get("name", "")))
            self._on_pod("ADDED", obj)
        for key, p in list(self.runtime.pods.items()):
            if key not in seen:
                self._removed(p)

    def _on_pod(self, etype: str, obj: dict[str, Any]) -> None:
        md = obj.get("metadata") or {}
        key = (md.get("namespace", ""), md.get("name", ""))
        uid = md.get("uid", "")
        p = self.runtime.pods.get(key)
        if etype == "DELETED":
            if p is not None and p.uid == uid:
                self._removed(p)
            return
        if p is not None and p.uid != uid:
            self._removed(p)
            p = None
        if p is None:
            if self.lost or uid in self._finalized:
                return
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if "deletionTimestamp" in md:       # a pod of an earlier run of this node
                    self._finalized.add(uid)
                    asyncio.ensure_future(self._delete(key[0], key[1], uid))
                return
            p = self.runtime.add(obj)
        else:
            p.obj = obj
        if "deletionTimestamp" in md:
            self.runtime.request_deletion(p, int(md.get("deletionGracePeriodSeconds") or 0))

    def _removed(self, p: SimPod) -> None:
        self.runtime.remove(p)
        self._volumes_ok.discard(p.uid)
        t = self._volume_checks.pop(p.uid, None)
        if t is not None:
            t.cancel()
        for k in [k for k in self._tokens if k[0] == p.uid]:
            del self._tokens[k]

    # ------------------------------------------------------------------ Host

    def publish(self, p: SimPod) -> None:
        p.dirty = True
        if p.uid not in self._writers and not self.lost:
            self._writers[p.uid] = asyncio.ensure_future(self._write_status(p))

    async def _write_status(self, p: SimPod) -> None:
        path = f"/api/v1/namespaces/{p.ns}/pods/{p.name}/status"
        delay = 0.2
        try:
            while p.dirty and not p.lost and not self.lost and self.runtime.alive(p):
                p.dirty = False
                body = {"metadata": {"uid": p.uid}, "status": self.runtime.pod_status(p, p.obj.get("status"))}
                try:
                    await self.client.request("PATCH", path, body=body,
                                              content_type="application/strategic-merge-patch+json")
                    delay = 0.2
                except ApiError as e:
                    if e.status in (404, 409):
                        return              # gone, or another pod of that name now
                    log.warning("node %s: status of %s/%s: %s %s", self.node_name, p.ns, p.name, e.status, e)
                    if 400 <= e.status < 500 and e.status != 429:
                        return              # refused for good: retrying the same status would not help
                    p.dirty = True
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
        finally:
            self._writers.pop(p.uid, None)

    def finalize(self, p: SimPod) -> None:
        self._finalized.add(p.uid)
        self.publish(p)
        asyncio.ensure_future(self._finalize(p))

    async def _finalize(self, p: SimPod) -> None:
        while p.uid in self._writers:
            try:
                await asyncio.shield(self._writers[p.uid])
            except Exception:  # noqa: BLE001
                break
        if p.lost or self.lost:
            return
        await self._delete(p.ns, p.name, p.uid)

    async def _delete(self, ns: str, name: str, uid: str) -> None:
        for attempt in range(10):
            try:
                await self.client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/{name}",
                                          body={"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
                                                "preconditions": {"uid": uid}})
                return
            except ApiError as e:
                if e.status in (404, 409):
                    return
                await asyncio.sleep(min(5.0, 0.2 * 2 ** attempt))

    def check_volumes(self, p: SimPod) -> bool:
        if p.uid in self._volumes_ok:
            return True
        needed = p.required_volumes()
        if not needed:
            self._volumes_ok.add(p.uid)
            return True
        if p.uid not in self._volume_checks:
            self._volume_checks[p.uid] = asyncio.ensure_future(self._wait_volumes(p, needed))
        return False

    async def _wait_volumes(self, p: SimPod, needed: list[tuple[str, str]]) -> None:
        try:
            while self.runtime.alive(p) and not p.started and not p.terminating:
                missing = []
                for kind, name in needed:
                    try:
                        if await self.read_object(kind, p.ns, name) is None:
                            missing.append(name)
                    except ApiError:
                        missing.append(name)
                if not missing:
                    self._volumes_ok.add(p.uid)
                    self.runtime.start(p)
                    return
                await asyncio.sleep(1.0)
        finally:
            self._volume_checks.pop(p.uid, None)

    async def read_object(self, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
        for attempt in range(6):
            try:
                return await self.client.request("GET", f"/api/v1/namespaces/{namespace}/{resource}/{name}")
            except ApiError as e:
                if e.status == 404:
                    return None
                if e.status != 403 or attempt == 5:
                    raise
                # the Node authorizer learns of a pod's references a moment after the pod is bound
                await asyncio.sleep(0.25 * (attempt + 1))
        return None

    async def pod_token(self, p: SimPod, audiences: list[str] | None, expiration: int) -> str:
        key = (p.uid, tuple(audiences or ()), expiration)
        cached = self._tokens.get(key)
        if cached is not None and time.monotonic() < cached[1]:
            return cached[0]
        spec: dict[str, Any] = {"expirationSeconds": expiration,
                                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": p.name, "uid": p.uid}}
        if audiences:
            spec["audiences"] = list(audiences)
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        for attempt in range(6):
            try:
                tr = await self.client.request("POST", f"/api/v1/namespaces/{p.ns}/serviceaccounts/{p.sa}/token",
                                               body=body)
                break
            except ApiError as e:
                if e.status != 403 or attempt == 5:
                    raise
                await asyncio.sleep(0.25 * (attempt + 1))
        token = str(tr["status"]["token"])
        exp = int((tr.get("spec") or {}).get("expirationSeconds") or expiration)
        self._tokens[key] = (token, time.monotonic() + exp * 0.8)
        return token

    def api_endpoint(self) -> ApiEndpoint:
        server = self.client.config.server.rstrip("/")
        hostport = server.split("://", 1)[1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        ctx: ssl.SSLContext | bool | None = None
        if server.startswith("https"):
            ctx = ssl.create_default_context(cafile=self.client.config.ca_file)
            if not self.client.config.verify_ssl:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
        return ApiEndpoint(url=server, ssl=ctx, service_host=host.strip("[]"), service_port=int(port or 443),
                           ca_pem=self._ca_pem)

    def lose_requested(self, p: SimPod) -> None:
        asyncio.ensure_future(self.lose())
