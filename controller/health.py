"""HTTP endpoints: `/metrics` on the metrics port, `/healthz` on the health port.

/healthz is 200 while the controller is healthy and 503 once no sweep has succeeded for three
sweep intervals (a hung API, a dead sweep loop).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from .runtime import Runtime

if TYPE_CHECKING:
    from .sweep import Sweeper


class HealthServer:
    def __init__(self, rt: Runtime, sweeper: Sweeper, host: str = "0.0.0.0", metrics_port: int = 9102,
                 health_port: int = 8081):
        self.rt = rt
        self.sweeper = sweeper
        self.host = host
        self.metrics_port = metrics_port
        self.health_port = health_port
        self._runners: list[web.AppRunner] = []

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=self.rt.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        now = time.time()
        ok = self.sweeper.healthy(now)
        body = {
            "status": "ok" if ok else "unhealthy",
            "lastSweepSuccess": self.sweeper.last_success,
            "secondsSinceLastSweepSuccess": None if self.sweeper.last_success is None
            else round(now - self.sweeper.last_success, 3),
            "sweepInterval": self.sweeper.interval,
            "lastSweepError": self.sweeper.last_error,
        }
        return web.json_response(body, status=200 if ok else 503)

    async def _serve(self, port: int, routes: list[web.RouteDef]) -> int:
        app = web.Application()
        app.add_routes(routes)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, port)
        await site.start()
        self._runners.append(runner)
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        return int(sockets[0].getsockname()[1]) if sockets else port

    async def start(self) -> None:
        if self.metrics_port == self.health_port and self.metrics_port != 0:
            self.metrics_port = self.health_port = await self._serve(
                self.metrics_port, [web.get("/metrics", self._metrics), web.get("/healthz", self._healthz)])
            return
        self.metrics_port = await self._serve(self.metrics_port, [web.get("/metrics", self._metrics)])
        self.health_port = await self._serve(self.health_port, [web.get("/healthz", self._healthz)])

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
