"""A counting reverse proxy between the controller and a real API server (``--kubeconfig`` runs).

The controller under test gets a kubeconfig pointing at ``http://127.0.0.1:<port>`` without
credentials; the proxy forwards every request (streams too: watches, logs) to the real server with
the credentials of the given kubeconfig, and reports each one as ``on_request(verb, resource,
namespace, name, user)`` — the same signature as the emulator's ``DevCluster.on_request`` hook, so
API cost and pod-DELETE times are measured the same way on both backends.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import aiohttp
from aiohttp import web

from controller.kube.client import ClientConfig

Hook = Callable[[str, str, str, str, str], None]
_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "authorization"}


def classify(method: str, path: str, query: Any) -> tuple[str, str, str, str]:
    """(verb, resource[/sub], namespace, name) of a Kubernetes API request, as the API server's
    request-info resolver names them ("list" vs "get", "watch", "agents/status", "pods/log")."""
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


class CountingProxy:
    """Runs in its own thread and event loop (independent of the bench's driver)."""

    def __init__(self, upstream: ClientConfig, on_request: Hook, user: str = "agent-controller"):
        self.upstream = upstream
        self.on_request = on_request
        self.user = user
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

    def start(self) -> CountingProxy:
        self._thread = threading.Thread(target=self._main, name="bench-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(30) or self.error:
            raise RuntimeError(f"counting proxy did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._amain())
        except BaseException as exc:  # noqa: BLE001
            self.error = exc
            self._ready.set()

    async def _amain(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        headers = {"Authorization": f"Bearer {self.upstream.token}"} if self.upstream.token else {}
        # No connection limit: the controller holds one follow stream per running agent (live log
        # capture) besides its watches; a pool of 256 made every other request wait for a
        # connection once ~250 agents ran (they timed out after 60 s).
        self._session = aiohttp.ClientSession(
            self.upstream.server, headers=headers,
            connector=aiohttp.TCPConnector(ssl=self.upstream.ssl_context(), limit=0),
            auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        verb, resource, ns, name = classify(request.method, request.path, request.query)
        if resource:
            self.on_request(verb, resource, ns, name, self.user)
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream = await self._session.request(
            request.method, request.path, params=request.query,
            data=body or None, headers=headers, timeout=aiohttp.ClientTimeout(total=None, sock_connect=30))
        try:
            resp = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in _HOP:
                    resp.headers[k] = v
            await resp.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
                await resp.write_eof()
            except (ConnectionResetError, aiohttp.ClientConnectionResetError, aiohttp.ClientPayloadError):
                pass    # the controller hung up (a watch or log stream it no longer needs)
            return resp
        finally:
            upstream.release()
