"""REST semantics of the devcluster, through the official ``kubernetes`` Python client."""

from __future__ import annotations

import json
from typing import Any

import pytest
from dc_helpers import agent, pod, raw
from kubernetes import client
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "agentcontroller.dev", "v1alpha1", "agents"


def body(e: ApiException) -> dict[str, Any]:
    return json.loads(e.body)


def test_version_and_discovery(k8s: Any, dc: Any) -> None:
    assert client.VersionApi(k8s).get_code().minor == "32"
    core = client.CoreV1Api(k8s).get_api_resources()
    names = {r.name: r for r in core.resources}
    assert {"pods", "pods/log", "pods/status", "configmaps", "serviceaccounts", "namespaces", "events"} <= set(names)
    assert names["pods"].namespaced and "po" in names["pods"].short_names
    assert not names["namespaces"].namespaced
    groups = {g.name: g for g in client.ApisApi(k8s).get_api_versions().groups}
    for g in ("rbac.authorization.k8s.io", "coordination.k8s.io", "apiextensions.k8s.io", "events.k8s.io", GROUP):
        assert g in groups
    assert groups[GROUP].preferred_version.version == VERSION
    code, _, data = raw(dc, "GET", f"/apis/{GROUP}/{VERSION}")
    res = {r["name"]: r for r in json.loads(data)["resources"]}
    assert res["agents"]["shortNames"] == ["ag"] and res["agents"]["kind"] == "Agent"
    assert res["agents"]["namespaced"] is True
    assert set(res["agents"]["verbs"]) >= {"get", "list", "watch", "create", "update", "patch", "delete"}
    assert res["agents/status"]["verbs"] == ["get", "patch", "update"]


def test_crud_and_conflicts(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    cm = v1.create_namespaced_config_map(ns, {"metadata": {"name": "a", "labels": {"x": "1"}}, "data": {"k": "v"}})
    assert cm.metadata.uid and cm.metadata.resource_version and cm.metadata.creation_timestamp
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": "a"}})
    assert ei.value.status == 409 and body(ei.value)["reason"] == "AlreadyExists"
    assert body(ei.value)["message"] == 'configmaps "a" already exists'
    # update with the current resourceVersion works; a stale one is a 409 Conflict
    cm.data["k"] = "v2"
    cm2 = v1.replace_namespaced_config_map("a", ns, cm)
    assert int(cm2.metadata.resource_version) > int(cm.metadata.resource_version)
    cm.data["k"] = "v3"
    with pytest.raises(ApiException) as ei:
        v1.replace_namespaced_config_map("a", ns, cm)
    assert ei.value.status == 409 and body(ei.value)["reason"] == "Conflict"
    assert "the object has been modified" in body(ei.value)["message"]
    # a patch carrying a stale resourceVersion conflicts too
    with pytest.raises(ApiException) as ei:
        v1.patch_namespaced_config_map(
            "a", ns, {"metadata": {"resourceVersion": cm.metadata.resource_version}, "data": {"k": "x"}}
        )
    assert ei.value.status == 409
    # strategic merge patch (the client's default for dicts), JSON patch
    v1.patch_namespaced_config_map("a", ns, {"data": {"k2": "w"}})
    v1.patch_namespaced_config_map("a", ns, [{"op": "replace", "path": "/data/k", "value": "jp"}])
    got = v1.read_namespaced_config_map("a", ns)
    assert got.data == {"k": "jp", "k2": "w"}
    # a no-op patch keeps the resourceVersion
    same = v1.patch_namespaced_config_map("a", ns, {"data": {"k": "jp"}})
    assert same.metadata.resource_version == got.metadata.resource_version
    st = v1.delete_namespaced_config_map("a", ns)
    assert (st["status"] if isinstance(st, dict) else st.status) == "Success"
    with pytest.raises(ApiException) as ei:
        v1.read_namespaced_config_map("a", ns)
    assert ei.value.status == 404 and body(ei.value)["message"] == 'configmaps "a" not found'
    assert body(ei.value)["details"] == {"name": "a", "kind": "configmaps"}


def test_missing_namespace_and_generate_name(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_config_map("does-not-exist", {"metadata": {"name": "a"}})
    assert ei.value.status == 404 and body(ei.value)["message"] == 'namespaces "does-not-exist" not found'
    made = {v1.create_namespaced_config_map(ns, {"metadata": {"generateName": "gen-"}}).metadata.name for _ in range(5)}
    assert len(made) == 5 and all(n.startswith("gen-") and len(n) == 9 for n in made)
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_config_map(ns, {"metadata": {}})
    assert ei.value.status == 422
    assert "name or generateName is required" in body(ei.value)["message"]


def test_default_namespaces_and_service_account(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    names = {n.metadata.name for n in v1.list_namespace().items}
    assert {"default", "kube-system", ns} <= names
    assert v1.read_namespaced_service_account("default", ns).metadata.name == "default"


def test_unauthorized_without_token(dc: Any) -> None:
    cfg = client.Configuration()
    cfg.host = dc.url
    api = client.ApiClient(cfg)
    with pytest.raises(ApiException) as ei:
        client.CoreV1Api(api).list_namespace()
    assert ei.value.status == 401 and body(ei.value)["reason"] == "Unauthorized"
    cfg.api_key = {"BearerToken": "nope"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    with pytest.raises(ApiException) as ei:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespace()
    assert ei.value.status == 401


def _user_client(dc: Any, token: str) -> Any:
    cfg = client.Configuration()
    cfg.host = dc.url
    cfg.api_key = {"BearerToken": token}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    return client.ApiClient(cfg)


def test_rbac_forbidden_then_allowed(dc: Any, k8s: Any, ns: str) -> None:
    token = dc.add_user(f"bob-{ns}", groups=["devs"])
    bob = client.CoreV1Api(_user_client(dc, token))
    with pytest.raises(ApiException) as ei:
        bob.list_namespaced_pod(ns)
    assert ei.value.status == 403
    assert body(ei.value)["message"] == (
        f'pods is forbidden: User "bob-{ns}" cannot list resource "pods" in API group "" in the namespace "{ns}"'
    )
    rbac = client.RbacAuthorizationV1Api(k8s)
    rbac.create_namespaced_role(
        ns, {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]}
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "rb"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "devs"}],
        },
    )
    assert bob.list_namespaced_pod(ns).items == []
    with pytest.raises(ApiException) as ei:
        bob.read_namespaced_pod("x", ns)
    assert ei.value.status == 403
    assert dc.requests_by_user[f"bob-{ns}"][("list", "pods")] == 2
    # escalation: bob cannot grant what he does not hold
    with pytest.raises(ApiException) as ei:
        client.RbacAuthorizationV1Api(_user_client(dc, token)).create_namespaced_role(
            ns, {"metadata": {"name": "r2"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
        )
    assert ei.value.status == 403


def test_label_and_field_selectors(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    for name, labels in [("a", {"app": "x", "tier": "1"}), ("b", {"app": "y", "tier": "2"}), ("c", {"app": "x"})]:
        v1.create_namespaced_config_map(ns, {"metadata": {"name": name, "labels": labels}})

    def names(**kw: Any) -> list[str]:
        return [i.metadata.name for i in v1.list_namespaced_config_map(ns, **kw).items]

    assert names(label_selector="app=x") == ["a", "c"]
    assert names(label_selector="app==x,tier=1") == ["a"]
    assert names(label_selector="app!=x") == ["b"] + (["kube-root-ca.crt"] if "kube-root-ca.crt" in names() else [])
    assert names(label_selector="app in (x, y),tier") == ["a", "b"]
    assert names(label_selector="app notin (x),app") == ["b"]
    assert names(label_selector="app,!tier") == ["c"]
    assert names(field_selector="metadata.name=b") == ["b"]
    assert names(field_selector="metadata.name!=b", label_selector="app") == ["a", "c"]
    lst = v1.list_namespaced_config_map(ns, limit=1)
    assert lst.metadata.resource_version
    with pytest.raises(ApiException) as ei:
        v1.list_namespaced_config_map(ns, field_selector="spec.foo=1")
    assert ei.value.status == 400
    all_ns = v1.list_config_map_for_all_namespaces(label_selector="app=x")
    assert {(i.metadata.namespace, i.metadata.name) for i in all_ns.items} == {(ns, "a"), (ns, "c")}


def test_json_patch_test_op_is_422(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    cm = v1.create_namespaced_config_map(ns, {"metadata": {"name": "p"}})
    rv = cm.metadata.resource_version
    v1.patch_namespaced_config_map(
        "p", ns, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/data", "value": {"a": "b"}}]
    )
    with pytest.raises(ApiException) as ei:
        v1.patch_namespaced_config_map(
            "p", ns, [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}, {"op": "add", "path": "/data/c", "value": "d"}]
        )
    assert ei.value.status == 422
    assert v1.read_namespaced_config_map("p", ns).data == {"a": "b"}


def test_strategic_merge_lists(dc: Any, ns: str) -> None:
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f", "namespace": ns, "finalizers": ["a.io/x"]}})
    out = dc.patch("configmaps", "f", {"metadata": {"finalizers": ["b.io/y"]}}, ns, type="strategic")
    assert out["metadata"]["finalizers"] == ["a.io/x", "b.io/y"]  # finalizers merge as a set
    out = dc.patch("configmaps", "f", {"metadata": {"$deleteFromPrimitiveList/finalizers": ["a.io/x"]}}, ns, type="strategic")
    assert out["metadata"]["finalizers"] == ["b.io/y"]
    out = dc.patch("configmaps", "f", {"metadata": {"finalizers": ["c.io/z"]}}, ns, type="merge")
    assert out["metadata"]["finalizers"] == ["c.io/z"]  # merge patch replaces lists
    dc.patch("configmaps", "f", {"metadata": {"finalizers": None}}, ns)


def test_finalizers_and_deletion_timestamp(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "f", "finalizers": ["example.com/hold"]}})
    v1.delete_namespaced_config_map("f", ns)
    cm = v1.read_namespaced_config_map("f", ns)
    assert cm.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as ei:
        v1.patch_namespaced_config_map("f", ns, {"metadata": {"finalizers": ["example.com/hold", "example.com/new"]}})
    assert ei.value.status == 422 and "no new finalizers can be added" in body(ei.value)["message"]
    v1.patch_namespaced_config_map("f", ns, [{"op": "remove", "path": "/metadata/finalizers"}])
    with pytest.raises(ApiException) as ei:
        v1.read_namespaced_config_map("f", ns)
    assert ei.value.status == 404


def test_delete_preconditions(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    cm = v1.create_namespaced_config_map(ns, {"metadata": {"name": "u"}})
    for pre in ({"uid": "00000000-0000-0000-0000-000000000000"}, {"resourceVersion": "1"}):
        with pytest.raises(ApiException) as ei:
            v1.delete_namespaced_config_map("u", ns, body=client.V1DeleteOptions(preconditions=client.V1Preconditions(**{
                "uid" if "uid" in pre else "resource_version": list(pre.values())[0]})))
        # kube-apiserver's rest.BeforeDelete wording: on the Kind, "the UID in the precondition (…) does not match"
        field = "UID" if "uid" in pre else "ResourceVersion"
        assert ei.value.status == 409
        assert body(ei.value)["message"].startswith(
            f'Operation cannot be fulfilled on ConfigMap "u": the {field} in the precondition ({list(pre.values())[0]}) '
            f"does not match the {field} in record ("), body(ei.value)["message"]
    v1.delete_namespaced_config_map(
        "u", ns, body=client.V1DeleteOptions(preconditions=client.V1Preconditions(uid=cm.metadata.uid))
    )
    assert [c.metadata.name for c in v1.list_namespaced_config_map(ns).items if c.metadata.name == "u"] == []


def test_custom_resource_status_subresource_and_generation(k8s: Any, ns: str) -> None:
    co = client.CustomObjectsApi(k8s)
    a = co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {**agent("g"), "status": {"phase": "Running"}})
    assert a["status"] == {"phase": "Pending"} and a["metadata"]["generation"] == 1   # the CRD's default
    # defaults from the schema
    assert a["spec"]["cleanup"] == {"logs": "Archive", "gracePeriodSeconds": 5, "delaySeconds": 0,
                                    "logTimeoutSeconds": 300}
    assert a["spec"]["startDeadlineSeconds"] == 600
    assert a["spec"]["terminate"] is False
    s = co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "g", {"status": {"phase": "Running"}, "spec": {"image": "ignored"}})
    assert s["status"]["phase"] == "Running" and s["spec"]["image"] == "busybox"
    assert s["metadata"]["generation"] == 1
    m = co.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "g", {"spec": {"prompt": "p"}, "status": {"phase": "Blocked"}})
    assert m["status"]["phase"] == "Running" and m["metadata"]["generation"] == 2
    m = co.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "g", {"metadata": {"labels": {"a": "b"}}})
    assert m["metadata"]["generation"] == 2
    st = co.get_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "g")
    assert st["status"]["phase"] == "Running"


def test_custom_resource_schema_pruning_validation_and_cel(k8s: Any, ns: str, dc: Any) -> None:
    co = client.CustomObjectsApi(k8s)
    a = co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, agent("s", bogus=1, podTemplate={"keep": {"me": 1}}))
    assert "bogus" not in a["spec"] and a["spec"]["podTemplate"] == {"keep": {"me": 1}}
    with pytest.raises(ApiException) as ei:
        co.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, {**agent("bad"), "spec": {}})
    b = body(ei.value)
    assert ei.value.status == 422 and b["reason"] == "Invalid"
    assert b["message"].startswith('Agent.agentcontroller.dev "bad" is invalid: ')
    assert "spec.image: Required value" in b["message"]
    assert {"reason": "FieldValueRequired", "message": "Required value", "field": "spec.image"} in b["details"]["causes"]
    with pytest.raises(ApiException) as ei:
        co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "s", {"status": {"progress": 101}})
    assert ei.value.status == 422
    co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "s", {"status": {"phase": "Completed"}})
    with pytest.raises(ApiException) as ei:
        co.patch_namespaced_custom_object_status(GROUP, VERSION, ns, PLURAL, "s", {"status": {"phase": "Running"}})
    assert ei.value.status == 422 and "terminal" in body(ei.value)["message"]
    # transition rule on spec.terminate
    co.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s", {"spec": {"terminate": True}})
    with pytest.raises(ApiException) as ei:
        co.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "s", {"spec": {"terminate": False}})
    assert ei.value.status == 422
    # strategic merge patch is not supported for custom resources
    code, _, _ = raw(dc, "PATCH", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/{PLURAL}/s", {"spec": {"prompt": "x"}},
                     {"Content-Type": "application/strategic-merge-patch+json"})
    assert code == 415


def test_garbage_collection_background(dc: Any, ns: str) -> None:
    owner = dc.create({**agent("owner"), "metadata": {"name": "owner", "namespace": ns}})
    ref = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Agent", "name": "owner", "uid": owner["metadata"]["uid"], "controller": True}
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dep", "namespace": ns, "ownerReferences": [ref]}})
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "orphan-ref", "namespace": ns, "ownerReferences": [{**ref, "uid": "gone"}]}})
    dc.delete("agents", "owner", ns)
    dc.wait_for(lambda: dc.get("configmaps", "dep", ns) is None, 10)
    dc.wait_for(lambda: dc.get("configmaps", "orphan-ref", ns) is None, 10)


def test_garbage_collection_orphan_and_foreground(dc: Any, ns: str) -> None:
    for name in ("o1", "o2"):
        owner = dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": owner["metadata"]["uid"]}
        dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name + "-dep", "namespace": ns, "ownerReferences": [ref]}})
    dc.delete("configmaps", "o1", ns, propagation_policy="Orphan")
    dc.wait_for(lambda: dc.get("configmaps", "o1", ns) is None, 10)
    dep = dc.get("configmaps", "o1-dep", ns)
    assert dep is not None and not dep["metadata"].get("ownerReferences")
    dc.delete("configmaps", "o2", ns, propagation_policy="Foreground")
    dc.wait_for(lambda: dc.get("configmaps", "o2", ns) is None and dc.get("configmaps", "o2-dep", ns) is None, 10)


def test_gc_can_be_disabled() -> None:
    from controller.devcluster import DevCluster

    with DevCluster(gc=False, tls=False) as c:
        o = c.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "o"}})
        ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": o["metadata"]["uid"]}
        c.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "ownerReferences": [ref]}})
        c.delete("configmaps", "o")
        import time

        time.sleep(0.5)
        assert c.get("configmaps", "d") is not None


def test_namespace_deletion_removes_content(dc: Any) -> None:
    dc.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "doomed"}})
    dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "doomed"}})
    dc.create({**agent("a"), "metadata": {"name": "a", "namespace": "doomed", "finalizers": ["example.com/x"]}})
    dc.delete("namespaces", "doomed")
    assert dc.get("namespaces", "doomed")["status"]["phase"] == "Terminating"
    from controller.devcluster import ApiError

    with pytest.raises(ApiError) as ei:
        dc.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "y", "namespace": "doomed"}})
    assert ei.value.code == 403
    dc.wait_for(lambda: dc.get("configmaps", "x", "doomed") is None, 10)
    assert dc.get("namespaces", "doomed") is not None  # held by the agent's finalizer
    dc.patch("agents", "a", {"metadata": {"finalizers": None}}, "doomed")
    dc.wait_for(lambda: dc.get("namespaces", "doomed") is None, 10)


def test_events_core_and_events_k8s_io(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    v1.create_namespaced_event(ns, {
        "metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "p", "namespace": ns},
        "reason": "Testing", "message": "hello", "type": "Normal", "count": 1, "eventTime": "2024-01-01T00:00:00.000000Z",
    })
    ev = client.EventsV1Api(k8s).read_namespaced_event("e1", ns)
    assert ev.note == "hello" and ev.regarding.name == "p" and ev.reason == "Testing"
    client.EventsV1Api(k8s).create_namespaced_event(ns, {
        "metadata": {"name": "e2"}, "regarding": {"kind": "Pod", "name": "q", "namespace": ns},
        "reason": "New", "note": "world", "type": "Normal", "eventTime": "2024-01-01T00:00:00.000000Z",
        "action": "Act", "reportingController": "me", "reportingInstance": "me-1",
    })
    assert v1.read_namespaced_event("e2", ns).message == "world"
    assert {e.metadata.name for e in v1.list_namespaced_event(ns).items} == {"e1", "e2"}


def test_leases_and_rbac_objects(k8s: Any, ns: str) -> None:
    coord = client.CoordinationV1Api(k8s)
    lease = coord.create_namespaced_lease(ns, {"metadata": {"name": "l"}, "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}})
    lease.spec.holder_identity = "you"
    assert coord.replace_namespaced_lease("l", ns, lease).spec.holder_identity == "you"
    rbac = client.RbacAuthorizationV1Api(k8s)
    with pytest.raises(ApiException) as ei:
        rbac.create_namespaced_role_binding(ns, {"metadata": {"name": "x"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": []})
    assert ei.value.status == 422
    assert any(r.metadata.name == "cluster-admin" for r in rbac.list_cluster_role().items)


def test_pod_validation_and_admission(k8s: Any, ns: str) -> None:
    v1 = client.CoreV1Api(k8s)
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_pod(ns, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}})
    assert ei.value.status == 422 and "spec.containers[0].image: Required value" in body(ei.value)["message"]
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_pod(ns, {**pod("p"), "spec": {**pod("p")["spec"], "serviceAccountName": "nope"}})
    assert ei.value.status == 403 and 'serviceaccount "nope" not found' in body(ei.value)["message"]
    with pytest.raises(ApiException) as ei:
        v1.create_namespaced_pod(ns, {**pod("p"), "metadata": {"name": "p", "labels": {"a": "x" * 64}}})
    assert ei.value.status == 422 and "must be no more than 63 characters" in body(ei.value)["message"]
    p = v1.create_namespaced_pod(ns, pod("p"))
    assert p.status.phase == "Pending" and p.spec.service_account_name == "default"
    with pytest.raises(ApiException) as ei:
        v1.patch_namespaced_pod("p", ns, {"spec": {"restartPolicy": "Always"}})
    assert ei.value.status == 422 and "pod updates may not change fields" in body(ei.value)["message"]
    v1.patch_namespaced_pod("p", ns, {"spec": {"containers": [{"name": "c", "image": "busybox:1.37"}]}})
    assert v1.read_namespaced_pod("p", ns).spec.containers[0].image == "busybox:1.37"


def test_server_side_tables(k8s: Any, ns: str, dc: Any) -> None:
    dc.create({**agent("t1"), "metadata": {"name": "t1", "namespace": ns}})
    dc.patch("agents", "t1", {"status": {"phase": "Working", "progress": 40, "podName": "t1"}}, ns, subresource="status")
    accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
    t = json.loads(raw(dc, "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/agents", headers={"Accept": accept})[2])
    assert t["kind"] == "Table" and t["apiVersion"] == "meta.k8s.io/v1"
    # as kube-apiserver 1.37 answers for this CRD (the wide columns have priority 1)
    assert [(c["name"], c["priority"]) for c in t["columnDefinitions"]] == [
        ("Name", 0), ("Phase", 0), ("Reason", 0), ("Progress", 0), ("Pod", 0), ("Cleanup", 0), ("Age", 0),
        ("Node", 1), ("Trigger", 1), ("Archived", 1), ("Finished", 1)]
    cells = t["rows"][0]["cells"]
    assert cells[:6] == ["t1", "Working", None, 40, "t1", None] and cells[6].endswith("s")
    assert cells[7:] == [None, None, None, None]
    assert t["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    client.CoreV1Api(k8s).create_namespaced_pod(ns, pod("tp"))
    t = json.loads(raw(dc, "GET", f"/api/v1/namespaces/{ns}/pods/tp", headers={"Accept": accept})[2])
    assert [c["name"] for c in t["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert t["rows"][0]["cells"][0] == "tp"


def test_crd_lifecycle(dc: Any, k8s: Any) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [{
                "name": "v1", "served": True, "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": {"type": "object", "properties": {"size": {"type": "integer", "default": 3}}}}}},
            }],
        },
    }
    out = client.ApiextensionsV1Api(k8s).create_custom_resource_definition(crd)
    conds = {c.type: c.status for c in out.status.conditions}
    assert conds["Established"] == "True"
    co = client.CustomObjectsApi(k8s)
    w = co.create_cluster_custom_object("example.com", "v1", "widgets", {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}})
    assert w["spec"]["size"] == 3 and "namespace" not in w["metadata"]
    client.ApiextensionsV1Api(k8s).delete_custom_resource_definition("widgets.example.com")
    dc.wait_for(lambda: dc.get("customresourcedefinitions", "widgets.example.com") is None, 10)
    with pytest.raises(ApiException) as ei:
        co.list_cluster_custom_object("example.com", "v1", "widgets")
    assert ei.value.status == 404


def test_request_counters(dc: Any, k8s: Any, ns: str) -> None:
    before = dc.requests[("create", "configmaps")]
    client.CoreV1Api(k8s).create_namespaced_config_map(ns, {"metadata": {"name": "cnt"}})
    assert dc.requests[("create", "configmaps")] == before + 1
    assert dc.requests_by_user["admin"][("create", "configmaps")] >= 1


def test_a_continue_token_whose_list_was_compacted_away_is_expired(k8s: Any, dc: Any, ns: str) -> None:
    """As kube-apiserver: once the list's resourceVersion is compacted (and its snapshot gone), the
    next page is 410 Expired, not the current state under the old resourceVersion."""
    v1 = client.CoreV1Api(k8s)
    for i in range(4):
        v1.create_namespaced_config_map(ns, {"metadata": {"name": f"page-{i}"}})
    first = v1.list_namespaced_config_map(ns, limit=2)
    token = first.metadata._continue
    assert token and len(first.items) == 2
    v1.create_namespaced_config_map(ns, {"metadata": {"name": "later"}})   # history moves on

    def compact() -> None:
        dc.store.list_snapshots.clear()
        for bucket in dc.store.buckets.values():
            bucket.compacted_rv = dc.store.rv

    dc.run(compact)
    with pytest.raises(ApiException) as exc:
        v1.list_namespaced_config_map(ns, limit=2, _continue=token)
    assert exc.value.status == 410 and body(exc.value)["reason"] == "Expired"
