"""Object store and API semantics of the devcluster Kubernetes API emulator.

Everything here runs on the server's event-loop thread and is synchronous: one write is atomic
(no ``await`` inside), so the store needs no locks. The HTTP layer (``server.py``) and the
thread-safe helpers of :class:`~controller.devcluster.DevCluster` both call into
:class:`Store`.

Design (for speed):

* stored objects are immutable once committed; every write builds a new dict. Each
  :class:`Entry` caches its JSON encoding, so GET, LIST and watch fan-out never re-serialise;
* one global resourceVersion counter; per-resource watch history in a bounded list searched
  with ``bisect`` (no linear scans); ``410 Expired`` for watches older than the history;
* O(1) indexes: by namespace, by label (key, value), by uid, by owner uid.

API semantics follow kube-apiserver: generateName, AlreadyExists/Conflict/NotFound/Invalid,
optimistic concurrency, status subresource, generation, finalizers and deletionTimestamp,
graceful pod deletion, owner-reference garbage collection (Background/Foreground/Orphan),
namespace and CRD termination, CRD registration with structural schemas (``schema.py``).
"""

from __future__ import annotations

import base64
import bisect
import copy
import functools
import json
import random
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch

try:  # orjson is several times faster; the stdlib is the fallback
    import orjson as _orjson

    def dumps(obj: Any) -> bytes:
        """Compact JSON encoding (bytes). orjson stops at 254 levels of nesting, which the API server
        accepts: such objects (and only those) take the stdlib path."""
        try:
            return _orjson.dumps(obj)
        except _orjson.JSONEncodeError as exc:
            if "Recursion limit" not in str(exc):
                raise
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        """JSON decoding."""
        return _orjson.loads(data)

except ImportError:  # pragma: no cover

    def dumps(obj: Any) -> bytes:
        """Compact JSON encoding (bytes)."""
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()

    def loads(data: bytes | str) -> Any:
        """JSON decoding."""
        return json.loads(data)


try:
    from .schema import StructuralSchema
except ImportError:  # pragma: no cover - the schema module is developed separately
    StructuralSchema = None  # type: ignore[assignment,misc]

try:
    from .rbac import Attributes, Authorizer, UserInfo
except ImportError:  # pragma: no cover
    Attributes = Authorizer = UserInfo = None  # type: ignore[assignment,misc]


ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"
STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")
CRD_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
NODE_NAME = "devcluster-node"
_MISSING: Any = object()


def clone(obj: Any) -> Any:
    """A deep copy of a JSON value (through the JSON codec: faster than copy.deepcopy)."""
    return loads(dumps(obj))


def now_rfc3339(t: float | None = None) -> str:
    """RFC 3339 timestamp with second precision, like metav1.Time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def now_micro(t: float | None = None) -> str:
    """RFC 3339 timestamp with microseconds, like metav1.MicroTime."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1e6):06d}Z"


def parse_time(s: str) -> float | None:
    """Parse an RFC 3339 timestamp to epoch seconds (None if unparsable)."""
    import datetime as _dt

    try:
        return _dt.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------------------
# errors


class ApiError(Exception):
    """An error answered as a k8s ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` object of this error."""
        st: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.reason:
            del st["reason"]     # an unclassified error (e.g. a kubelet the API server cannot reach)
        if self.details is not None:
            st["details"] = self.details
        return st


def _details(rt: ResourceType | None, name: str | None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if rt is not None:
        if rt.group:
            d["group"] = rt.group
        d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    """404 NotFound for ``name`` of ``rt``."""
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    """409 AlreadyExists."""
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', _details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    """409 Conflict (optimistic concurrency / preconditions)."""
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}', _details(rt, name)
    )


def precondition_conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    """409 Conflict of a DELETE whose preconditions do not hold. kube-apiserver's rest.BeforeDelete
    names the Kind here, not the resource: ``Operation cannot be fulfilled on ConfigMap "x": ...``
    (``Agent.agentcontroller.dev`` for a custom resource), and so do the details."""
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    details: dict[str, Any] = {"name": name, **({"group": rt.group} if rt.group else {}), "kind": rt.kind}
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind} "{name}": {why}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    """403 Forbidden."""
    target = f'{rt.qualified} "{name}"' if name else rt.qualified
    return ApiError(403, "Forbidden", f"{target} is forbidden: {why}", _details(rt, name))


@dataclass
class Cause:
    """One field error of a 422 Invalid answer."""

    field: str
    type: str
    message: str  # full text "field: detail"


def _cause_text(type_: str) -> str:
    return {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueNotFound": "Not found",
        "FieldValueForbidden": "Forbidden",
        "FieldValueTooLong": "Too long",
        "FieldValueTooMany": "Too many",
        "FieldValueTypeInvalid": "Invalid value",
    }.get(type_, "Invalid value")


def _q(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def ferr(path: str, type_: str, value: Any = _MISSING, detail: str = "") -> Cause:
    """Build a field error with the kube text, e.g. ``spec.x: Invalid value: "v": detail``."""
    text = f"{path}: {_cause_text(type_)}"
    if value is not _MISSING and type_ not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"):
        text += f": {_q(value)}"
    if detail:
        text += f": {detail}"
    return Cause(path, type_, text)


def invalid(rt: ResourceType, name: str, causes: list[Any]) -> ApiError:
    """422 Invalid with ``details.causes``; ``causes`` are :class:`Cause` or schema FieldErrors."""
    msgs = [c.message for c in causes]
    joined = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    kind = rt.kind + ("." + rt.group if rt.group else "")
    out_causes = []
    for c in causes:
        m = c.message
        prefix = f"{c.field}: "
        if c.field and m.startswith(prefix):
            m = m[len(prefix) :]
        out_causes.append({"reason": c.type, "message": m, "field": c.field})
    details: dict[str, Any] = {"name": name, "kind": rt.kind, "causes": out_causes}
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)


# ------------------------------------------------------------------------------------------
# selectors


_SET_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s*(==|=|!=|>|<)\s*([^\s,()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>,()]+)\s*$")


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


class LabelSelector:
    """A parsed label selector (``a=b,c!=d,e in (x,y),f notin (z),g,!h``)."""

    __slots__ = ("reqs", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.reqs: list[tuple[str, str, tuple[str, ...]]] = []
        for part in _split_top(text):
            m = _SET_RE.match(part)
            if m:
                vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
                self.reqs.append((m.group(1), m.group(2), vals))
                continue
            m = _OP_RE.match(part)
            if m:
                op = {"==": "=", "=": "="}.get(m.group(2), m.group(2))
                if op in (">", "<"):
                    try:
                        int(m.group(3))
                    except ValueError:
                        raise bad_request(
                            "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                        ) from None
                self.reqs.append((m.group(1), op, (m.group(3),)))
                continue
            m = _EXISTS_RE.match(part)
            if m:
                self.reqs.append((m.group(2), "!" if m.group(1) else "exists", ()))
                continue
            raise bad_request(f"unable to parse requirement: found '{part.strip()}', expected: in, notin, =, ==, !=, gt, lt")

    def matches(self, labels: dict[str, str] | None) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        labels = labels or {}
        for key, op, vals in self.reqs:
            v = labels.get(key)
            if op == "=":
                if v != vals[0]:
                    return False
            elif op == "!=":
                if v == vals[0]:
                    return False
            elif op == "in":
                if v is None or v not in vals:
                    return False
            elif op == "notin":
                if v is not None and v in vals:
                    return False
            elif op == "exists":
                if v is None:
                    return False
            elif op == "!":
                if v is not None:
                    return False
            elif op in (">", "<"):
                try:
                    iv = int(v) if v is not None else None
                except ValueError:
                    return False
                if iv is None or (op == ">" and not iv > int(vals[0])) or (op == "<" and not iv < int(vals[0])):
                    return False
        return True

    def index_candidates(self) -> list[tuple[str, tuple[str, ...]]]:
        """Requirements that can be answered from the label index (key, allowed values)."""
        return [(k, vals) for k, op, vals in self.reqs if op in ("=", "in")]


def _get_path(obj: dict[str, Any], dotted: str) -> Any:
    cur: Any = obj
    for p in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


class FieldSelector:
    """A parsed field selector (``metadata.name=x,status.phase!=Running``)."""

    __slots__ = ("reqs", "text")

    def __init__(self, text: str, allowed: Iterable[str]) -> None:
        self.text = text
        self.reqs: list[tuple[str, bool, str]] = []
        allowed = tuple(allowed)
        for part in _split_top(text):
            m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key = m.group(1)
            if key not in allowed:
                raise bad_request(
                    f'"{key}" is not a known field selector: only "' + '", "'.join(allowed) + '"'
                )
            self.reqs.append((key, m.group(2) != "!=", m.group(3)))

    def name(self) -> str | None:
        """The ``metadata.name=`` value, if the selector pins one."""
        for key, eq, val in self.reqs:
            if key == "metadata.name" and eq:
                return val
        return None

    def matches(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` satisfies every requirement."""
        for key, eq, val in self.reqs:
            v = _get_path(obj, key)
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif v is None:
                v = ""
            elif not isinstance(v, str):
                v = str(v)
            if (v == val) != eq:
                return False
        return True


# ------------------------------------------------------------------------------------------
# resource types


@dataclass(eq=False)
class ResourceType:
    """One served resource (group, version, plural) and how it behaves."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    subresources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    storage_group: str | None = None  # bucket (group, plural); default: own
    storage_version: str | None = None  # apiVersion version objects are stored with
    convert_out: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    convert_in: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    name_check: str = "subdomain"  # subdomain | label | path
    return_deleted: bool = False
    field_selectors: tuple[str, ...] = ()
    crd: str | None = None  # name of the CRD that registered this type
    schema: Any = None  # StructuralSchema for custom resources
    printer_columns: list[dict[str, Any]] | None = None
    virtual: bool = False  # create-only review APIs, never stored

    @property
    def api_version(self) -> str:
        """``group/version`` or ``v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def stored_api_version(self) -> str:
        """The apiVersion objects are stored with."""
        v = self.storage_version or self.version
        g = self.storage_group if self.storage_group is not None else self.group
        return f"{g}/{v}" if g else v

    @property
    def bucket_key(self) -> tuple[str, str]:
        """Key of the storage bucket shared by all versions/views of this resource."""
        return (self.storage_group if self.storage_group is not None else self.group, self.plural)

    @property
    def qualified(self) -> str:
        """``plural.group`` (``pods`` for core), as used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def view_key(self) -> str:
        """Cache key of the serialised form of this view ("" when stored form is served)."""
        return "" if (self.convert_out is None and self.api_version == self.stored_api_version) else self.api_version

    @property
    def status_subresource(self) -> bool:
        """Whether writes of the main resource ignore ``status``."""
        return "status" in self.subresources

    @property
    def list_kind(self) -> str:
        """Kind of the list object."""
        return self.kind + "List"

    def to_view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stored form -> served form (a new dict if anything changes)."""
        if self.convert_out is not None:
            return self.convert_out(obj)
        if obj.get("apiVersion") != self.api_version:
            out = dict(obj)
            out["apiVersion"] = self.api_version
            return out
        return obj

    def from_view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Served form -> stored form (in place when possible)."""
        if self.convert_in is not None:
            return self.convert_in(obj)
        obj["apiVersion"] = self.stored_api_version
        return obj


_POD_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
_EVENT_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
)


def _event_out(obj: dict[str, Any]) -> dict[str, Any]:
    """core/v1 Event -> events.k8s.io/v1 Event."""
    out = dict(obj)
    out["apiVersion"] = "events.k8s.io/v1"
    for core, new in _EVENT_RENAMES:
        if core in out:
            out[new] = out.pop(core)
    return out


def _event_in(obj: dict[str, Any]) -> dict[str, Any]:
    """events.k8s.io/v1 Event -> core/v1 Event."""
    out = dict(obj)
    out["apiVersion"] = "v1"
    for core, new in _EVENT_RENAMES:
        if new in out:
            out[core] = out.pop(new)
    return out


def builtin_types() -> list[ResourceType]:
    """The built-in resources the emulator serves."""
    rbac = "rbac.authorization.k8s.io"
    return [
        ResourceType(
            "", "v1", "namespaces", "namespace", "Namespace", False, ("ns",),
            verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
            subresources={"status": STATUS_VERBS, "finalize": ("update",)},
            name_check="label", return_deleted=True,
            field_selectors=("metadata.name", "status.phase"),
        ),
        ResourceType(
            "", "v1", "pods", "pod", "Pod", True, ("po",), ("all",),
            subresources={"status": STATUS_VERBS, "log": ("get",)},
            return_deleted=True, field_selectors=_POD_FIELDS,
        ),
        ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
        ResourceType(
            "", "v1", "secrets", "secret", "Secret", True,
            field_selectors=("metadata.name", "metadata.namespace", "type"),
        ),
        ResourceType(
            "", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",),
            subresources={"token": ("create",)},
        ),
        ResourceType("", "v1", "events", "event", "Event", True, ("ev",), field_selectors=_EVENT_FIELDS),
        ResourceType(
            "events.k8s.io", "v1", "events", "event", "Event", True, ("ev",),
            storage_group="", storage_version="v1", convert_out=_event_out, convert_in=_event_in,
        ),
        ResourceType(rbac, "v1", "roles", "role", "Role", True, name_check="path"),
        ResourceType(rbac, "v1", "rolebindings", "rolebinding", "RoleBinding", True, name_check="path"),
        ResourceType(rbac, "v1", "clusterroles", "clusterrole", "ClusterRole", False, name_check="path"),
        ResourceType(
            rbac, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False,
            name_check="path",
        ),
        ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
        ResourceType(
            "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", "validatingadmissionpolicy",
            "ValidatingAdmissionPolicy", False, ("vap",), ("api-extensions",),
            subresources={"status": STATUS_VERBS},
        ),
        ResourceType(
            "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
            "validatingadmissionpolicybinding", "ValidatingAdmissionPolicyBinding", False, ("vapb",),
            ("api-extensions",),
        ),
        ResourceType(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
            "CustomResourceDefinition", False, ("crd", "crds"), ("api-extensions",),
            subresources={"status": STATUS_VERBS}, return_deleted=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview",
            "SelfSubjectAccessReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview",
            "SelfSubjectRulesReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "subjectaccessreviews", "subjectaccessreview",
            "SubjectAccessReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview",
            "SelfSubjectReview", False, verbs=("create",), virtual=True,
        ),
    ]


def version_priority(v: str) -> tuple[int, int, int]:
    """Kubernetes version ordering key (v1 > v1beta2 > v1beta1 > v1alpha1 > other); higher is better."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))


# ------------------------------------------------------------------------------------------
# entries, events, watchers


class Entry:
    """A committed object with its cached JSON encodings."""

    __slots__ = ("_raw", "labels", "name", "ns", "obj", "rv", "uid", "views")

    def __init__(self, obj: dict[str, Any], ns: str, name: str, rv: int) -> None:
        self.obj = obj
        self._raw: bytes | None = None
        self.views: dict[str, bytes] | None = None
        self.ns = ns
        self.name = name
        md = obj["metadata"]
        self.uid: str = md.get("uid", "")
        self.labels: dict[str, str] = md.get("labels") or {}
        self.rv = rv

    def raw(self) -> bytes:
        """JSON bytes of the stored form."""
        r = self._raw
        if r is None:
            r = self._raw = dumps(self.obj)
        return r

    def raw_for(self, rt: ResourceType) -> bytes:
        """JSON bytes of the object as served by ``rt`` (a version or a converted view)."""
        vk = rt.view_key
        if not vk:
            return self.raw()
        if self.views is None:
            self.views = {}
        r = self.views.get(vk)
        if r is None:
            r = self.views[vk] = dumps(rt.to_view(self.obj))
        return r

    def copy(self) -> dict[str, Any]:
        """A private deep copy of the object."""
        return loads(self.raw())


class WatchEvent:
    """One change in a bucket (kept in the watch history)."""

    __slots__ = ("_lines", "entry", "name", "ns", "old", "rv", "type")

    def __init__(self, type_: str, rv: int, entry: Entry, old: Entry | None) -> None:
        self.type = type_
        self.rv = rv
        self.ns = entry.ns
        self.name = entry.name
        self.entry = entry  # the new state (for DELETED: the final state)
        self.old = old
        self._lines: dict[tuple[str, str], bytes] | None = None

    def line(self, etype: str, rt: ResourceType) -> bytes:
        """``{"type":..,"object":..}\\n`` for the watch stream; cached per (type, view)."""
        key = (etype, rt.view_key)
        lines = self._lines
        if lines is None:
            lines = self._lines = {}
        b = lines.get(key)
        if b is None:
            b = lines[key] = b'{"type":"' + etype.encode() + b'","object":' + self.entry.raw_for(rt) + b"}\n"
        return b


class Watcher:
    """A watch registered on a bucket; the HTTP handler drains :attr:`queue`."""

    __slots__ = (
        "__weakref__",
        "bookmarks",
        "bucket",
        "closed",
        "fields",
        "labels",
        "max_queue",
        "ns",
        "queue",
        "rt",
        "wake",
    )

    def __init__(
        self,
        bucket: Bucket,
        rt: ResourceType,
        ns: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        bookmarks: bool,
        wake: Any,
        max_queue: int = 500_000,
    ) -> None:
        self.bucket = bucket
        self.rt = rt
        self.ns = ns
        self.labels = labels
        self.fields = fields
        self.queue: deque[tuple[str, Any]] = deque()
        self.wake = wake  # an asyncio.Event (or anything with set())
        self.closed = False
        self.bookmarks = bookmarks
        self.max_queue = max_queue

    def _match(self, e: Entry) -> bool:
        if self.labels is not None and not self.labels.matches(e.labels):
            return False
        if self.fields is not None and not self.fields.matches(e.obj):
            return False
        return True

    def push(self, etype: str, payload: Any) -> None:
        """Queue one item (event type + WatchEvent / bookmark rv / error Status)."""
        if self.closed:
            return
        self.queue.append((etype, payload))
        if len(self.queue) > self.max_queue:  # a client that does not read: drop it
            self.close()
        self.wake.set()

    def offer(self, ev: WatchEvent) -> None:
        """Deliver a bucket event, translated by the selectors (MODIFIED may become ADDED/DELETED)."""
        if self.labels is None and self.fields is None:
            self.push(ev.type, ev)
            return
        if ev.type == ADDED:
            if self._match(ev.entry):
                self.push(ADDED, ev)
        elif ev.type == DELETED:
            if self._match(ev.entry):
                self.push(DELETED, ev)
        else:
            new = self._match(ev.entry)
            old = ev.old is not None and self._match(ev.old)
            if new and old:
                self.push(MODIFIED, ev)
            elif new:
                self.push(ADDED, ev)
            elif old:
                self.push(DELETED, ev)

    def close(self) -> None:
        """End the watch (the HTTP handler finishes the response)."""
        if not self.closed:
            self.closed = True
            self.wake.set()


class Bucket:
    """All objects of one resource (shared by its versions and views)."""

    def __init__(self, key: tuple[str, str], rt: ResourceType, history: int) -> None:
        self.key = key
        self.rt = rt  # the storage-form type
        self.objects: dict[tuple[str, str], Entry] = {}
        self.by_ns: dict[str, dict[str, Entry]] = {}
        self.label_index: dict[str, dict[str, set[tuple[str, str]]]] = {}
        self.history: list[WatchEvent] = []
        self.hist_rv: list[int] = []
        self.hist_start = 0
        self.history_max = history
        self.compacted_rv = 0  # events with rv <= this may be gone
        self.watchers_all: set[Watcher] = set()
        self.watchers_ns: dict[str, set[Watcher]] = {}
        self._sorted: list[tuple[str, str]] | None = None
        self._sorted_ns: dict[str, list[str]] = {}
        self.terminating = False
        self.list_cache: tuple[int, list[dict[str, Any]]] | None = None
        self.version = 0

    def get(self, ns: str, name: str) -> Entry | None:
        """The entry for (ns, name) or None."""
        return self.objects.get((ns, name))

    def sorted_keys(self, ns: str | None) -> Iterator[Entry]:
        """Entries in (namespace, name) order, optionally of one namespace."""
        if ns is None:
            if self._sorted is None:
                self._sorted = sorted(self.objects)
            objs = self.objects
            for k in self._sorted:
                e = objs.get(k)
                if e is not None:
                    yield e
        else:
            names = self._sorted_ns.get(ns)
            d = self.by_ns.get(ns)
            if not d:
                return
            if names is None:
                names = self._sorted_ns[ns] = sorted(d)
            for n in names:
                e = d.get(n)
                if e is not None:
                    yield e

    def add_history(self, ev: WatchEvent) -> None:
        """Append to the bounded history (amortised O(1))."""
        self.history.append(ev)
        self.hist_rv.append(ev.rv)
        if len(self.history) - self.hist_start > self.history_max:
            self.compacted_rv = self.history[self.hist_start].rv
            self.history[self.hist_start] = None  # type: ignore[call-overload]
            self.hist_start += 1
            if self.hist_start > self.history_max // 2 + 1024:
                del self.history[: self.hist_start]
                del self.hist_rv[: self.hist_start]
                self.hist_start = 0

    def since(self, rv: int) -> list[WatchEvent]:
        """History events with resourceVersion > rv (bisect)."""
        i = bisect.bisect_right(self.hist_rv, rv, lo=self.hist_start)
        return self.history[i:]

    def compact(self, rv: int) -> None:
        """Forget all history (watches from older resourceVersions get 410)."""
        self.history.clear()
        self.hist_rv.clear()
        self.hist_start = 0
        self.compacted_rv = rv


# ------------------------------------------------------------------------------------------
# validation helpers

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QNAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CM_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_QNAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_LVALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion", "customresourcecleanup.apiextensions.k8s.io"}
_GEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def name_errors(name: str, check: str) -> list[str]:
    """Why ``name`` is not a valid object name under ``check`` (subdomain/label/path)."""
    if check == "label":
        errs = []
        if len(name) > 63:
            errs.append("must be no more than 63 characters")
        if not _DNS1123_LABEL.match(name):
            errs.append(_LABEL_MSG)
        return errs
    if check == "path":
        if name in (".", ".."):
            return [f"may not be '{name}'"]
        for bad in ("/", "%"):
            if bad in name:
                return [f"may not contain '{bad}'"]
        return []
    errs = []
    if len(name) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        errs.append(_SUBDOMAIN_MSG)
    return errs


def qualified_name_errors(key: str) -> list[str]:
    """Why ``key`` is not a valid qualified name (label / annotation key)."""
    prefix, sep, name = key.rpartition("/")
    errs = []
    if sep:
        if not prefix:
            errs.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            errs.append("prefix part " + _SUBDOMAIN_MSG)
    if not name:
        errs.append("name part must be non-empty")
    else:
        if len(name) > 63:
            errs.append("name part must be no more than 63 characters")
        if not _QNAME.match(name):
            errs.append(_QNAME_MSG)
    return errs


def validate_meta(rt: ResourceType, obj: dict[str, Any], errs: list[Cause]) -> None:
    """Generic ObjectMeta validation (name, labels, annotations, ownerReferences, finalizers)."""
    md = obj["metadata"]
    name = md.get("name") or ""
    for e in name_errors(name, rt.name_check):
        errs.append(ferr("metadata.name", "FieldValueInvalid", name, e))
    labels = md.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            raise bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: metadata.labels must be a map of strings")
        for k, v in labels.items():
            if not isinstance(v, str):
                raise bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    f"json: cannot unmarshal {type(v).__name__} into Go struct field ObjectMeta.metadata.labels of type string"
                )
            for e in qualified_name_errors(k):
                errs.append(ferr("metadata.labels", "FieldValueInvalid", k, e))
            if len(v) > 63:
                errs.append(ferr("metadata.labels", "FieldValueInvalid", v, "must be no more than 63 characters"))
            if not _LABEL_VALUE.match(v):
                errs.append(ferr("metadata.labels", "FieldValueInvalid", v, _LVALUE_MSG))
    ann = md.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: metadata.annotations must be a map of strings')
        total = 0
        for k, v in ann.items():
            for e in qualified_name_errors(k.lower()):
                errs.append(ferr("metadata.annotations", "FieldValueInvalid", k, e))
            total += len(k) + len(v)
        if total > 262144:
            errs.append(ferr("metadata.annotations", "FieldValueTooLong", detail="must have at most 262144 bytes"))
    refs = md.get("ownerReferences")
    if refs is not None:
        if not isinstance(refs, list):
            raise bad_request("metadata.ownerReferences must be a list")
        controllers = []
        for i, r in enumerate(refs):
            p = f"metadata.ownerReferences[{i}]"
            if not isinstance(r, dict):
                raise bad_request(f"{p} must be an object")
            for f in ("apiVersion", "kind", "name"):
                if not r.get(f):
                    errs.append(ferr(f"{p}.{f}", "FieldValueInvalid", r.get(f, ""), f"{f} must not be empty"))
            if not r.get("uid"):
                errs.append(ferr(f"{p}.uid", "FieldValueInvalid", r.get("uid", ""), "uid must not be empty"))
            if r.get("controller") is True:
                controllers.append(r.get("name", ""))
        if len(controllers) > 1:
            errs.append(
                ferr(
                    "metadata.ownerReferences",
                    "FieldValueInvalid",
                    "[...]",
                    "Only one reference can have Controller set to true. Found \"true\" in references for "
                    + " and ".join(controllers),
                )
            )
    fins = md.get("finalizers")
    if fins is not None:
        if not isinstance(fins, list) or not all(isinstance(f, str) for f in fins):
            raise bad_request("metadata.finalizers must be a list of strings")
        for i, f in enumerate(fins):
            if "/" not in f and f not in _STANDARD_FINALIZERS:
                errs.append(
                    ferr(
                        f"metadata.finalizers[{i}]",
                        "FieldValueInvalid",
                        f,
                        "name is neither a standard finalizer name nor is it fully qualified",
                    )
                )
            elif "/" in f:
                for e in qualified_name_errors(f):
                    errs.append(ferr(f"metadata.finalizers[{i}]", "FieldValueInvalid", f, e))


def _qos(spec: dict[str, Any]) -> str:
    containers = list(spec.get("containers") or []) + list(spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or (r in req and req[r] != lim[r]):
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


# ------------------------------------------------------------------------------------------
# the store


Listener = Callable[[Bucket, WatchEvent], None]

LIST_SNAPSHOTS = 64  # continue tokens whose list (references to its immutable entries) is kept


def _list_key(e: Entry, ns: str | None) -> str:
    """An entry's key below the listed prefix, as in a continue token ("/name", "/ns/name")."""
    return f"/{e.name}" if ns is not None or not e.ns else f"/{e.ns}/{e.name}"


def _start_after(start: str, ns: str | None) -> tuple[str, str]:
    """The (namespace, name) a continue token's start key ("/name\\x00", "/ns/name\\x00") follows, in
    the order lists are served."""
    key = start.rstrip("\x00").lstrip("/")
    if ns is not None:
        return ns, key
    first, sep, rest = key.partition("/")
    return (first, rest) if sep else ("", first)


def _encode_continue(rv: int, start: str) -> str:
    """kube-apiserver's continue token: unpadded base64url of {"v","rv","start"}."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode()


def _decode_continue(token: str) -> tuple[int, str]:
    """(resourceVersion, start key) of a continue token; 400 as kube-apiserver words it."""
    def invalid(why: str) -> ApiError:
        return bad_request(f"invalid continue token: continue key is not valid{why}")

    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError as e:          # binascii.Error, UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise invalid(f": {e}") from None
    if not isinstance(data, dict) or data.get("v") != "meta.k8s.io/v1":
        raise invalid(": server does not recognize this encoded version")
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or isinstance(rv, bool) or rv <= 0:
        raise invalid(": incorrect encoded start resourceVersion (version meta.k8s.io/v1)")
    if not isinstance(start, str) or not start:
        raise invalid(": encoded start key empty (version meta.k8s.io/v1)")
    return rv, start


class Store:
    """All objects, the registry of resource types, and the API semantics on top of them."""

    def __init__(
        self,
        *,
        gc: bool = True,
        history: int = 50_000,
        defer: Callable[[Callable[[], None]], Any] | None = None,
        defer_later: Callable[[float, Callable[[], None]], Any] | None = None,
        make_event: Callable[[], Any] | None = None,
    ) -> None:
        self.rv = 1
        self.gc_enabled = gc
        self.history = history
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.buckets: dict[tuple[str, str], Bucket] = {}
        self.uid_index: dict[str, tuple[tuple[str, str], str, str]] = {}
        self.owner_index: dict[str, set[tuple[tuple[str, str], str, str]]] = {}
        self.ns_counts: dict[str, int] = {}
        self.terminating_ns: set[str] = set()
        self.listeners: dict[tuple[str, str], list[Listener]] = {}
        self.bookmark_watchers: set[Watcher] = set()
        self.defer: Callable[[Callable[[], None]], Any] = defer or (lambda fn: fn())
        self.defer_later: Callable[[float, Callable[[], None]], Any] = defer_later or self._defer_now
        self.make_event: Callable[[], Any] = make_event or _SimpleEvent
        self.authorizer: Any = None
        # ValidatingAdmissionPolicy plugin (admission.ValidatingAdmission), wired by the server
        self.admission: Any = None
        self.registry_version = 0
        self.gen_name_rng = random.Random()
        self.root_ca_pem: str | None = None   # kube-root-ca.crt's ca.crt (DevCluster: its https listener's CA)
        # (continue token, (resource, namespace, selectors)) -> (the list's entries, where its next page starts)
        self.list_snapshots: dict[tuple[str, tuple[Any, ...]], tuple[list[Entry], int]] = {}
        for rt in builtin_types():
            self.register(rt)

    def _defer_now(self, delay: float, fn: Callable[[], None]) -> Any:
        return self.defer(fn)

    # ---------------------------------------------------------------- registry

    def register(self, rt: ResourceType) -> None:
        """Serve ``rt`` (creating its bucket if needed)."""
        self.types[(rt.group, rt.version, rt.plural)] = rt
        key = rt.bucket_key
        b = self.buckets.get(key)
        if b is None:
            storage = rt
            if rt.convert_out is not None:  # a converted view: the bucket is the storage type's
                storage = self.types.get((key[0], rt.storage_version or "", key[1]), rt)
            b = self.buckets[key] = Bucket(key, storage, self.history)
            # Like kube-apiserver's watch cache, which begins at the resourceVersion it is created
            # at: a watch of a resource served from now on (a new CRD's) from an older
            # resourceVersion is 410 Expired.
            b.compacted_rv = self.rv
        elif rt.api_version == rt.stored_api_version and rt.convert_out is None:
            b.rt = rt
        self.registry_version += 1

    def unregister_crd(self, crd_name: str) -> None:
        """Stop serving every type registered by ``crd_name``; close its watches."""
        keys = [k for k, rt in self.types.items() if rt.crd == crd_name]
        bkeys = {self.types[k].bucket_key for k in keys}
        for k in keys:
            del self.types[k]
        for bk in bkeys:
            b = self.buckets.pop(bk, None)
            if b is None:
                continue
            for w in list(b.watchers_all) + [w for s in b.watchers_ns.values() for w in s]:
                w.close()
            for e in b.objects.values():
                self._unindex(b, e)
        self.registry_version += 1

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        """The type served at group/version/plural."""
        return self.types.get((group, version, plural))

    def group_versions(self) -> dict[str, list[str]]:
        """group -> served versions (best first)."""
        out: dict[str, set[str]] = {}
        for g, v, _ in self.types:
            out.setdefault(g, set()).add(v)
        return {g: sorted(vs, key=version_priority, reverse=True) for g, vs in out.items()}

    def resolve(self, what: str, api_version: str | None = None) -> ResourceType:
        """Find a type by kind, plural, singular, short name, ``plural.group`` or ``Kind.group``."""
        group_filter = None
        version_filter = None
        if api_version:
            g, _, v = api_version.rpartition("/")
            group_filter, version_filter = g, v
        name = what
        if "." in what and group_filter is None:
            name, _, group_filter = what.partition(".")
        lname = name.lower()
        best: list[ResourceType] = []
        for rt in self.types.values():
            if rt.virtual:
                continue
            if group_filter is not None and rt.group != group_filter:
                continue
            if version_filter is not None and rt.version != version_filter:
                continue
            if lname in (rt.plural, rt.singular, rt.kind.lower()) or lname in rt.short_names:
                best.append(rt)
        if not best:
            raise ApiError(404, "NotFound", f'the server doesn\'t have a resource type "{what}"')
        # prefer core group, then the preferred version
        best.sort(key=lambda r: (r.group != "", r.group, tuple(-x for x in version_priority(r.version))))
        return best[0]

    def type_for_kind(self, api_version: str, kind: str) -> ResourceType | None:
        """The type serving (apiVersion, kind)."""
        g, _, v = api_version.rpartition("/")
        for rt in self.types.values():
            if rt.group == g and rt.version == v and rt.kind == kind and not rt.virtual:
                return rt
        return None

    def bucket(self, rt: ResourceType) -> Bucket:
        """The storage bucket of ``rt`` (404 if its CRD went away)."""
        b = self.buckets.get(rt.bucket_key)
        if b is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource", {})
        return b

    def add_listener(self, bucket_key: tuple[str, str], fn: Listener) -> None:
        """Call ``fn(bucket, event)`` synchronously after every commit to ``bucket_key``."""
        self.listeners.setdefault(bucket_key, []).append(fn)

    # ---------------------------------------------------------------- reads

    def get_entry(self, rt: ResourceType, ns: str, name: str) -> Entry:
        """The committed entry (404 if absent)."""
        e = self.bucket(rt).objects.get((ns if rt.namespaced else "", name))
        if e is None:
            raise not_found(rt, name)
        return e

    def find(self, rt: ResourceType, ns: str, name: str) -> Entry | None:
        """The committed entry or None."""
        b = self.buckets.get(rt.bucket_key)
        if b is None:
            return None
        return b.objects.get((ns if rt.namespaced else "", name))

    def list_entries(
        self,
        rt: ResourceType,
        ns: str | None,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> list[Entry]:
        """Entries matching namespace (None = all) and selectors, sorted by (namespace, name)."""
        b = self.bucket(rt)
        if not rt.namespaced:
            ns = None
        if fields is not None:
            name = fields.name()
            if name is not None:
                if ns is not None:
                    e = b.objects.get((ns, name))
                    cands = [e] if e is not None else []
                else:
                    cands = sorted((e for e in b.objects.values() if e.name == name), key=lambda e: e.ns)
                return [e for e in cands if fields.matches(e.obj) and (labels is None or labels.matches(e.labels))]
        if labels is not None:
            best: set[tuple[str, str]] | None = None
            for key, vals in labels.index_candidates():
                idx = b.label_index.get(key) or {}
                s: set[tuple[str, str]] = set()
                for v in vals:
                    s |= idx.get(v, set())
                if best is None or len(s) < len(best):
                    best = s
            if best is not None:
                out = []
                for k in sorted(best):
                    if ns is not None and k[0] != ns:
                        continue
                    e = b.objects.get(k)
                    if e is not None and labels.matches(e.labels) and (fields is None or fields.matches(e.obj)):
                        out.append(e)
                return out
        out = []
        for e in b.sorted_keys(ns):
            if labels is not None and not labels.matches(e.labels):
                continue
            if fields is not None and not fields.matches(e.obj):
                continue
            out.append(e)
        return out

    def list_page(
        self,
        rt: ResourceType,
        ns: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        limit: int,
        continue_token: str | None,
    ) -> tuple[list[Entry], int, str | None, int | None]:
        """A list, chunked like kube-apiserver's (``limit``/``continue``): (entries, the list's
        resourceVersion, ``metadata.continue``, ``metadata.remainingItemCount``).

        The first page fixes the list's resourceVersion; the next pages are of the same snapshot (the
        list's entries are kept for its tokens, at most LIST_SNAPSHOTS of them) and carry that
        resourceVersion. A token whose snapshot is no longer kept is 410 Expired once its resourceVersion
        is compacted away, and otherwise continues after its key in the current state. remainingItemCount is given only without selectors, as the real server does."""
        if not rt.namespaced:
            ns = None
        scope = (rt.bucket_key, ns, labels.text if labels else "", fields.text if fields else "")
        if continue_token:
            rv, start = _decode_continue(continue_token)
            kept = self.list_snapshots.get((continue_token, scope))
            if kept is not None:
                entries, at = kept
            else:
                bucket = self.buckets.get(rt.bucket_key)
                if bucket is not None and rv < bucket.compacted_rv:
                    # kube-apiserver: the list's resourceVersion was compacted away.
                    raise ApiError(410, "Expired", "The provided continue parameter is too old to display a "
                                   "consistent list result. You can start a new list without the continue "
                                   "parameter.")
                after = _start_after(start, ns)
                entries = [e for e in self.list_entries(rt, ns, labels, fields) if (e.ns, e.name) > after]
                at = 0
        else:
            rv, entries, at = self.rv, self.list_entries(rt, ns, labels, fields), 0
        end = at + limit
        if limit <= 0 or len(entries) <= end:
            return entries[at:] if at else entries, rv, None, None
        page = entries[at:end]
        token = _encode_continue(rv, _list_key(page[-1], ns) + "\x00")
        self.list_snapshots[(token, scope)] = (entries, end)     # the pages of one list share its snapshot
        while len(self.list_snapshots) > LIST_SNAPSHOTS:
            self.list_snapshots.pop(next(iter(self.list_snapshots)))
        remaining = len(entries) - end if labels is None and fields is None else None
        return page, rv, token, remaining

    def list_objects(self, kind: str) -> list[dict[str, Any]]:
        """Current objects of an RBAC kind (for the Authorizer). Do not mutate them."""
        plural = {
            "Role": "roles",
            "RoleBinding": "rolebindings",
            "ClusterRole": "clusterroles",
            "ClusterRoleBinding": "clusterrolebindings",
        }[kind]
        b = self.buckets[("rbac.authorization.k8s.io", plural)]
        return [e.obj for e in b.objects.values()]

    # ---------------------------------------------------------------- commit

    def _index(self, b: Bucket, e: Entry) -> None:
        key = (e.ns, e.name)
        for k, v in e.labels.items():
            b.label_index.setdefault(k, {}).setdefault(v, set()).add(key)
        if e.uid:
            self.uid_index[e.uid] = (b.key, e.ns, e.name)
        for r in e.obj["metadata"].get("ownerReferences") or ():
            u = r.get("uid")
            if u:
                self.owner_index.setdefault(u, set()).add((b.key, e.ns, e.name))

    def _unindex(self, b: Bucket, e: Entry) -> None:
        key = (e.ns, e.name)
        for k, v in e.labels.items():
            vals = b.label_index.get(k)
            if vals is not None:
                s = vals.get(v)
                if s is not None:
                    s.discard(key)
                    if not s:
                        del vals[v]
                        if not vals:
                            del b.label_index[k]
        if e.uid and self.uid_index.get(e.uid) == (b.key, e.ns, e.name):
            del self.uid_index[e.uid]
        for r in e.obj["metadata"].get("ownerReferences") or ():
            u = r.get("uid")
            s2 = self.owner_index.get(u) if u else None
            if s2 is not None:
                s2.discard((b.key, e.ns, e.name))
                if not s2:
                    del self.owner_index[u]

    def commit(
        self,
        b: Bucket,
        ns: str,
        name: str,
        obj: dict[str, Any] | None,
        old: Entry | None,
        final: dict[str, Any] | None = None,
    ) -> Entry:
        """Store ``obj`` (None: remove; ``final`` is then the state the DELETED event shows)
        with a new resourceVersion, index it, notify watchers and listeners."""
        self.rv += 1
        rv = self.rv
        key = (ns, name)
        if obj is None:
            assert old is not None
            src = final if final is not None else old.obj
            final = dict(src)
            final["metadata"] = dict(src["metadata"])
            final["metadata"]["resourceVersion"] = str(rv)
            entry = Entry(final, ns, name, rv)
            del b.objects[key]
            d = b.by_ns.get(ns)
            if d is not None:
                d.pop(name, None)
                if not d:
                    del b.by_ns[ns]
            b._sorted = None
            b._sorted_ns.pop(ns, None)
            self._unindex(b, old)
            if b.rt.namespaced:
                self.ns_counts[ns] = self.ns_counts.get(ns, 1) - 1
            etype = DELETED
        else:
            obj["metadata"]["resourceVersion"] = str(rv)
            entry = Entry(obj, ns, name, rv)
            if old is not None:
                if old.labels != entry.labels or old.obj["metadata"].get("ownerReferences") != obj[
                    "metadata"
                ].get("ownerReferences"):
                    self._unindex(b, old)
                    self._index(b, entry)
                etype = MODIFIED
            else:
                self._index(b, entry)
                b._sorted = None
                b._sorted_ns.pop(ns, None)
                b.by_ns.setdefault(ns, {})[name] = entry
                if b.rt.namespaced:
                    self.ns_counts[ns] = self.ns_counts.get(ns, 0) + 1
                etype = ADDED
            b.objects[key] = entry
            if old is not None:
                b.by_ns[ns][name] = entry
        b.version += 1
        ev = WatchEvent(etype, rv, entry, old)
        b.add_history(ev)
        for w in b.watchers_all:
            w.offer(ev)
        ws = b.watchers_ns.get(ns)
        if ws:
            for w in ws:
                w.offer(ev)
        for fn in self.listeners.get(b.key, ()):
            fn(b, ev)
        if etype == DELETED:
            self._after_remove(b, entry)
        return entry

    # ---------------------------------------------------------------- create

    def _check_namespace(self, rt: ResourceType, ns: str, name: str) -> None:
        nsb = self.buckets[("", "namespaces")]
        if ("", ns) not in nsb.objects:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if ns in self.terminating_ns:
            raise ApiError(
                403,
                "Forbidden",
                f'{rt.qualified} "{name}" is forbidden: unable to create new content in namespace {ns} '
                f"because it is being terminated",
                {
                    "name": name,
                    "kind": rt.plural,
                    **({"group": rt.group} if rt.group else {}),
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {ns} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _check_body(self, rt: ResourceType, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise bad_request(f"the body of the request was in an unknown format; expected a {rt.kind} object")
        kind = body.get("kind")
        av = body.get("apiVersion")
        if kind not in (None, "", rt.kind):
            raise bad_request(
                f"the API version in the data ({av}) does not match the expected API version ({rt.api_version})"
                if av not in (None, rt.api_version)
                else f"{kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: expected kind {rt.kind}"
            )
        if av not in (None, "", rt.api_version):
            raise bad_request(
                f"the API version in the data ({av}) does not match the expected API version ({rt.api_version})"
            )
        body["kind"] = rt.kind
        body["apiVersion"] = rt.api_version
        md = body.get("metadata")
        if md is None:
            md = body["metadata"] = {}
        if not isinstance(md, dict):
            raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: metadata must be an object')
        md.pop("managedFields", None)
        md.pop("selfLink", None)
        return body

    def create(
        self,
        rt: ResourceType,
        ns: str,
        body: Any,
        *,
        user: Any = None,
        dry_run: bool = False,
        warnings: list[str] | None = None,
        strict: bool = False,
    ) -> Entry:
        """POST: create an object (AlreadyExists, Invalid, namespace checks, admission)."""
        body = self._check_body(rt, body)
        md = body["metadata"]
        if rt.namespaced:
            bns = md.get("namespace")
            if bns and ns and bns != ns:
                raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
            ns = ns or bns or ""
            if not ns:
                raise bad_request("namespace is required")
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
            ns = ""
        b = self.bucket(rt)
        if b.terminating:
            raise ApiError(
                405,
                "MethodNotAllowed",
                "create not allowed while custom resource definition is terminating",
                _details(rt, md.get("name")),
            )
        name = md.get("name") or ""
        if not name:
            gen = md.get("generateName")
            if not gen:
                raise invalid(
                    rt,
                    "",
                    [ferr("metadata.name", "FieldValueRequired", detail="name or generateName is required")],
                )
            base = gen[:58]
            for _ in range(10):
                name = base + "".join(self.gen_name_rng.choice(_GEN_ALPHABET) for _ in range(5))
                if (ns, name) not in b.objects:
                    break
            md["name"] = name
        if rt.namespaced:
            self._check_namespace(rt, ns, name)
        if md.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        for f in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds", "generation", "creationTimestamp"):
            md.pop(f, None)
        body = rt.from_view(body)
        md = body["metadata"]
        md["uid"] = str(uuid.uuid4())
        md["creationTimestamp"] = now_rfc3339()
        md["generation"] = 1
        errs: list[Any] = []
        self._strategy_create(rt, ns, body, errs, user, warnings, strict)
        validate_meta(rt, body, errs)
        if errs:
            raise invalid(rt, name, errs)
        if self.admission is not None:
            self.admission.admit(rt, "CREATE", "", body, None, user, dry_run=dry_run, warnings=warnings)
        if (ns, name) in b.objects:
            raise already_exists(rt, name)
        if dry_run:
            md["resourceVersion"] = ""
            return Entry(body, ns, name, self.rv)
        entry = self.commit(b, ns, name, body, None)
        self._after_create(rt, b, entry)
        return entry

    # ---------------------------------------------------------------- update / patch

    def update(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        body: Any,
        *,
        subresource: str = "",
        user: Any = None,
        dry_run: bool = False,
        warnings: list[str] | None = None,
        strict: bool = False,
    ) -> Entry:
        """PUT (main resource or ``status``)."""
        body = self._check_body(rt, body)
        md = body["metadata"]
        if md.get("name") and md["name"] != name:
            raise bad_request(f"the name of the object ({md['name']}) does not match the name on the URL ({name})")
        if rt.namespaced and md.get("namespace") and md["namespace"] != ns:
            raise bad_request("the namespace of the provided object does not match the namespace sent on the request")
        old = self.get_entry(rt, ns, name)
        body = rt.from_view(body)
        return self._update(rt, old, body, subresource, user, dry_run, warnings, strict)

    def patch(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        content_type: str,
        patch: bytes,
        *,
        subresource: str = "",
        user: Any = None,
        dry_run: bool = False,
        warnings: list[str] | None = None,
        strict: bool = False,
        field_manager: str | None = None,
        force: bool = False,
    ) -> Entry:
        """PATCH with merge / JSON / strategic-merge patch (apply-patch: a simplified server-side apply)."""
        ct = content_type.split(";")[0].strip().lower()
        if ct == "application/apply-patch+yaml":
            return self._apply(rt, ns, name, patch, subresource, user, dry_run, warnings, field_manager)
        if ct not in (
            "application/merge-patch+json",
            "application/json-patch+json",
            "application/strategic-merge-patch+json",
        ):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        if ct == "application/strategic-merge-patch+json" and rt.crd is not None:
            raise ApiError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types include: "
                "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml",
            )
        try:
            doc = loads(patch) if patch else None
        except ValueError as e:
            raise bad_request(f"error decoding patch: {e}") from None
        old = self.get_entry(rt, ns, name)
        cur = loads(old.raw_for(rt))
        try:
            if ct == "application/merge-patch+json":
                if not isinstance(doc, dict):
                    raise PatchError("merge patch must be a JSON object", 400)
                new = merge_patch(cur, doc)
            elif ct == "application/json-patch+json":
                new = json_patch(cur, doc)
            else:
                new = strategic_merge_patch(cur, doc, rt.kind)
        except PatchError as e:
            if e.status == 400:
                raise bad_request(e.message) from None
            raise ApiError(422, "Invalid", e.message, _details(rt, name)) from None
        if not isinstance(new, dict):
            raise bad_request("the patched object is not a JSON object")
        new = self._check_body(rt, new)
        new = rt.from_view(new)
        return self._update(rt, old, new, subresource, user, dry_run, warnings, strict)

    def _apply(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        patch: bytes,
        subresource: str,
        user: Any,
        dry_run: bool,
        warnings: list[str] | None,
        field_manager: str | None,
    ) -> Entry:
        """A simplified server-side apply: create if absent, else merge (no field ownership)."""
        import yaml

        if not field_manager:
            raise bad_request("PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch")
        try:
            doc = yaml.safe_load(patch.decode() if isinstance(patch, bytes) else patch)
        except Exception as e:  # noqa: BLE001
            raise bad_request(f"error decoding YAML: {e}") from None
        if not isinstance(doc, dict):
            raise bad_request("apply patch must be an object")
        existing = self.find(rt, ns, name)
        if existing is None:
            if subresource:
                raise not_found(rt, name)
            doc.setdefault("metadata", {})["name"] = name
            return self.create(rt, ns, doc, user=user, dry_run=dry_run, warnings=warnings)
        cur = loads(existing.raw_for(rt))
        if rt.crd is None:
            new = strategic_merge_patch(cur, doc, rt.kind)
        else:
            new = merge_patch(cur, doc)
        new = rt.from_view(self._check_body(rt, new))
        return self._update(rt, existing, new, subresource, user, dry_run, warnings, False)

    def _update(
        self,
        rt: ResourceType,
        old: Entry,
        new: dict[str, Any],
        subresource: str,
        user: Any,
        dry_run: bool,
        warnings: list[str] | None,
        strict: bool,
        internal: bool = False,
    ) -> Entry:
        b = self.bucket(rt)
        oobj = old.obj
        omd = oobj["metadata"]
        md = new["metadata"]
        name, ns = old.name, old.ns
        rv = md.get("resourceVersion")
        if rv not in (None, "") and rv != omd["resourceVersion"]:
            raise conflict(
                rt, name, "the object has been modified; please apply your changes to the latest version and try again"
            )
        if subresource == "status":
            status = new.get("status", _MISSING)
            new = loads(old.raw())
            if status is _MISSING:
                new.pop("status", None)
            else:
                new["status"] = status
            md = new["metadata"]
        elif subresource == "finalize" and rt.plural == "namespaces":
            spec = new.get("spec")
            new = loads(old.raw())
            new["spec"] = spec if isinstance(spec, dict) else {}
            md = new["metadata"]
        elif subresource:
            raise ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")
        elif rt.status_subresource and not internal:
            if "status" in oobj:
                new["status"] = oobj["status"]
            else:
                new.pop("status", None)
        for f in ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            if f in omd:
                md[f] = omd[f]
            else:
                md.pop(f, None)
        md["name"] = name
        if rt.namespaced:
            md["namespace"] = ns
        else:
            md.pop("namespace", None)
        md.pop("resourceVersion", None)
        errs: list[Any] = []
        if subresource != "status" or rt.crd is not None:
            self._strategy_update(rt, new, oobj, errs, user, warnings, strict, subresource, internal)
        validate_meta(rt, new, errs)
        if "deletionTimestamp" in omd:
            old_f = set(omd.get("finalizers") or ())
            added = [f for f in (md.get("finalizers") or ()) if f not in old_f]
            if added:
                errs.append(
                    ferr(
                        "metadata.finalizers",
                        "FieldValueForbidden",
                        detail="no new finalizers can be added if the object is being deleted, found new finalizers "
                        + "[]string{" + ", ".join(json.dumps(f) for f in added) + "}",
                    )
                )
        if errs:
            raise invalid(rt, name, errs)
        if self.admission is not None and not internal:
            self.admission.admit(rt, "UPDATE", subresource, new, oobj, user, dry_run=dry_run, warnings=warnings)
        # generation
        if self._spec_changed(rt, new, oobj):
            md["generation"] = int(omd.get("generation") or 0) + 1
        md["resourceVersion"] = omd["resourceVersion"]
        if new == oobj:
            return old  # no-op: no new resourceVersion, no event
        if dry_run:
            return Entry(new, ns, name, old.rv)
        if "deletionTimestamp" in md and not md.get("finalizers") and not (
            rt.plural == "pods" and rt.group == "" and (md.get("deletionGracePeriodSeconds") or 0) > 0
        ):
            # the last finalizer is gone: the object is removed (DELETED carries the final state)
            md.pop("finalizers", None)
            return self.commit(b, ns, name, None, old, final=new)
        entry = self.commit(b, ns, name, new, old)
        self._after_update(rt, b, entry, old)
        return entry

    def _spec_changed(self, rt: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> bool:
        skip = ("metadata", "status") if rt.status_subresource else ("metadata",)
        for k in set(new) | set(old):
            if k in skip or k in ("apiVersion", "kind"):
                continue
            if new.get(k, _MISSING) != old.get(k, _MISSING):
                return True
        return False

    # ---------------------------------------------------------------- delete

    def delete(
        self,
        rt: ResourceType,
        ns: str,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], bool]:
        """DELETE: returns (the object, whether it was removed now)."""
        opts = options or {}
        b = self.bucket(rt)
        entry = self.get_entry(rt, ns, name)
        ns = entry.ns
        obj = entry.obj
        md = obj["metadata"]
        pre = opts.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != md.get("uid"):
            raise precondition_conflict(
                rt, name, f"the UID in the precondition ({pre['uid']}) does not match the UID in record "
                f"({md.get('uid')}). The object might have been deleted and then recreated"
            )
        if pre.get("resourceVersion") and pre["resourceVersion"] != md.get("resourceVersion"):
            raise precondition_conflict(
                rt, name, f"the ResourceVersion in the precondition ({pre['resourceVersion']}) does not match the "
                f"ResourceVersion in record ({md.get('resourceVersion')}). The object might have been modified"
            )
        policy = opts.get("propagationPolicy")
        if policy is None and opts.get("orphanDependents") is not None:
            policy = "Orphan" if opts["orphanDependents"] else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise invalid(
                rt,
                name,
                [
                    ferr(
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        policy,
                        'supported values: "Foreground", "Background", "Orphan", "nil"',
                    )
                ],
            )
        grace_opt = opts.get("gracePeriodSeconds")
        if dry_run:
            return loads(entry.raw_for(rt)), False
        is_pod = rt.group == "" and rt.plural == "pods"
        grace = 0
        if is_pod:
            spec = obj.get("spec") or {}
            grace = int(grace_opt) if grace_opt is not None else int(spec.get("terminationGracePeriodSeconds", 30))
            phase = (obj.get("status") or {}).get("phase")
            if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
                grace = 0
            if grace < 0:
                grace = 1
        finalizers = list(md.get("finalizers") or ())
        new_fins = list(finalizers)
        if self.gc_enabled and "deletionTimestamp" not in md:
            if policy == "Orphan" and "orphan" not in new_fins:
                new_fins.append("orphan")
            if policy == "Foreground" and "foregroundDeletion" not in new_fins:
                new_fins.append("foregroundDeletion")
        now = time.time()
        if "deletionTimestamp" in md:
            # already being deleted: a pod's grace period may only be shortened
            if is_pod:
                cur_grace = int(md.get("deletionGracePeriodSeconds") or 0)
                if grace < cur_grace:
                    if grace == 0 and not finalizers:
                        self.commit(b, ns, name, None, entry)
                        return loads(entry.raw_for(rt)), True
                    new = entry.copy()
                    new["metadata"]["deletionTimestamp"] = now_rfc3339(now + grace)
                    new["metadata"]["deletionGracePeriodSeconds"] = grace
                    e2 = self.commit(b, ns, name, new, entry)
                    return loads(e2.raw_for(rt)), False
            return loads(entry.raw_for(rt)), False
        if rt.group == "" and rt.plural == "namespaces":
            if name in ("default", "kube-system", "kube-public"):
                raise forbidden(rt, name, "this namespace may not be deleted")
            return self._delete_namespace(rt, b, entry), False
        if grace > 0 or new_fins:
            new = entry.copy()
            nmd = new["metadata"]
            nmd["deletionTimestamp"] = now_rfc3339(now + grace)
            nmd["deletionGracePeriodSeconds"] = grace
            if new_fins:
                nmd["finalizers"] = new_fins
            if nmd.get("generation"):
                nmd["generation"] = int(nmd["generation"]) + 1
            e2 = self.commit(b, ns, name, new, entry)
            self._after_deletion_started(rt, b, e2)
            return loads(e2.raw_for(rt)), False
        self.commit(b, ns, name, None, entry)
        return loads(entry.raw_for(rt)), True

    def _delete_namespace(self, rt: ResourceType, b: Bucket, entry: Entry) -> dict[str, Any]:
        new = entry.copy()
        md = new["metadata"]
        md["deletionTimestamp"] = now_rfc3339()
        md["deletionGracePeriodSeconds"] = 0
        new.setdefault("status", {})["phase"] = "Terminating"
        e2 = self.commit(b, "", entry.name, new, entry)
        self.terminating_ns.add(entry.name)
        nsname = entry.name
        self.defer(lambda: self._ns_cleanup(nsname))
        return loads(e2.raw())

    def internal_delete(
        self, bucket_key: tuple[str, str], ns: str, name: str, options: dict[str, Any] | None = None
    ) -> None:
        """Delete as the control plane would (ignores NotFound/Conflict)."""
        b = self.buckets.get(bucket_key)
        if b is None:
            return
        try:
            self.delete(b.rt, ns, name, options)
        except ApiError:
            pass

    def internal_update(
        self, bucket_key: tuple[str, str], ns: str, name: str, mutate: Callable[[dict[str, Any]], None], uid: str = ""
    ) -> Entry | None:
        """Read-modify-write as the control plane (status included; ignores NotFound)."""
        b = self.buckets.get(bucket_key)
        if b is None:
            return None
        e = b.objects.get((ns, name))
        if e is None or (uid and e.uid != uid):
            return None
        new = e.copy()
        mutate(new)
        try:
            return self._update(b.rt, e, new, "", None, False, None, False, internal=True)
        except ApiError:
            return None

    def remove_finalizer(self, bucket_key: tuple[str, str], ns: str, name: str, finalizer: str, uid: str = "") -> None:
        """Drop one finalizer (the object goes away if it was the last one and it is deleting)."""

        def mut(o: dict[str, Any]) -> None:
            fins = [f for f in (o["metadata"].get("finalizers") or ()) if f != finalizer]
            if fins:
                o["metadata"]["finalizers"] = fins
            else:
                o["metadata"].pop("finalizers", None)

        self.internal_update(bucket_key, ns, name, mut, uid)

    # ---------------------------------------------------------------- watch

    def watch(
        self,
        rt: ResourceType,
        ns: str | None,
        resource_version: str | None,
        labels: LabelSelector | None,
        fields: FieldSelector | None,
        *,
        bookmarks: bool = False,
        send_initial_events: bool | None = None,
    ) -> Watcher:
        """Register a watch; initial/replayed events are queued before it sees live ones."""
        b = self.bucket(rt)
        if not rt.namespaced:
            ns = None
        w = Watcher(b, rt, ns, labels, fields, bookmarks, self.make_event())
        rv_s = resource_version or ""
        if send_initial_events or (rv_s in ("", "0") and send_initial_events is None):
            for e in self.list_entries(rt, ns, labels, fields):
                w.queue.append((ADDED, _InitialEvent(e)))
            if send_initial_events:
                w.queue.append((BOOKMARK, (self.rv, True)))
        elif rv_s in ("", "0"):
            pass  # sendInitialEvents=false: only changes from now on
        else:
            try:
                rv = int(rv_s)
            except ValueError:
                raise bad_request(f'invalid resource version "{rv_s}"') from None
            if rv < b.compacted_rv:
                w.queue.append(
                    (
                        ERROR,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "metadata": {},
                            "status": "Failure",
                            "message": f"too old resource version: {rv} ({b.compacted_rv})",
                            "reason": "Expired",
                            "code": 410,
                        },
                    )
                )
                w.closed = True
                return w
            for ev in b.since(rv):
                if ns is not None and ev.ns != ns:
                    continue
                w.offer(ev)
        if ns is None:
            b.watchers_all.add(w)
        else:
            b.watchers_ns.setdefault(ns, set()).add(w)
        if bookmarks:
            self.bookmark_watchers.add(w)
        return w

    def unwatch(self, w: Watcher) -> None:
        """Unregister a watch."""
        w.closed = True
        b = w.bucket
        if w.ns is None:
            b.watchers_all.discard(w)
        else:
            s = b.watchers_ns.get(w.ns)
            if s is not None:
                s.discard(w)
                if not s:
                    del b.watchers_ns[w.ns]
        self.bookmark_watchers.discard(w)

    def send_bookmarks(self) -> None:
        """Queue a BOOKMARK with the current resourceVersion to every watch that allows them."""
        rv = self.rv
        for w in list(self.bookmark_watchers):
            if not w.closed and not w.queue:
                w.push(BOOKMARK, (rv, False))

    def all_watchers(self) -> list[Watcher]:
        """Every registered watch."""
        out: list[Watcher] = []
        for b in self.buckets.values():
            out.extend(b.watchers_all)
            for s in b.watchers_ns.values():
                out.extend(s)
        return out

    def compact(self) -> None:
        """Forget the watch history of every resource (like an etcd compaction)."""
        for b in self.buckets.values():
            b.compact(self.rv)

    # ---------------------------------------------------------------- strategies

    def _strategy_create(
        self,
        rt: ResourceType,
        ns: str,
        obj: dict[str, Any],
        errs: list[Any],
        user: Any,
        warnings: list[str] | None,
        strict: bool,
    ) -> None:
        g, p = rt.bucket_key
        if rt.crd is not None:
            if rt.status_subresource:
                obj.pop("status", None)
            self._schema(rt, obj, None, errs, warnings, strict)
        elif g == "" and p == "pods":
            self._pod_create(ns, obj, errs)
        elif g == "" and p == "namespaces":
            md = obj["metadata"]
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
        elif g == "" and p == "configmaps":
            self._configmap_validate(obj, errs)
        elif g == "" and p == "secrets":
            self._secret_prepare(obj, errs)
        elif g == "apiextensions.k8s.io":
            self._crd_prepare(obj, None, errs)
            fins = obj["metadata"].setdefault("finalizers", [])
            if CRD_FINALIZER not in fins:
                fins.append(CRD_FINALIZER)
        elif g == "rbac.authorization.k8s.io":
            self._rbac_validate(rt, obj, None, errs, user)
        elif g == "admissionregistration.k8s.io" and self.admission is not None:
            errs.extend(self.admission.check(p, obj))

    def _strategy_update(
        self,
        rt: ResourceType,
        new: dict[str, Any],
        old: dict[str, Any],
        errs: list[Any],
        user: Any,
        warnings: list[str] | None,
        strict: bool,
        subresource: str,
        internal: bool,
    ) -> None:
        g, p = rt.bucket_key
        if rt.crd is not None:
            self._schema(rt, new, old, errs, warnings, strict)
        elif g == "" and p == "pods":
            if not internal:
                self._pod_update(new, old, errs)
        elif g == "" and p == "namespaces":
            md = new["metadata"]
            md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
            if subresource != "finalize" and not internal:
                new["spec"] = old.get("spec") or {}
        elif g == "" and p == "configmaps":
            if old.get("immutable") and (new.get("data") != old.get("data") or new.get("binaryData") != old.get("binaryData")):
                errs.append(ferr("data", "FieldValueForbidden", detail="field is immutable when `immutable` is set"))
            self._configmap_validate(new, errs)
        elif g == "" and p == "secrets":
            self._secret_prepare(new, errs)
        elif g == "apiextensions.k8s.io":
            if not internal:
                self._crd_prepare(new, old, errs)
        elif g == "rbac.authorization.k8s.io":
            self._rbac_validate(rt, new, old, errs, user)
        elif g == "admissionregistration.k8s.io" and self.admission is not None and subresource != "status":
            errs.extend(self.admission.check(p, new))

    def _schema(
        self,
        rt: ResourceType,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        errs: list[Any],
        warnings: list[str] | None,
        strict: bool,
    ) -> None:
        sch = rt.schema
        if sch is None:
            return
        removed: list[str] = []
        try:
            sch.prune(obj, removed)
        except TypeError:  # an implementation without the ``removed`` parameter
            sch.prune(obj)
        if removed:
            if strict:
                raise bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: strict decoding error: '
                    + ", ".join(f'unknown field "{r}"' for r in removed)
                )
            if warnings is not None:
                warnings.extend(f'unknown field "{r}"' for r in removed)
        sch.default(obj)
        errs.extend(sch.validate(obj, old))

    # pods

    def _pod_create(self, ns: str, pod: dict[str, Any], errs: list[Any]) -> None:
        spec = pod.get("spec")
        if not isinstance(spec, dict):
            errs.append(ferr("spec.containers", "FieldValueRequired"))
            return
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        sa = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = sa
        spec["serviceAccount"] = sa
        for key in ("containers", "initContainers"):
            for c in spec.get(key) or ():
                if not isinstance(c, dict):
                    continue
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                image = c.get("image") or ""
                if "imagePullPolicy" not in c:
                    tagged = ":" in image.rsplit("/", 1)[-1] or "@" in image
                    c["imagePullPolicy"] = "IfNotPresent" if tagged and not image.endswith(":latest") else "Always"
                c.setdefault("resources", {})
                for port in c.get("ports") or ():
                    if isinstance(port, dict):
                        port.setdefault("protocol", "TCP")
        for v in spec.get("volumes") or ():
            if isinstance(v, dict):
                for src in ("configMap", "secret", "projected"):
                    if isinstance(v.get(src), dict):
                        v[src].setdefault("defaultMode", 420)
        self._pod_validate(pod, errs)
        if errs:
            return
        # ServiceAccount admission
        sab = self.buckets[("", "serviceaccounts")]
        sa_entry = sab.objects.get((ns, sa))
        if sa_entry is None:
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{pod["metadata"]["name"]}" is forbidden: error looking up service account {ns}/{sa}: '
                f'serviceaccount "{sa}" not found',
                {"name": pod["metadata"]["name"], "kind": "pods"},
            )
        if spec.get("automountServiceAccountToken", sa_entry.obj.get("automountServiceAccountToken", True)) is not False:
            vols = spec.setdefault("volumes", [])
            mount = "/var/run/secrets/kubernetes.io/serviceaccount"
            vname = "kube-api-access-" + "".join(self.gen_name_rng.choice(_GEN_ALPHABET) for _ in range(5))
            vols.append(
                {
                    "name": vname,
                    "projected": {
                        "defaultMode": 420,
                        "sources": [
                            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                            {
                                "downwardAPI": {
                                    "items": [
                                        {
                                            "path": "namespace",
                                            "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"},
                                        }
                                    ]
                                }
                            },
                        ],
                    },
                }
            )
            for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
                mounts = c.setdefault("volumeMounts", [])
                if not any(m.get("mountPath") == mount for m in mounts):
                    mounts.append({"name": vname, "readOnly": True, "mountPath": mount})
        pod["status"] = {"phase": "Pending", "qosClass": _qos(spec)}

    def _pod_validate(self, pod: dict[str, Any], errs: list[Any]) -> None:
        spec = pod["spec"]
        containers = spec.get("containers")
        if not containers:
            errs.append(ferr("spec.containers", "FieldValueRequired"))
        vol_names = set()
        for i, v in enumerate(spec.get("volumes") or ()):
            n = v.get("name", "") if isinstance(v, dict) else ""
            p = f"spec.volumes[{i}].name"
            if not n:
                errs.append(ferr(p, "FieldValueRequired"))
            elif n in vol_names:
                errs.append(ferr(p, "FieldValueDuplicate", n))
            else:
                for e in name_errors(n, "label"):
                    errs.append(ferr(p, "FieldValueInvalid", n, e))
            vol_names.add(n)
        seen: set[str] = set()
        for key in ("initContainers", "containers"):
            for i, c in enumerate(spec.get(key) or ()):
                p = f"spec.{key}[{i}]"
                if not isinstance(c, dict):
                    errs.append(ferr(p, "FieldValueInvalid", str(c), "must be an object"))
                    continue
                n = c.get("name") or ""
                if not n:
                    errs.append(ferr(p + ".name", "FieldValueRequired"))
                elif n in seen:
                    errs.append(ferr(p + ".name", "FieldValueDuplicate", n))
                else:
                    for e in name_errors(n, "label"):
                        errs.append(ferr(p + ".name", "FieldValueInvalid", n, e))
                seen.add(n)
                if not c.get("image"):
                    errs.append(ferr(p + ".image", "FieldValueRequired"))
                paths: set[str] = set()
                for j, m in enumerate(c.get("volumeMounts") or ()):
                    mp = f"{p}.volumeMounts[{j}]"
                    if not m.get("name"):
                        errs.append(ferr(mp + ".name", "FieldValueRequired"))
                    elif m["name"] not in vol_names:
                        errs.append(ferr(mp + ".name", "FieldValueNotFound", m["name"]))
                    if not m.get("mountPath"):
                        errs.append(ferr(mp + ".mountPath", "FieldValueRequired"))
                    elif m["mountPath"] in paths:
                        errs.append(ferr(mp + ".mountPath", "FieldValueInvalid", m["mountPath"], "must be unique"))
                    paths.add(m.get("mountPath", ""))
                for j, ev in enumerate(c.get("env") or ()):
                    if not isinstance(ev, dict) or not ev.get("name"):
                        errs.append(ferr(f"{p}.env[{j}].name", "FieldValueRequired"))
                    elif "value" in ev and "valueFrom" in ev and ev["value"]:
                        errs.append(
                            ferr(
                                f"{p}.env[{j}].valueFrom",
                                "FieldValueInvalid",
                                "",
                                "may not be specified when `value` is not empty",
                            )
                        )
        rp = spec.get("restartPolicy")
        if rp not in ("Always", "OnFailure", "Never"):
            errs.append(
                ferr("spec.restartPolicy", "FieldValueNotSupported", rp, 'supported values: "Always", "OnFailure", "Never"')
            )
        ads = spec.get("activeDeadlineSeconds")
        if ads is not None and (not isinstance(ads, int) or ads < 1 or ads > 2147483647):
            errs.append(
                ferr("spec.activeDeadlineSeconds", "FieldValueInvalid", ads, "must be between 1 and 2147483647, inclusive")
            )
        tg = spec.get("terminationGracePeriodSeconds")
        if tg is not None and not isinstance(tg, int):
            raise bad_request("Pod in version \"v1\" cannot be handled as a Pod: terminationGracePeriodSeconds must be an integer")

    def _pod_update(self, new: dict[str, Any], old: dict[str, Any], errs: list[Any]) -> None:
        ns_, os_ = new.get("spec") or {}, old.get("spec") or {}

        def mask(spec: dict[str, Any]) -> dict[str, Any]:
            s = clone(spec)
            for key in ("containers", "initContainers"):
                for c in s.get(key) or ():
                    if isinstance(c, dict):
                        c.pop("image", None)
            s.pop("activeDeadlineSeconds", None)
            s.pop("tolerations", None)
            return s

        if ns_ != os_ and mask(ns_) != mask(os_):
            errs.append(
                ferr(
                    "spec",
                    "FieldValueForbidden",
                    detail="pod updates may not change fields other than `spec.containers[*].image`,"
                    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                    "(allow it to be set to 1 if it was previously negative)",
                )
            )

    # configmaps / secrets

    def _configmap_validate(self, cm: dict[str, Any], errs: list[Any]) -> None:
        total = 0
        for fld in ("data", "binaryData"):
            d = cm.get(fld)
            if d is None:
                continue
            if not isinstance(d, dict) or not all(isinstance(v, str) for v in d.values()):
                raise bad_request(
                    f'ConfigMap in version "v1" cannot be handled as a ConfigMap: json: cannot unmarshal '
                    f"into Go struct field ConfigMap.{fld} of type string"
                )
            for k, v in d.items():
                if len(k) > 253 or not _CM_KEY.match(k):
                    errs.append(
                        ferr(
                            f"{fld}[{k}]",
                            "FieldValueInvalid",
                            k,
                            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' "
                            "(e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is "
                            "'[-._a-zA-Z0-9]+')",
                        )
                    )
                total += len(k) + (len(v.encode()) if fld == "data" else len(v) * 3 // 4)
        if total > 1048576:
            errs.append(ferr("[]", "FieldValueTooLong", detail="must have at most 1048576 bytes"))

    def _secret_prepare(self, s: dict[str, Any], errs: list[Any]) -> None:
        sd = s.pop("stringData", None)
        if isinstance(sd, dict):
            data = s.setdefault("data", {})
            for k, v in sd.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
        s.setdefault("type", "Opaque")
        for k, v in (s.get("data") or {}).items():
            try:
                base64.b64decode(v, validate=True)
            except Exception:  # noqa: BLE001
                raise bad_request(f"Secret in version \"v1\" cannot be handled as a Secret: illegal base64 data at data[{k}]") from None

    # rbac

    def _rbac_validate(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, errs: list[Any], user: Any
    ) -> None:
        kind = rt.kind
        if kind in ("Role", "ClusterRole"):
            rules = obj.get("rules") or []
            if not isinstance(rules, list):
                raise bad_request("rules must be a list")
            for i, r in enumerate(rules):
                p = f"rules[{i}]"
                if not r.get("verbs"):
                    errs.append(ferr(p + ".verbs", "FieldValueRequired", detail="verbs must contain at least one value"))
                if r.get("nonResourceURLs"):
                    if kind == "Role":
                        errs.append(
                            ferr(
                                p + ".nonResourceURLs",
                                "FieldValueInvalid",
                                r["nonResourceURLs"],
                                "namespaced rules cannot apply to non-resource URLs",
                            )
                        )
                elif not r.get("apiGroups") and r.get("resources"):
                    errs.append(
                        ferr(p + ".apiGroups", "FieldValueRequired", detail="resource rules must supply at least one api group")
                    )
                elif not r.get("resources"):
                    errs.append(
                        ferr(p + ".resources", "FieldValueRequired", detail="resource rules must supply at least one resource")
                    )
            if not errs:
                self._check_escalation(rt, obj, rules, user)
        else:
            ref = obj.get("roleRef") or {}
            if not isinstance(ref, dict):
                raise bad_request("roleRef must be an object")
            allowed = ("Role", "ClusterRole") if kind == "RoleBinding" else ("ClusterRole",)
            if ref.get("apiGroup") != "rbac.authorization.k8s.io":
                errs.append(
                    ferr("roleRef.apiGroup", "FieldValueNotSupported", ref.get("apiGroup", ""), 'supported values: "rbac.authorization.k8s.io"')
                )
            if ref.get("kind") not in allowed:
                errs.append(
                    ferr("roleRef.kind", "FieldValueNotSupported", ref.get("kind", ""), "supported values: " + ", ".join(f'"{a}"' for a in allowed))
                )
            if not ref.get("name"):
                errs.append(ferr("roleRef.name", "FieldValueRequired"))
            if old is not None and old.get("roleRef") != ref:
                errs.append(ferr("roleRef", "FieldValueInvalid", "{...}", "cannot change roleRef"))
            for i, s in enumerate(obj.get("subjects") or ()):
                p = f"subjects[{i}]"
                sk = s.get("kind")
                if sk not in ("ServiceAccount", "User", "Group"):
                    errs.append(ferr(p + ".kind", "FieldValueNotSupported", sk, 'supported values: "ServiceAccount", "User", "Group"'))
                if not s.get("name"):
                    errs.append(ferr(p + ".name", "FieldValueRequired"))
                if sk == "ServiceAccount" and kind == "ClusterRoleBinding" and not s.get("namespace"):
                    errs.append(ferr(p + ".namespace", "FieldValueRequired"))
                if sk in ("User", "Group") and s.get("apiGroup") != "rbac.authorization.k8s.io":
                    errs.append(
                        ferr(p + ".apiGroup", "FieldValueNotSupported", s.get("apiGroup", ""), 'supported values: "rbac.authorization.k8s.io"')
                    )
            if not errs:
                self._check_bind(rt, obj, ref, user)

    def _user_holds(self, user: Any, ns: str, rules: list[dict[str, Any]]) -> list[str]:
        missing = []
        az = self.authorizer
        for r in rules:
            for verb in r.get("verbs") or ():
                if r.get("nonResourceURLs"):
                    for url in r["nonResourceURLs"]:
                        ok, _ = az.authorize(user, Attributes(verb=verb, api_group="", resource="", path=url))
                        if not ok:
                            missing.append(f'{{NonResourceURLs:["{url}"], Verbs:["{verb}"]}}')
                    continue
                for g in r.get("apiGroups") or ():
                    for res in r.get("resources") or ():
                        resource, _, sub = res.partition("/")
                        for rn in r.get("resourceNames") or [""]:
                            ok, _ = az.authorize(
                                user,
                                Attributes(
                                    verb=verb, api_group=g, resource=resource, subresource=sub, namespace=ns, name=rn
                                ),
                            )
                            if not ok:
                                names = f', ResourceNames:["{rn}"]' if rn else ""
                                missing.append(
                                    f'{{APIGroups:["{g}"], Resources:["{res}"]{names}, Verbs:["{verb}"]}}'
                                )
        return missing

    def _is_privileged(self, user: Any) -> bool:
        return user is None or self.authorizer is None or "system:masters" in (user.groups or ())

    def _check_escalation(self, rt: ResourceType, obj: dict[str, Any], rules: list[dict[str, Any]], user: Any) -> None:
        if self._is_privileged(user):
            return
        ns = obj["metadata"].get("namespace", "") if rt.namespaced else ""
        ok, _ = self.authorizer.authorize(
            user, Attributes(verb="escalate", api_group=rt.group, resource=rt.plural, namespace=ns, name=obj["metadata"]["name"])
        )
        if ok:
            return
        missing = self._user_holds(user, ns, rules)
        if missing:
            groups = " ".join(json.dumps(g) for g in user.groups)
            raise forbidden(
                rt,
                obj["metadata"]["name"],
                f'user "{user.name}" (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n'
                + "\n".join(missing),
            )

    def _check_bind(self, rt: ResourceType, obj: dict[str, Any], ref: dict[str, Any], user: Any) -> None:
        if self._is_privileged(user):
            return
        ns = obj["metadata"].get("namespace", "") if rt.namespaced else ""
        role_res = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
        ok, _ = self.authorizer.authorize(
            user,
            Attributes(verb="bind", api_group="rbac.authorization.k8s.io", resource=role_res, namespace=ns, name=ref.get("name", "")),
        )
        if ok:
            return
        if ref.get("kind") == "ClusterRole":
            e = self.buckets[("rbac.authorization.k8s.io", "clusterroles")].objects.get(("", ref.get("name", "")))
        else:
            e = self.buckets[("rbac.authorization.k8s.io", "roles")].objects.get((ns, ref.get("name", "")))
        rules = (e.obj.get("rules") or []) if e is not None else []
        missing = self._user_holds(user, ns, rules)
        if missing or e is None:
            groups = " ".join(json.dumps(g) for g in user.groups)
            raise forbidden(
                rt,
                obj["metadata"]["name"],
                f'user "{user.name}" (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n'
                + "\n".join(missing),
            )

    # CRDs

    def _crd_prepare(self, crd: dict[str, Any], old: dict[str, Any] | None, errs: list[Any]) -> None:
        spec = crd.get("spec")
        if not isinstance(spec, dict):
            errs.append(ferr("spec", "FieldValueRequired"))
            return
        group = spec.get("group") or ""
        names = spec.get("names") or {}
        plural = names.get("plural") or ""
        kind = names.get("kind") or ""
        if not group:
            errs.append(ferr("spec.group", "FieldValueRequired"))
        elif len(group.split(".")) < 2:
            errs.append(ferr("spec.group", "FieldValueInvalid", group, "should be a domain with at least one dot"))
        if not plural:
            errs.append(ferr("spec.names.plural", "FieldValueRequired"))
        elif not _DNS1123_LABEL.match(plural):
            errs.append(ferr("spec.names.plural", "FieldValueInvalid", plural, _LABEL_MSG))
        if not kind:
            errs.append(ferr("spec.names.kind", "FieldValueRequired"))
        names.setdefault("singular", kind.lower())
        names.setdefault("listKind", kind + "List")
        if plural and group and crd["metadata"]["name"] != f"{plural}.{group}":
            errs.append(
                ferr("metadata.name", "FieldValueInvalid", crd["metadata"]["name"], 'must be spec.names.plural+"."+spec.group')
            )
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            errs.append(ferr("spec.scope", "FieldValueNotSupported", spec.get("scope", ""), 'supported values: "Cluster", "Namespaced"'))
        versions = spec.get("versions") or []
        if not versions:
            errs.append(ferr("spec.versions", "FieldValueInvalid", "[]", "must have exactly one version marked as storage version"))
        storage = [v for v in versions if v.get("storage")]
        if versions and len(storage) != 1:
            errs.append(ferr("spec.versions", "FieldValueInvalid", "[...]", "must have exactly one version marked as storage version"))
        for i, v in enumerate(versions):
            sch = ((v.get("schema") or {}).get("openAPIV3Schema"))
            if sch is None:
                errs.append(ferr(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueRequired", detail="schemas are required"))
            elif StructuralSchema is not None:
                try:
                    StructuralSchema(sch)
                except Exception as e:  # noqa: BLE001 - any schema compile error is a 422
                    errs.append(ferr(f"spec.versions[{i}].schema.openAPIV3Schema", "FieldValueInvalid", "...", str(e)))
        if old is not None:
            ospec = old.get("spec") or {}
            if ospec.get("group") != group or (ospec.get("names") or {}).get("plural") != plural:
                errs.append(ferr("spec.names.plural", "FieldValueInvalid", plural, "field is immutable"))
            if ospec.get("scope") != spec.get("scope"):
                errs.append(ferr("spec.scope", "FieldValueInvalid", spec.get("scope"), "field is immutable"))
        spec.setdefault("conversion", {"strategy": "None"})
        stored = list((old or {}).get("status", {}).get("storedVersions") or [])
        for v in storage:
            if v.get("name") not in stored:
                stored.append(v.get("name"))
        now = now_rfc3339()
        crd["status"] = {
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": now,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": now,
                },
            ],
            "acceptedNames": dict(names),
            "storedVersions": stored,
        }
        if old is not None and (old.get("status") or {}).get("conditions"):
            crd["status"]["conditions"] = old["status"]["conditions"]
            crd["status"]["acceptedNames"] = dict(names)

    def register_crd(self, crd: dict[str, Any]) -> None:
        """(Re)build the served types of a CRD object."""
        spec = crd["spec"]
        names = spec["names"]
        group = spec["group"]
        versions = spec.get("versions") or []
        storage = next((v["name"] for v in versions if v.get("storage")), versions[0]["name"] if versions else "v1")
        cname = crd["metadata"]["name"]
        for k in [k for k, rt in self.types.items() if rt.crd == cname]:
            del self.types[k]
        for v in versions:
            if not v.get("served", True):
                continue
            sub = v.get("subresources") or {}
            subs: dict[str, tuple[str, ...]] = {}
            if "status" in sub:
                subs["status"] = STATUS_VERBS
            if "scale" in sub:
                subs["scale"] = STATUS_VERBS
            sch_src = (v.get("schema") or {}).get("openAPIV3Schema")
            sch = StructuralSchema(sch_src) if (sch_src is not None and StructuralSchema is not None) else None
            rt = ResourceType(
                group,
                v["name"],
                names["plural"],
                names.get("singular") or names["kind"].lower(),
                names["kind"],
                spec.get("scope") == "Namespaced",
                tuple(names.get("shortNames") or ()),
                tuple(names.get("categories") or ()),
                subresources=subs,
                storage_version=storage,
                return_deleted=True,
                crd=cname,
                schema=sch,
                printer_columns=v.get("additionalPrinterColumns"),
            )
            self.register(rt)
        b = self.buckets.get((group, names["plural"]))
        if b is not None:
            st = self.types.get((group, storage, names["plural"]))
            if st is not None:
                b.rt = st

    # ---------------------------------------------------------------- after-write hooks

    def _after_create(self, rt: ResourceType, b: Bucket, entry: Entry) -> None:
        g, p = b.key
        if g == "" and p == "namespaces":
            self.ensure_namespace_defaults(entry.name)
        elif g == "apiextensions.k8s.io":
            self.register_crd(entry.obj)
        if self.gc_enabled and entry.obj["metadata"].get("ownerReferences"):
            key, ns, name, uid = b.key, entry.ns, entry.name, entry.uid
            self.defer_later(0.2, lambda: self._gc_check_dangling(key, ns, name, uid))

    def _after_update(self, rt: ResourceType, b: Bucket, entry: Entry, old: Entry) -> None:
        g = b.key[0]
        if g == "apiextensions.k8s.io" and "deletionTimestamp" not in entry.obj["metadata"]:
            self.register_crd(entry.obj)
        if self.gc_enabled and entry.obj["metadata"].get("ownerReferences") != old.obj["metadata"].get("ownerReferences"):
            key, ns, name, uid = b.key, entry.ns, entry.name, entry.uid
            self.defer_later(0.2, lambda: self._gc_check_dangling(key, ns, name, uid))

    def _after_deletion_started(self, rt: ResourceType, b: Bucket, entry: Entry) -> None:
        fins = entry.obj["metadata"].get("finalizers") or ()
        uid = entry.uid
        key, ns, name = b.key, entry.ns, entry.name
        if self.gc_enabled and "orphan" in fins:
            self.defer(lambda: self._gc_orphan(key, ns, name, uid))
        if self.gc_enabled and "foregroundDeletion" in fins:
            self.defer(lambda: self._gc_foreground(key, ns, name, uid))
        if b.key == ("apiextensions.k8s.io", "customresourcedefinitions") and CRD_FINALIZER in fins:
            self.defer(lambda: self._crd_cleanup(entry.obj))

    def _after_remove(self, b: Bucket, final: Entry) -> None:
        md = final.obj["metadata"]
        uid = final.uid
        if self.gc_enabled and uid in self.owner_index:
            self.defer(lambda: self._gc_owner_removed(uid))
        if self.gc_enabled:
            for r in md.get("ownerReferences") or ():
                ou = r.get("uid")
                if ou and ou in self.uid_index and ou not in self.owner_index:
                    self.defer(functools.partial(self._gc_foreground_done, ou))
        if final.ns and final.ns in self.terminating_ns:
            nsn = final.ns
            self.defer(lambda: self._ns_maybe_finish(nsn))
        if b.terminating and not b.objects:
            crd_name = b.rt.crd
            if crd_name:
                self.defer(
                    lambda: self.remove_finalizer(("apiextensions.k8s.io", "customresourcedefinitions"), "", crd_name, CRD_FINALIZER)
                )
        if b.key == ("apiextensions.k8s.io", "customresourcedefinitions"):
            self.unregister_crd(final.name)

    # ---------------------------------------------------------------- namespaces

    def ensure_namespace_defaults(self, ns: str) -> None:
        """The per-namespace objects the controllers of a real cluster create."""
        sab = self.buckets[("", "serviceaccounts")]
        if (ns, "default") not in sab.objects:
            try:
                self.create(sab.rt, ns, {"metadata": {"name": "default"}})
            except ApiError:
                pass
        cmb = self.buckets[("", "configmaps")]
        if (ns, "kube-root-ca.crt") not in cmb.objects:
            try:
                self.create(
                    cmb.rt,
                    ns,
                    {
                        "metadata": {
                            "name": "kube-root-ca.crt",
                            "annotations": {"kubernetes.io/description": "Contains a CA bundle for the devcluster."},
                        },
                        "data": {"ca.crt": self.root_ca_pem
                                 or "-----BEGIN CERTIFICATE-----\nZGV2Y2x1c3Rlcg==\n-----END CERTIFICATE-----\n"},
                    },
                )
            except ApiError:
                pass

    def _ns_cleanup(self, ns: str) -> None:
        for b in list(self.buckets.values()):
            if not b.rt.namespaced:
                continue
            for e in list((b.by_ns.get(ns) or {}).values()):
                if "deletionTimestamp" not in e.obj["metadata"]:
                    self.internal_delete(b.key, ns, e.name, {"propagationPolicy": "Background"})
        self._ns_maybe_finish(ns)

    def _ns_maybe_finish(self, ns: str) -> None:
        if ns not in self.terminating_ns or self.ns_counts.get(ns, 0) > 0:
            return
        nsb = self.buckets[("", "namespaces")]
        e = nsb.objects.get(("", ns))
        if e is None:
            self.terminating_ns.discard(ns)
            return
        self.terminating_ns.discard(ns)
        if e.obj["metadata"].get("finalizers"):
            def mut(o: dict[str, Any]) -> None:
                o["spec"] = {}

            self.internal_update(nsb.key, "", ns, mut)
            self.terminating_ns.add(ns)  # still held by metadata finalizers
            return
        self.commit(nsb, "", ns, None, e)

    # ---------------------------------------------------------------- CRD cleanup

    def _crd_cleanup(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        b = self.buckets.get((spec.get("group", ""), (spec.get("names") or {}).get("plural", "")))
        cname = crd["metadata"]["name"]
        if b is None or not b.objects:
            self.remove_finalizer(("apiextensions.k8s.io", "customresourcedefinitions"), "", cname, CRD_FINALIZER)
            return
        b.terminating = True
        for e in list(b.objects.values()):
            if "deletionTimestamp" not in e.obj["metadata"]:
                self.internal_delete(b.key, e.ns, e.name)
        if not b.objects:
            self.remove_finalizer(("apiextensions.k8s.io", "customresourcedefinitions"), "", cname, CRD_FINALIZER)

    # ---------------------------------------------------------------- garbage collector

    def _owner_exists(self, ref: dict[str, Any]) -> bool:
        return ref.get("uid") in self.uid_index

    def _gc_owner_removed(self, uid: str) -> None:
        for key, ns, name in list(self.owner_index.get(uid, ())):
            b = self.buckets.get(key)
            e = b.objects.get((ns, name)) if b is not None else None
            if b is None or e is None:
                continue
            self._gc_consider(b, e)

    def _gc_consider(self, b: Bucket, e: Entry) -> None:
        refs = e.obj["metadata"].get("ownerReferences") or []
        if not refs:
            return
        alive = [r for r in refs if self._owner_exists(r)]
        if len(alive) == len(refs):
            return
        if alive:
            gone = {r.get("uid") for r in refs if r not in alive}

            def mut(o: dict[str, Any]) -> None:
                o["metadata"]["ownerReferences"] = [
                    r for r in o["metadata"].get("ownerReferences") or () if r.get("uid") not in gone
                ]

            self.internal_update(b.key, e.ns, e.name, mut, e.uid)
            return
        if "deletionTimestamp" in e.obj["metadata"]:
            return
        self.internal_delete(b.key, e.ns, e.name, {"propagationPolicy": "Background", "preconditions": {"uid": e.uid}})

    def _gc_check_dangling(self, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
        b = self.buckets.get(key)
        e = b.objects.get((ns, name)) if b is not None else None
        if b is None or e is None or e.uid != uid:
            return
        self._gc_consider(b, e)

    def _gc_orphan(self, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
        for dkey, dns, dname in list(self.owner_index.get(uid, ())):

            def mut(o: dict[str, Any]) -> None:
                refs = [r for r in o["metadata"].get("ownerReferences") or () if r.get("uid") != uid]
                if refs:
                    o["metadata"]["ownerReferences"] = refs
                else:
                    o["metadata"].pop("ownerReferences", None)

            self.internal_update(dkey, dns, dname, mut)
        self.remove_finalizer(key, ns, name, "orphan", uid)

    def _gc_foreground(self, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
        deps = list(self.owner_index.get(uid, ()))
        if not deps:
            self.remove_finalizer(key, ns, name, "foregroundDeletion", uid)
            return
        for dkey, dns, dname in deps:
            self.internal_delete(dkey, dns, dname, {"propagationPolicy": "Foreground"})

    def _gc_foreground_done(self, owner_uid: str) -> None:
        loc = self.uid_index.get(owner_uid)
        if loc is None or self.owner_index.get(owner_uid):
            return
        key, ns, name = loc
        b = self.buckets.get(key)
        e = b.objects.get((ns, name)) if b is not None else None
        if e is not None and "foregroundDeletion" in (e.obj["metadata"].get("finalizers") or ()):
            self.remove_finalizer(key, ns, name, "foregroundDeletion", owner_uid)


class _InitialEvent:
    """A synthetic ADDED event for the initial state of a watch (not kept in history)."""

    __slots__ = ("entry", "type")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.type = ADDED

    def line(self, etype: str, rt: ResourceType) -> bytes:
        """Watch-stream line."""
        return b'{"type":"' + etype.encode() + b'","object":' + self.entry.raw_for(rt) + b"}\n"


class _SimpleEvent:
    """Stand-in for asyncio.Event when the store is used without a loop."""

    def __init__(self) -> None:
        self.flag = False

    def set(self) -> None:
        """Mark as set."""
        self.flag = True

    def clear(self) -> None:
        """Mark as clear."""
        self.flag = False

    def is_set(self) -> bool:
        """Whether set."""
        return self.flag


def deep_copy(obj: Any) -> Any:
    """copy.deepcopy (exported for callers that hold non-JSON values)."""
    return copy.deepcopy(obj)
