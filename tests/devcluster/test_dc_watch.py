"""Watch semantics: list+watch, resourceVersions, 410 Expired, selectors, bookmarks, tables."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from dc_helpers import agent
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException


def stream(dc: Any, path: str, headers: dict[str, str] | None = None, timeout: float = 20) -> Iterator[dict[str, Any]]:
    """Yield the JSON lines of a watch response (raw HTTP)."""
    req = urllib.request.Request(dc.url + path)
    req.add_header("Authorization", f"Bearer {dc.admin_token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for line in r:
            if line.strip():
                yield json.loads(line)


def test_list_then_watch_with_kubernetes_client(dc: Any, k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "before"}})
    lst = v1.list_namespaced_config_map(ns)
    rv = lst.metadata.resource_version

    def writer() -> None:
        dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "w", "namespace": ns}})
        dc.patch("configmaps", "w", {"data": {"a": "b"}}, ns)
        dc.delete("configmaps", "w", ns)

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_config_map, ns, resource_version=rv, timeout_seconds=10):
        seen.append((ev["type"], ev["object"].metadata.name))
        if ev["type"] == "DELETED":
            w.stop()
    t.join()
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


def test_watch_without_resource_version_sends_current_state(dc: Any, ns: str) -> None:
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": ns}})
    events = stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=true&timeoutSeconds=1")
    names = sorted(e["object"]["metadata"]["name"] for e in events)
    assert names == ["kube-root-ca.crt", "x"]


def test_watch_resource_version_replay_and_expiry(dc: Any, ns: str) -> None:
    a = dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "r", "namespace": ns}})
    rv0 = a["metadata"]["resourceVersion"]
    dc.patch("configmaps", "r", {"data": {"x": "1"}}, ns)
    evs = list(stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv0}&timeoutSeconds=1"))
    assert [(e["type"], e["object"]["data"]) for e in evs] == [("MODIFIED", {"x": "1"})]
    assert int(evs[0]["object"]["metadata"]["resourceVersion"]) > int(rv0)
    # after a compaction an old resourceVersion is 410 Expired (an ERROR event, like the real server)
    dc.compact()
    evs = list(stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=1&resourceVersion={rv0}"))
    assert len(evs) == 1 and evs[0]["type"] == "ERROR"
    assert evs[0]["object"]["code"] == 410 and evs[0]["object"]["reason"] == "Expired"
    # the kubernetes client turns it into ApiException(410)
    v1 = client.CoreV1Api(dc_client(dc))
    with pytest.raises(ApiException) as ei:
        for _ in watch.Watch().stream(v1.list_namespaced_config_map, ns, resource_version=rv0, timeout_seconds=5):
            pass
    assert ei.value.status == 410


def dc_client(dc: Any) -> Any:
    cfg = client.Configuration()
    cfg.host = dc.url
    cfg.api_key = {"BearerToken": dc.admin_token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(cfg)


def test_label_selector_watch_translates_transitions(dc: Any, ns: str) -> None:
    cm = dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "l", "namespace": ns}})
    rv = cm["metadata"]["resourceVersion"]
    dc.patch("configmaps", "l", {"metadata": {"labels": {"sel": "yes"}}}, ns)
    dc.patch("configmaps", "l", {"data": {"a": "1"}}, ns)
    dc.patch("configmaps", "l", {"metadata": {"labels": {"sel": None}}}, ns)
    evs = list(stream(dc, f"/api/v1/watch/namespaces/{ns}/configmaps?labelSelector=sel%3Dyes&resourceVersion={rv}&timeoutSeconds=1"))
    assert [e["type"] for e in evs] == ["ADDED", "MODIFIED", "DELETED"]


def test_cluster_wide_watch_and_single_object_watch(dc: Any, ns: str) -> None:
    rv = str(dc.run(lambda: dc.store.rv))
    dc.create({**agent("cw"), "metadata": {"name": "cw", "namespace": ns}})
    dc.create({**agent("other"), "metadata": {"name": "other", "namespace": ns}})
    evs = list(stream(dc, f"/apis/agentcontroller.dev/v1alpha1/agents?watch=true&resourceVersion={rv}&timeoutSeconds=1"))
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [("ADDED", "cw"), ("ADDED", "other")]
    evs = list(stream(dc, f"/apis/agentcontroller.dev/v1alpha1/watch/namespaces/{ns}/agents/cw?resourceVersion={rv}&timeoutSeconds=1"))
    assert [e["object"]["metadata"]["name"] for e in evs] == ["cw"]


def test_bookmarks_and_initial_events(dc: Any, ns: str) -> None:
    rv = str(dc.run(lambda: dc.store.rv))
    evs = stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=true&allowWatchBookmarks=true&resourceVersion={rv}&timeoutSeconds=3")
    first = next(evs)
    assert first["type"] == "BOOKMARK" and first["object"]["kind"] == "ConfigMap"
    assert int(first["object"]["metadata"]["resourceVersion"]) >= int(rv)
    evs = list(stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1"))
    assert evs[0]["type"] == "ADDED"
    marker = [e for e in evs if e["type"] == "BOOKMARK" and e["object"]["metadata"].get("annotations")]
    assert marker and marker[0]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_watch_as_table(dc: Any, ns: str) -> None:
    dc.create({**agent("tw"), "metadata": {"name": "tw", "namespace": ns}})
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io"
    evs = list(stream(dc, f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents?watch=true&timeoutSeconds=1", {"Accept": accept}))
    assert evs[0]["type"] == "ADDED" and evs[0]["object"]["kind"] == "Table"
    assert evs[0]["object"]["rows"][0]["cells"][0] == "tw"
    assert [c["name"] for c in evs[0]["object"]["columnDefinitions"]][1:] == [
        "Phase", "Reason", "Progress", "Pod", "Cleanup", "Age", "Node", "Trigger", "Archived", "Finished"]


def test_watch_ends_on_break_watches(dc: Any, ns: str) -> None:
    got: list[Any] = []

    def consume() -> None:
        got.extend(stream(dc, f"/api/v1/namespaces/{ns}/configmaps?watch=true&resourceVersion=0"))

    t = threading.Thread(target=consume)
    t.start()
    dc.wait_for(lambda: dc.run(lambda: any(w.ns == ns for w in dc.store.all_watchers())), 10)
    assert dc.break_watches("configmaps") >= 1
    t.join(10)
    assert not t.is_alive()
