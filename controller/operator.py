"""Wires the pieces together and runs kopf: used by `agent-controller run`, the demo, tests and bench."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import kopf

from . import DEFAULT_ARCHIVE_DIR, GROUP, PLURAL, VERSION, api
from .archive import SHIP_TLS_DIR, Archive
from .health import HealthServer
from . import notice
from .kopfconfig import configure
from .kube.client import ApiError, ClientConfig, KubeClient
from .leader import LeaderElector
from .metrics import Metrics
from .podwatch import PodWatcher
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
    orphan_min_age: float | None = None      # default: one sweep interval
    kubeconfig: str | None = None
    context: str | None = None
    pod_security: str = "restricted"         # restricted | baseline | privileged
    leader_election: bool = False
    leader_election_namespace: str | None = None   # default: the controller's own namespace
    leader_election_id: str = "agent-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    listen_host: str = "0.0.0.0"
    force_delete_after: float = api.FORCE_DELETE_AFTER_GRACE_SECONDS
    clock: Callable[[], Any] = utcnow
    ship_port: int | None = None             # the endpoint agentctl run ships output to (None: not offered)
    ship_url: str | None = None              # its URL as pods reach it (default: https://127.0.0.1:PORT/v1/ship)
    ship_tls_dir: str | None = None          # its certificate (made there when missing; default: <archive>/.ship-tls)


def build_runtime(options: Options, config: ClientConfig | None = None) -> Runtime:
    config = config or ClientConfig.load(options.kubeconfig, options.context)
    return Runtime(
        client=KubeClient(config),
        archive=Archive(options.archive_dir),
        metrics=Metrics(),
        clock=options.clock,
        force_delete_after=options.force_delete_after,
        pod_security=options.pod_security,
        namespaces=tuple(options.namespaces),
    )


def build_elector(options: Options, rt: Runtime) -> LeaderElector | None:
    if not options.leader_election:
        return None
    namespace = options.leader_election_namespace or own_namespace(rt.client.config.default_namespace)
    # The elector has a client of its own: the controller's client is fenced by the elector's verdict.
    elector = LeaderElector(KubeClient(rt.client.config, retries=1, retry_budget=options.retry_period),
                            namespace, options.leader_election_id, lease_duration=options.lease_duration,
                            renew_deadline=options.renew_deadline, retry_period=options.retry_period)
    rt.fence = elector.valid
    rt.client.fence = elector.valid
    return elector


def own_namespace(default: str) -> str:
    """The namespace the controller runs in: POD_NAMESPACE (the chart sets it), else the service
    account's namespace file, else the kubeconfig's."""
    import os

    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    return default


async def _login(memo: Any, **_: Any) -> kopf.ConnectionInfo | kopf.AiohttpSession:
    """kopf's credentials are this operator's own client configuration (from its memo), so several
    controllers in one process (tests, bench) each talk to their own API server as their own user.
    kopf calls this again after a 401 and when the credentials expire: they are loaded again then
    (a rotated service-account token, an exec plugin's or OIDC token)."""
    cfg = memo.runtime.client.config
    logins = getattr(memo, "logins", 0)
    memo.logins = logins + 1
    if logins or cfg.expiring(time.time()):
        await cfg.refresh()
    if cfg.expires_at is not None:
        expiration = datetime.datetime.fromtimestamp(cfg.expires_at - 30, datetime.UTC)
    elif cfg.token_file:
        expiration = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    else:
        expiration = None
    if cfg.tls_server_name:
        # kopf has no setting for the name to check the server's certificate for: give it a session.
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ssl=cfg.ssl_context()),
                                        headers=cfg.auth_headers(), proxy=cfg.proxy_url)
        return kopf.AiohttpSession(aiohttp_session=session, server=cfg.server,
                                   default_namespace=cfg.default_namespace, expiration=expiration)
    return kopf.ConnectionInfo(
        server=cfg.server, token=cfg.current_token(), ca_path=cfg.ca_file, insecure=not cfg.verify_ssl,
        certificate_path=cfg.cert_file, private_key_path=cfg.key_file, proxy_url=cfg.proxy_url,
        default_namespace=cfg.default_namespace, expiration=expiration)


_login_registered: set[int] = set()


def _register_login(registry: kopf.OperatorRegistry) -> None:
    """Once per registry (a handler registered per run would pile up, and kopf keeps the last one's)."""
    if id(registry) not in _login_registered:
        _login_registered.add(id(registry))
        kopf.on.login(registry=registry)(_login)


def build_servers(options: Options, rt: Runtime, elector: LeaderElector | None = None) -> tuple[Sweeper, HealthServer]:
    sweeper = Sweeper(rt, interval=options.sweep_interval, timeout=options.sweep_timeout,
                      acting=(elector.valid if elector is not None else lambda: True),
                      orphan_min_age=options.orphan_min_age)
    health = HealthServer(rt, sweeper, host=options.listen_host, metrics_port=options.metrics_port,
                          health_port=options.health_port)
    return sweeper, health


class CrdMissing(OSError):
    """The API server does not serve Agents: the CRD is not installed."""


class LeaseLost(RuntimeError):
    """This replica lost its leader-election Lease: it stopped acting (the process should exit)."""


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


POD_CACHE_SYNC_TIMEOUT = 60.0
RECURSION_LIMIT = 25_000


async def run(options: Options, *, runtime: Runtime | None = None, sweeper: Sweeper | None = None,
              health: HealthServer | None = None, elector: LeaderElector | None = None,
              stop_flag: Any = None, ready_flag: Any = None,
              exit_after_lease_lost: float | None = None) -> None:
    """Run the controller until `stop_flag` is set (or forever). With leader election, wait for the
    Lease first (serving /healthz and /metrics meanwhile) and raise LeaseLost if it is lost.
    `exit_after_lease_lost` (the CLI's process only): once the Lease is lost, the process exits
    after at most this many seconds even if stopping hangs (a sync stuck on a request), as
    kube-controller-manager exits at once — a replica that lost its Lease and never exits would
    stand in nobody's way but also never stand by again."""
    from . import handlers

    # An Agent's podTemplate may be nested thousands of levels deep (the API server stores up to
    # ~10 000): kopf copies and compares bodies recursively, and Python's default limit (1 000) would
    # make it throttle on such an Agent forever instead of handing it over (decide() refuses it,
    # InvalidSpec). Python-to-Python recursion does not grow the C stack (3.11+).
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    rt = runtime or build_runtime(options)
    elector = elector if elector is not None else build_elector(options, rt)
    try:
        await require_crd(rt.client)
    except BaseException:
        await rt.client.close()
        raise
    if sweeper is None or health is None:
        sweeper, health = build_servers(options, rt, elector)
    watcher = PodWatcher(rt.client, rt.pods, rt.namespaces)
    rt.pods.on_change = lambda old, new: notice.pod_changed(rt, old, new)
    await health.start()
    shipping = None
    if options.ship_port is not None:
        from .ship import ShipServer

        tls_dir = options.ship_tls_dir or os.path.join(options.archive_dir, SHIP_TLS_DIR)
        shipping = ShipServer(rt, options.listen_host, options.ship_port, tls_dir, options.ship_url)
        await shipping.start()
    lost = asyncio.Event()
    try:
        if elector is not None:
            await elector.acquire(on_standby=(ready_flag.set if ready_flag is not None else None))

            async def hold() -> None:
                await elector.hold()
                lost.set()
                if exit_after_lease_lost is not None:
                    _exit_unless_stopped_within(exit_after_lease_lost)
                if stop_flag is not None:
                    stop_flag.set()
            rt.spawn("leader-election", hold())

        async def on_startup(_: Runtime) -> None:
            watcher.start()
            try:
                await asyncio.wait_for(rt.pods.synced.wait(), POD_CACHE_SYNC_TIMEOUT)
            except TimeoutError:
                log.warning("the pod watch has not listed the managed pods yet: starting without it")
            rt.queue.start()
            sweeper.start()
            rt.spawn("memory", rt.release_memory_periodically())

        async def on_shutdown(_: Runtime) -> None:
            await rt.queue.stop()       # in-flight syncs: idempotent, the next start resumes them
            await sweeper.stop()
            await watcher.stop()
            await rt.cancel_tasks()
            await health.stop()

        memo = kopf.Memo(runtime=rt, on_startup=on_startup, on_shutdown=on_shutdown, sweeper=sweeper, health=health)
        _register_login(handlers.registry)
        settings = kopf.OperatorSettings()
        configure(settings)
        stop = stop_flag
        if elector is not None and stop is None:
            stop = asyncio.Event()
            lost_watch = asyncio.ensure_future(lost.wait())
            lost_watch.add_done_callback(lambda _: stop.set())
        await kopf.operator(
            registry=handlers.registry,
            settings=settings,
            memo=memo,
            clusterwide=not options.namespaces,
            namespaces=options.namespaces,
            standalone=True,
            stop_flag=stop,
            ready_flag=ready_flag,
        )
    finally:
        await rt.queue.stop()
        await rt.cancel_tasks()
        if elector is not None:
            if not lost.is_set():
                await elector.release()
            await elector.client.close()
        await health.stop()
        if shipping is not None:
            await shipping.stop()
        await rt.client.close()
    if lost.is_set():
        raise LeaseLost(f"lost the leader-election lease {elector.namespace}/{elector.name}"  # type: ignore[union-attr]
                        " and stopped; exiting so that a new process stands by")


def _exit_unless_stopped_within(seconds: float) -> None:
    """A watchdog thread: the process exits (status 1) in `seconds` unless it has by then."""
    def expire() -> None:
        log.error("leader election: the lease is lost and stopping took over %.0fs: exiting now", seconds)
        logging.shutdown()
        os._exit(1)
    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


class BackgroundController:
    """The real controller in a thread with its own event loop (tests, demo, bench)."""

    def __init__(self, options: Options, config: ClientConfig | None = None):
        self.options = options
        self.runtime = build_runtime(options, config)
        self.elector = build_elector(options, self.runtime)
        self.sweeper, self.health = build_servers(options, self.runtime, self.elector)
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
                      elector=self.elector, stop_flag=self._stop, ready_flag=ready)
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

    def sweep(self, timeout: float = 120.0, wait_reaps: bool = True) -> Any:
        """Run one sweep now, on the controller's loop; returns its report (None if it failed). With
        `wait_reaps`, once the reaps it started have finished too (their counts are in the report)."""
        async def once() -> Any:
            report = await self.sweeper.run_once()
            if wait_reaps:
                await self.sweeper.reaps_settled()
            return report
        return self.call(once, timeout)

    def call(self, coro_factory: Callable[[], Any], timeout: float = 60.0) -> Any:
        """Run a coroutine on the controller's loop (e.g. a sweep) and wait for its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro_factory(), self._loop).result(timeout)

    def __enter__(self) -> BackgroundController:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
