"""The kubelet API of a simulated node, over HTTPS: what kube-apiserver calls for ``pods/log``.

``GET /containerLogs/{namespace}/{pod}/{container}`` with the kubelet's query parameters
(``follow``, ``previous``, ``timestamps``, ``sinceSeconds``, ``sinceTime``, ``tailLines`` (and the
old ``tail``), ``limitBytes``, ``stream``) and the kubelet's answers: plain-text errors (404 ``pod
"p" does not exist``, 404 ``container "c" not found in pod "p"``, 400 ``container "c" in pod "p" is
waiting to start: …``), chunked bodies, and — as kubelets do (kubernetes/kubernetes#142258) —
HTTP 200 with ``unable to retrieve container logs for containerd://…`` as the body once the
container was garbage-collected. ``/healthz`` answers ``ok``.

Clients authenticate with a certificate signed by ``client_ca`` (the API server's
``--kubelet-client-certificate``); without a ``client_ca`` any client is accepted. The serving
certificate is the caller's (``cert_file``/``key_file``) or a self-signed one for 127.0.0.1.

``break-log-stream-after-bytes`` cuts the TCP connection mid-body (no terminating chunk), as a
broken node connection would; :meth:`KubeletServer.refuse` closes the listening socket (a lost
node: new connections are refused, streams already open stall).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .core import LogUnavailable
from .logs import LogQuery, parse_rfc3339_ns, read_log

if TYPE_CHECKING:
    from .core import NodeRuntime

__all__ = ["KubeletServer"]

log = logging.getLogger(__name__)


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() in ("true", "1")


class KubeletServer:
    """Serves one node's kubelet API on ``host:port`` (0 = a free port)."""

    def __init__(
        self,
        runtime: NodeRuntime,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cert_file: str | None = None,
        key_file: str | None = None,
        client_ca: str | None = None,
    ) -> None:
        self.runtime = runtime
        self.host = host
        self._port = port
        self.cert_file = cert_file
        self.key_file = key_file
        self.client_ca = client_ca
        self._runner: web.AppRunner | None = None
        self._site: web.SockSite | None = None
        self._sock: socket.socket | None = None
        self._tmp: str | None = None
        self.requests = 0

    @property
    def port(self) -> int:
        if self._sock is None:
            return self._port
        return int(self._sock.getsockname()[1])

    def _ssl(self) -> ssl.SSLContext:
        cert, key = self.cert_file, self.key_file
        if not cert or not key:
            from .tls import self_signed_files

            self._tmp, cert, key = self_signed_files(f"nodesim-kubelet-{self.runtime.host.node_name}")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        if self.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(self.client_ca)
        return ctx

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/containerLogs/{namespace}/{pod}/{container}", self._logs)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None, handler_cancellation=True,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(512)
        sock.setblocking(False)
        self._sock = sock
        self._site = web.SockSite(self._runner, sock, ssl_context=self._ssl())
        await self._site.start()

    async def refuse(self) -> None:
        """Stop listening: connections are refused; idle keep-alive connections close, streams being
        answered stay open (and stall: the runtime's pods are lost)."""
        if self._site is not None:
            self._port = self.port
            await self._site.stop()
            self._site = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        server = self._runner.server if self._runner is not None else None
        for handler in list(getattr(server, "connections", ()) or ()):
            if not getattr(handler, "_request_in_progress", False):
                handler.force_close()       # idle keep-alive: the API server must dial again

    async def resume(self) -> None:
        """Listen again on the same port."""
        if self._site is None and self._runner is not None:
            await self._listen()

    async def stop(self) -> None:
        await self.refuse()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._tmp is not None:
            import shutil

            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _logs(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        ns = request.match_info["namespace"]
        name = request.match_info["pod"]
        container = request.match_info["container"]
        q = request.query
        try:
            opts = _query(q)
        except ValueError:
            return web.Response(status=400, text='{"message": "Unable to decode query."}')
        if opts is None:
            return web.Response(status=422, text='{"message": "Invalid request."}')
        rt = self.runtime
        p = rt.pods.get((ns, name))
        if p is None:
            return web.Response(status=404, text=f'pod "{name}" does not exist')
        if container not in p.containers:
            return web.Response(status=404, text=f'container "{container}" not found in pod "{name}"')
        try:
            c, inst = rt.log_for(p, container, _truthy(q.get("previous")))
        except LogUnavailable as e:
            return web.Response(status=e.status, text=e.text)
        cut = rt.take_break(p, c)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        resp.enable_chunked_encoding()
        sent = 0
        try:
            await resp.prepare(request)
            async for chunk in read_log(inst, opts, at_rotation=rt.follow_mode(p), stalled=lambda: p.lost):
                if cut is not None and sent + len(chunk) >= cut:
                    await resp.write(chunk[: cut - sent])
                    tr = request.transport
                    if tr is not None:
                        tr.abort()          # mid-body: no terminating chunk
                    return resp
                await resp.write(chunk)
                sent += len(chunk)
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp


def _query(q: Any) -> LogQuery | None:
    """PodLogOptions from the query (ValueError: undecodable; None: invalid)."""

    def num(key: str) -> int | None:
        if key not in q:
            return None
        return int(q[key])

    tail = num("tailLines")
    if "tail" in q:
        tail = None if q["tail"] == "all" else int(q["tail"])
    limit = num("limitBytes")
    since_s = num("sinceSeconds")
    since_ns: int | None = None
    if "sinceTime" in q:
        since_ns = parse_rfc3339_ns(q["sinceTime"])
        if since_ns is None:
            raise ValueError("sinceTime")
    stream = q.get("stream") or "All"
    if (tail is not None and tail < 0) or (limit is not None and limit < 1) or (since_s is not None and since_s < 1):
        return None
    if since_s is not None and since_ns is not None:
        return None
    if stream not in ("All", "Stdout", "Stderr"):
        return None
    if since_s is not None:
        since_ns = time.time_ns() - since_s * 1_000_000_000
    return LogQuery(follow=_truthy(q.get("follow")), timestamps=_truthy(q.get("timestamps")), since_ns=since_ns,
                    tail_lines=tail, limit_bytes=limit, stream=stream)
