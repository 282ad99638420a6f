"""``NodeSimulator``: simulated nodes on a real API server, run on a background thread.

::

    from controller.nodesim.sim import NodeSimulator

    sim = NodeSimulator({"node-1": "node-1.kubeconfig"},            # system:node:node-1 credentials
                        kubelet_cert="kubelet.crt", kubelet_key="kubelet.key",
                        client_ca="ca.crt")                          # CA of the API server's kubelet client cert
    sim.start()
    ...
    sim.written_output("ns", "pod", "agent")    # what the container wrote, byte for byte
    sim.lose_node("node-1")
    sim.stop()

The thread-safe methods run on the simulator's loop; ``call(fn)`` runs any function there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from controller.kube.client import ClientConfig, KubeClient

from .core import NodeRuntime, SimPod
from .kubeapi import ApiNode
from .logs import STDERR, STDOUT, ContainerLog

__all__ = ["NodeSimulator", "load_client_config", "start_nodes"]

T = TypeVar("T")


def load_client_config(source: ClientConfig | str) -> ClientConfig:
    """A :class:`ClientConfig` from a kubeconfig file (tokens, token files, client certificates, CAs —
    inline or as files; other auth methods through the official loader)."""
    if isinstance(source, ClientConfig):
        return source
    import base64

    import yaml

    with open(source) as f:
        kc = yaml.safe_load(f) or {}
    ctx_name = kc.get("current-context")
    ctx = next((c.get("context") or {} for c in kc.get("contexts") or () if c.get("name") == ctx_name), None)
    if ctx is None:
        ctx = (kc.get("contexts") or [{}])[0].get("context") or {}
    cluster = next((c.get("cluster") or {} for c in kc.get("clusters") or () if c.get("name") == ctx.get("cluster")), {})
    user = next((u.get("user") or {} for u in kc.get("users") or () if u.get("name") == ctx.get("user")), {})
    if user.get("exec") or user.get("auth-provider") or user.get("username"):
        return ClientConfig.load(source)
    base = os.path.dirname(os.path.abspath(source))
    tmp: str | None = None

    def file_of(key: str) -> str | None:
        nonlocal tmp
        holder = cluster if key == "certificate-authority" else user
        if holder.get(key + "-data"):
            if tmp is None:
                tmp = tempfile.mkdtemp(prefix="nodesim-kc-")
                import atexit

                atexit.register(shutil.rmtree, tmp, True)
            path = os.path.join(tmp, key)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(base64.b64decode(holder[key + "-data"]))
            return path
        if holder.get(key):
            return os.path.join(base, str(holder[key]))
        return None

    token = user.get("token")
    token_file = os.path.join(base, user["tokenFile"]) if user.get("tokenFile") else None
    if token_file and not token:
        with open(token_file) as fh:
            token = fh.read().strip()
    return ClientConfig(
        server=str(cluster.get("server", "")).rstrip("/"),
        token=token,
        token_file=token_file,
        ca_file=file_of("certificate-authority"),
        cert_file=file_of("client-certificate"),
        key_file=file_of("client-key"),
        verify_ssl=not cluster.get("insecure-skip-tls-verify", False),
        default_namespace=str(ctx.get("namespace") or "default"),
    )


class NodeSimulator:
    """One or more :class:`~controller.nodesim.kubeapi.ApiNode` on a background thread.

    ``nodes`` maps node names to their credentials (a :class:`ClientConfig` or a kubeconfig path);
    or give one ``config`` and ``count`` (names ``<name_prefix>1..N``). ``kubelet_cert``/``kubelet_key``
    serve the kubelet API (self-signed when omitted), ``client_ca`` authenticates the API server's
    kubelet client certificate (any client when omitted). Every other keyword goes to each
    :class:`~controller.nodesim.kubeapi.ApiNode` and its :class:`~controller.nodesim.core.NodeRuntime`
    (``heartbeat_seconds``, ``max_pods``, ``labels``, ``container_log_max_size``, ``follow_at_rotation``,
    ``gc_after_exit``, ``restart_backoff``, ``local_processes``, ``workdir``, …).
    """

    def __init__(
        self,
        nodes: Mapping[str, ClientConfig | str] | None = None,
        *,
        config: ClientConfig | str | None = None,
        count: int = 1,
        name_prefix: str = "nodesim-",
        kubelet_cert: str | None = None,
        kubelet_key: str | None = None,
        client_ca: str | None = None,
        **node_options: Any,
    ) -> None:
        if nodes is None:
            if config is None:
                raise ValueError("NodeSimulator needs nodes={name: credentials} or config=")
            nodes = {f"{name_prefix}{i}": config for i in range(1, count + 1)}
        self._sources = dict(nodes)
        self._kubelet = (kubelet_cert, kubelet_key, client_ca)
        self._options = node_options
        self.nodes: dict[str, ApiNode] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._clients: list[KubeClient] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60.0) -> NodeSimulator:
        """Register every node, start its kubelet API and pod watch; returns when each has listed its pods."""
        if self._thread is not None:
            return self
        configs = {name: load_client_config(src) for name, src in self._sources.items()}
        started = threading.Event()
        error: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start_nodes(configs, timeout))
            except BaseException as e:  # noqa: BLE001
                error.append(e)
                started.set()
                loop.run_until_complete(self._stop_nodes())
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="nodesim", daemon=True)
        self._thread.start()
        started.wait(timeout + 30)
        if error:
            self._thread.join(10)
            self._thread = None
            raise RuntimeError(f"node simulator failed to start: {error[0]}") from error[0]
        return self

    async def _start_nodes(self, configs: Mapping[str, ClientConfig], timeout: float) -> None:
        cert, key, ca = self._kubelet
        for i, (name, cfg) in enumerate(configs.items(), start=1):
            client = KubeClient(cfg, retries=3, timeout=30.0)
            self._clients.append(client)
            node = ApiNode(name, client, cert_file=cert, key_file=key, client_ca=ca, index=i, **self._options)
            self.nodes[name] = node
            await node.start()
        await asyncio.wait_for(asyncio.gather(*(n.synced.wait() for n in self.nodes.values())), timeout)

    async def _stop_nodes(self) -> None:
        for node in self.nodes.values():
            try:
                await node.stop()
            except Exception:  # noqa: BLE001
                pass
        for c in self._clients:
            await c.close()

    def stop(self) -> None:
        """Stop every node: containers and local processes end, the kubelet ports close."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._stop_nodes(), loop).result(30)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
            self._thread = None
            self._loop = None

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ loop access

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the simulator's loop and return its result."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("NodeSimulator is not started")

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(60)

    def _await(self, coro: Any) -> Any:
        loop = self._loop
        if loop is None:
            raise RuntimeError("NodeSimulator is not started")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

    # ------------------------------------------------------------------ nodes

    @property
    def node_names(self) -> list[str]:
        return list(self.nodes)

    def add_node(self, name: str, credentials: ClientConfig | str, **options: Any) -> ApiNode:
        """Register one more node while running (``options`` override the simulator's node options),
        e.g. a node of its own for a test that loses it (pin the pod with ``spec.nodeName``, or taint
        the node and give the pod a toleration)."""
        if name in self.nodes:
            raise ValueError(f"node {name} exists")
        cfg = load_client_config(credentials)
        cert, key, ca = self._kubelet
        opts = {**self._options, **options}

        async def go() -> ApiNode:
            client = KubeClient(cfg, retries=3, timeout=30.0)
            self._clients.append(client)
            node = ApiNode(name, client, cert_file=cert, key_file=key, client_ca=ca, index=len(self.nodes) + 1, **opts)
            await node.start()
            self.nodes[name] = node
            await asyncio.wait_for(node.synced.wait(), 60)
            return node

        node: ApiNode = self._await(go())
        return node

    def remove_node(self, name: str, *, delete: bool = True) -> None:
        """Stop a node (its containers end); ``delete`` also deletes its Node object."""
        node = self.nodes.pop(name)

        async def go() -> None:
            await node.stop()
            if delete:
                from controller.kube.client import ApiError

                try:
                    await node.client.request("DELETE", f"/api/v1/nodes/{name}")
                except ApiError:
                    pass

        self._await(go())

    def kubelet_port(self, node: str) -> int:
        return self.nodes[node].server.port

    def lose_node(self, node: str) -> None:
        """Heartbeats stop, the kubelet port refuses connections, pod deletions never complete unless forced."""
        self._await(self.nodes[node].lose())

    def restore_node(self, node: str) -> None:
        self._await(self.nodes[node].restore())

    def lease_renewals(self, node: str) -> int:
        return self.call(lambda: self.nodes[node].lease_renewals)

    # ------------------------------------------------------------------ pods and containers

    def _find(self, ns: str, pod: str) -> tuple[ApiNode, SimPod]:
        for node in self.nodes.values():
            p = node.runtime.pods.get((ns, pod))
            if p is not None:
                return node, p
        raise KeyError(f'pod {ns}/{pod} is on none of the simulated nodes')

    def pod_node(self, ns: str, pod: str) -> str | None:
        """The simulated node the pod runs on (None when no node has it)."""

        def fn() -> str | None:
            try:
                return self._find(ns, pod)[0].node_name
            except KeyError:
                return None

        return self.call(fn)

    def exit(self, ns: str, pod: str, code: int, container: str | None = None) -> None:
        def fn() -> None:
            node, p = self._find(ns, pod)
            node.runtime.exit(p, code, container)

        self.call(fn)

    def evict(self, ns: str, pod: str, message: str | None = None) -> None:
        def fn() -> None:
            node, p = self._find(ns, pod)
            node.runtime.evict(p, message)

        self.call(fn)

    def gc_container(self, ns: str, pod: str, container: str | None = None) -> None:
        def fn() -> None:
            node, p = self._find(ns, pod)
            name = NodeRuntime._pick(pod, list(p.containers), container)
            node.runtime.gc_container(p, p.containers[name])

        self.call(fn)

    def append_log(self, ns: str, pod: str, container: str | None, data: bytes, stream: str = "stdout") -> None:
        def fn() -> None:
            node, p = self._find(ns, pod)
            name = NodeRuntime._pick(pod, list(p.containers), container)
            node.runtime.append_log(p, p.containers[name], bytes(data), STDERR if stream == "stderr" else STDOUT)

        self.call(fn)

    def _record(self, ns: str, pod: str, container: str | None, previous: bool,
                get: Callable[[ContainerLog], bytes]) -> bytes:
        def fn() -> bytes:
            err: Exception | None = None
            for node in self.nodes.values():
                try:
                    cur, prev = node.runtime.instances(ns, pod, container)
                except KeyError as e:
                    err = e
                    continue
                inst = prev if previous else cur
                return get(inst) if inst is not None else b""
            raise err or KeyError(pod)

        return self.call(fn)

    def served_log(self, ns: str, pod: str, container: str | None = None, previous: bool = False) -> bytes:
        """Everything the container instance logged (all rotated files and the current one)."""
        return self._record(ns, pod, container, previous, lambda i: i.content())

    def written_output(self, ns: str, pod: str, container: str | None = None, previous: bool = False,
                       stream: str | None = None) -> bytes:
        """The bytes the container wrote, in the order written (``stream``: only ``stdout`` or ``stderr``)."""
        if stream is None:
            return self._record(ns, pod, container, previous, lambda i: i.written_output())
        s = STDERR if stream == "stderr" else STDOUT
        return self._record(ns, pod, container, previous, lambda i: i.stream_output(s))

    def current_log(self, ns: str, pod: str, container: str | None = None, previous: bool = False) -> bytes:
        """The current log file only (what ``kubectl logs`` can still get after rotations)."""
        return self._record(ns, pod, container, previous, lambda i: i.current_file())

    def container_state(self, ns: str, pod: str, container: str | None = None) -> str:
        def fn() -> str:
            _, p = self._find(ns, pod)
            return p.containers[NodeRuntime._pick(pod, list(p.containers), container)].state

        return self.call(fn)

    @property
    def reports(self) -> list[dict[str, Any]]:
        """Every ``report`` step's request and answer."""
        return self.call(lambda: [r for n in self.nodes.values() for r in n.runtime.reports])


def start_nodes(cp: Any, count: int, *, name_prefix: str = "nodesim-", **options: Any) -> NodeSimulator:
    """``count`` simulated nodes on the control plane ``cp`` (controller.controlplane.ControlPlane):
    each with its own ``system:node:<name>`` credentials (Node authorizer, NodeRestriction), a kubelet
    serving certificate signed by the cluster CA (the API server verifies it) and the cluster CA to
    check the API server's kubelet client certificate. Returns the started simulator (``.stop()``;
    ``.add_node(name, cp.node_kubeconfig(name))`` for one more)."""
    cert, key = cp.issue_kubelet_serving_cert(f"{name_prefix}kubelet")
    nodes = {f"{name_prefix}{i}": str(cp.node_kubeconfig(f"{name_prefix}{i}")) for i in range(1, count + 1)}
    return NodeSimulator(nodes, kubelet_cert=str(cert), kubelet_key=str(key), client_ca=str(cp.ca_file),
                         **options).start()
