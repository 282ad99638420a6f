"""Object store and API semantics of the devcluster Kubernetes API emulator: the generic store.

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
optimistic concurrency, status subresource, generation, finalizers and deletionTimestamp, chunked
lists, watches. What differs by kind — pod validation and graceful deletion, namespaces, RBAC
objects, CRDs and custom resources — is in the kinds' strategies (``registry/``), which the store
looks up by resource; the garbage collector is ``registry/gc.py``. Errors are ``errors.py``,
selectors ``selectors.py``, resource types ``resources.py``, ObjectMeta validation ``meta.py``, the
JSON codec ``codec.py``.
"""

from __future__ import annotations

import base64
import bisect
import json
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from . import registry
from .codec import dumps, loads, now_rfc3339
from .errors import (
    MISSING,
    ApiError,
    already_exists,
    bad_request,
    conflict,
    ferr,
    invalid,
    not_found,
    precondition_conflict,
    status_details,
)
from .meta import GEN_ALPHABET, validate_meta
from .patch import PatchError, json_patch, merge_patch, strategic_merge_patch
from .registry import gc, namespaces
from .resources import ResourceType, builtin_types, version_priority
from .selectors import FieldSelector, LabelSelector

ADDED, MODIFIED, DELETED, BOOKMARK, ERROR = "ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"
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

    def index(self, b: Bucket, e: Entry) -> None:
        """Add ``e`` to the label, uid and owner indexes."""
        key = (e.ns, e.name)
        for k, v in e.labels.items():
            b.label_index.setdefault(k, {}).setdefault(v, set()).add(key)
        if e.uid:
            self.uid_index[e.uid] = (b.key, e.ns, e.name)
        for r in e.obj["metadata"].get("ownerReferences") or ():
            u = r.get("uid")
            if u:
                self.owner_index.setdefault(u, set()).add((b.key, e.ns, e.name))

    def unindex(self, b: Bucket, e: Entry) -> None:
        """Remove ``e`` from the indexes."""
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
            self.unindex(b, old)
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
                    self.unindex(b, old)
                    self.index(b, entry)
                etype = MODIFIED
            else:
                self.index(b, entry)
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
                status_details(rt, md.get("name")),
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
                name = base + "".join(self.gen_name_rng.choice(GEN_ALPHABET) for _ in range(5))
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
        registry.strategy_for(rt).prepare_create(self, rt, ns, body, errs, registry.Write(user, warnings, strict))
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
            raise ApiError(422, "Invalid", e.message, status_details(rt, name)) from None
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
        strategy = registry.strategy_for(rt)
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
            status = new.get("status", MISSING)
            new = loads(old.raw())
            if status is MISSING:
                new.pop("status", None)
            else:
                new["status"] = status
            md = new["metadata"]
        elif subresource and (sub := strategy.update_subresource(subresource, new, old)) is not None:
            new = sub
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
        if subresource != "status" or strategy.validates_status:
            w = registry.Write(user, warnings, strict, subresource, internal)
            strategy.prepare_update(self, rt, new, oobj, errs, w)
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
            strategy.graceful and (md.get("deletionGracePeriodSeconds") or 0) > 0
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
            if new.get(k, MISSING) != old.get(k, MISSING):
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
        strategy = registry.strategy_for(rt)
        grace = strategy.deletion_grace(obj, grace_opt)
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
            if strategy.graceful:
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
        taken = strategy.begin_delete(self, rt, b, entry)
        if taken is not None:
            return taken, False
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

    # ---------------------------------------------------------------- after-write hooks (registry/)

    def _after_create(self, rt: ResourceType, b: Bucket, entry: Entry) -> None:
        registry.strategy_for(b.rt).after_create(self, b, entry)
        if self.gc_enabled:
            gc.after_create(self, b, entry)

    def _after_update(self, rt: ResourceType, b: Bucket, entry: Entry, old: Entry) -> None:
        registry.strategy_for(b.rt).after_update(self, b, entry, old)
        if self.gc_enabled:
            gc.after_update(self, b, entry, old)

    def _after_deletion_started(self, rt: ResourceType, b: Bucket, entry: Entry) -> None:
        if self.gc_enabled:
            gc.after_deletion_started(self, b, entry)
        registry.strategy_for(b.rt).after_deletion_started(self, b, entry)

    def _after_remove(self, b: Bucket, final: Entry) -> None:
        if self.gc_enabled:
            gc.after_remove(self, b, final)
        namespaces.content_removed(self, final)
        registry.strategy_for(b.rt).after_remove(self, b, final)


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
