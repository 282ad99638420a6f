"""Namespaces: the ``kubernetes.io/metadata.name`` label, spec finalizers, ``/finalize``, the per-namespace
defaults (ServiceAccount ``default``, ConfigMap ``kube-root-ca.crt``), and the namespace controller that
empties and then removes a terminating namespace."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..codec import loads, now_rfc3339
from ..errors import ApiError, forbidden
from .base import Strategy, Write

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Bucket, Entry, Store

UNDELETABLE = ("default", "kube-system", "kube-public")


class NamespaceStrategy(Strategy):
    """``namespaces``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        md = obj["metadata"]
        md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        md = new["metadata"]
        md.setdefault("labels", {})["kubernetes.io/metadata.name"] = md["name"]
        if w.subresource != "finalize" and not w.internal:
            new["spec"] = old.get("spec") or {}

    def update_subresource(self, subresource: str, new: dict[str, Any], old: Entry) -> dict[str, Any] | None:
        if subresource != "finalize":
            return None
        spec = new.get("spec")
        new = loads(old.raw())
        new["spec"] = spec if isinstance(spec, dict) else {}
        return new

    def begin_delete(self, store: Store, rt: ResourceType, b: Bucket, entry: Entry) -> dict[str, Any] | None:
        if entry.name in UNDELETABLE:
            raise forbidden(rt, entry.name, "this namespace may not be deleted")
        return start_deletion(store, b, entry)

    def after_create(self, store: Store, b: Bucket, entry: Entry) -> None:
        ensure_namespace_defaults(store, entry.name)


def content_removed(store: Store, final: Entry) -> None:
    """An object is gone: its namespace may be done terminating."""
    if final.ns and final.ns in store.terminating_ns:
        nsn = final.ns
        store.defer(lambda: maybe_finish(store, nsn))


def start_deletion(store: Store, b: Bucket, entry: Entry) -> dict[str, Any]:
    """Mark the namespace Terminating; its content is deleted next (the namespace controller)."""
    new = entry.copy()
    md = new["metadata"]
    md["deletionTimestamp"] = now_rfc3339()
    md["deletionGracePeriodSeconds"] = 0
    new.setdefault("status", {})["phase"] = "Terminating"
    e2 = store.commit(b, "", entry.name, new, entry)
    store.terminating_ns.add(entry.name)
    nsname = entry.name
    store.defer(lambda: cleanup(store, nsname))
    return loads(e2.raw())


def ensure_namespace_defaults(store: Store, ns: str) -> None:
    """The per-namespace objects the controllers of a real cluster create."""
    sab = store.buckets[("", "serviceaccounts")]
    if (ns, "default") not in sab.objects:
        try:
            store.create(sab.rt, ns, {"metadata": {"name": "default"}})
        except ApiError:
            pass
    cmb = store.buckets[("", "configmaps")]
    if (ns, "kube-root-ca.crt") not in cmb.objects:
        try:
            store.create(
                cmb.rt,
                ns,
                {
                    "metadata": {
                        "name": "kube-root-ca.crt",
                        "annotations": {"kubernetes.io/description": "Contains a CA bundle for the devcluster."},
                    },
                    "data": {"ca.crt": store.root_ca_pem
                             or "-----BEGIN CERTIFICATE-----\nZGV2Y2x1c3Rlcg==\n-----END CERTIFICATE-----\n"},
                },
            )
        except ApiError:
            pass


def cleanup(store: Store, ns: str) -> None:
    """Delete everything in a terminating namespace."""
    for b in list(store.buckets.values()):
        if not b.rt.namespaced:
            continue
        for e in list((b.by_ns.get(ns) or {}).values()):
            if "deletionTimestamp" not in e.obj["metadata"]:
                store.internal_delete(b.key, ns, e.name, {"propagationPolicy": "Background"})
    maybe_finish(store, ns)


def maybe_finish(store: Store, ns: str) -> None:
    """Remove a terminating namespace once it is empty (or drop its spec finalizer if metadata finalizers hold it)."""
    if ns not in store.terminating_ns or store.ns_counts.get(ns, 0) > 0:
        return
    nsb = store.buckets[("", "namespaces")]
    e = nsb.objects.get(("", ns))
    if e is None:
        store.terminating_ns.discard(ns)
        return
    store.terminating_ns.discard(ns)
    if e.obj["metadata"].get("finalizers"):
        def mut(o: dict[str, Any]) -> None:
            o["spec"] = {}

        store.internal_update(nsb.key, "", ns, mut)
        store.terminating_ns.add(ns)  # still held by metadata finalizers
        return
    store.commit(nsb, "", ns, None, e)
