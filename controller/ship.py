"""Output shipped by `agentctl run` (SPEC §4 "Completeness of the archive", §6 `agentctl run`).

The kubelet serves only a container's current log file, and nothing once its node is lost. The
wrapper sees every byte the agent writes: it sends them here as they are written, and the
controller writes them straight into the agent's in-progress archive, beside the copy it reads from
the API. At cleanup the shipped copy is sealed when all of it arrived (the wrapper's `final`
request, or the byte count it reported in `status.output`); the API-read copy is the fallback.

The endpoint (`POST/GET /v1/ship?container=agent&offset=N[&final=1]`, docs/agentctl.md):

- **TLS** with a certificate the pod can verify: the CA's PEM is in the pod's env
  (`AGENT_CONTROLLER_SHIP_CA`), the endpoint's URL too (`AGENT_CONTROLLER_SHIP_URL`). The chart
  issues the certificate (a Secret); without one, a CA and certificate are made in `--ship-tls-dir`.
- **Authenticated** by the pod's own projected service-account token (audience
  `agent-controller`, mounted by the controller into the agent container), verified with a
  TokenReview: the token must be bound to a pod this controller manages, and bytes go only into
  the archive of that pod's Agent. Nothing in the request names the Agent: a pod can write only
  its own output.
- **Exactly once**: the offset is the size of what is held; a request's bytes below it are skipped
  (a retry), a request beyond it is answered 409 with the size (resend from there). The file
  survives controller restarts and failover (it is on the archive volume); only the leader accepts.
- Once the archive is sealed (or being sealed) nothing more is accepted: 410.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import ssl
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from .archive import FINAL_SUFFIX, MANIFEST, SHIPPED_SUFFIX, Archive, ArchiveError, log_filename
from .kube.client import ApiError, Fenced
from .kube.resources import PODS
from .names import POD_CONTAINER
from .names import SHIP_TOKEN_VOLUME as TOKEN_VOLUME
from .podwatch import PodInfo
from .runtime import Runtime

log = logging.getLogger(__name__)

AUDIENCE = "agent-controller"
TOKEN_DIR = "/var/run/secrets/agent-controller"
TOKEN_PATH = TOKEN_DIR + "/token"
TOKEN_SECONDS = 3600
ENV_URL, ENV_CA, ENV_TOKEN_FILE = "AGENT_CONTROLLER_SHIP_URL", "AGENT_CONTROLLER_SHIP_CA", "AGENT_CONTROLLER_SHIP_TOKEN_FILE"
MAX_REQUEST_BYTES = 8 * 1024 * 1024       # a request's body (agentctl sends up to 1 MiB)
REVIEW_CACHE_SECONDS = 60.0               # a reviewed token is trusted this long (its pod is checked every time)
REVIEW_CACHE_ENTRIES = 10_000
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


@dataclass(frozen=True)
class ShipTarget:
    """Where agent pods ship their output: put into each agent container (inject)."""
    url: str
    ca_pem: str


def inject(pod: dict[str, Any], target: ShipTarget) -> None:
    """Give the pod's agent container what `agentctl run` needs to ship: the URL, the CA, and a
    projected token of our audience (bound to the pod; the kubelet refreshes it)."""
    spec = pod["spec"]
    volumes = spec.setdefault("volumes", [])
    volumes.append({"name": TOKEN_VOLUME, "projected": {"sources": [{"serviceAccountToken": {
        "audience": AUDIENCE, "expirationSeconds": TOKEN_SECONDS, "path": "token"}}]}})
    for c in spec["containers"]:
        if c.get("name") != POD_CONTAINER:
            continue
        env = [e for e in c.get("env") or [] if e.get("name") not in (ENV_URL, ENV_CA, ENV_TOKEN_FILE)]
        env += [{"name": ENV_URL, "value": target.url}, {"name": ENV_CA, "value": target.ca_pem},
                {"name": ENV_TOKEN_FILE, "value": TOKEN_PATH}]
        c["env"] = env
        c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m.get("mountPath") != TOKEN_DIR] + [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": True}]


@dataclass
class Shipment:
    """The agent container's shipped copy in one archive's in-progress directory; one writer at a
    time (`lock`). What is held is looked at once (`load`), then kept track of here."""
    directory: Path                # the archive (sealed once its MANIFEST.json exists)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    size: int | None = None       # bytes held (None: not looked at yet)
    final: bool = False
    sealed: bool = False

    @property
    def path(self) -> Path:
        return Archive.capture_dir(self.directory) / (log_filename(POD_CONTAINER, False) + SHIPPED_SUFFIX)

    def load(self) -> None:
        """Blocking: what an earlier process (or replica) left — sealed, the bytes held, final."""
        if (self.directory / MANIFEST).is_file():
            self.sealed = True
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.size = self.path.stat().st_size
        except FileNotFoundError:
            self.size = 0
        self.final = self.path.with_name(self.path.name + FINAL_SUFFIX).exists()

    def append(self, data: bytes) -> None:
        """Blocking."""
        with open(self.path, "ab", buffering=0) as fh:
            fh.write(data)
        self.size = (self.size or 0) + len(data)

    def finish(self) -> None:
        """Blocking: the marker that all of it arrived."""
        marker = self.path.with_name(self.path.name + FINAL_SUFFIX)
        tmp = marker.with_name(marker.name + ".tmp")
        tmp.write_text(json.dumps({"bytes": self.size}))
        os.replace(tmp, marker)
        self.final = True


def shipment(rt: Runtime, directory: Path) -> Shipment:
    found = rt.shipments.get(str(directory))
    if found is None:
        found = rt.shipments[str(directory)] = Shipment(directory)
    return found


async def seal(rt: Runtime, directory: Path) -> None:
    """From now on nothing more is accepted for this archive (it is being sealed). Without the
    endpoint there is nothing to stop."""
    if rt.ship is None:
        return
    s = shipment(rt, directory)
    async with s.lock:
        s.sealed = True


def forget(rt: Runtime, directory: Path) -> None:
    rt.shipments.pop(str(directory), None)


def ensure_certificate(tls_dir: Path, url: str | None) -> tuple[Path, Path, Path]:
    """`tls.crt`/`tls.key`/`ca.crt` in ``tls_dir``: those there (the chart's Secret), or a CA and a
    certificate for the URL's host (and localhost) made when there are none.

    A directory that does not exist yet is made whole in a sibling and renamed into place, once:
    replicas that share it (the default, ``<archive>/.ship-tls`` on the archive volume every
    replica mounts) race to make it, the first rename wins and the others load the winner's — so
    they share one CA, and a pod created by one replica verifies any other, also after a
    restart. An existing empty directory (a mount point) is filled in place."""
    cert, key, ca = tls_dir / "tls.crt", tls_dir / "tls.key", tls_dir / "ca.crt"
    if cert.is_file() and key.is_file():
        return cert, key, ca
    if tls_dir.is_dir():
        _make_certificate(tls_dir, url)
        return cert, key, ca
    tls_dir.parent.mkdir(parents=True, exist_ok=True)
    made = Path(tempfile.mkdtemp(dir=tls_dir.parent, prefix=f".{tls_dir.name}-"))
    try:
        _make_certificate(made, url)
        os.rename(made, tls_dir)
    except OSError:
        if not (cert.is_file() and key.is_file()):
            raise
        # (another replica's rename came first: its CA is the one)
    finally:
        shutil.rmtree(made, ignore_errors=True)
    return cert, key, ca


def _make_certificate(directory: Path, url: str | None) -> None:
    from .controlplane.pki import CertificateAuthority

    host = urlsplit(url).hostname if url else None
    authority = CertificateAuthority(directory, common_name="agent-controller-ship-ca")
    names = ["localhost"] + ([host] if host and not _is_ip(host) else [])
    ips = ["127.0.0.1"] + ([host] if host and _is_ip(host) and host != "127.0.0.1" else [])
    authority.issue("tls", host or "localhost", server=True, dns_names=names, ip_addresses=ips)


@dataclass(frozen=True)
class ReviewedPod:
    """The pod a reviewed token is bound to: its UID, and its namespace and name (from the
    service account's username and the token's extra)."""
    uid: str
    namespace: str
    name: str


class ShipServer:
    """The HTTPS endpoint agent pods ship their output to (see the module docstring)."""

    def __init__(self, rt: Runtime, host: str, port: int, tls_dir: str | os.PathLike[str],
                 url: str | None = None):
        self.rt, self.host, self.port = rt, host, port
        self.tls_dir = Path(tls_dir)
        self.url = url
        self._reviews: dict[str, tuple[float, ReviewedPod]] = {}     # sha256(token) -> (trusted until, its pod)
        self._runner: web.AppRunner | None = None
        self.ca_pem = ""

    def _tls(self) -> ssl.SSLContext:
        """The serving certificate: `tls.crt`/`tls.key`/`ca.crt` in tls_dir (the chart's Secret),
        or, when there is none, a CA and a certificate made there (for the URL's host)."""
        cert, key, ca = ensure_certificate(self.tls_dir, self.url)
        self.ca_pem = (ca if ca.is_file() else cert).read_text()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    async def start(self) -> int:
        context = await asyncio.to_thread(self._tls)
        app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[_log_refusals])
        app.add_routes([web.get("/v1/ship", self._get), web.post("/v1/ship", self._post)])
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=context)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        if self.url is None:
            self.url = f"https://127.0.0.1:{self.port}/v1/ship"
        self.rt.ship = ShipTarget(self.url, self.ca_pem)
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ requests

    async def _get(self, request: web.Request) -> web.Response:
        s = await self._shipment(request)
        async with s.lock:
            await self._open(s)
            return web.json_response({"offset": s.size, "final": s.final})

    async def _open(self, s: Shipment) -> None:
        """With the lock held: refused unless it may take bytes now (not sealed, this replica leads)."""
        if s.size is None and not s.sealed:
            try:
                await asyncio.to_thread(s.load)
            except OSError as exc:
                raise _error(web.HTTPInsufficientStorage, f"cannot write to the archive volume: {exc}") from exc
        if s.sealed:
            raise _error(web.HTTPGone, "the archive is sealed: nothing more is accepted")
        if not self.rt.fence():
            raise _error(web.HTTPServiceUnavailable, "this replica is not the leader")

    async def _post(self, request: web.Request) -> web.Response:
        try:
            offset = int(request.query.get("offset", ""))
        except ValueError:
            raise _error(web.HTTPBadRequest, "offset: an integer is required") from None
        if offset < 0:
            raise _error(web.HTTPBadRequest, "offset: must not be negative")
        final = request.query.get("final", "") in ("1", "true")
        s = await self._shipment(request)
        body = await request.read()
        async with s.lock:
            await self._open(s)
            assert s.size is not None
            try:
                if offset > s.size:
                    return web.json_response({"offset": s.size, "message": "a gap: resend from offset"},
                                             status=409)
                data = body[s.size - offset:]
                if data and s.final:
                    raise _error(web.HTTPConflict, "all of this log had arrived already (final)")
                if data:
                    await asyncio.to_thread(s.append, data)
                    self.rt.metrics.shipped_bytes.inc(len(data))
                if final and not s.final:
                    if offset + len(body) != s.size:
                        return web.json_response({"offset": s.size, "message": "final: bytes are missing"},
                                                 status=409)
                    await asyncio.to_thread(s.finish)
            except OSError as exc:
                s.size = None       # looked at again next time (a torn write)
                raise _error(web.HTTPInsufficientStorage, f"cannot write to the archive volume: {exc}") from exc
            return web.json_response({"offset": s.size, "final": s.final})

    async def _shipment(self, request: web.Request) -> Shipment:
        """The shipment of the pod whose token this is — only a managed pod's, into its Agent's archive."""
        container = request.query.get("container", POD_CONTAINER)
        if container != POD_CONTAINER:
            raise _error(web.HTTPForbidden, f"only the {POD_CONTAINER!r} container's output is accepted")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise _error(web.HTTPUnauthorized, "a bearer token is required")
        pod = await self._review(header[7:].strip())
        info = self.rt.pods.get(pod.uid)
        if info is None and self.rt.pods.synced.is_set():
            info = await self._look_up(pod)
        if info is None or not info.owner_uid or not info.owner_name:
            if not self.rt.pods.synced.is_set():
                raise _error(web.HTTPServiceUnavailable, "starting: the managed pods are not listed yet")
            raise _error(web.HTTPForbidden, "the token's pod is not an agent pod of this controller")
        try:
            directory = self.rt.archive.agent_dir(info.namespace, info.owner_name, info.owner_uid)
        except ArchiveError as exc:
            raise _error(web.HTTPForbidden, str(exc)) from exc
        return shipment(self.rt, directory)

    async def _look_up(self, pod: ReviewedPod) -> PodInfo | None:
        """A pod the cache does not hold (yet): a new pod ships before this replica's pod watch
        brings it (found by the chaos run on a real API server, where the watch lags) — read
        from the API; an agent pod of ours goes into the cache, anything else is refused."""
        if not pod.namespace or not pod.name:
            return None
        try:
            body = await self.rt.client.get_or_none(PODS, pod.namespace, pod.name)
        except Fenced:
            raise _error(web.HTTPServiceUnavailable, "this replica is not the leader") from None
        except ApiError as exc:
            raise _error(web.HTTPServiceUnavailable, "cannot read the token's pod now") from exc
        if body is None:
            return None
        info = PodInfo.of(body)            # the cache's own reading of a pod: whose Agent it is
        if info.uid != pod.uid or not info.owner_uid or not info.owner_name:
            return None
        self.rt.pods.upsert(body)
        return self.rt.pods.get(pod.uid)

    async def _review(self, token: str) -> ReviewedPod:
        """The pod the token is bound to (a TokenReview of our audience; cached a while)."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = time.monotonic()
        cached = self._reviews.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            review = await self.rt.client.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [AUDIENCE]}})
        except Fenced:
            raise _error(web.HTTPServiceUnavailable, "this replica is not the leader") from None
        except ApiError as exc:
            log.warning("ship: cannot review a token: %s", exc)
            raise _error(web.HTTPServiceUnavailable, "cannot review the token now") from exc
        status = review.get("status") or {}
        extra: Mapping[str, Any] = (status.get("user") or {}).get("extra") or {}
        uids = extra.get(POD_UID_EXTRA) or []
        if not status.get("authenticated") or AUDIENCE not in (status.get("audiences") or [AUDIENCE]):
            why = str(status.get("error") or "")[:200]
            raise _error(web.HTTPUnauthorized, "the token is not valid for " + AUDIENCE + (f": {why}" if why else ""))
        if not uids:
            raise _error(web.HTTPForbidden, "the token is not bound to a pod")
        if len(self._reviews) >= REVIEW_CACHE_ENTRIES:
            self._reviews = {k: v for k, v in self._reviews.items() if v[0] > now}
            if len(self._reviews) >= REVIEW_CACHE_ENTRIES:
                self._reviews.clear()
        username = str((status.get("user") or {}).get("username") or "")
        parts = username.split(":")          # system:serviceaccount:<namespace>:<name>
        names = extra.get(POD_NAME_EXTRA) or [""]
        pod = ReviewedPod(str(uids[0]), parts[2] if len(parts) == 4 else "", str(names[0]))
        self._reviews[digest] = (now + REVIEW_CACHE_SECONDS, pod)
        return pod


@web.middleware
async def _log_refusals(request: web.Request, handler: Any) -> web.StreamResponse:
    """A refusal that ends an agent's shipping (4xx but 409's "resend from") is said in the log,
    with the peer: the agent's archive then falls back to the API-read copy. 5xx (standby,
    starting, volume full) are retried by agentctl: debug only."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        level = logging.DEBUG if exc.status >= 500 or exc.status == 409 else logging.WARNING
        log.log(level, "ship: %s %s from %s: %d %s", request.method, request.path_qs, request.remote,
                exc.status, exc.text)
        raise


def _error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"message": message}), content_type="application/json")


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
