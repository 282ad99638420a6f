"""The bench's own small async Kubernetes client (aiohttp): the driver that plays users and agents.

It is deliberately separate from the controller's client, so that the controller's request counts
are never mixed with the bench's (the emulator counts by user; the counting proxy only sees the
controller).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

GROUP_PATH = "/apis/agentcontroller.dev/v1alpha1"
MERGE = "application/merge-patch+json"


class HttpError(Exception):
    def __init__(self, status: int, body: Any):
        message = body.get("message") if isinstance(body, dict) else str(body)
        super().__init__(f"{status}: {message}")
        self.status = status
        self.body = body


def agents_path(ns: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"{GROUP_PATH}/namespaces/{ns}/agents"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class Client:
    """JSON requests with a default bearer token (overridable per request)."""

    def __init__(self, server: str, token: str | None = None, ssl_context: ssl.SSLContext | bool = False,
                 limit: int = 128):
        self.server = server.rstrip("/")
        self.token = token
        self.ssl_context = ssl_context
        self.limit = limit
        self._session: aiohttp.ClientSession | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=self.limit)
            self._session = aiohttp.ClientSession(self.server, connector=connector)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, token: str | None, ctype: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = token or self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if ctype:
            headers["Content-Type"] = ctype
        return headers

    async def call(self, method: str, path: str, body: Any = None, *, ctype: str = "application/json",
                   token: str | None = None, params: Mapping[str, str] | None = None,
                   timeout: float = 60.0, retries: int = 3) -> Any:
        session = await self.session()
        data = None if body is None else json.dumps(body)
        attempt = 0
        while True:
            attempt += 1
            try:
                async with session.request(method, path, data=data, params=params,
                                           headers=self._headers(token, ctype if body is not None else None),
                                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                    raw = await resp.read()
                    try:
                        parsed = json.loads(raw) if raw else {}
                    except ValueError:
                        parsed = {"message": raw.decode(errors="replace")}
                    if resp.status < 300:
                        return parsed
                    err = HttpError(resp.status, parsed)
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = HttpError(0, {"message": f"{type(exc).__name__}: {exc}"})
            if err.status in (0, 429, 500, 502, 503, 504) and attempt <= retries:
                await asyncio.sleep(0.2 * attempt)
                continue
            raise err

    async def watch(self, path: str, on_event: Callable[[str, dict[str, Any]], None], *,
                    params: Mapping[str, str] | None = None, stop: asyncio.Event) -> None:
        """List, then watch `path` until `stop` is set; calls on_event(type, object) for each change
        (the initial list is delivered as ADDED). Re-watches after timeouts, re-lists after 410."""
        session = await self.session()
        while not stop.is_set():
            listing = await self.call("GET", path, params=params)
            for item in listing.get("items") or []:
                on_event("ADDED", item)
            rv = (listing.get("metadata") or {}).get("resourceVersion", "")
            while not stop.is_set():
                query = dict(params or {})
                query.update({"watch": "true", "resourceVersion": rv, "allowWatchBookmarks": "true",
                              "timeoutSeconds": "60"})
                gone = False
                try:
                    async with session.get(path, params=query, headers=self._headers(None, None),
                                           timeout=aiohttp.ClientTimeout(total=None, sock_read=90)) as resp:
                        if resp.status == 410:
                            gone = True
                        elif resp.status >= 300:
                            await asyncio.sleep(0.5)
                            continue
                        else:
                            async for line in resp.content:
                                if stop.is_set():
                                    return
                                if not line.strip():
                                    continue
                                event = json.loads(line)
                                etype, obj = event.get("type"), event.get("object") or {}
                                if etype == "ERROR":
                                    if obj.get("code") == 410:
                                        gone = True
                                    break
                                rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                                if etype != "BOOKMARK":
                                    on_event(etype, obj)
                except (TimeoutError, aiohttp.ClientError):
                    await asyncio.sleep(0.2)
                if gone:
                    break


async def gather_limited(factories: list[Callable[[], Awaitable[Any]]], limit: int) -> list[Any]:
    """Run the coroutines `limit` at a time; returns results (exceptions included) in order."""
    sem = asyncio.Semaphore(limit)

    async def one(factory: Callable[[], Awaitable[Any]]) -> Any:
        async with sem:
            return await factory()

    return await asyncio.gather(*(one(f) for f in factories), return_exceptions=True)
