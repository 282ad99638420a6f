"""A reverse proxy in front of an API server that counts requests and injects faults.

The controller under test is pointed at ``http://127.0.0.1:<port>`` (:attr:`ApiProxy.url`); the
proxy forwards every request, streams too (watches, logs), to the upstream server over TLS. The
caller's ``Authorization`` header is passed through, so the controller keeps its own identity
(its ServiceAccount, under the chart's RBAC); a request without one is sent with the upstream
config's token (the bench's controller, whose kubeconfig has no credentials).

It gives a real API server what the emulator has built in:

- :attr:`ApiProxy.faults` — the emulator's fault API (controller/devcluster/faults.py): errors
  with a ``Status`` body (429/503 with ``Retry-After``), held or slowed requests, and streams cut
  mid-body (``cut_after``: the connection is dropped after that many bytes of the body, as a
  broken watch or log stream is);
- :attr:`ApiProxy.requests` — a ``Counter`` of ``(verb, resource)``, and ``on_request(verb,
  resource, namespace, name, user)`` hooks, the same signature as the emulator's.

``classify`` names a request as the API server's request-info resolver does ("list" vs "get",
"watch", "agents/status", "pods/log").
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from controller.devcluster.faults import Fault, Faults
from controller.kube.client import ClientConfig

Hook = Callable[[str, str, str, str, str], None]
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length"}


def classify(method: str, path: str, query: Any) -> tuple[str, str, str, str]:
    """(verb, resource[/sub], namespace, name) of a Kubernetes API request."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in ("api", "apis"):
        return method.lower(), "", "", ""
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    watch = False
    if rest and rest[0] == "watch":
        watch, rest = True, rest[1:]
    ns = ""
    if len(rest) >= 2 and rest[0] == "namespaces" and len(rest) != 2:
        ns, rest = rest[1], rest[2:]
    elif len(rest) == 2 and rest[0] == "namespaces":
        return _verb(method, True, watch, query), "namespaces", "", rest[1]
    resource = rest[0] if rest else ""
    name = rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource += "/" + rest[2]
    return _verb(method, bool(name), watch, query), resource, ns, name


def _verb(method: str, named: bool, watch: bool, query: Any) -> str:
    m = method.upper()
    if m == "GET":
        if watch or str(query.get("watch", "")).lower() in ("true", "1"):
            return "watch"
        return "get" if named else "list"
    return {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection"}.get(m, m.lower())


class ApiProxy:
    """Runs in its own thread and event loop (independent of whoever drives the test or bench)."""

    def __init__(self, upstream: ClientConfig, on_request: Hook | None = None, user: str = "agent-controller",
                 faults: Faults | None = None):
        self.upstream = upstream
        self.hooks: list[Hook] = [on_request] if on_request else []
        self.user = user
        self.faults = faults if faults is not None else Faults()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.cut = 0                       # streams cut by a cut_after fault
        self.outages = 0
        self._down_until = 0.0
        self._open: set[Any] = set()       # transports of the requests in flight
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self.error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ApiProxy:
        self._thread = threading.Thread(target=self._main, name="api-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error:
            raise RuntimeError(f"API proxy did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self.faults.clear()
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def outage(self, seconds: float) -> None:
        """The API server goes away for ``seconds`` (as when it restarts): every request and
        stream in flight is dropped, and new connections are dropped at once until then."""
        def drop() -> None:
            self._down_until = asyncio.get_running_loop().time() + seconds
            self.outages += 1
            for transport in list(self._open):
                transport.abort()
        assert self._loop is not None
        self._loop.call_soon_threadsafe(drop)

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        # No connection limit: the controller holds one follow stream per running agent (live log
        # capture) besides its watches; a pool of 256 made every other request wait for a
        # connection once ~250 agents ran (they timed out after 60 s).
        self._session = aiohttp.ClientSession(
            self.upstream.server, connector=aiohttp.TCPConnector(ssl=self.upstream.ssl_context(), limit=0),
            auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        transport = request.transport
        if transport is None:
            return web.Response(status=503)
        if asyncio.get_running_loop().time() < self._down_until:
            transport.abort()
            return web.Response(status=503)
        self._open.add(transport)
        try:
            return await self._forward(request)
        finally:
            self._open.discard(transport)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        verb, resource, ns, name = classify(request.method, request.path, request.query)
        fault: Fault | None = None
        if resource:
            self.requests[(verb, resource)] += 1
            for hook in self.hooks:
                hook(verb, resource, ns, name, self.user)
            fault = self.faults.take(verb, resource, ns, name)
        if fault is not None:
            await fault.wait()
            if fault.status is not None:
                code, reason, _, _, extra = fault.answer()
                return web.Response(status=code, text=json.dumps(fault.status_body()),
                                    content_type="application/json", headers=extra)
        assert self._session is not None
        try:
            body = await request.read()
        except ConnectionResetError:       # the caller went away (killed) while sending its body
            return web.Response(status=499)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        if "Authorization" not in request.headers and self.upstream.token:
            headers["Authorization"] = f"Bearer {self.upstream.token}"
        try:
            upstream = await self._session.request(
                request.method, request.path, params=request.query,
                data=body or None, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        except (aiohttp.ClientConnectionError, OSError):
            # The API server is not there (restarting): the caller's connection fails as it would.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers[k] = v
            budget = fault.cut_after if fault is not None and fault.cut_after is not None else None
            try:
                await resp.prepare(request)
                async for chunk in upstream.content.iter_any():
                    if budget is not None and len(chunk) >= budget:
                        await resp.write(chunk[:budget])
                        self.cut += 1
                        if request.transport is not None:
                            request.transport.abort()    # no final chunk: the client sees a broken body
                        return resp
                    if budget is not None:
                        budget -= len(chunk)
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, aiohttp.ClientPayloadError):
                pass    # the caller hung up (a watch or log stream it no longer needs)
            return resp
        finally:
            upstream.release()
