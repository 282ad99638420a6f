"""controller/podwatch.py: PodInfo and PodCache (the managed pods as the watch delivers them)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from aiotest import async_test
from controller.decide import PodState
from controller.names import AGENT_UID_LABEL, POD_CONTAINER
from controller.podwatch import PodCache, PodInfo

UID = "0b0c0d0e-1111-2222-3333-444455556666"
OTHER = "99999999-1111-2222-3333-444455556666"


def pod(uid: str = "p1", name: str = "a1", namespace: str = "ns", owner: str = UID, phase: str = "Running",
        rv: str = "1", restarts: int = 0, sidecar: bool = False, owner_name: str | None = "a1") -> dict[str, Any]:
    containers = [{"name": POD_CONTAINER, "image": "img"}]
    statuses = [{"name": POD_CONTAINER, "restartCount": restarts,
                 "state": {"running": {}} if phase == "Running" else {"terminated": {"exitCode": 0}}}]
    if sidecar:
        containers.append({"name": "side", "image": "side"})
        statuses.append({"name": "side", "restartCount": 0, "state": {"running": {}}})
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": rv,
                            "labels": {AGENT_UID_LABEL: owner}}
    if owner_name is not None:
        meta["ownerReferences"] = [{"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                    "name": owner_name, "uid": owner, "controller": True}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
            "spec": {"initContainers": [{"name": "init", "image": "i"}], "containers": containers,
                     "nodeName": "n1"},
            "status": {"phase": phase, "containerStatuses": statuses}}


class Changes:
    def __init__(self) -> None:
        self.calls: list[tuple[PodInfo | None, PodInfo | None]] = []

    def __call__(self, old: PodInfo | None, new: PodInfo | None) -> None:
        self.calls.append((old, new))

    def uids(self) -> list[tuple[str | None, str | None]]:
        return [(o.uid if o else None, n.uid if n else None) for o, n in self.calls]


# ---------------------------------------------------------------- PodInfo

def test_pod_info_of_a_pod():
    info = PodInfo.of(pod(restarts=1, sidecar=True))
    assert (info.namespace, info.name, info.uid, info.owner_name, info.owner_uid) == ("ns", "a1", "p1", "a1", UID)
    assert info.containers == ("init", POD_CONTAINER, "side")
    assert info.restarted == (POD_CONTAINER,)
    assert info.state == PodState.from_body(pod(restarts=1, sidecar=True))


def test_pod_info_owner_name_only_from_a_controlling_agent():
    body = pod(owner_name=None)
    body["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "rs", "controller": True},
                                           {"kind": "Agent", "name": "not-controller", "controller": False}]
    assert PodInfo.of(body).owner_name == ""


def test_pod_info_body_is_what_a_cleanup_needs():
    body = PodInfo.of(pod(restarts=2)).body()
    assert body["metadata"] == {"name": "a1", "namespace": "ns", "uid": "p1"}
    assert [c["name"] for c in body["spec"]["containers"]] == ["init", POD_CONTAINER]
    assert body["status"]["phase"] == "Running"
    assert [c["name"] for c in body["status"]["containerStatuses"] if c["restartCount"]] == [POD_CONTAINER]


def test_container_name_tuples_are_shared_between_pods_of_one_shape():
    shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
    a = PodInfo.of(pod(uid="p1"), shapes)
    b = PodInfo.of(pod(uid="p2", name="a2"), shapes)
    assert a.containers is b.containers and len(shapes) == 1


# ---------------------------------------------------------------- PodCache lookups

def test_upsert_and_lookups():
    cache = PodCache()
    cache.upsert(pod(uid="p1", name="a1", owner=UID))
    cache.upsert(pod(uid="p2", name="a2", owner=UID))
    cache.upsert(pod(uid="p3", name="a1", namespace="other", owner=OTHER))
    assert len(cache) == 3
    assert cache.get("p1") is not None and cache.get("nope") is None
    got = cache.named("ns", "a1")
    assert got is not None and got.uid == "p1"
    got = cache.named("other", "a1")
    assert got is not None and got.uid == "p3"
    assert cache.named("ns", "a3") is None
    assert sorted(p.uid for p in cache.owned_by(UID)) == ["p1", "p2"]
    assert [p.uid for p in cache.owned_by(OTHER)] == ["p3"]
    assert cache.owned_by("nobody") == []


def test_upsert_replaces_what_is_known_of_a_pod():
    cache = PodCache()
    cache.upsert(pod(phase="Running"))
    cache.upsert(pod(phase="Succeeded", rv="2"))
    info = cache.get("p1")
    assert info is not None and info.state.phase == "Succeeded" and len(cache) == 1


def test_remove():
    cache = PodCache()
    cache.upsert(pod())
    cache.remove("p1")
    assert cache.get("p1") is None and cache.named("ns", "a1") is None and len(cache) == 0
    cache.remove("p1")          # unknown: nothing happens


def test_a_new_pod_of_the_same_name_before_the_old_ones_deletion():
    """Events of two pods of one name (the old one terminating, a new one created) in any order:
    `named` answers the one upserted last, and the other once that one is removed."""
    cache = PodCache()
    cache.upsert(pod(uid="old"))
    cache.upsert(pod(uid="new"))
    assert cache.named("ns", "a1").uid == "new"             # type: ignore[union-attr]
    cache.remove("old")
    assert cache.named("ns", "a1").uid == "new"             # type: ignore[union-attr]

    cache = PodCache()
    cache.upsert(pod(uid="new"))
    cache.upsert(pod(uid="old", rv="9"))                    # a late event of the terminating one
    assert cache.named("ns", "a1").uid == "old"             # type: ignore[union-attr]
    cache.remove("old")
    assert cache.named("ns", "a1").uid == "new"             # type: ignore[union-attr]
    cache.remove("new")
    assert cache.named("ns", "a1") is None


def test_replace_drops_what_a_fresh_list_of_that_scope_does_not_hold():
    cache = PodCache()
    cache.upsert(pod(uid="p1", name="a1"))
    cache.upsert(pod(uid="p2", name="a2"))
    cache.upsert(pod(uid="p3", name="a3", namespace="other"))
    cache.replace("ns", [pod(uid="p2", name="a2", phase="Succeeded"), pod(uid="p4", name="a4")])
    assert sorted(p.uid for p in (cache.get(u) for u in ("p1", "p2", "p3", "p4")) if p) == ["p2", "p3", "p4"]
    assert cache.get("p2").state.phase == "Succeeded"       # type: ignore[union-attr]
    cache.replace(None, [pod(uid="p4", name="a4")])
    assert len(cache) == 1 and cache.get("p4") is not None


# ---------------------------------------------------------------- on_change

def test_on_change_is_called_only_on_change():
    changes = Changes()
    cache = PodCache(on_change=changes)
    cache.upsert(pod())
    cache.upsert(pod())                         # the same again
    cache.upsert(pod(rv="2"))                   # only the resourceVersion moved: nothing we keep
    assert changes.uids() == [(None, "p1")]
    cache.upsert(pod(rv="3", phase="Succeeded"))
    assert len(changes.calls) == 2
    old, new = changes.calls[-1]
    assert old is not None and new is not None and (old.state.phase, new.state.phase) == ("Running", "Succeeded")
    cache.upsert(pod(rv="4", phase="Succeeded", restarts=1))      # a restart: the containers to archive moved
    assert len(changes.calls) == 3
    cache.remove("p1")
    assert changes.calls[-1][1] is None and changes.calls[-1][0] is not None
    cache.remove("p1")
    assert len(changes.calls) == 4


def test_on_change_for_replace():
    changes = Changes()
    cache = PodCache(on_change=changes)
    cache.upsert(pod(uid="p1", name="a1"))
    cache.upsert(pod(uid="p2", name="a2"))
    changes.calls.clear()
    cache.replace("ns", [pod(uid="p2", name="a2"), pod(uid="p3", name="a3")])
    assert sorted(changes.uids(), key=str) == sorted([(None, "p3"), ("p1", None)], key=str)


# ---------------------------------------------------------------- wait_gone

@async_test
async def test_wait_gone_is_woken_by_remove():
    cache = PodCache()
    cache.upsert(pod())
    cache.synced.set()
    waiter = asyncio.ensure_future(cache.wait_gone("p1", timeout=30))
    also = asyncio.ensure_future(cache.wait_gone("p1", timeout=30))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    cache.remove("p1")
    assert await waiter is True and await also is True


@async_test
async def test_wait_gone_is_woken_by_a_list_without_the_pod():
    cache = PodCache()
    cache.upsert(pod())
    waiter = asyncio.ensure_future(cache.wait_gone("p1", timeout=30))
    await asyncio.sleep(0)
    cache.replace("ns", [])
    assert await waiter is True


@async_test
async def test_wait_gone_of_an_unknown_pod_once_synced_is_at_once():
    cache = PodCache()
    cache.synced.set()
    assert await cache.wait_gone("never", timeout=30) is True


@async_test
async def test_wait_gone_before_the_first_list_waits():
    """Not synced yet: an unknown pod may just not be listed yet."""
    cache = PodCache()
    assert await cache.wait_gone("p1", timeout=0.01) is False


@async_test
async def test_wait_gone_times_out_while_the_pod_exists():
    cache = PodCache()
    cache.upsert(pod())
    cache.synced.set()
    assert await cache.wait_gone("p1", timeout=0.01) is False
    assert cache.get("p1") is not None


@async_test
async def test_a_waiter_timing_out_does_not_deafen_the_others():
    cache = PodCache()
    cache.upsert(pod())
    cache.synced.set()
    patient = asyncio.ensure_future(cache.wait_gone("p1", timeout=5))
    assert await cache.wait_gone("p1", timeout=0.01) is False
    cache.remove("p1")
    assert await asyncio.wait_for(patient, 0.3) is True     # failsafe: remove() wakes it at once


def test_pod_info_knows_which_containers_have_terminated():
    body = pod()
    assert PodInfo.of(body).terminated == ()
    body["status"]["containerStatuses"][0]["state"] = {"terminated": {"exitCode": 0}}
    assert PodInfo.of(body).terminated == (body["status"]["containerStatuses"][0]["name"],)


@async_test
async def test_wait_changed_wakes_on_a_change_and_on_removal():
    cache = PodCache()
    cache.upsert(pod(uid="p1"))
    assert await cache.wait_changed("p1", 0.01) is False        # nothing changed
    waiting = asyncio.ensure_future(cache.wait_changed("p1", 30))
    await asyncio.sleep(0)
    changed = pod(uid="p1")
    changed["metadata"]["resourceVersion"] = "99"
    changed["status"]["phase"] = "Succeeded"
    cache.upsert(changed)
    assert await waiting is True
    waiting = asyncio.ensure_future(cache.wait_changed("p1", 30))
    await asyncio.sleep(0)
    cache.remove("p1")
    assert await waiting is True
