"""The devcluster HTTP API server (aiohttp) and :class:`DevCluster`, its in-process handle.

Routing follows kube-apiserver's RequestInfo rules (``/api/v1/...``, ``/apis/G/V/...``,
``/watch/`` paths, ``namespaces/NS/...``, subresources), authentication by bearer token
(admin, added users, service-account JWTs), authorization through the RBAC
:class:`~controller.devcluster.rbac.Authorizer` for every request (``system:masters``
bypasses), impersonation headers, discovery (legacy, non-aggregated), a minimal OpenAPI v3
(enough for kubectl's field validation and ``explain`` of custom resources), server-side
tables, watch streams, pod logs, fault injection and request counting.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from . import tables
from .admission import ValidatingAdmission
from .codec import dumps, loads, now_rfc3339
from .errors import ApiError, bad_request
from .faults import Fault, Faults
from .rbac import Attributes, Authorizer, UserInfo
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import BOOKMARK, ERROR, Store, Watcher
from .tokens import Auth, request_token, review_token

__all__ = ["ApiError", "ApiServer", "DevCluster"]

log = logging.getLogger(__name__)
T = TypeVar("T")
_List = list  # DevCluster.list shadows the builtin inside the class body

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-devcluster",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23.4",
    "compiler": "gc",
    "platform": "linux/amd64",
}
MAX_BODY = 3 * 1024 * 1024
_NS_SUBRESOURCES = ("status", "finalize")
_PUBLIC_PATHS = ("/healthz", "/livez", "/readyz", "/version")


# ------------------------------------------------------------------------------------------
# authentication: controller/devcluster/tokens.py (Auth, TokenRequest, TokenReview)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------------------
# TLS (client-go sends bearer tokens only over https)

_TLS_CACHE: tuple[bytes, bytes, bytes] | None = None
_TLS_LOCK = threading.Lock()


def tls_material() -> tuple[bytes, bytes, bytes] | None:
    """(CA cert PEM, server cert PEM, server key PEM) for 127.0.0.1/localhost, made once per process."""
    global _TLS_CACHE
    with _TLS_LOCK:
        if _TLS_CACHE is not None:
            return _TLS_CACHE
        try:
            import datetime as dt
            import ipaddress

            from cryptography import x509
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
            from cryptography.x509.oid import NameOID
        except ImportError:
            _TLS_CACHE = _tls_with_openssl()
            return _TLS_CACHE
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devcluster-ca")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devcluster-apiserver")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _TLS_CACHE = (
            ca.public_bytes(serialization.Encoding.PEM),
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        return _TLS_CACHE


def _tls_with_openssl() -> tuple[bytes, bytes, bytes] | None:
    """The same material made with the ``openssl`` CLI (when ``cryptography`` is not installed)."""
    import shutil
    import subprocess
    import tempfile

    exe = shutil.which("openssl")
    if exe is None:
        return None
    with tempfile.TemporaryDirectory(prefix="devcluster-ca-") as d:
        def j(n: str) -> str:
            return os.path.join(d, n)

        ext = j("ext.cnf")
        with open(ext, "w") as cnf:
            cnf.write(
                "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
                "subjectAltName=DNS:localhost,DNS:kubernetes.default.svc,IP:127.0.0.1\n"
            )
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        cmds = [
            [exe, "req", "-x509", *ec, "-keyout", j("ca.key"), "-out", j("ca.crt"), "-days", "3650",
             "-subj", "/CN=devcluster-ca", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"],
            [exe, "req", *ec, "-keyout", j("tls.key"), "-out", j("tls.csr"), "-subj", "/CN=devcluster-apiserver"],
            [exe, "x509", "-req", "-in", j("tls.csr"), "-CA", j("ca.crt"), "-CAkey", j("ca.key"),
             "-CAcreateserial", "-out", j("tls.crt"), "-days", "3650", "-extfile", ext],
        ]
        try:
            for cmd in cmds:
                subprocess.run(cmd, check=True, capture_output=True, timeout=30)
            out: list[bytes] = []
            for n in ("ca.crt", "tls.crt", "tls.key"):
                with open(j(n), "rb") as pem:
                    out.append(pem.read())
        except (OSError, subprocess.SubprocessError):
            return None
    return out[0], out[1], out[2]


# ------------------------------------------------------------------------------------------
# protobuf request bodies (client-go typed clients, e.g. ``kubectl create configmap``)

# field number -> (json name, kind, sub-schema or None, repeated)
_PB = dict[int, tuple[str, str, Any, bool]]
_TIME = "time"
_PB_OWNER: _PB = {
    1: ("kind", "string", None, False),
    3: ("name", "string", None, False),
    4: ("uid", "string", None, False),
    5: ("apiVersion", "string", None, False),
    6: ("controller", "bool", None, False),
    7: ("blockOwnerDeletion", "bool", None, False),
}
_PB_META: _PB = {
    1: ("name", "string", None, False),
    2: ("generateName", "string", None, False),
    3: ("namespace", "string", None, False),
    5: ("uid", "string", None, False),
    6: ("resourceVersion", "string", None, False),
    7: ("generation", "int", None, False),
    8: ("creationTimestamp", _TIME, None, False),
    9: ("deletionTimestamp", _TIME, None, False),
    10: ("deletionGracePeriodSeconds", "int", None, False),
    11: ("labels", "map", None, False),
    12: ("annotations", "map", None, False),
    13: ("ownerReferences", "msg", _PB_OWNER, True),
    14: ("finalizers", "string", None, True),
}
_PB_OBJREF: _PB = {
    1: ("kind", "string", None, False),
    2: ("namespace", "string", None, False),
    3: ("name", "string", None, False),
    4: ("uid", "string", None, False),
    5: ("apiVersion", "string", None, False),
    6: ("resourceVersion", "string", None, False),
    7: ("fieldPath", "string", None, False),
}
_PB_RULE: _PB = {
    1: ("verbs", "string", None, True),
    2: ("apiGroups", "string", None, True),
    3: ("resources", "string", None, True),
    4: ("resourceNames", "string", None, True),
    5: ("nonResourceURLs", "string", None, True),
}
_PB_SUBJECT: _PB = {
    1: ("kind", "string", None, False),
    2: ("apiGroup", "string", None, False),
    3: ("name", "string", None, False),
    4: ("namespace", "string", None, False),
}
_PB_ROLEREF: _PB = {1: ("apiGroup", "string", None, False), 2: ("kind", "string", None, False), 3: ("name", "string", None, False)}
_PB_RESATTR: _PB = {
    1: ("namespace", "string", None, False),
    2: ("verb", "string", None, False),
    3: ("group", "string", None, False),
    4: ("version", "string", None, False),
    5: ("resource", "string", None, False),
    6: ("subresource", "string", None, False),
    7: ("name", "string", None, False),
}
_PB_NONRES: _PB = {1: ("path", "string", None, False), 2: ("verb", "string", None, False)}
_PB_TYPES: dict[str, _PB] = {
    "ConfigMap": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("data", "map", None, False),
        3: ("binaryData", "mapbytes", None, False),
        4: ("immutable", "bool", None, False),
    },
    "Secret": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("data", "mapbytes", None, False),
        3: ("type", "string", None, False),
        4: ("stringData", "map", None, False),
        5: ("immutable", "bool", None, False),
    },
    "ServiceAccount": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("secrets", "msg", _PB_OBJREF, True),
        3: ("imagePullSecrets", "msg", {1: ("name", "string", None, False)}, True),
        4: ("automountServiceAccountToken", "bool", None, False),
    },
    "Namespace": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("spec", "msg", {1: ("finalizers", "string", None, True)}, False),
    },
    "Role": {1: ("metadata", "msg", _PB_META, False), 2: ("rules", "msg", _PB_RULE, True)},
    "ClusterRole": {1: ("metadata", "msg", _PB_META, False), 2: ("rules", "msg", _PB_RULE, True)},
    "RoleBinding": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("subjects", "msg", _PB_SUBJECT, True),
        3: ("roleRef", "msg", _PB_ROLEREF, False),
    },
    "ClusterRoleBinding": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("subjects", "msg", _PB_SUBJECT, True),
        3: ("roleRef", "msg", _PB_ROLEREF, False),
    },
    "SelfSubjectAccessReview": {
        1: ("metadata", "msg", _PB_META, False),
        2: (
            "spec",
            "msg",
            {1: ("resourceAttributes", "msg", _PB_RESATTR, False), 2: ("nonResourceAttributes", "msg", _PB_NONRES, False)},
            False,
        ),
    },
    "SelfSubjectRulesReview": {
        1: ("metadata", "msg", _PB_META, False),
        2: ("spec", "msg", {1: ("namespace", "string", None, False)}, False),
    },
    "SelfSubjectReview": {1: ("metadata", "msg", _PB_META, False)},
    "TokenRequest": {
        1: ("metadata", "msg", _PB_META, False),
        2: (
            "spec",
            "msg",
            {
                1: ("audiences", "string", None, True),
                3: ("boundObjectRef", "msg", {1: ("kind", "string", None, False), 2: ("apiVersion", "string", None, False), 3: ("name", "string", None, False), 4: ("uid", "string", None, False)}, False),
                4: ("expirationSeconds", "int", None, False),
            },
            False,
        ),
    },
}


def _pb_fields(data: bytes) -> Iterable[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message."""
    i, n = 0, len(data)

    def varint() -> int:
        nonlocal i
        shift = result = 0
        while True:
            b = data[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < n:
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 2:
            ln = varint()
            yield num, wt, data[i : i + ln]
            i += ln
        elif wt == 1:
            yield num, wt, data[i : i + 8]
            i += 8
        elif wt == 5:
            yield num, wt, data[i : i + 4]
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")


def _pb_decode(data: bytes, schema: _PB) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, _wt, val in _pb_fields(data):
        spec = schema.get(num)
        if spec is None:
            continue
        name, kind, sub, repeated = spec
        v: Any
        if kind == "string":
            v = bytes(val).decode()
            if v == "" and not repeated:
                continue  # Go's omitempty
        elif kind == "int":
            v = val - (1 << 64) if isinstance(val, int) and val >= 1 << 63 else val
            if v == 0 and name == "generation":
                continue
        elif kind == "bool":
            v = bool(val)
        elif kind == "msg":
            v = _pb_decode(bytes(val), sub)
        elif kind == _TIME:
            t = _pb_decode(bytes(val), {1: ("seconds", "int", None, False), 2: ("nanos", "int", None, False)})
            if not t.get("seconds"):
                continue
            v = now_rfc3339(float(t["seconds"]))
        elif kind in ("map", "mapbytes"):
            kv = _pb_decode(bytes(val), {1: ("key", "string", None, False), 2: ("value", "string" if kind == "map" else "raw", None, False)})
            if kind == "mapbytes":
                raw_v = b""
                for n2, _w2, v2 in _pb_fields(bytes(val)):
                    if n2 == 2:
                        raw_v = bytes(v2)
                kv["value"] = base64.b64encode(raw_v).decode()
            out.setdefault(name, {})[kv.get("key", "")] = kv.get("value", "")
            continue
        else:
            continue
        if repeated:
            out.setdefault(name, []).append(v)
        else:
            out[name] = v
    return out


def decode_protobuf(raw: bytes) -> dict[str, Any]:
    """Decode a ``application/vnd.kubernetes.protobuf`` body of a supported kind into JSON form."""
    if not raw.startswith(b"k8s\x00"):
        raise bad_request("the body of the request was in an unknown format: missing protobuf magic")
    env = {}
    for num, _wt, val in _pb_fields(raw[4:]):
        env[num] = val
    tm = _pb_decode(bytes(env.get(1, b"")), {1: ("apiVersion", "string", None, False), 2: ("kind", "string", None, False)})
    kind = tm.get("kind", "")
    schema = _PB_TYPES.get(kind)
    if schema is None:
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: application/json, "
            f"application/yaml (protobuf is only understood for {', '.join(sorted(_PB_TYPES))})",
        )
    obj = _pb_decode(bytes(env.get(2, b"")), schema)
    obj["apiVersion"] = tm.get("apiVersion", "")
    obj["kind"] = kind
    return obj


# ------------------------------------------------------------------------------------------
# request info


@dataclass
class ReqInfo:
    """Parsed resource request (like k8s RequestInfo)."""

    verb: str
    rt: ResourceType
    namespace: str
    name: str
    subresource: str
    watch_path: bool = False

    @property
    def resource_key(self) -> str:
        """``plural`` or ``plural/sub`` (the key of request counters and faults)."""
        return self.rt.plural + ("/" + self.subresource if self.subresource else "")


def _wants(accept: str, as_: str) -> bool:
    for part in accept.split(","):
        params = {}
        for p in part.split(";")[1:]:
            k, _, v = p.strip().partition("=")
            params[k] = v
        if params.get("as") == as_ and params.get("g", "meta.k8s.io") == "meta.k8s.io":
            return True
    return False


def _truthy(v: str | None) -> bool:
    return v is not None and v.lower() in ("true", "1", "yes")


def _json(data: bytes | dict[str, Any] | list[Any], status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    body = data if isinstance(data, bytes) else dumps(data)
    return web.Response(body=body, status=status, content_type="application/json", headers=headers)


def _status_ok(rt: ResourceType, name: str, uid: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": rt.plural, "uid": uid}
    if rt.group:
        d["group"] = rt.group
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d}


# ------------------------------------------------------------------------------------------
# the API server


class ApiServer:
    """HTTP layer: authentication, authorization, routing, serialisation."""

    def __init__(self, cluster: DevCluster) -> None:
        self.c = cluster
        self.store: Store = cluster.store
        self.auth: Auth = cluster.auth
        self.faults: Faults = cluster.faults
        self.authorizer: Authorizer = cluster.authorizer
        self._discovery_cache: dict[str, tuple[int, bytes]] = {}

    def app(self) -> web.Application:
        """The aiohttp application (one catch-all route)."""
        app = web.Application(client_max_size=MAX_BODY + 65536)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    # ---------------------------------------------------------------- entry point

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Every request enters here."""
        try:
            return await self._handle(request)
        except ApiError as e:
            return _json(e.status(), e.code, e.headers or None)
        except web.HTTPRequestEntityTooLarge:
            return _json(
                ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}").status(), 413
            )
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as e:
            log.exception("devcluster: internal error on %s %s", request.method, request.path)
            return _json(ApiError(500, "InternalError", f"Internal error occurred: {e!r}").status(), 500)

    def _authenticate(self, request: web.Request) -> UserInfo | None:
        h = request.headers.get("Authorization", "")
        if h[:7].lower() != "bearer ":      # the scheme is case-insensitive (the Python client sends "bearer")
            return None
        token = h[7:].strip()
        return self.auth.authenticate(token, self.c._token_lookup)

    def _impersonate(self, request: web.Request, user: UserInfo) -> UserInfo:
        target = request.headers.get("Impersonate-User")
        groups = request.headers.getall("Impersonate-Group", [])
        if not target and not groups:
            return user
        if not target:
            raise ApiError(500, "InternalError", "requested impersonation of groups without a user")

        def check(attrs: Attributes) -> None:
            ok, _ = self.authorizer.authorize(user, attrs)
            if not ok:
                raise ApiError(
                    403,
                    "Forbidden",
                    f'{attrs.resource} "{attrs.name}" is forbidden: User "{user.name}" cannot impersonate resource '
                    f'"{attrs.resource}" in API group "{attrs.api_group}"'
                    + (f' in the namespace "{attrs.namespace}"' if attrs.namespace else " at the cluster scope"),
                    {"name": attrs.name, "kind": attrs.resource},
                )

        if target.startswith("system:serviceaccount:"):
            _, _, rest = target.partition("system:serviceaccount:")
            sns, _, sname = rest.partition(":")
            check(Attributes(verb="impersonate", api_group="", resource="serviceaccounts", namespace=sns, name=sname))
            gs = ["system:serviceaccounts", f"system:serviceaccounts:{sns}"]
        else:
            check(Attributes(verb="impersonate", api_group="", resource="users", name=target))
            gs = []
        for g in groups:
            check(Attributes(verb="impersonate", api_group="", resource="groups", name=g))
            gs.append(g)
        if "system:authenticated" not in gs and target != "system:anonymous":
            gs.append("system:authenticated")
        return UserInfo(target, gs)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        user = self._authenticate(request)
        if user is None:
            if request.headers.get("Authorization") or path not in _PUBLIC_PATHS:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            user = UserInfo("system:anonymous", ["system:unauthenticated"])
        else:
            user = self._impersonate(request, user)
        parts = [p for p in path.split("/") if p]
        if not parts or parts[0] not in ("api", "apis"):
            return await self._nonresource(request, user, path, parts)
        if parts[0] == "api":
            if len(parts) == 1:
                return await self._discovery(request, user, path, "api")
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) <= 2:
                return await self._discovery(request, user, path, "apis" if len(parts) == 1 else parts[1])
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            return await self._discovery(request, user, path, (group, version))
        info = self._parse(request, group, version, rest)
        return await self._resource(request, user, info)

    def _parse(self, request: web.Request, group: str, version: str, rest: list[str]) -> ReqInfo:
        watch_path = False
        if rest[0] == "watch":
            watch_path = True
            rest = rest[1:]
            if not rest:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
        ns = ""
        if rest[0] == "namespaces" and len(rest) > 1:
            if len(rest) > 2 and rest[2] not in _NS_SUBRESOURCES:
                ns = rest[1]
                rest = rest[2:]
        resource = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.store.lookup(group, version, resource)
        if rt is None or (rt.namespaced is False and ns) or (sub and sub not in rt.subresources):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        m = request.method
        q = request.query
        if m == "GET":
            if watch_path or _truthy(q.get("watch")):
                verb = "watch"
            elif name:
                verb = "get"
            else:
                verb = "list"
        elif m == "POST":
            verb = "create"
        elif m == "PUT":
            verb = "update"
        elif m == "PATCH":
            verb = "patch"
        elif m == "DELETE":
            verb = "delete" if name else "deletecollection"
        else:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if sub and (verb not in rt.subresources[sub] or not name):
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        if rt.virtual and verb != "create":
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        return ReqInfo(verb, rt, ns, name, sub, watch_path)

    # ---------------------------------------------------------------- non-resource

    async def _nonresource(self, request: web.Request, user: UserInfo, path: str, parts: list[str]) -> web.StreamResponse:
        self._count(user, "get", path)
        if path not in _PUBLIC_PATHS:
            self._authorize_url(user, request.method.lower(), path)
        if path == "/version" or path == "/version/":
            return _json(KUBE_VERSION)
        if path in ("/healthz", "/livez", "/readyz"):
            return web.Response(text="ok", content_type="text/plain")
        if parts and parts[0] == "openapi":
            return self._openapi(request, parts)
        if not parts:
            paths = ["/api", "/api/v1", "/apis", "/healthz", "/livez", "/openapi/v3", "/readyz", "/version"]
            for g, vs in self.store.group_versions().items():
                if g:
                    paths.append(f"/apis/{g}")
                    paths.extend(f"/apis/{g}/{v}" for v in vs)
            return _json({"paths": sorted(set(paths))})
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _authorize_url(self, user: UserInfo, verb: str, path: str) -> None:
        if "system:masters" in user.groups:
            return
        ok, _ = self.authorizer.authorize(user, Attributes(verb=verb, api_group="", resource="", path=path))
        if not ok:
            raise ApiError(403, "Forbidden", f'forbidden: User "{user.name}" cannot {verb} path "{path}"', {})

    # ---------------------------------------------------------------- discovery

    async def _discovery(self, request: web.Request, user: UserInfo, path: str, what: Any) -> web.StreamResponse:
        self._count(user, "get", path)
        self._authorize_url(user, "get", path)
        key = repr(what) + (request.host if what == "api" else "")
        cached = self._discovery_cache.get(key)
        if cached is not None and cached[0] == self.store.registry_version:
            return _json(cached[1])
        gvs = self.store.group_versions()
        doc: dict[str, Any]
        if what == "api":
            host = request.host or "127.0.0.1"
            doc = {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        elif what == "apis":
            doc = {"kind": "APIGroupList", "apiVersion": "v1", "groups": [self._group(g, vs) for g, vs in sorted(gvs.items(), key=_group_order) if g]}
        elif isinstance(what, str):
            if what not in gvs or not what:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            doc = {"kind": "APIGroup", "apiVersion": "v1", **self._group(what, gvs[what])}
        else:
            group, version = what
            rts = [rt for (g, v, _), rt in self.store.types.items() if g == group and v == version]
            if not rts:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            resources = []
            for rt in sorted(rts, key=lambda r: r.plural):
                d: dict[str, Any] = {
                    "name": rt.plural,
                    "singularName": rt.singular,
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": list(rt.verbs),
                    "storageVersionHash": _b64url(hashlib.sha256(f"{rt.group}/{rt.plural}".encode()).digest()[:8]),
                }
                if rt.short_names:
                    d["shortNames"] = list(rt.short_names)
                if rt.categories:
                    d["categories"] = list(rt.categories)
                resources.append(d)
                for sub, verbs in sorted(rt.subresources.items()):
                    sd: dict[str, Any] = {
                        "name": f"{rt.plural}/{sub}",
                        "singularName": "",
                        "namespaced": rt.namespaced,
                        "kind": rt.kind,
                        "verbs": list(verbs),
                    }
                    if sub == "token":
                        sd.update(group="authentication.k8s.io", version="v1", kind="TokenRequest")
                    if sub == "scale":
                        sd.update(group="autoscaling", version="v1", kind="Scale")
                    resources.append(sd)
            doc = {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version,
                "resources": resources,
            }
        body = dumps(doc)
        self._discovery_cache[key] = (self.store.registry_version, body)
        return _json(body)

    @staticmethod
    def _group(g: str, versions: list[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{g}/{v}", "version": v} for v in versions]
        return {"name": g, "versions": vs, "preferredVersion": vs[0]}

    # ---------------------------------------------------------------- openapi (minimal v3)

    def _openapi(self, request: web.Request, parts: list[str]) -> web.StreamResponse:
        if len(parts) >= 2 and parts[1] == "v3":
            gvs = self.store.group_versions()
            h = str(self.store.registry_version)
            if len(parts) == 2:
                paths = {}
                for g, vs in gvs.items():
                    for v in vs:
                        p = f"apis/{g}/{v}" if g else f"api/{v}"
                        paths[p] = {"serverRelativeURL": f"/openapi/v3/{p}?hash={h}{_b64url(p.encode())}"}
                return _json({"paths": paths})
            rest = parts[2:]
            if rest[0] == "api" and len(rest) == 2:
                group, version = "", rest[1]
            elif rest[0] == "apis" and len(rest) == 3:
                group, version = rest[1], rest[2]
            else:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            if version not in gvs.get(group, []):
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json(self._openapi_doc(group, version))
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def _openapi_doc(self, group: str, version: str) -> dict[str, Any]:
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        prefix = f"/apis/{group}/{version}" if group else f"/api/{version}"
        rev = ".".join(reversed(group.split("."))) if group else "io.k8s.api.core"
        for (g, v, _), rt in self.store.types.items():
            if g != group or v != version:
                continue
            gvk = {"group": group, "version": version, "kind": rt.kind}
            ref = f"{rev}.{version}.{rt.kind}"
            base = f"{prefix}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced else f"{prefix}/{rt.plural}"
            params = [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
            ]
            content = {
                ct: {"schema": {"$ref": f"#/components/schemas/{ref}"}}
                for ct in ("application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml")
            }
            op = {
                "x-kubernetes-group-version-kind": gvk,
                "x-kubernetes-action": "patch",
                "parameters": params,
                "requestBody": {"content": content, "required": True},
                "responses": {"200": {"description": "OK"}},
            }
            item = {
                "get": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "get", "responses": {"200": {"description": "OK"}}},
                "put": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "put", "parameters": params, "responses": {"200": {"description": "OK"}}},
                "patch": op,
            }
            paths[f"{base}/{{name}}"] = item
            paths[base] = {
                "post": {"x-kubernetes-group-version-kind": gvk, "x-kubernetes-action": "post", "parameters": params, "responses": {"201": {"description": "Created"}}},
            }
            schema: dict[str, Any] = {"type": "object", "x-kubernetes-group-version-kind": [gvk]}
            if rt.crd is not None:
                crd = self.store.buckets[("apiextensions.k8s.io", "customresourcedefinitions")].objects.get(("", rt.crd))
                if crd is not None:
                    for ver in crd.obj["spec"].get("versions") or ():
                        if ver.get("name") == version:
                            src = (ver.get("schema") or {}).get("openAPIV3Schema")
                            if isinstance(src, dict):
                                schema = dict(src)
                                schema["x-kubernetes-group-version-kind"] = [gvk]
                                props = dict(schema.get("properties") or {})
                                props["metadata"] = {
                                    "description": "Standard object's metadata.",
                                    "allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                                }
                                schema["properties"] = props
            schemas[ref] = schema
        schemas["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"] = {
            "description": "ObjectMeta is metadata that all persisted resources must have.",
            "type": "object",
            "properties": {
                "name": {"type": "string", "description": "Name must be unique within a namespace."},
                "namespace": {"type": "string", "description": "Namespace defines the space within which each name must be unique."},
                "labels": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string", "default": ""}},
            },
        }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": KUBE_VERSION["gitVersion"]},
            "paths": paths,
            "components": {"schemas": schemas},
        }

    # ---------------------------------------------------------------- resources

    def _count(self, user: UserInfo, verb: str, resource: str) -> None:
        k = (verb, resource)
        self.c.requests[k] += 1
        self.c.requests_by_user[user.name][k] += 1

    async def _resource(self, request: web.Request, user: UserInfo, info: ReqInfo) -> web.StreamResponse:
        rt = info.rt
        verb = info.verb
        self._count(user, verb, info.resource_key)
        hook = self.c.on_request
        if hook is not None:
            hook(verb, info.resource_key, info.namespace, info.name, user.name)
        if "system:masters" not in user.groups:
            attrs = Attributes(
                verb=verb,
                api_group=rt.group,
                resource=rt.plural,
                subresource=info.subresource,
                namespace=info.namespace,
                name=info.name,
            )
            if rt.virtual:
                attrs = Attributes(verb="create", api_group=rt.group, resource=rt.plural)
            ok, _ = self.authorizer.authorize(user, attrs)
            if not ok:
                raise ApiError(
                    403,
                    "Forbidden",
                    self.authorizer.forbidden_message(user, attrs),
                    {**({"name": info.name} if info.name else {}), **({"group": rt.group} if rt.group else {}),
                     "kind": rt.plural},
                )
        fault = self.faults.take(verb, info.resource_key, info.namespace, info.name)
        if fault is not None:
            await fault.wait()
            if fault.status is not None:
                code, reason, msg, details, headers = fault.answer()
                raise ApiError(code, reason, msg, details, headers)
        q = request.query
        if rt.virtual:
            return await self._review(request, user, rt)
        dry_run = bool(q.get("dryRun"))
        if verb == "get":
            if info.subresource == "log":
                return await self._log(request, info)
            return self._get(request, info)
        if verb == "list":
            return self._list(request, info)
        if verb == "watch":
            return await self._watch(request, info)
        warnings: list[str] = []
        strict = q.get("fieldValidation") == "Strict"
        if verb == "create":
            if info.subresource == "token":
                return await self._token_request(request, info)
            if info.name:
                raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
            body = await self._body(request)
            e = self.store.create(rt, info.namespace, body, user=user, dry_run=dry_run, warnings=warnings, strict=strict)
            return _json(e.raw_for(rt), 201, self._warn(warnings))
        if verb == "update":
            body = await self._body(request)
            e = self.store.update(
                rt, info.namespace, info.name, body, subresource=info.subresource, user=user, dry_run=dry_run,
                warnings=warnings, strict=strict,
            )
            return _json(e.raw_for(rt), 200, self._warn(warnings))
        if verb == "patch":
            raw = await request.read()
            e = self.store.patch(
                rt, info.namespace, info.name, request.headers.get("Content-Type", ""), raw,
                subresource=info.subresource, user=user, dry_run=dry_run, warnings=warnings, strict=strict,
                field_manager=q.get("fieldManager"), force=_truthy(q.get("force")),
            )
            return _json(e.raw_for(rt), 200, self._warn(warnings))
        if verb == "delete":
            opts = await self._delete_options(request)
            obj, removed = self.store.delete(rt, info.namespace, info.name, opts, dry_run=dry_run or bool(opts.get("dryRun")))
            if removed and not rt.return_deleted:
                return _json(_status_ok(rt, info.name, obj["metadata"].get("uid", "")))
            return _json(obj)
        if verb == "deletecollection":
            opts = await self._delete_options(request)
            labels, fields = self._selectors(request, rt)
            deleted = []
            for e in self.store.list_entries(rt, info.namespace or None, labels, fields):
                try:
                    obj, _ = self.store.delete(rt, e.ns, e.name, opts, dry_run=dry_run)
                    deleted.append(obj)
                except ApiError:
                    pass
            return _json(
                {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": {"resourceVersion": str(self.store.rv)}, "items": deleted}
            )
        raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")

    @staticmethod
    def _warn(warnings: list[str]) -> dict[str, str] | None:
        if not warnings:
            return None
        return {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)}

    async def _body(self, request: web.Request) -> Any:
        raw = await request.read()
        if len(raw) > MAX_BODY:
            raise ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY}")
        ct = request.headers.get("Content-Type", "application/json").split(";")[0].strip().lower()
        if ct in ("application/yaml", "application/x-yaml", "text/yaml"):
            import yaml

            try:
                return yaml.safe_load(raw)
            except yaml.YAMLError as e:
                raise bad_request(f"error decoding YAML: {e}") from None
        if ct.startswith("application/vnd.kubernetes.protobuf"):
            try:
                return decode_protobuf(raw)
            except (ValueError, IndexError, UnicodeDecodeError) as e:
                raise bad_request(f"error decoding protobuf body: {e}") from None
        try:
            return loads(raw) if raw else None
        except ValueError as e:
            raise bad_request(f"couldn't get version/kind; json parse error: {e}") from None

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        raw = await request.read() if request.can_read_body else b""
        if raw.strip():
            try:
                body = loads(raw)
            except ValueError as e:
                raise bad_request(f"couldn't decode DeleteOptions: {e}") from None
            if isinstance(body, dict):
                opts.update(body)
        q = request.query
        if "gracePeriodSeconds" in q:
            try:
                opts["gracePeriodSeconds"] = int(q["gracePeriodSeconds"])
            except ValueError:
                raise bad_request("gracePeriodSeconds must be an integer") from None
        if "propagationPolicy" in q:
            opts["propagationPolicy"] = q["propagationPolicy"]
        if "orphanDependents" in q:
            opts["orphanDependents"] = _truthy(q["orphanDependents"])
        if q.get("dryRun"):
            opts["dryRun"] = [q["dryRun"]]
        if opts.get("gracePeriodSeconds") is not None and not isinstance(opts["gracePeriodSeconds"], int):
            raise bad_request("gracePeriodSeconds must be an integer")
        return opts

    def _selectors(self, request: web.Request, rt: ResourceType) -> tuple[LabelSelector | None, FieldSelector | None]:
        q = request.query
        ls = q.get("labelSelector")
        fs = q.get("fieldSelector")
        allowed = rt.field_selectors or (("metadata.name", "metadata.namespace") if rt.namespaced else ("metadata.name",))
        if rt.namespaced and "metadata.namespace" not in allowed:
            allowed = allowed + ("metadata.namespace",)
        return (LabelSelector(ls) if ls else None, FieldSelector(fs, allowed) if fs else None)

    def _get(self, request: web.Request, info: ReqInfo) -> web.StreamResponse:
        rt = info.rt
        e = self.store.get_entry(rt, info.namespace, info.name)
        accept = request.headers.get("Accept", "")
        if "as=" in accept:
            if _wants(accept, "Table"):
                obj = rt.to_view(e.obj)
                return _json(tables.table(rt, [obj], e.obj["metadata"]["resourceVersion"], request.query.get("includeObject", "Metadata")))
            if _wants(accept, "PartialObjectMetadata"):
                return _json({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": e.obj["metadata"]})
        return _json(e.raw_for(rt))

    def _list(self, request: web.Request, info: ReqInfo) -> web.StreamResponse:
        rt = info.rt
        q = request.query
        labels, fields = self._selectors(request, rt)
        try:
            limit = int(q.get("limit") or 0)
        except ValueError:
            raise bad_request(f'strconv.ParseInt: parsing "{q["limit"]}": invalid syntax') from None
        token = q.get("continue") or None
        if token and q.get("resourceVersion"):
            raise bad_request("specifying resource version is not allowed when using continue")
        entries, list_rv, cont, remaining = self.store.list_page(rt, info.namespace or None, labels, fields, limit, token)
        rv = str(list_rv)
        meta: dict[str, Any] = {"resourceVersion": rv}
        if cont:
            meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        accept = request.headers.get("Accept", "")
        if "as=" in accept:
            if _wants(accept, "Table"):
                objs = [rt.to_view(e.obj) for e in entries]
                tbl = tables.table(rt, objs, rv, q.get("includeObject", "Metadata"))
                tbl["metadata"] = meta
                return _json(tbl)
            if _wants(accept, "PartialObjectMetadataList"):
                items = [{"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": e.obj["metadata"]} for e in entries]
                return _json({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "items": items})
        head = (
            b'{"kind":"' + rt.list_kind.encode() + b'","apiVersion":"' + rt.api_version.encode()
            + b'","metadata":' + dumps(meta) + b',"items":['
        )
        return _json(head + b",".join(e.raw_for(rt) for e in entries) + b"]}")

    async def _watch(self, request: web.Request, info: ReqInfo) -> web.StreamResponse:
        rt = info.rt
        q = request.query
        labels, fields = self._selectors(request, rt)
        if info.name:
            extra = FieldSelector(f"metadata.name={info.name}", ("metadata.name",))
            if fields is None:
                fields = extra
            else:
                fields.reqs.extend(extra.reqs)
        sie = q.get("sendInitialEvents")
        send_initial = None if sie is None else _truthy(sie)
        w = self.store.watch(
            rt,
            info.namespace or None,
            q.get("resourceVersion"),
            labels,
            fields,
            bookmarks=_truthy(q.get("allowWatchBookmarks")),
            send_initial_events=send_initial,
        )
        accept = request.headers.get("Accept", "")
        as_table = "as=Table" in accept and _wants(accept, "Table")
        include = q.get("includeObject", "Metadata")
        try:
            timeout = float(q.get("timeoutSeconds") or 1800)
        except ValueError:
            timeout = 1800.0
        loop = asyncio.get_running_loop()
        handle = loop.call_later(max(timeout, 0.0), w.close)
        self.c._watches.add(w)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            first_table = True
            while True:
                if w.queue:
                    items = list(w.queue)
                    w.queue.clear()
                    chunks = []
                    for etype, payload in items:
                        if etype == BOOKMARK:
                            rv, initial_end = payload
                            if as_table:
                                continue
                            md: dict[str, Any] = {"resourceVersion": str(rv)}
                            if initial_end:
                                md["annotations"] = {"k8s.io/initial-events-end": "true"}
                            chunks.append(dumps({"type": BOOKMARK, "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": md}}) + b"\n")
                        elif etype == ERROR:
                            chunks.append(dumps({"type": ERROR, "object": payload}) + b"\n")
                        elif as_table:
                            obj = rt.to_view(payload.entry.obj)
                            tbl = tables.table(rt, [obj], obj["metadata"].get("resourceVersion", ""), include, with_columns=first_table)
                            first_table = False
                            chunks.append(dumps({"type": etype, "object": tbl}) + b"\n")
                        else:
                            chunks.append(payload.line(etype, rt))
                    await resp.write(b"".join(chunks))
                    continue
                if w.closed:
                    break
                w.wake.clear()
                await w.wake.wait()
            await resp.write_eof()
        except ConnectionResetError:
            pass
        finally:
            handle.cancel()
            self.store.unwatch(w)
            self.c._watches.discard(w)
        return resp

    async def _log(self, request: web.Request, info: ReqInfo) -> web.StreamResponse:
        e = self.store.get_entry(info.rt, info.namespace, info.name)
        return await self.c.kubelet.pods_log(request, info.namespace, info.name, e.obj)

    async def _token_request(self, request: web.Request, info: ReqInfo) -> web.StreamResponse:
        body = await self._body(request)
        return _json(request_token(self.auth, self.c._token_lookup, info.namespace, info.name, body), 201)

    async def _review(self, request: web.Request, user: UserInfo, rt: ResourceType) -> web.StreamResponse:
        body = await self._body(request)
        if not isinstance(body, dict):
            raise bad_request("expected an object")
        if rt.kind == "TokenReview":
            return _json(review_token(self.auth, self.c._token_lookup, body), 201)
        spec = body.get("spec") or {}
        out = dict(body)
        out["apiVersion"] = rt.api_version
        out["kind"] = rt.kind
        out.setdefault("metadata", {})["creationTimestamp"] = None
        if rt.kind == "SelfSubjectReview":
            out["metadata"]["creationTimestamp"] = now_rfc3339()
            info: dict[str, Any] = {"username": user.name}
            if user.uid:
                info["uid"] = user.uid
            info["groups"] = list(user.groups)
            if user.extra:
                info["extra"] = {k: list(v) for k, v in user.extra.items()}
            out["status"] = {"userInfo": info}
            return _json(out, 201)
        subject = user
        if rt.kind == "SubjectAccessReview":
            subject = UserInfo(spec.get("user", ""), list(spec.get("groups") or []))
        if rt.kind == "SelfSubjectRulesReview":
            ns = spec.get("namespace", "")
            if "system:masters" in subject.groups:
                rules = [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
            else:
                rules = self.authorizer.rules_review(subject, ns)
            out["status"] = {
                "resourceRules": [r for r in rules if "nonResourceURLs" not in r],
                "nonResourceRules": [r for r in rules if "nonResourceURLs" in r],
                "incomplete": False,
            }
            return _json(out, 201)
        ra = spec.get("resourceAttributes")
        nra = spec.get("nonResourceAttributes")
        if ra:
            attrs = Attributes(
                verb=ra.get("verb", ""),
                api_group=ra.get("group", ""),
                resource=ra.get("resource", ""),
                subresource=ra.get("subresource", ""),
                namespace=ra.get("namespace", ""),
                name=ra.get("name", ""),
            )
        elif nra:
            attrs = Attributes(verb=nra.get("verb", ""), api_group="", resource="", path=nra.get("path", ""))
        else:
            raise ApiError(422, "Invalid", f'{rt.kind}.authorization.k8s.io "" is invalid: spec.resourceAttributes: Invalid value: "null": exactly one of nonResourceAttributes or resourceAttributes must be specified')
        allowed, reason = self.authorizer.authorize(subject, attrs)
        st: dict[str, Any] = {"allowed": allowed}
        if reason:
            st["reason"] = reason
        out["status"] = st
        return _json(out, 201)


def _group_order(item: tuple[str, list[str]]) -> tuple[int, str]:
    g = item[0]
    builtin = g.endswith(".k8s.io") or "." not in g
    return (0 if builtin else 1, g)


# ------------------------------------------------------------------------------------------
# bootstrap objects


def _bootstrap_rbac() -> list[dict[str, Any]]:
    rbac = "rbac.authorization.k8s.io/v1"
    read = ["get", "list", "watch"]
    write = ["create", "delete", "deletecollection", "patch", "update"]
    core = ["pods", "pods/log", "pods/status", "configmaps", "secrets", "serviceaccounts", "events"]
    discovery_urls = ["/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/openapi", "/openapi/*", "/readyz", "/version", "/version/"]

    def cr(name: str, rules: list[dict[str, Any]], labels: dict[str, str] | None = None) -> dict[str, Any]:
        md: dict[str, Any] = {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(labels or {})}}
        return {"apiVersion": rbac, "kind": "ClusterRole", "metadata": md, "rules": rules}

    def crb(name: str, role: str, groups: list[str]) -> dict[str, Any]:
        return {
            "apiVersion": rbac,
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g} for g in groups],
        }

    return [
        cr("cluster-admin", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}, {"nonResourceURLs": ["*"], "verbs": ["*"]}]),
        cr(
            "admin",
            [
                {"apiGroups": [""], "resources": core, "verbs": read + write},
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": read + write},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": read + write},
            ],
        ),
        cr(
            "edit",
            [
                {"apiGroups": [""], "resources": core, "verbs": read + write},
                {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": read + write},
            ],
        ),
        cr("view", [{"apiGroups": [""], "resources": ["pods", "pods/log", "pods/status", "configmaps", "serviceaccounts", "events"], "verbs": read}]),
        cr("system:discovery", [{"nonResourceURLs": discovery_urls, "verbs": ["get"]}]),
        cr("system:public-info-viewer", [{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        cr(
            "system:basic-user",
            [
                {"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]},
                {"apiGroups": ["authentication.k8s.io"], "resources": ["selfsubjectreviews"], "verbs": ["create"]},
            ],
        ),
        cr(
            "system:auth-delegator",
            [
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]},
            ],
        ),
        crb("cluster-admin", "cluster-admin", ["system:masters"]),
        crb("system:discovery", "system:discovery", ["system:authenticated"]),
        crb("system:basic-user", "system:basic-user", ["system:authenticated"]),
        crb("system:public-info-viewer", "system:public-info-viewer", ["system:authenticated", "system:unauthenticated"]),
    ]


# ------------------------------------------------------------------------------------------
# DevCluster


class DevCluster:
    """An in-process Kubernetes API server + simulated kubelet, served from a background thread.

    ``start()`` binds ``host:port`` (0 = a free port); ``stop()`` shuts everything down. The
    synchronous helpers (``create/get/list/patch/update/delete/apply``) act as the admin
    user directly on the store and are thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gc: bool = True,
        watch_history: int = 50_000,
        pod_start_delay: float = 0.05,
        restart_backoff: float = 0.2,
        bookmark_interval: float = 10.0,
        tls: bool = True,
        tls_port: int = 0,
        node_options: dict[str, Any] | None = None,
    ) -> None:
        """``node_options``: keyword options of the simulated node
        (:class:`controller.nodesim.core.NodeRuntime`: ``container_log_max_size``,
        ``follow_at_rotation``, ``gc_after_exit``, ``local_processes``, ``workdir``, ...)."""
        self.host = host
        self._port = port
        self._tls = tls
        self._tls_port = tls_port
        self._tls_sock: socket.socket | None = None
        self._tls_files: tuple[str, str, str] | None = None
        self.bookmark_interval = bookmark_interval
        self.store = Store(gc=gc, history=watch_history)
        self.auth = Auth()
        self.faults = Faults()
        self.authorizer = Authorizer(self.store.list_objects)
        self.store.authorizer = self.authorizer
        self.admission = ValidatingAdmission(self.store)
        self.store.admission = self.admission
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.requests_by_user: collections.defaultdict[str, collections.Counter[tuple[str, str]]] = (
            collections.defaultdict(collections.Counter)
        )
        # Optional, off by default: called on the server loop at the arrival of every resource request
        # (after authentication, before authorization) as ``on_request(verb, resource, namespace, name,
        # user)``. Keep it cheap: it runs inline. The bench uses it to time-stamp the controller's pod DELETEs.
        self.on_request: Callable[[str, str, str, str, str], None] | None = None
        from controller.nodesim import emulator as _nodesim

        self.kubelet = _nodesim.EmulatorKubelet(
            self.store,
            request_token=lambda ns, sa, body: request_token(self.auth, self._token_lookup, ns, sa, body),
            run_sync=self._call,
            base_url=lambda: self.url,
            https_url=lambda: self.https_url,
            ca_pem=lambda: self.ca_pem,
            start_delay=pod_start_delay,
            restart_backoff=restart_backoff,
            **(node_options or {}),
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._sock: socket.socket | None = None
        self._watches: set[Watcher] = set()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._bookmark_handle: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------- lifecycle

    @property
    def admin_token(self) -> str:
        """Bearer token of user ``admin`` (group ``system:masters``)."""
        return self.auth.admin_token

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._sock is None:
            raise RuntimeError("DevCluster is not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    @property
    def https_url(self) -> str | None:
        """``https://HOST:TLSPORT`` (same API; kubectl needs it to send bearer tokens), or None."""
        if self._tls_sock is None:
            return None
        return f"https://{self.host}:{self._tls_sock.getsockname()[1]}"

    @property
    def ca_pem(self) -> bytes | None:
        """PEM of the CA that signed the https listener's certificate."""
        m = tls_material() if self._tls_sock is not None else None
        return m[0] if m else None

    def start(self) -> DevCluster:
        """Bind, serve and start the kubelet in a background thread; returns self."""
        if self._thread is not None:
            return self
        if self._started.is_set():
            raise RuntimeError("a DevCluster cannot be restarted; create a new one")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        sock.listen(1024)
        sock.setblocking(False)
        self._sock = sock
        material = tls_material() if self._tls else None
        if material is not None:
            self.store.root_ca_pem = material[0].decode()
            import tempfile

            d = tempfile.mkdtemp(prefix="devcluster-tls-")
            paths: list[str] = []
            for n, data in zip(("ca.crt", "tls.crt", "tls.key"), material):
                fp = os.path.join(d, n)
                with open(fp, "wb") as f:
                    f.write(data)
                paths.append(fp)
            self._tls_files = (paths[0], paths[1], paths[2])
            ts = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            ts.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            ts.bind((self.host, self._tls_port))
            ts.listen(1024)
            ts.setblocking(False)
            self._tls_sock = ts
        self._thread = threading.Thread(target=self._serve, name="devcluster", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            raise RuntimeError("devcluster failed to start") from self._start_error
        return self

    def _rbac_listener(self, kind: str) -> Any:
        def listener(bucket: Any, event: Any) -> None:
            self.authorizer.invalidate(kind, event.entry.obj, deleted=event.type == "DELETED")
        return listener

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # noqa: BLE001
            self._start_error = e
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    async def _setup(self) -> None:
        loop = asyncio.get_running_loop()
        store = self.store
        store.defer = loop.call_soon
        store.defer_later = lambda d, fn: loop.call_later(d, fn)
        store.make_event = asyncio.Event
        for key, kind in (
            (("rbac.authorization.k8s.io", "roles"), "Role"),
            (("rbac.authorization.k8s.io", "rolebindings"), "RoleBinding"),
            (("rbac.authorization.k8s.io", "clusterroles"), "ClusterRole"),
            (("rbac.authorization.k8s.io", "clusterrolebindings"), "ClusterRoleBinding"),
        ):
            # Incremental index updates keep thousands of per-agent Roles linear, not quadratic.
            store.add_listener(key, self._rbac_listener(kind))
        self.kubelet.attach(loop)
        for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
            store.create(store.resolve("namespaces"), "", {"metadata": {"name": ns}})
        for obj in _bootstrap_rbac():
            store.create(store.type_for_kind(obj["apiVersion"], obj["kind"]), "", obj)  # type: ignore[arg-type]
        server = ApiServer(self)
        self._runner = web.AppRunner(
            server.app(), handle_signals=False, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.SockSite(self._runner, self._sock)  # type: ignore[arg-type]
        await site.start()
        if self._tls_sock is not None and self._tls_files is not None:
            import ssl

            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(self._tls_files[1], self._tls_files[2])
            tsite = web.SockSite(self._runner, self._tls_sock, ssl_context=ctx)
            await tsite.start()
        self._schedule_bookmarks()

    def _schedule_bookmarks(self) -> None:
        assert self._loop is not None

        def tick() -> None:
            self.store.send_bookmarks()
            self._schedule_bookmarks()

        self._bookmark_handle = self._loop.call_later(self.bookmark_interval, tick)

    def stop(self) -> None:
        """Stop serving, end watches and pod tasks, join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._bookmark_handle is not None:
                self._bookmark_handle.cancel()
            for w in self.store.all_watchers():
                w.close()
            await self.kubelet.close()
            if self._runner is not None:
                await self._runner.cleanup()

        try:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(15)
        except Exception:
            log.exception("devcluster: error during shutdown")
        loop.call_soon_threadsafe(loop.stop)
        thread.join(15)
        self._thread = None
        self._loop = None
        for sk in (self._sock, self._tls_sock):
            if sk is not None:
                sk.close()
        if self._tls_files is not None:
            import shutil

            shutil.rmtree(os.path.dirname(self._tls_files[0]), ignore_errors=True)

    def __enter__(self) -> DevCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- loop access

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the server loop and return its result (re-raising its exception)."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("DevCluster is not started")
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(60)

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` on the server thread (safe access to :attr:`store`)."""
        return self._call(fn)

    # ---------------------------------------------------------------- users / credentials

    def add_user(self, name: str, groups: Iterable[str] = ()) -> str:
        """Register a user (with ``system:authenticated``); returns its bearer token."""
        return self.auth.add_user(name, groups)

    def _token_lookup(self, resource: str, ns: str, name: str) -> dict[str, Any] | None:
        """The object a token names (tokens.Lookup; on the server loop): a ServiceAccount, Pod,
        Secret or Node — the emulator's one node has no Node object, so it is a name without uid."""
        b = self.store.buckets.get(("", resource))
        if b is not None:
            e = b.objects.get((ns, name))
            return e.obj if e is not None else None
        if resource == "nodes" and name == self.kubelet.node_name:
            return {"metadata": {"name": name}}
        return None

    def service_account_token(self, ns: str, sa: str) -> str:
        """A token authenticating as ``system:serviceaccount:ns:sa`` (valid while the SA exists)."""
        uid = ""
        if self._loop is not None:
            try:
                e = self._call(lambda: self.store.buckets[("", "serviceaccounts")].objects.get((ns, sa)))
                uid = e.uid if e is not None else ""
            except Exception:  # noqa: BLE001
                uid = ""
        return self.auth.sa_token(ns, sa, uid)

    def kubeconfig_path(
        self,
        path: str,
        user: str = "admin",
        namespace: str = "default",
        token: str | None = None,
        tls: bool | None = None,
    ) -> str:
        """Write a kubeconfig for ``user`` (``admin``, an added user, or ``system:serviceaccount:NS:SA``).

        By default it points at the https listener (with the CA embedded): client-go (kubectl)
        never sends bearer tokens over plain http. ``tls=False`` writes the http URL.
        """
        import yaml

        if token is None:
            if user == "admin":
                token = self.admin_token
            elif user.startswith("system:serviceaccount:"):
                _, _, rest = user.partition("system:serviceaccount:")
                sns, _, sname = rest.partition(":")
                token = self.service_account_token(sns, sname)
            else:
                token = self.auth.names.get(user)
                if token is None:
                    raise KeyError(f"unknown user {user!r}; add it with add_user()")
        use_tls = (self.https_url is not None) if tls is None else tls
        cluster: dict[str, Any] = {"server": self.url}
        if use_tls:
            if self.https_url is None or self.ca_pem is None:
                raise RuntimeError("the https listener is not available (cryptography missing or tls=False)")
            cluster = {
                "server": self.https_url,
                "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
            }
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "devcluster", "cluster": cluster}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": user, "namespace": namespace}}],
            "current-context": "devcluster",
            "preferences": {},
        }
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            yaml.safe_dump(cfg, f)
        os.replace(tmp, path)
        return path

    # ---------------------------------------------------------------- synchronous object access (admin)

    def _rt(self, kind: str, api_version: str | None = None) -> ResourceType:
        return self.store.resolve(kind, api_version)

    def _ns(self, rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "default") if rt.namespaced else ""

    def create(self, obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """Create ``obj`` (apiVersion + kind required); returns the stored object."""
        body = loads(dumps(obj))

        def fn() -> dict[str, Any]:
            rt = self.store.type_for_kind(body.get("apiVersion", ""), body.get("kind", ""))
            if rt is None:
                raise ApiError(404, "NotFound", f'no matches for kind "{body.get("kind")}" in version "{body.get("apiVersion")}"')
            ns = self._ns(rt, namespace or (body.get("metadata") or {}).get("namespace"))
            return loads(self.store.create(rt, ns, body).raw_for(rt))

        return self._call(fn)

    def get(self, kind: str, name: str, namespace: str | None = None, *, api_version: str | None = None) -> dict[str, Any] | None:
        """The object, or None if it does not exist. ``kind``: Kind, plural, short name or plural.group."""

        def fn() -> dict[str, Any] | None:
            rt = self._rt(kind, api_version)
            e = self.store.find(rt, self._ns(rt, namespace), name)
            return loads(e.raw_for(rt)) if e is not None else None

        return self._call(fn)

    def list(
        self,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        api_version: str | None = None,
    ) -> list[dict[str, Any]]:
        """Objects of ``kind`` (all namespaces when ``namespace`` is None)."""

        def fn() -> list[dict[str, Any]]:
            rt = self._rt(kind, api_version)
            allowed = rt.field_selectors or ("metadata.name", "metadata.namespace")
            ls = LabelSelector(label_selector) if label_selector else None
            fs = FieldSelector(field_selector, allowed) if field_selector else None
            return [loads(e.raw_for(rt)) for e in self.store.list_entries(rt, namespace if rt.namespaced else None, ls, fs)]

        return self._call(fn)

    def patch(
        self,
        kind: str,
        name: str,
        patch: Any,
        namespace: str | None = None,
        *,
        type: str = "merge",
        subresource: str | None = None,
        api_version: str | None = None,
    ) -> dict[str, Any]:
        """Patch (``type``: merge | json | strategic) an object; returns the result."""
        ct = {
            "merge": "application/merge-patch+json",
            "json": "application/json-patch+json",
            "strategic": "application/strategic-merge-patch+json",
        }[type]
        raw = dumps(patch)

        def fn() -> dict[str, Any]:
            rt = self._rt(kind, api_version)
            e = self.store.patch(rt, self._ns(rt, namespace), name, ct, raw, subresource=subresource or "")
            return loads(e.raw_for(rt))

        return self._call(fn)

    def update(self, obj: dict[str, Any], subresource: str | None = None) -> dict[str, Any]:
        """PUT ``obj`` (optimistic concurrency if it carries a resourceVersion)."""
        body = loads(dumps(obj))

        def fn() -> dict[str, Any]:
            rt = self.store.type_for_kind(body.get("apiVersion", ""), body.get("kind", ""))
            if rt is None:
                raise ApiError(404, "NotFound", f'no matches for kind "{body.get("kind")}"')
            md = body.get("metadata") or {}
            e = self.store.update(rt, self._ns(rt, md.get("namespace")), md.get("name", ""), body, subresource=subresource or "")
            return loads(e.raw_for(rt))

        return self._call(fn)

    def delete(
        self,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
        api_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Delete an object; returns its last state, or None if it did not exist."""
        opts: dict[str, Any] = {}
        if grace_period_seconds is not None:
            opts["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy is not None:
            opts["propagationPolicy"] = propagation_policy
        pre = {k: v for k, v in (("uid", uid), ("resourceVersion", resource_version)) if v}
        if pre:
            opts["preconditions"] = pre

        def fn() -> dict[str, Any] | None:
            rt = self._rt(kind, api_version)
            try:
                obj, _ = self.store.delete(rt, self._ns(rt, namespace), name, opts)
            except ApiError as e:
                if e.code == 404:
                    return None
                raise
            return obj

        return self._call(fn)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create, or replace the spec/data of, ``obj`` (like a simple ``kubectl apply``)."""
        body = loads(dumps(obj))

        def fn() -> dict[str, Any]:
            rt = self.store.type_for_kind(body.get("apiVersion", ""), body.get("kind", ""))
            if rt is None:
                raise ApiError(404, "NotFound", f'no matches for kind "{body.get("kind")}" in version "{body.get("apiVersion")}"')
            md = body.setdefault("metadata", {})
            ns = self._ns(rt, md.get("namespace"))
            e = self.store.find(rt, ns, md.get("name", ""))
            if e is None:
                return loads(self.store.create(rt, ns, body).raw_for(rt))
            md.pop("resourceVersion", None)
            res = self.store.patch(rt, ns, md["name"], "application/merge-patch+json", dumps(body))
            return loads(res.raw_for(rt))

        return self._call(fn)

    def apply_file(self, path: str) -> _List[dict[str, Any]]:
        """Apply every document of a YAML file (e.g. ``manifests/crd.yaml``)."""
        import yaml

        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        out: _List[dict[str, Any]] = []
        for d in docs:
            if d.get("kind") == "List":
                out.extend(self.apply(i) for i in d.get("items") or ())
            else:
                out.append(self.apply(d))
        return out

    def wait_for(self, predicate: Callable[[], T], timeout: float = 30.0, interval: float = 0.02) -> T:
        """Poll ``predicate`` until it returns a truthy value (TimeoutError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            v = predicate()
            if v:
                return v
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    # ---------------------------------------------------------------- chaos helpers

    def compact(self) -> None:
        """Forget the watch history: watches from older resourceVersions get 410 Expired."""
        self._call(self.store.compact)

    def break_watches(self, resource: str | None = None) -> int:
        """Close open watch streams (of ``resource`` plural, or all); returns how many."""

        def fn() -> int:
            n = 0
            for w in self.store.all_watchers():
                if resource is None or w.rt.plural == resource:
                    w.close()
                    n += 1
            return n

        return self._call(fn)
