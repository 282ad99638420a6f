"""Wires the pieces together and runs kopf: used by `agent-controller run`, the demo, tests and bench."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from . import DEFAULT_ARCHIVE_DIR, GROUP, PLURAL, VERSION
from .archive import Archive
from .health import HealthServer
from .kube.client import ApiError, ClientConfig, KubeClient
from .metrics import Metrics
from .peering import Peering
from .runtime import Runtime, utcnow
from .sweep import Sweeper

log = logging.getLogger(__name__)



@dataclass
class Options:
    namespaces: list[str] = field(default_factory=list)   # empty: all namespaces
    archive_dir: str = DEFAULT_ARCHIVE_DIR
    metrics_port: int = 9102
    health_port: int = 8081
    sweep_interval: float = 60.0
    sweep_timeout: float | None = None       # default: 30 s
    kubeconfig: str | None = None
    context: str | None = None
    peering: str | None = None               # kopf peering name; None = standalone
    listen_host: str = "0.0.0.0"
    force_delete_after: float = 30.0
    clock: Callable[[], Any] = utcnow


def build_runtime(options: Options, config: ClientConfig | None = None) -> Runtime:
    config = config or ClientConfig.load(options.kubeconfig, options.context)
    return Runtime(
        client=KubeClient(config),
        archive=Archive(options.archive_dir),
        metrics=Metrics(),
        clock=options.clock,
        force_delete_after=options.force_delete_after,
        namespaces=tuple(options.namespaces),
    )


def _login(memo: Any, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials are this operator's own client configuration (from its memo), so several
    controllers in one process (tests, bench) each talk to their own API server as their own user.
    kopf calls this again after a 401: a rotated service-account token is picked up."""
    cfg = memo.runtime.client.config
    return kopf.ConnectionInfo(
        server=cfg.server, token=cfg.current_token(), ca_path=cfg.ca_file, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file,
        default_namespace=cfg.default_namespace, expiration=None)


_login_registered: set[int] = set()


def _register_login(registry: kopf.OperatorRegistry) -> None:
    """Once per registry (a handler registered per run would pile up, and kopf keeps the last one's)."""
    if id(registry) not in _login_registered:
        _login_registered.add(id(registry))
        kopf.on.login(registry=registry)(_login)


def build_servers(options: Options, rt: Runtime) -> tuple[Sweeper, HealthServer]:
    peering = None
    if options.peering:
        peering = Peering(options.peering, options.namespaces[0] if options.namespaces else None)
    rt.peering = peering
    sweeper = Sweeper(rt, interval=options.sweep_interval, timeout=options.sweep_timeout, peering=peering)
    health = HealthServer(rt, sweeper, host=options.listen_host, metrics_port=options.metrics_port,
                          health_port=options.health_port)
    return sweeper, health


class CrdMissing(OSError):
    """The API server does not serve Agents: the CRD is not installed."""


async def require_crd(client: KubeClient) -> None:
    """Refuse to start without the Agent CRD: kopf would otherwise run and serve nothing (its dynamic
    discovery of CRDs created later needs cluster-wide CRD access, which the role does not grant)."""
    try:
        found = await client.request("GET", f"/apis/{GROUP}/{VERSION}")
    except ApiError as exc:
        if exc.status != 404:
            raise
        found = {}
    if not any(r.get("name") == PLURAL for r in found.get("resources") or []):
        raise CrdMissing(f"the API server does not serve {PLURAL}.{GROUP}/{VERSION}: install the CRD first "
                         "(kubectl apply -f manifests/crd.yaml, or the Helm chart)")


async def run(options: Options, *, runtime: Runtime | None = None, sweeper: Sweeper | None = None,
              health: HealthServer | None = None, stop_flag: Any = None, ready_flag: Any = None) -> None:
    """Run the controller until `stop_flag` is set (or forever)."""
    from . import handlers

    rt = runtime or build_runtime(options)
    try:
        await require_crd(rt.client)
    except BaseException:
        await rt.client.close()
        raise
    if sweeper is None or health is None:
        sweeper, health = build_servers(options, rt)

    async def on_startup(_: Runtime) -> None:
        await health.start()
        sweeper.start()
        rt.spawn("memory", rt.release_memory_periodically())

    async def on_shutdown(_: Runtime) -> None:
        await rt.cancel_tasks()     # background cleanups: idempotent, the next start resumes them
        await sweeper.stop()
        await health.stop()
        await rt.client.close()

    memo = kopf.Memo(runtime=rt, on_startup=on_startup, on_shutdown=on_shutdown, sweeper=sweeper, health=health)

    _register_login(handlers.registry)
    settings = kopf.OperatorSettings()
    handlers.configure(settings)
    await kopf.operator(
        registry=handlers.registry,
        settings=settings,
        memo=memo,
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        standalone=options.peering is None,
        peering_name=options.peering,
        # Peers of equal priority all pause: each replica has its own random priority, and the
        # sweep uses the same identity and priority to know whether it is the active replica.
        identity=cast(Any, sweeper.peering.identity) if sweeper.peering else None,
        priority=sweeper.peering.priority if sweeper.peering else 0,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


class BackgroundController:
    """The real controller in a thread with its own event loop (tests, demo, bench)."""

    def __init__(self, options: Options, config: ClientConfig | None = None):
        self.options = options
        self.runtime = build_runtime(options, config)
        self.sweeper, self.health = build_servers(options, self.runtime)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> BackgroundController:
        self._thread = threading.Thread(target=self._main, name="agent-controller", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"controller did not start: {self.error!r}")
        if self.error:
            raise RuntimeError(f"controller failed to start: {self.error!r}")
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._amain())
        except BaseException as exc:
            self.error = exc
            log.exception("controller crashed")
        finally:
            self._ready.set()
            loop.close()

    async def _amain(self) -> None:
        self._stop = asyncio.Event()
        ready = asyncio.Event()

        async def mark_ready() -> None:
            await ready.wait()
            self._ready.set()

        marker = asyncio.create_task(mark_ready())
        try:
            await run(self.options, runtime=self.runtime, sweeper=self.sweeper, health=self.health,
                      stop_flag=self._stop, ready_flag=ready)
        finally:
            marker.cancel()

    def stop(self, timeout: float = 30.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.health.metrics_port}/metrics"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.health.health_port}/healthz"

    def sweep(self, timeout: float = 120.0) -> Any:
        """Run one sweep now, on the controller's loop; returns its report (None if it failed)."""
        return self.call(self.sweeper.run_once, timeout)

    def call(self, coro_factory: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the controller's loop (e.g. a sweep) and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(timeout)

    def __enter__(self) -> BackgroundController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
