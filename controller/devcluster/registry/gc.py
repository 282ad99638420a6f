"""The garbage collector: owner references (Background, Foreground and Orphan propagation) and dangling
owners, as kube-controller-manager's. It runs for every kind (``DevCluster(gc=False)`` turns it off):
the store calls these hooks after its writes when ``store.gc_enabled``."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..store import Bucket, Entry, Store


def after_create(store: Store, b: Bucket, entry: Entry) -> None:
    """A new object with owners: check them a little later."""
    if entry.obj["metadata"].get("ownerReferences"):
        _check_later(store, b, entry)


def after_update(store: Store, b: Bucket, entry: Entry, old: Entry) -> None:
    """Changed owner references: check them a little later."""
    if entry.obj["metadata"].get("ownerReferences") != old.obj["metadata"].get("ownerReferences"):
        _check_later(store, b, entry)


def after_deletion_started(store: Store, b: Bucket, entry: Entry) -> None:
    """Orphan or Foreground deletion (their finalizers were added by the DELETE)."""
    fins = entry.obj["metadata"].get("finalizers") or ()
    uid = entry.uid
    key, ns, name = b.key, entry.ns, entry.name
    if "orphan" in fins:
        store.defer(lambda: orphan(store, key, ns, name, uid))
    if "foregroundDeletion" in fins:
        store.defer(lambda: foreground(store, key, ns, name, uid))


def after_remove(store: Store, b: Bucket, final: Entry) -> None:
    """An object is gone: its dependents may be garbage, its foreground-deleting owners done."""
    md = final.obj["metadata"]
    uid = final.uid
    if uid in store.owner_index:
        store.defer(lambda: owner_removed(store, uid))
    for r in md.get("ownerReferences") or ():
        ou = r.get("uid")
        if ou and ou in store.uid_index and ou not in store.owner_index:
            store.defer(functools.partial(foreground_done, store, ou))


def _check_later(store: Store, b: Bucket, entry: Entry) -> None:
    key, ns, name, uid = b.key, entry.ns, entry.name, entry.uid
    store.defer_later(0.2, lambda: check_dangling(store, key, ns, name, uid))


def owner_exists(store: Store, ref: dict[str, Any]) -> bool:
    """Whether the owner a reference names (by uid) exists."""
    return ref.get("uid") in store.uid_index


def owner_removed(store: Store, uid: str) -> None:
    """An owner is gone: reconsider its dependents."""
    for key, ns, name in list(store.owner_index.get(uid, ())):
        b = store.buckets.get(key)
        e = b.objects.get((ns, name)) if b is not None else None
        if b is None or e is None:
            continue
        consider(store, b, e)


def consider(store: Store, b: Bucket, e: Entry) -> None:
    """Drop the references to owners that are gone; delete the object (Background) once it has none left."""
    refs = e.obj["metadata"].get("ownerReferences") or []
    if not refs:
        return
    alive = [r for r in refs if owner_exists(store, r)]
    if len(alive) == len(refs):
        return
    if alive:
        gone = {r.get("uid") for r in refs if r not in alive}

        def mut(o: dict[str, Any]) -> None:
            o["metadata"]["ownerReferences"] = [
                r for r in o["metadata"].get("ownerReferences") or () if r.get("uid") not in gone
            ]

        store.internal_update(b.key, e.ns, e.name, mut, e.uid)
        return
    if "deletionTimestamp" in e.obj["metadata"]:
        return
    store.internal_delete(b.key, e.ns, e.name, {"propagationPolicy": "Background", "preconditions": {"uid": e.uid}})


def check_dangling(store: Store, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
    """A new or re-owned object: are its owners there? (The same object only: ``uid``.)"""
    b = store.buckets.get(key)
    e = b.objects.get((ns, name)) if b is not None else None
    if b is None or e is None or e.uid != uid:
        return
    consider(store, b, e)


def orphan(store: Store, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
    """The ``orphan`` finalizer: remove the owner's references from its dependents, then the finalizer."""
    for dkey, dns, dname in list(store.owner_index.get(uid, ())):

        def mut(o: dict[str, Any]) -> None:
            refs = [r for r in o["metadata"].get("ownerReferences") or () if r.get("uid") != uid]
            if refs:
                o["metadata"]["ownerReferences"] = refs
            else:
                o["metadata"].pop("ownerReferences", None)

        store.internal_update(dkey, dns, dname, mut)
    store.remove_finalizer(key, ns, name, "orphan", uid)


def foreground(store: Store, key: tuple[str, str], ns: str, name: str, uid: str) -> None:
    """The ``foregroundDeletion`` finalizer: delete the dependents first (the finalizer goes when they are gone)."""
    deps = list(store.owner_index.get(uid, ()))
    if not deps:
        store.remove_finalizer(key, ns, name, "foregroundDeletion", uid)
        return
    for dkey, dns, dname in deps:
        store.internal_delete(dkey, dns, dname, {"propagationPolicy": "Foreground"})


def foreground_done(store: Store, owner_uid: str) -> None:
    """A dependent is gone: a foreground-deleting owner without dependents loses its finalizer."""
    loc = store.uid_index.get(owner_uid)
    if loc is None or store.owner_index.get(owner_uid):
        return
    key, ns, name = loc
    b = store.buckets.get(key)
    e = b.objects.get((ns, name)) if b is not None else None
    if e is not None and "foregroundDeletion" in (e.obj["metadata"].get("finalizers") or ()):
        store.remove_finalizer(key, ns, name, "foregroundDeletion", owner_uid)
