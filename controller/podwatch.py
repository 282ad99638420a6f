"""The managed pods, as the API server streams them: a label-selected list + watch of our own.

kopf's handler filters (`labels=`) are applied client-side: kopf lists and watches every pod of the
cluster and drops the others after receiving them, so the controller's memory and CPU would grow with
unrelated pods. Here the `app.kubernetes.io/managed-by=agent-controller` selector is on the list and
the watch themselves; lists are chunked (`limit`/`continue`); a watch resumes from the last
resourceVersion it saw (bookmarks included) and lists again after `410 Gone`.

What is kept per pod is small (`PodInfo`: names, UIDs, the `PodState` the decision needs, the container
names a cleanup needs to read the logs): the cache answers "the agent's pod", the waits for a pod to be
gone, and tells `on_change` whenever what the controller sees of a pod changed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .decide import PodState
from .kube.client import ApiError, KubeClient
from .kube.resources import PODS
from .names import MANAGED_SELECTOR
from .workqueue import retry_delay

log = logging.getLogger(__name__)

LIST_PAGE = 500
TOMBSTONES = 10_000
WATCH_TIMEOUT_SECONDS = 300


@dataclass(frozen=True, slots=True)
class PodInfo:
    namespace: str
    name: str
    uid: str
    owner_name: str             # the controlling Agent's name (ownerReferences), "" if none
    state: PodState
    containers: tuple[str, ...] = ()    # init containers, then containers
    restarted: tuple[str, ...] = ()     # containers that restarted (their previous log is archived too)
    terminated: tuple[str, ...] = ()    # containers whose current state is terminated (they write no more)
    version: int = 0                    # resourceVersion: an older body never replaces a newer one

    @classmethod
    def of(cls, pod: Mapping[str, Any], shapes: dict[tuple[str, ...], tuple[str, ...]] | None = None) -> PodInfo:
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        owner = next((r.get("name", "") for r in meta.get("ownerReferences") or []
                      if r.get("controller") and r.get("kind") == "Agent"), "")
        containers = tuple(str(c.get("name")) for c in (spec.get("initContainers") or []) + (spec.get("containers") or []))
        if shapes is not None:
            containers = shapes.setdefault(containers, containers)
        statuses = (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
        restarted = tuple(str(cs.get("name")) for cs in statuses if int(cs.get("restartCount") or 0) > 0)
        terminated = tuple(str(cs.get("name")) for cs in statuses if "terminated" in (cs.get("state") or {}))
        try:
            version = int(str(meta.get("resourceVersion") or 0))
        except ValueError:
            version = 0
        return cls(str(meta.get("namespace", "")), str(meta.get("name", "")), str(meta.get("uid", "")), str(owner),
                   PodState.from_body(pod), containers, restarted, terminated, version)

    def stopped(self, container: str) -> bool:
        """The container writes no more: it terminated, or the whole pod has (Succeeded, Failed)."""
        return container in self.terminated or self.state.phase in ("Succeeded", "Failed")

    @property
    def owner_uid(self) -> str:
        return self.state.owner_uid or ""

    def body(self) -> dict[str, Any]:
        """A minimal pod body, as the cleanup functions take it (a listed or fetched pod works the same)."""
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
                "spec": {"containers": [{"name": c} for c in self.containers]},
                "status": {"phase": self.state.phase,
                           "containerStatuses": [{"name": c, "restartCount": 1} for c in self.restarted]}}


OnChange = Callable[[PodInfo | None, PodInfo | None], None]


class PodCache:
    """The managed pods by UID and by (namespace, name); wakes those waiting for a pod to be gone."""

    def __init__(self, on_change: OnChange | None = None):
        self.on_change = on_change
        self._by_uid: dict[str, PodInfo] = {}
        self._by_owner: dict[str, dict[str, PodInfo]] = {}     # agent-uid label -> pod uid -> pod
        self._by_name: dict[tuple[str, str], PodInfo] = {}
        self._gone: dict[str, asyncio.Event] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._shapes: dict[tuple[str, ...], tuple[str, ...]] = {}
        self._tombstones: dict[str, None] = {}      # UIDs of pods seen deleted (the latest TOMBSTONES)
        self.synced = asyncio.Event()

    def __len__(self) -> int:
        return len(self._by_uid)

    def get(self, uid: str) -> PodInfo | None:
        return self._by_uid.get(uid)

    def named(self, namespace: str, name: str) -> PodInfo | None:
        return self._by_name.get((namespace, name))

    def owned_by(self, owner_uid: str) -> list[PodInfo]:
        return list(self._by_owner.get(owner_uid, {}).values())

    def upsert(self, pod: Mapping[str, Any]) -> None:
        """A pod as the watch (or an answer of the API) has it. Answers race the watch: a body older
        than the one held (a create's answer processed after the watch's later events) is ignored, and
        so is one of a pod whose deletion was already seen."""
        info = PodInfo.of(pod, self._shapes)
        old = self._by_uid.get(info.uid)
        if (old is not None and old.version > info.version) or info.uid in self._tombstones:
            return
        self._by_uid[info.uid] = info
        if old is not None and old.owner_uid != info.owner_uid:
            self._unown(old)
        self._by_owner.setdefault(info.owner_uid, {})[info.uid] = info
        self._by_name[(info.namespace, info.name)] = info
        if old is None or dataclasses.replace(old, version=info.version) != info:
            self._wake(info.uid)
            if self.on_change is not None:
                self.on_change(old, info)

    def remove(self, uid: str) -> None:
        old = self._by_uid.pop(uid, None)
        if old is not None:
            self._unown(old)
        self._tombstones[uid] = None
        while len(self._tombstones) > TOMBSTONES:
            self._tombstones.pop(next(iter(self._tombstones)))
        if old is not None:
            if self._by_name.get((old.namespace, old.name)) is old:
                del self._by_name[(old.namespace, old.name)]
                for other in self._by_uid.values():          # rare: another pod of that name is known
                    if (other.namespace, other.name) == (old.namespace, old.name):
                        self._by_name[(other.namespace, other.name)] = other
                        break
        waiter = self._gone.pop(uid, None)
        if waiter is not None:
            waiter.set()
        self._wake(uid)
        if old is not None and self.on_change is not None:
            self.on_change(old, None)

    def _unown(self, info: PodInfo) -> None:
        pods = self._by_owner.get(info.owner_uid)
        if pods is not None:
            pods.pop(info.uid, None)
            if not pods:
                del self._by_owner[info.owner_uid]

    def replace(self, scope: str | None, pods: Sequence[Mapping[str, Any]], version: int | None = None) -> None:
        """A fresh list of one scope (a namespace, or None for all), made at resourceVersion `version`:
        what is not in it is gone — unless it is newer than the list (created since, known from an
        answer of the API)."""
        seen = set()
        for pod in pods:
            self.upsert(pod)
            seen.add(str((pod.get("metadata") or {}).get("uid", "")))
        for uid, info in list(self._by_uid.items()):
            if uid in seen or (scope is not None and info.namespace != scope):
                continue
            if version is not None and info.version > version:
                continue
            self.remove(uid)

    async def wait_gone(self, uid: str, timeout: float) -> bool:
        """True once the pod of this UID is gone (a DELETED event, or a list without it)."""
        if uid not in self._by_uid and self.synced.is_set():
            return True
        return await _wait(self._gone, uid, timeout)

    async def wait_changed(self, uid: str, timeout: float) -> bool:
        """True once what is known of the pod of this UID changes (or it is gone) within `timeout`."""
        return await _wait(self._changed, uid, timeout)

    def _wake(self, uid: str) -> None:
        waiter = self._changed.pop(uid, None)
        if waiter is not None:
            waiter.set()


async def _wait(waiters: dict[str, asyncio.Event], uid: str, timeout: float) -> bool:
    """Wait for `waiters[uid]` to be set (by whoever pops and sets it); False after `timeout`.
    (On a timeout the Event stays for the other waiters: the next wake drops it.)"""
    event = waiters.setdefault(uid, asyncio.Event())
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except TimeoutError:
        return False


class PodWatcher:
    """Keeps a PodCache current from label-selected lists and watches, one per scope."""

    def __init__(self, client: KubeClient, cache: PodCache, namespaces: tuple[str, ...] = (),
                 selector: str = MANAGED_SELECTOR):
        self.client = client
        self.cache = cache
        self.scopes: list[str | None] = list(namespaces) or [None]
        self.selector = selector
        self._tasks: list[asyncio.Task[None]] = []
        self._synced: set[str | None] = set()
        self.relists = 0

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(scope), name=f"podwatch-{scope or 'all'}")
                       for scope in self.scopes]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    async def _list(self, scope: str | None) -> str:
        items: list[dict[str, Any]] = []
        version = ""
        async for page in self.client.list_pages(PODS, scope, label_selector=self.selector, limit=LIST_PAGE):
            items.extend(page.get("items") or [])
            version = str((page.get("metadata") or {}).get("resourceVersion") or version)
        try:
            listed_at: int | None = int(version)
        except ValueError:
            listed_at = None
        self.cache.replace(scope, items, listed_at)
        self.relists += 1
        self._synced.add(scope)
        if len(self._synced) == len(self.scopes):
            self.cache.synced.set()
        return version

    async def _run(self, scope: str | None) -> None:
        failures = 0
        version: str | None = None
        while True:
            try:
                if version is None:
                    version = await self._list(scope)
                async for event in self.client.watch(PODS, scope, resource_version=version,
                                                     label_selector=self.selector,
                                                     timeout_seconds=WATCH_TIMEOUT_SECONDS):
                    failures = 0
                    obj = event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    kind = event.get("type")
                    if kind == "BOOKMARK":
                        continue
                    if kind == "DELETED":
                        self.cache.remove(str((obj.get("metadata") or {}).get("uid", "")))
                    else:
                        self.cache.upsert(obj)
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if exc.status == 410:
                    version = None          # too old: list again
                    continue
                failures += 1
                delay = exc.retry_after or retry_delay(failures, base=0.5, cap=30.0)
                log.warning("pod watch (%s): %s; again in %.1fs", scope or "all namespaces", exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:  # noqa: BLE001 - a broken stream: resume from the last version
                failures += 1
                delay = retry_delay(failures, base=0.5, cap=30.0)
                log.warning("pod watch (%s) broke: %s: %s; again in %.1fs", scope or "all namespaces",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)
