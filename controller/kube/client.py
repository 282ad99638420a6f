"""A thin async Kubernetes REST client on aiohttp.

Configuration comes from the service account in a pod, or from the official `kubernetes` package's
kubeconfig loader (see kube/config.py), so every auth method it supports works; the requests
themselves are plain aiohttp, which keeps the controller fully asynchronous (no thread per call)
and cheap per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from ..workqueue import retry_delay

from .config import TokenFile, from_kubeconfig, in_cluster
from .resources import (  # noqa: F401 - re-exported
    AGENTS,
    CONFIGMAPS,
    EVENTS,
    LEASES,
    METADATA_LIST_ACCEPT,
    PODS,
    ROLEBINDINGS,
    ROLES,
    SERVICEACCOUNTS,
    Resource,
)

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504})
RETRY_AFTER_CAP_SECONDS = 300.0
REFRESH_MARGIN_SECONDS = 60.0     # refresh expiring credentials this long before they expire
REFRESH_MIN_INTERVAL_SECONDS = 10.0


class ApiError(Exception):
    """A non-2xx answer of the API server (or a transport failure: status 0)."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None,
                 retry_after: float | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        """A transient failure: throttled (429), a server error, or the connection failed."""
        return self.status in RETRYABLE or self.status == 0

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass
class ClientConfig:
    server: str
    token: str | None = None
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    verify_ssl: bool = True
    default_namespace: str = "default"
    token_file: str | None = None       # in a pod: the token is read again from here as it rotates
    tls_server_name: str | None = None  # kubeconfig `tls-server-name`: the name the server's cert is checked for
    proxy_url: str | None = None        # kubeconfig `proxy-url`
    expires_at: float | None = None     # Unix time the credentials expire (exec plugins, OIDC), if known
    kubeconfig: str | None = None       # where they came from, to load them again (refresh)
    context: str | None = None

    def __post_init__(self) -> None:
        self._tokens: TokenFile | None = TokenFile(self.token_file, self.token or "") if self.token_file else None
        self._refreshing: asyncio.Lock | None = None
        self._ssl: ssl.SSLContext | bool | None = None
        self.refreshed = 0                # how many times the credentials were loaded again
        self.tls_generation = 0           # bumped when the certificates changed
        self._refreshed_at = 0.0

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> ClientConfig:
        """In-cluster config when running in a pod (and no kubeconfig given), else the kubeconfig
        (see kube/config.py). Raises ConfigError (an OSError) with a one-line message."""
        import os

        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls(**in_cluster())
        return cls(**from_kubeconfig(kubeconfig, context), kubeconfig=kubeconfig, context=context)

    @property
    def refreshable(self) -> bool:
        return self._tokens is not None or self.kubeconfig is not None or self.expires_at is not None

    def expiring(self, now: float, margin: float = REFRESH_MARGIN_SECONDS) -> bool:
        """Do the credentials expire within `margin`? (Not asked again for a while after a refresh that
        brought credentials expiring as soon: a plugin's tokens may be that short-lived.)"""
        if self.expires_at is None or now < self.expires_at - margin:
            return False
        return now - self._refreshed_at >= REFRESH_MIN_INTERVAL_SECONDS

    async def refresh(self) -> bool:
        """Load the credentials again (after a 401, or before they expire): a token file is read
        again; a kubeconfig is loaded again by the official loader, which runs the exec plugin or
        refreshes the OIDC token. True if something new was loaded. Concurrent callers share one load."""
        if self._tokens is not None:
            before = self._tokens.current()
            self._tokens.reread()
            return self._tokens.current() != before
        if self.kubeconfig is None and self.expires_at is None:
            return False
        if self._refreshing is None:
            self._refreshing = asyncio.Lock()
        generation = self.refreshed
        async with self._refreshing:
            if self.refreshed != generation:
                return True         # someone else refreshed while we waited
            try:
                fresh = await asyncio.to_thread(from_kubeconfig, self.kubeconfig, self.context)
            except OSError as exc:
                log.warning("could not refresh the kubeconfig credentials: %s", exc)
                return False
            changed = (fresh.get("token"), fresh.get("cert_file")) != (self.token, self.cert_file)
            tls = (fresh.get("ca_file"), fresh.get("cert_file"), fresh.get("key_file"))
            if tls != (self.ca_file, self.cert_file, self.key_file):
                self._ssl = None
                self.tls_generation += 1
            for key in ("token", "ca_file", "cert_file", "key_file", "expires_at"):
                setattr(self, key, fresh.get(key))
            self.refreshed += 1
            self._refreshed_at = time.time()
            return changed or fresh.get("expires_at") is not None

    def current_token(self) -> str | None:
        return self._tokens.current() if self._tokens is not None else self.token

    def auth_headers(self) -> dict[str, str]:
        token = self.current_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        """A context for this configuration (client certificates are loaded in it: a refresh that
        brings new ones makes the next session use a new context)."""
        if not self.server.startswith("https"):
            return False
        if self._ssl is not None:
            return self._ssl
        ctx: ssl.SSLContext
        if self.tls_server_name:
            ctx = _ServerNameContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.server_name = self.tls_server_name
            ctx.load_verify_locations(cafile=self.ca_file) if self.ca_file else ctx.load_default_certs()
        else:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        self._ssl = ctx
        return ctx


class _ServerNameContext(ssl.SSLContext):
    """A client TLS context that checks the server's certificate for a fixed name — kubeconfig's
    `tls-server-name` (the address connected to is another one: an IP, a tunnel, a proxy)."""

    server_name = ""

    def wrap_bio(self, incoming: Any, outgoing: Any, server_side: bool = False, server_hostname: Any = None,
                 session: Any = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side=server_side,
                                server_hostname=self.server_name or server_hostname, session=session)

    def wrap_socket(self, sock: Any, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: Any = None, session: Any = None) -> ssl.SSLSocket:
        return super().wrap_socket(sock, server_side=server_side, do_handshake_on_connect=do_handshake_on_connect,
                                   suppress_ragged_eofs=suppress_ragged_eofs,
                                   server_hostname=self.server_name or server_hostname, session=session)


class Fenced(ApiError):
    """A write refused before it was sent: this replica may no longer act (it lost its Lease)."""

    def __init__(self) -> None:
        super().__init__(0, "Fenced", "this replica lost its leader-election lease: it writes nothing more")


MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class KubeClient:
    """Async REST calls. Retries 429, 5xx and transport errors with jittered exponential backoff,
    honouring `Retry-After` (API Priority and Fairness answers 429 with it), within a budget of
    `retries` attempts and `retry_budget` seconds; a 401 refreshes the credentials once and retries.
    Raises ApiError otherwise (its `retry_after` carries the server's advice to the caller)."""

    def __init__(self, config: ClientConfig, *, retries: int = 5, timeout: float = 30.0,
                 retry_budget: float = 30.0, fence: Callable[[], bool] | None = None):
        self.config = config
        self.fence = fence          # with leader election: every write first asks whether we may act
        self.retries = retries
        self.timeout = timeout
        self.retry_budget = retry_budget
        self.requests: Counter[tuple[str, str]] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None
        self._generation = config.tls_generation
        self._retired: list[aiohttp.ClientSession] = []     # sessions of old certificates (streams may be open)

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        headers = {"Accept": "application/json"}      # Authorization: per request (the token may rotate)
        connector = aiohttp.TCPConnector(ssl=self.config.ssl_context(), limit=limit)
        return aiohttp.ClientSession(self.config.server, headers=headers, connector=connector)

    async def _fresh_credentials(self) -> None:
        """Refresh credentials that are about to expire, before using them."""
        if self.config.expiring(time.time()):
            await self.config.refresh()
        if self._generation != self.config.tls_generation:     # new client certificates: new connections
            self._generation = self.config.tls_generation
            self._retired += [s for s in (self._session, self._streams) if s is not None]
            self._session = self._streams = None

    async def session(self) -> aiohttp.ClientSession:
        """Requests: a pool of at most 64 connections."""
        await self._fresh_credentials()
        if self._session is None or self._session.closed:
            self._session = self._new_session(limit=64)
        return self._session

    async def stream_session(self) -> aiohttp.ClientSession:
        """Log streams and watches: a pool of their own, without a limit. A log stream holds its
        connection while its pod stops (up to the grace period); sharing the request pool, a burst
        of cleanups would let the streams take every connection, and the deletes that end them would
        wait for one forever."""
        await self._fresh_credentials()
        if self._streams is None or self._streams.closed:
            self._streams = self._new_session(limit=0)
        return self._streams

    async def close(self) -> None:
        for session in (self._session, self._streams, *self._retired):
            if session is not None:
                await session.close()
        self._session = self._streams = None
        self._retired = []

    def _request_kwargs(self) -> dict[str, Any]:
        return {"proxy": self.config.proxy_url} if self.config.proxy_url else {}

    async def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                      body: Any = None, content_type: str = "application/json",
                      timeout: float | None = None) -> dict[str, Any]:
        raw = await self.request_bytes(method, path, params=params, body=body, content_type=content_type,
                                       timeout=timeout)
        return json.loads(raw) if raw else {}

    async def request_bytes(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                            body: Any = None, content_type: str = "application/json", timeout: float | None = None,
                            accept: str | None = None) -> bytes:
        """The answer's body, unparsed (the caller decides when to pay for parsing it)."""
        if self.fence is not None and method in MUTATING and not self.fence():
            raise Fenced()
        session = await self.session()
        data = None if body is None else json.dumps(body)
        self.requests[(method, _resource_of(path))] += 1
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + self.retry_budget
        attempt = 0
        refreshed = False
        while True:
            attempt += 1
            headers = self.config.auth_headers()
            if body is not None:
                headers["Content-Type"] = content_type
            if accept:
                headers["Accept"] = accept
            try:
                async with session.request(method, path, params=_params(params), data=data, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout or self.timeout),
                                           **self._request_kwargs()) as resp:
                    raw = await resp.read()
                    if resp.status < 300:
                        return raw
                    err = _error(resp.status, raw.decode(errors="replace"), resp.headers.get("Retry-After"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = ApiError(0, "TransportError", f"{type(exc).__name__}: {exc}")
            if self.fence is not None and method in MUTATING and not self.fence():
                raise Fenced() from err
            if err.status == 401 and not refreshed:
                refreshed = True
                if await self.config.refresh():
                    continue        # new credentials (an expired exec-plugin or OIDC token): once more
            if not err.retryable or attempt > self.retries:
                raise err
            delay = err.retry_after if err.retry_after is not None else retry_delay(attempt, base=0.1, cap=5.0)
            if loop.time() + delay > give_up_at:
                raise err
            await asyncio.sleep(delay)

    # -------------------------------------------------------------- verbs

    async def get(self, res: Resource, namespace: str | None, name: str, sub: str | None = None) -> dict[str, Any]:
        return await self.request("GET", res.path(namespace, name, sub))

    async def get_or_none(self, res: Resource, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            return await self.get(res, namespace, name)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def get_same(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The current state of `obj`, or None if it is gone or was re-created (another UID)."""
        meta = obj["metadata"]
        current = await self.get_or_none(res, meta.get("namespace"), meta["name"])
        if current is None or current.get("metadata", {}).get("uid") != meta.get("uid"):
            return None
        return current

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", res.path(namespace), params=params, timeout=timeout)

    async def list_raw(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                       metadata_only: bool = False, timeout: float | None = None, limit: int | None = None,
                       continue_token: str | None = None) -> bytes:
        """A list (one page with `limit`), unparsed. `metadata_only`: each item is its metadata only
        (PartialObjectMetadataList), a fraction of the size of a full pod; a server that does not
        offer it sends full objects."""
        params: dict[str, Any] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if limit:
            params["limit"] = limit
        if continue_token:
            params["continue"] = continue_token
        accept = METADATA_LIST_ACCEPT if metadata_only else None
        return await self.request_bytes("GET", res.path(namespace), params=params or None, timeout=timeout,
                                        accept=accept)

    async def list_pages(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                         metadata_only: bool = False, limit: int = 500,
                         timeout: float | None = None) -> AsyncIterator[dict[str, Any]]:
        """A chunked list: pages of at most `limit` items (`limit`/`continue`), so that a list of
        50 000 objects is neither one huge answer for the API server nor one huge parse here. A
        continue token that expired (410) starts the list again from the beginning."""
        token: str | None = None
        while True:
            try:
                raw = await self.list_raw(res, namespace, label_selector=label_selector, metadata_only=metadata_only,
                                          timeout=timeout, limit=limit, continue_token=token)
            except ApiError as exc:
                if exc.status == 410 and token is not None:
                    raise ApiError(410, "Expired", "the list's continue token expired; list again") from exc
                raise
            page = json.loads(raw)
            del raw
            yield page
            token = (page.get("metadata") or {}).get("continue") or None
            if not token:
                return

    async def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", res.path(namespace), body=body)

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: Any, *,
                    sub: str | None = None, patch_type: str = "merge") -> dict[str, Any]:
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                 "strategic": "application/strategic-merge-patch+json"}[patch_type]
        return await self.request("PATCH", res.path(namespace, name, sub), body=patch, content_type=ctype)

    async def replace(self, res: Resource, namespace: str | None, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("PUT", res.path(namespace, name), body=body)

    async def delete(self, res: Resource, namespace: str | None, name: str, *, uid: str | None = None,
                     grace_period_seconds: int | None = None,
                     propagation: str | None = "Background") -> dict[str, Any]:
        options: dict[str, Any] = {"apiVersion": "v1", "kind": "DeleteOptions"}
        if uid:
            options["preconditions"] = {"uid": uid}
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        if propagation:
            options["propagationPolicy"] = propagation
        return await self.request("DELETE", res.path(namespace, name), body=options)

    async def stream_log(self, namespace: str, pod: str, container: str, *, follow: bool = True,
                         previous: bool = False, timestamps: bool = False, since_time: str | None = None,
                         limit_bytes: int | None = None, tail_lines: int | None = None) -> LogStream:
        """Open a pod-log stream; returns once the server answered (the stream is established)."""
        session = await self.stream_session()
        params = {"container": container, "follow": "true" if follow else "false"}
        if previous:
            params["previous"] = "true"
        if timestamps:
            params["timestamps"] = "true"
        if since_time:
            params["sinceTime"] = since_time
        if limit_bytes:
            params["limitBytes"] = str(limit_bytes)
        if tail_lines is not None:
            params["tailLines"] = str(tail_lines)
        self.requests[("GET", "pods/log")] += 1
        for attempt in (1, 2):
            resp = await session.get(PODS.path(namespace, pod, "log"), params=params,
                                     headers=self.config.auth_headers(),
                                     timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout,
                                                                   sock_read=None),
                                     **self._request_kwargs())
            if resp.status < 300:
                return LogStream(resp)
            text = await resp.text()
            resp.release()
            err = _error(resp.status, text, resp.headers.get("Retry-After"))
            if err.status == 401 and attempt == 1 and await self.config.refresh():
                continue
            raise err
        raise AssertionError("unreachable")

    async def watch(self, res: Resource, namespace: str | None, *, resource_version: str,
                    label_selector: str | None = None, field_selector: str | None = None,
                    timeout_seconds: int = 300) -> AsyncIterator[dict[str, Any]]:
        """One watch request: yields its events (`{"type": ..., "object": ...}`) until the server ends
        it. An `ERROR` event is raised as ApiError (410: the resourceVersion is too old: list again)."""
        session = await self.stream_session()
        params = {"watch": "true", "resourceVersion": resource_version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds)}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        self.requests[("WATCH", res.plural)] += 1
        async with session.get(res.path(namespace), params=params, headers=self.config.auth_headers(),
                               timeout=aiohttp.ClientTimeout(total=timeout_seconds + 30,
                                                             sock_connect=self.timeout),
                               **self._request_kwargs()) as resp:
            if resp.status >= 300:
                if resp.status == 401:
                    await self.config.refresh()
                raise _error(resp.status, await resp.text(), resp.headers.get("Retry-After"))
            buffer = b""
            async for chunk in resp.content.iter_any():
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        raise ApiError(int(status.get("code") or 500), str(status.get("reason") or "Error"),
                                       str(status.get("message") or ""), status)
                    yield event


class LogStream:
    def __init__(self, resp: aiohttp.ClientResponse):
        self._resp = resp

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_any():
                yield chunk
        finally:
            self._resp.release()

    def close(self) -> None:
        self._resp.close()


def _params(params: Mapping[str, Any] | None) -> dict[str, str] | None:
    if not params:
        return None
    return {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items() if v is not None}


def _resource_of(path: str) -> str:
    parts = [p for p in path.split("/") if p]
    if "namespaces" in parts:
        i = parts.index("namespaces")
        parts = parts[:i] + parts[i + 2:]
    # /api/v1/<res>[/name[/sub]] or /apis/g/v/<res>[/name[/sub]]
    rest = parts[2:] if parts and parts[0] == "api" else parts[3:]
    if not rest:
        return "?"
    return rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")


def _error(status: int, text: str, retry_after: str | None = None) -> ApiError:
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    advice = None
    if retry_after:
        try:
            advice = min(RETRY_AFTER_CAP_SECONDS, max(0.0, float(retry_after)))
        except ValueError:
            advice = None
    if advice is None and status == 429:
        details = body.get("details") or {}
        if isinstance(details, dict) and details.get("retryAfterSeconds"):
            advice = min(RETRY_AFTER_CAP_SECONDS, float(details["retryAfterSeconds"]))
    return ApiError(status, str(body.get("reason") or "Error"), str(body.get("message") or text[:500]), body,
                    retry_after=advice)
