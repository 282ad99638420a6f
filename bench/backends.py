"""Where the bench runs: the in-process API emulator (default) or any cluster (``--kubeconfig``).

Both backends offer the same operations to the scenarios (create agents, end them by status report
or by pod, observe) and feed the same `Recorder`:

- emulator: exact server-side time stamps — store listeners on Agents and Pods (the commit of a
  terminal phase, of a pod's exit, of `verifiedNoLeaks`) and the `DevCluster.on_request` hook for
  the controller's pod DELETEs and its request counts (by the controller's own user);
- cluster: watches on Agents and Pods in the bench namespace (receipt time), trigger times taken
  when the bench's request returned, and a counting proxy in front of the API server for the
  controller's requests and pod DELETE times.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from controller.names import MANAGED_SELECTOR, credentials_name

from .client import MERGE, Client, HttpError, agents_path

ROOT = Path(__file__).resolve().parent.parent
CRD_FILE = ROOT / "manifests" / "crd.yaml"
CONTROLLER_USER = "agent-controller"
TERMINAL = frozenset({"Completed", "Failed", "Error", "Terminated"})


class Recorder:
    """Time stamps (time.monotonic) of one scenario, keyed by agent name (= pod name here).

    Written from the emulator's thread or the proxy's thread, read by the bench: plain dict/Counter
    updates, atomic under the GIL.
    """

    def __init__(self, namespace: str, precise: bool):
        self.namespace = namespace
        self.precise = precise               # server-side commit times (emulator) vs receipt times
        self.phase: dict[str, str] = {}
        self.path: dict[str, str] = {}       # "report" | "pod"
        self.triggered: dict[str, float] = {}     # the bench issued/finished the terminal transition
        self.terminal: dict[str, float] = {}      # the Agent's phase became terminal
        self.pod_finished: dict[str, float] = {}  # the pod's phase became Succeeded/Failed
        self.pod_delete: dict[str, float] = {}    # the controller's first DELETE of the pod
        self.verified: dict[str, float] = {}      # status.cleanup.verifiedNoLeaks became true
        self.requests: Counter[tuple[str, str]] = Counter()   # the controller's, by (verb, resource)
        self.request_total = 0
        self.last_request = time.monotonic()

    # ---- feeds
    def on_request(self, verb: str, resource: str, ns: str, name: str, user: str) -> None:
        if user != CONTROLLER_USER:
            return
        now = time.monotonic()
        self.requests[(verb, resource)] += 1
        self.request_total += 1
        self.last_request = now
        if verb == "delete" and resource == "pods" and ns == self.namespace:
            self.pod_delete.setdefault(name, now)

    def on_agent(self, name: str, obj: dict[str, Any], now: float) -> None:
        status = obj.get("status") or {}
        phase = status.get("phase") or ""
        self.phase[name] = phase
        if phase in TERMINAL and name not in self.terminal:
            self.terminal[name] = now
        if (status.get("cleanup") or {}).get("verifiedNoLeaks") and name not in self.verified:
            self.verified[name] = now

    def on_pod(self, name: str, obj: dict[str, Any], deleted: bool, now: float) -> None:
        phase = (obj.get("status") or {}).get("phase")
        if phase in ("Succeeded", "Failed") and name not in self.pod_finished:
            self.pod_finished[name] = now

    # ---- reading
    def start_of(self, name: str) -> float | None:
        """When this agent turned terminal: the commit of its report / of its pod's exit (emulator),
        else when the bench's trigger request returned."""
        if self.precise:
            source = self.terminal if self.path.get(name) == "report" else self.pod_finished
            t = source.get(name)
            if t is not None:
                return t
        return self.triggered.get(name)

    def snapshot(self) -> Counter[tuple[str, str]]:
        return Counter(self.requests)


class Backend:
    name = "?"
    pod_path_label = "?"

    def __init__(self) -> None:
        self.recorder: Recorder | None = None
        self.client: Client | None = None
        self.machine_note = ""

    async def setup(self, workdir: Path) -> None: ...
    async def teardown(self) -> None: ...
    def controller_kubeconfig(self, namespace: str) -> str: raise NotImplementedError
    def agent_spec(self, index: int) -> dict[str, Any]: raise NotImplementedError
    async def observe(self, recorder: Recorder) -> None: self.recorder = recorder
    async def unobserve(self) -> None: self.recorder = None
    async def end_by_pod(self, ns: str, names: list[str]) -> None: raise NotImplementedError
    async def report_tokens(self, ns: str, names: list[str]) -> dict[str, str]: return {}

    async def create_namespace(self, prefix: str) -> str:
        assert self.client is not None
        ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
        await self.client.call("POST", "/api/v1/namespaces",
                               {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns,
                                "labels": {"app.kubernetes.io/part-of": "agent-controller-bench"}}})
        return ns

    async def delete_namespace(self, ns: str, wait: float = 0.0) -> None:
        assert self.client is not None
        try:
            await self.client.call("DELETE", f"/api/v1/namespaces/{ns}")
        except HttpError as exc:
            if exc.status != 404:
                raise
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                await self.client.call("GET", f"/api/v1/namespaces/{ns}")
            except HttpError as exc:
                if exc.status == 404:
                    return
            await asyncio.sleep(1.0)

    async def count_managed(self, ns: str) -> int:
        """How many objects the sweep of `ns` looks at: every managed kind, by the managed-by label."""
        assert self.client is not None
        paths = ["/api/v1/namespaces/{ns}/pods", "/api/v1/namespaces/{ns}/configmaps",
                 "/api/v1/namespaces/{ns}/serviceaccounts",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
                 "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"]
        lists = await asyncio.gather(*(self.client.call("GET", p.format(ns=ns), params={
            "labelSelector": MANAGED_SELECTOR}) for p in paths))
        return sum(len(x.get("items") or []) for x in lists)

    async def create_agent(self, ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.client is not None
        body = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                "metadata": {"name": name, "namespace": ns}, "spec": spec}
        return await self.client.call("POST", agents_path(ns), body)

    async def report(self, ns: str, name: str, token: str | None, phase: str = "Completed") -> None:
        """What the agent does (`agentctl report --phase Completed`): a merge-patch of its status."""
        assert self.client is not None
        await self.client.call("PATCH", agents_path(ns, name, "status"),
                               {"status": {"phase": phase, "progress": 100, "message": "bench: done"}},
                               ctype=MERGE, token=token)


# ------------------------------------------------------------------ emulator


class EmulatorBackend(Backend):
    """`controller.devcluster.DevCluster` in this process; the controller in its own process."""

    name = "emulator"
    pod_path_label = "pod exit (simulated kubelet)"

    def __init__(self) -> None:
        super().__init__()
        self.cluster: Any = None
        self.workdir: Path | None = None

    async def setup(self, workdir: Path) -> None:
        from controller.devcluster import DevCluster

        self.workdir = workdir
        cluster = DevCluster()
        cluster.start()
        cluster.apply_file(str(CRD_FILE))
        cluster.add_user(CONTROLLER_USER, ["system:masters"])
        self.cluster = cluster
        self.client = Client(cluster.url, cluster.admin_token)

        def install() -> None:
            cluster.store.add_listener(("agentcontroller.dev", "agents"), self._agent_event)
            cluster.store.add_listener(("", "pods"), self._pod_event)

        cluster.run(install)
        cluster.on_request = self._request

    # hooks (on the emulator's loop: keep them cheap)
    def _request(self, verb: str, resource: str, ns: str, name: str, user: str) -> None:
        rec = self.recorder
        if rec is not None:
            rec.on_request(verb, resource, ns, name, user)

    def _agent_event(self, bucket: Any, ev: Any) -> None:
        rec = self.recorder
        if rec is not None and ev.ns == rec.namespace and ev.type != "DELETED":
            rec.on_agent(ev.name, ev.entry.obj, time.monotonic())

    def _pod_event(self, bucket: Any, ev: Any) -> None:
        rec = self.recorder
        if rec is not None and ev.ns == rec.namespace:
            rec.on_pod(ev.name, ev.entry.obj, ev.type == "DELETED", time.monotonic())

    async def teardown(self) -> None:
        if self.client is not None:
            await self.client.close()
        if self.cluster is not None:
            self.cluster.on_request = None
            self.cluster.stop()

    def controller_kubeconfig(self, namespace: str) -> str:
        assert self.workdir is not None
        path = str(self.workdir / f"kubeconfig-{namespace}")
        return str(self.cluster.kubeconfig_path(path, user=CONTROLLER_USER, namespace=namespace, tls=False))

    def agent_spec(self, index: int) -> dict[str, Any]:
        script = {"steps": [{"log": f"bench agent {index} started\n"}],
                  "onTerm": [{"log": "SIGTERM: flushing\n"}, {"exit": 0}]}
        return {"image": "bench/agent:1", "prompt": f"bench prompt {index}",
                "env": [{"name": "DEVCLUSTER_SCRIPT", "value": json.dumps(script)}]}

    async def report_tokens(self, ns: str, names: list[str]) -> dict[str, str]:
        """The agents' own service-account tokens: the report goes through RBAC as the agent's would."""
        cluster = self.cluster
        return await asyncio.to_thread(
            lambda: {n: cluster.service_account_token(ns, credentials_name(n)) for n in names})

    async def end_by_pod(self, ns: str, names: list[str]) -> None:
        """The agents' processes exit 0 (the simulated kubelet), all in one go on the emulator's loop."""
        kubelet = self.cluster.kubelet
        rec = self.recorder

        def exit_all() -> None:
            for n in names:
                if rec is not None:
                    rec.triggered[n] = time.monotonic()
                kubelet.exit(ns, n, 0)   # on the loop thread: runs inline

        await asyncio.to_thread(self.cluster.run, exit_all)


# ------------------------------------------------------------------ real cluster


class ClusterBackend(Backend):
    """Any cluster from a kubeconfig. Pods are real: a small image, ended by `spec.terminate`."""

    name = "cluster"
    pod_path_label = "spec.terminate"

    def __init__(self, kubeconfig: str, image: str, context: str | None = None):
        super().__init__()
        self.kubeconfig = kubeconfig
        self.context = context
        self.image = image
        self.proxy: Any = None
        self.workdir: Path | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._crd_created = False

    async def setup(self, workdir: Path) -> None:
        from controller.kube.client import ClientConfig

        from controller.controlplane.proxy import ApiProxy

        self.workdir = workdir
        cfg = ClientConfig.load(self.kubeconfig, self.context)
        self.client = Client(cfg.server, cfg.token, cfg.ssl_context())
        try:
            await self.client.call("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                          "agents.agentcontroller.dev")
        except HttpError as exc:
            if exc.status != 404:
                raise
            import yaml

            crd = yaml.safe_load(CRD_FILE.read_text())
            await self.client.call("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
            self._crd_created = True
            await asyncio.sleep(3.0)   # let the API server start serving it
        self.proxy = ApiProxy(cfg, self._request, user=CONTROLLER_USER).start()

    def _request(self, verb: str, resource: str, ns: str, name: str, user: str) -> None:
        rec = self.recorder
        if rec is not None:
            rec.on_request(verb, resource, ns, name, user)

    async def teardown(self) -> None:
        await self.unobserve()
        if self.proxy is not None:
            self.proxy.stop()
        if self.client is not None:
            if self._crd_created:
                try:
                    await self.client.call("DELETE", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
                                                     "agents.agentcontroller.dev")
                except HttpError:
                    pass
            await self.client.close()

    def controller_kubeconfig(self, namespace: str) -> str:
        assert self.workdir is not None
        path = self.workdir / f"kubeconfig-{namespace}"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "bench",
            "clusters": [{"name": "bench", "cluster": {"server": self.proxy.url}}],
            "users": [{"name": CONTROLLER_USER, "user": {}}],
            "contexts": [{"name": "bench", "context": {"cluster": "bench", "user": CONTROLLER_USER,
                                                        "namespace": namespace}}],
        }))
        return str(path)

    def agent_spec(self, index: int) -> dict[str, Any]:
        return {"image": self.image, "prompt": f"bench prompt {index}",
                "command": ["sh", "-c", (f"echo bench agent {index} started; "
                                         "trap 'echo SIGTERM: flushing; exit 0' TERM; sleep 86400 & wait")],
                "resources": {"requests": {"cpu": "5m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
                "podTemplate": {"spec": {"securityContext": {"runAsUser": 65534, "runAsGroup": 65534}}}}

    async def observe(self, recorder: Recorder) -> None:
        await self.unobserve()
        self.recorder = recorder
        assert self.client is not None
        self._stop = asyncio.Event()
        ns = recorder.namespace

        def agent(etype: str, obj: dict[str, Any]) -> None:
            if etype != "DELETED":
                recorder.on_agent(obj["metadata"]["name"], obj, time.monotonic())

        def pod(etype: str, obj: dict[str, Any]) -> None:
            recorder.on_pod(obj["metadata"]["name"], obj, etype == "DELETED", time.monotonic())

        self._tasks = [asyncio.create_task(self.client.watch(agents_path(ns), agent, stop=self._stop)),
                       asyncio.create_task(self.client.watch(f"/api/v1/namespaces/{ns}/pods", pod,
                                                             stop=self._stop))]

    async def unobserve(self) -> None:
        if self._stop is not None:
            self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.recorder = None

    async def end_by_pod(self, ns: str, names: list[str]) -> None:
        """`agentctl kill`: spec.terminate = true (the controller stops the real pod)."""
        assert self.client is not None
        rec = self.recorder

        async def one(n: str) -> None:
            await self.client.call("PATCH", agents_path(ns, n), {"spec": {"terminate": True}},  # type: ignore[union-attr]
                                   ctype=MERGE)
            if rec is not None:
                rec.triggered[n] = time.monotonic()

        await asyncio.gather(*(one(n) for n in names))


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="agent-controller-bench-"))


def machine_info() -> dict[str, Any]:
    import platform

    import psutil

    info: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }
    for pkg in ("kopf", "aiohttp"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[pkg] = version(pkg)
    info["git"] = _git()
    info["calibration_ms_start"] = calibration_ms()
    return info


def calibration_ms() -> float:
    """A fixed single-core workload (JSON of a pod-sized object, 5 000 times), timed: how fast this
    machine is at the moment. Shared and virtual machines vary from run to run; compare results with it."""
    import time

    pod = {"metadata": {"name": "p" * 20, "labels": {f"k{i}": "v" * 20 for i in range(6)}},
           "spec": {"containers": [{"name": "agent", "image": "i" * 30, "env": [{"name": f"E{i}", "value": "x" * 40}
                                                                                for i in range(10)]}]},
           "status": {"conditions": [{"type": f"T{i}", "status": "True", "lastTransitionTime": "t" * 20}
                                     for i in range(5)]}}
    began = time.perf_counter()
    for _ in range(5000):
        json.loads(json.dumps(pod))
    return round((time.perf_counter() - began) * 1000, 1)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()


def _git() -> str:
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=5, check=False).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=5, check=False).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""

