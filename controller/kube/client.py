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
import urllib.parse
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from .config import TokenFile, from_kubeconfig, in_cluster

log = logging.getLogger(__name__)

RETRYABLE = frozenset({429, 500, 502, 503, 504})


class ApiError(Exception):
    """A non-2xx answer of the API server (or a transport failure: status 0)."""

    def __init__(self, status: int, reason: str, message: str, body: Mapping[str, Any] | None = None):
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.body = dict(body or {})

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None, sub: str | None = None) -> str:
        base = f"/api/{self.version}" if not self.group else f"/apis/{self.group}/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{urllib.parse.quote(namespace)}"
        base += f"/{self.plural}"
        if name:
            base += f"/{urllib.parse.quote(name)}"
        if sub:
            base += f"/{sub}"
        return base


PODS = Resource("", "v1", "pods")
CONFIGMAPS = Resource("", "v1", "configmaps")
SERVICEACCOUNTS = Resource("", "v1", "serviceaccounts")
EVENTS = Resource("", "v1", "events")
ROLES = Resource("rbac.authorization.k8s.io", "v1", "roles")
ROLEBINDINGS = Resource("rbac.authorization.k8s.io", "v1", "rolebindings")
AGENTS = Resource("agentcontroller.dev", "v1alpha1", "agents")

METADATA_LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"

KIND_RESOURCES: dict[str, Resource] = {
    "pod": PODS,
    "configmap": CONFIGMAPS,
    "serviceaccount": SERVICEACCOUNTS,
    "role": ROLES,
    "rolebinding": ROLEBINDINGS,
}


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

    def __post_init__(self) -> None:
        self._tokens: TokenFile | None = TokenFile(self.token_file, self.token or "") if self.token_file else None

    @classmethod
    def load(cls, kubeconfig: str | None = None, context: str | None = None) -> ClientConfig:
        """In-cluster config when running in a pod (and no kubeconfig given), else the kubeconfig
        (see kube/config.py). Raises ConfigError (an OSError) with a one-line message."""
        import os

        if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return cls(**in_cluster())
        return cls(**from_kubeconfig(kubeconfig, context))

    def current_token(self) -> str | None:
        return self._tokens.current() if self._tokens is not None else self.token

    def auth_headers(self) -> dict[str, str]:
        token = self.current_token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if not self.server.startswith("https"):
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if not self.verify_ssl:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


class KubeClient:
    """Async REST calls. Retries 429/5xx and transport errors a few times; raises ApiError otherwise."""

    def __init__(self, config: ClientConfig, *, retries: int = 3, timeout: float = 30.0):
        self.config = config
        self.retries = retries
        self.timeout = timeout
        self.requests: Counter[tuple[str, str]] = Counter()
        self._session: aiohttp.ClientSession | None = None
        self._streams: aiohttp.ClientSession | None = None

    def _new_session(self, limit: int) -> aiohttp.ClientSession:
        headers = {"Accept": "application/json"}      # Authorization: per request (the token may rotate)
        connector = aiohttp.TCPConnector(ssl=self.config.ssl_context(), limit=limit)
        return aiohttp.ClientSession(self.config.server, headers=headers, connector=connector)

    async def session(self) -> aiohttp.ClientSession:
        """Requests: a pool of at most 64 connections."""
        if self._session is None or self._session.closed:
            self._session = self._new_session(limit=64)
        return self._session

    async def stream_session(self) -> aiohttp.ClientSession:
        """Log streams: a pool of their own, without a limit. A stream holds its connection while its
        pod stops (up to the grace period); sharing the request pool, a burst of cleanups would let
        the streams take every connection, and the deletes that end them would wait for one forever."""
        if self._streams is None or self._streams.closed:
            self._streams = self._new_session(limit=0)
        return self._streams

    async def close(self) -> None:
        for session in (self._session, self._streams):
            if session is not None:
                await session.close()
        self._session = self._streams = None

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
        session = await self.session()
        data = None if body is None else json.dumps(body)
        headers = self.config.auth_headers()
        if body is not None:
            headers["Content-Type"] = content_type
        if accept:
            headers["Accept"] = accept
        self.requests[(method, _resource_of(path))] += 1
        attempt = 0
        while True:
            attempt += 1
            try:
                async with session.request(method, path, params=_params(params), data=data, headers=headers,
                                           timeout=aiohttp.ClientTimeout(total=timeout or self.timeout)) as resp:
                    raw = await resp.read()
                    if resp.status < 300:
                        return raw
                    err = _error(resp.status, raw.decode(errors="replace"))
            except (TimeoutError, aiohttp.ClientError) as exc:
                err = ApiError(0, "TransportError", f"{type(exc).__name__}: {exc}")
            if (err.status in RETRYABLE or err.status == 0) and attempt <= self.retries:
                await asyncio.sleep(min(2.0, 0.1 * 2 ** attempt))
                continue
            raise err

    # -------------------------------------------------------------- verbs

    async def get(self, res: Resource, namespace: str | None, name: str, sub: str | None = None) -> dict[str, Any]:
        return await self.request("GET", res.path(namespace, name, sub))

    async def get_same(self, res: Resource, obj: Mapping[str, Any]) -> dict[str, Any] | None:
        """The current state of `obj`, or None if it is gone or was re-created (another UID)."""
        meta = obj["metadata"]
        try:
            current = await self.get(res, meta.get("namespace"), meta["name"])
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return current if current.get("metadata", {}).get("uid") == meta.get("uid") else None

    async def list(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                   timeout: float | None = None) -> dict[str, Any]:
        params = {"labelSelector": label_selector} if label_selector else None
        return await self.request("GET", res.path(namespace), params=params, timeout=timeout)

    async def list_raw(self, res: Resource, namespace: str | None = None, *, label_selector: str | None = None,
                       metadata_only: bool = False, timeout: float | None = None) -> bytes:
        """A list, unparsed. `metadata_only`: each item is its metadata only (PartialObjectMetadataList),
        a fraction of the size of a full pod; a server that does not offer it sends full objects."""
        params = {"labelSelector": label_selector} if label_selector else None
        accept = METADATA_LIST_ACCEPT if metadata_only else None
        return await self.request_bytes("GET", res.path(namespace), params=params, timeout=timeout, accept=accept)

    async def create(self, res: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]:
        return await self.request("POST", res.path(namespace), body=body)

    async def patch(self, res: Resource, namespace: str | None, name: str, patch: Any, *,
                    sub: str | None = None, patch_type: str = "merge") -> dict[str, Any]:
        ctype = {"merge": "application/merge-patch+json", "json": "application/json-patch+json",
                 "strategic": "application/strategic-merge-patch+json"}[patch_type]
        return await self.request("PATCH", res.path(namespace, name, sub), body=patch, content_type=ctype)

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
                         previous: bool = False) -> LogStream:
        """Open a pod-log stream; returns once the server answered (the stream is established)."""
        session = await self.stream_session()
        params = {"container": container, "follow": "true" if follow else "false"}
        if previous:
            params["previous"] = "true"
        self.requests[("GET", "pods/log")] += 1
        resp = await session.get(PODS.path(namespace, pod, "log"), params=params, headers=self.config.auth_headers(),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout))
        if resp.status >= 300:
            text = await resp.text()
            resp.release()
            raise _error(resp.status, text)
        return LogStream(resp)


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


def _error(status: int, text: str) -> ApiError:
    try:
        body = json.loads(text) if text else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return ApiError(status, str(body.get("reason") or "Error"), str(body.get("message") or text[:500]), body)
