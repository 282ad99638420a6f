"""The API semantics the controller relies on, run on both backends (tests/conformance/conftest.py):
the emulator (controller/devcluster) and a real kube-apiserver (controller/controlplane). Every
expectation here is what the real API server does; where the emulator differed, the emulator was
fixed. Writes go through the API (the tests' `Api` as the admin, or the controller's own
`KubeClient`), never through an emulator shortcut.
"""

from __future__ import annotations

import asyncio
import datetime
import json
from typing import Any

import pytest

from helpers import GROUP_PATH, HttpError

from controller.kube.client import AGENTS, CONFIGMAPS, EVENTS, ApiError, KubeClient

TABLE_ACCEPT = "application/json;as=Table;g=meta.k8s.io;v=v1"
TERMINAL_MESSAGE = ("status.phase is terminal (Completed, Failed, Error or Terminated): it cannot change, "
                    "and neither status nor status.phase can be removed")


def expect_error(code: int, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Call the tests' Api; it must fail with `code`; the Status body."""
    with pytest.raises(HttpError) as info:
        call(*args, **kwargs)
    assert info.value.status == code, info.value.body
    body = info.value.body
    assert body.get("kind") == "Status" and body.get("code") == code, body
    return body


def configmap(name: str, labels: dict[str, str] | None = None, data: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data or {"k": "v"}}


def create_configmap(conf: Any, name: str, **kwargs: Any) -> dict[str, Any]:
    return conf.api.call("POST", f"/api/v1/namespaces/{conf.ns}/configmaps", configmap(name, **kwargs))


def agents_path(conf: Any, name: str = "") -> str:
    return f"{GROUP_PATH}/namespaces/{conf.ns}/agents" + (f"/{name}" if name else "")


# ------------------------------------------------------------------------------ the Agent CRD

CLEANUP_DEFAULTS: dict[str, Any] = {"logs": "Archive", "gracePeriodSeconds": 5, "delaySeconds": 0,
                                    "logTimeoutSeconds": 300}
SPEC_DEFAULTS: dict[str, Any] = {"startDeadlineSeconds": 600, "terminate": False, "cleanup": CLEANUP_DEFAULTS}


def test_create_applies_the_crd_defaults(conf: Any) -> None:
    created = conf.api.create_agent(conf.ns, "defaults", {"image": "agent:1"})
    assert created["spec"] == {"image": "agent:1", **SPEC_DEFAULTS}
    assert created["status"] == {"phase": "Pending"}
    assert created["metadata"]["generation"] == 1
    read = conf.api.agent(conf.ns, "defaults")
    assert read["spec"] == created["spec"] and read["status"] == {"phase": "Pending"}
    # a default of an object field fills in what was left out of it, and keeps what was given
    given = conf.api.create_agent(conf.ns, "given", {"image": "agent:1", "cleanup": {"logs": "Delete"}})
    assert given["spec"]["cleanup"] == {**CLEANUP_DEFAULTS, "logs": "Delete"}


NOT_CHECKED = ("<nil>", "FieldValueInvalid", "Invalid value: null: some validation rules were not checked because "
               "the object was invalid; correct the existing errors to complete validation")


@pytest.mark.parametrize(("spec", "errors"), [
    ({"prompt": "no image"}, [("spec.image", "FieldValueRequired", "Required value"), NOT_CHECKED]),
    ({"image": ""}, [("spec.image", "FieldValueInvalid",
                      'Invalid value: "": spec.image in body should be at least 1 chars long')]),
    ({"image": "a", "cleanup": {"logs": "Keep"}}, [
        ("spec.cleanup.logs", "FieldValueNotSupported", 'Unsupported value: "Keep": supported values: "Archive", "Delete"'),
        NOT_CHECKED]),
    ({"image": "a", "cleanup": {"gracePeriodSeconds": 7200}}, [
        ("spec.cleanup.gracePeriodSeconds", "FieldValueInvalid",
         "Invalid value: 7200: spec.cleanup.gracePeriodSeconds in body should be less than or equal to 3600")]),
    ({"image": "a", "activeDeadlineSeconds": 0}, [
        ("spec.activeDeadlineSeconds", "FieldValueInvalid",
         "Invalid value: 0: spec.activeDeadlineSeconds in body should be greater than or equal to 1")]),
    ({"image": "a", "startDeadlineSeconds": "soon"}, [
        ("spec.startDeadlineSeconds", "FieldValueTypeInvalid",
         'Invalid value: "string": spec.startDeadlineSeconds in body must be of type integer: "string"'), NOT_CHECKED]),
], ids=["image-required", "image-empty", "logs-enum", "grace-max", "deadline-min", "deadline-type"])
def test_an_invalid_spec_is_422_with_the_field_path(conf: Any, spec: dict[str, Any],
                                                    errors: list[tuple[str, str, str]]) -> None:
    body = expect_error(422, conf.api.create_agent, conf.ns, "bad", spec)
    assert body["reason"] == "Invalid"
    listed = [f"{field}: {text}" for field, _, text in errors]
    assert body["message"] == 'Agent.agentcontroller.dev "bad" is invalid: ' + (
        listed[0] if len(listed) == 1 else f"[{', '.join(listed)}]")
    assert body["details"] == {"name": "bad", "group": "agentcontroller.dev", "kind": "Agent", "causes": [
        {"reason": reason, "message": text, "field": field} for field, reason, text in errors]}
    assert conf.api.agent_or_none(conf.ns, "bad") is None


def test_the_status_subresource_separates_spec_and_status(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    # create cannot set status: the default applies instead
    created = api.call("POST", agents_path(conf), {
        "apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "metadata": {"name": "sub"},
        "spec": {"image": "agent:1"}, "status": {"phase": "Running", "progress": 5}})
    assert created["status"] == {"phase": "Pending"}
    # a patch of the main resource changes the spec (a new generation), never the status
    main = api.patch_agent(ns, "sub", {"spec": {"prompt": "p1"}, "status": {"phase": "Running"}})
    assert main["spec"]["prompt"] == "p1" and main["status"] == {"phase": "Pending"}
    assert main["metadata"]["generation"] == 2
    # a patch of /status changes the status, never the spec (the generation stays)
    status = api.patch_agent(ns, "sub", {"spec": {"prompt": "p2"}, "status": {"phase": "Running", "progress": 10}},
                             status=True)
    assert status["spec"]["prompt"] == "p1" and status["status"] == {"phase": "Running", "progress": 10}
    assert status["metadata"]["generation"] == 2
    # a PUT of the main resource keeps the stored status
    current = api.agent(ns, "sub")
    current["status"] = {"phase": "Blocked"}
    current["spec"]["prompt"] = "p3"
    put = api.call("PUT", agents_path(conf, "sub"), current)
    assert put["spec"]["prompt"] == "p3" and put["status"] == {"phase": "Running", "progress": 10}
    assert api.agent(ns, "sub")["status"] == {"phase": "Running", "progress": 10}


def test_a_terminal_phase_cannot_change(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    api.create_agent(ns, "done", {"image": "agent:1"})
    api.patch_agent(ns, "done", {"status": {"phase": "Completed", "progress": 100}}, status=True)
    for patch in ({"status": {"phase": "Running"}}, {"status": {"phase": None}}, {"status": None}):
        body = expect_error(422, api.patch_agent, ns, "done", patch, status=True)
        assert body["reason"] == "Invalid"
        assert body["message"] == f'Agent.agentcontroller.dev "done" is invalid: status.phase: Forbidden: {TERMINAL_MESSAGE}'
        assert body["details"]["causes"] == [{"reason": "FieldValueForbidden", "message": f"Forbidden: {TERMINAL_MESSAGE}",
                                              "field": "status.phase"}]
    # the same terminal phase may be written again, with other status fields
    again = api.patch_agent(ns, "done", {"status": {"phase": "Completed", "message": "bye"}}, status=True)
    assert again["status"] == {"phase": "Completed", "progress": 100, "message": "bye"}
    # spec.terminate cannot be set back to false (the rule on spec)
    api.patch_agent(ns, "done", {"spec": {"terminate": True}})
    body = expect_error(422, api.patch_agent, ns, "done", {"spec": {"terminate": False}})
    # a failed rule on an object shows no value (1.37: not `Invalid value: "object": ...`)
    rule = "Invalid value: spec.terminate cannot be set back to false once it is true"
    assert body["message"] == f'Agent.agentcontroller.dev "done" is invalid: spec: {rule}'
    assert body["details"]["causes"] == [{"reason": "FieldValueInvalid", "message": rule, "field": "spec"}]


# ------------------------------------------------------------------------------ resourceVersion

def test_a_stale_resource_version_is_a_conflict(conf: Any) -> None:
    api, ns = conf.api, conf.ns
    path = f"/api/v1/namespaces/{ns}/configmaps/cm"
    stale = create_configmap(conf, "cm")
    api.call("PATCH", path, {"data": {"k": "v2"}}, "application/merge-patch+json")
    conflict = f'Operation cannot be fulfilled on configmaps "cm": the object has been modified; ' \
               f"please apply your changes to the latest version and try again"
    patch = {"metadata": {"resourceVersion": stale["metadata"]["resourceVersion"]}, "data": {"k": "v3"}}
    for call in (lambda: api.call("PATCH", path, patch, "application/merge-patch+json"),
                 lambda: api.call("PUT", path, {**stale, "data": {"k": "v3"}})):
        body = expect_error(409, call)
        assert body["reason"] == "Conflict" and body["message"] == conflict, body
        assert body["details"] == {"name": "cm", "kind": "configmaps"}
    assert api.call("GET", path)["data"] == {"k": "v2"}
    # the same on an Agent's status, as the controller writes it
    agent = api.create_agent(ns, "rv", {"image": "agent:1"})
    api.patch_agent(ns, "rv", {"status": {"phase": "Running"}}, status=True)
    body = expect_error(409, api.patch_agent, ns, "rv", {
        "metadata": {"resourceVersion": agent["metadata"]["resourceVersion"]}, "status": {"phase": "Working"}},
        status=True)
    assert body["reason"] == "Conflict"
    assert body["message"].startswith('Operation cannot be fulfilled on agents.agentcontroller.dev "rv": ')


def test_delete_preconditions_and_a_missing_object(conf: Any) -> None:
    ns = conf.ns
    cm = create_configmap(conf, "victim")
    agent = conf.api.create_agent(ns, "victim", {"image": "agent:1"})
    other = "00000000-0000-0000-0000-000000000000"

    async def scenario(client: KubeClient) -> None:
        # a precondition that does not hold: 409, worded on the Kind (rest.BeforeDelete)
        for res, obj, kind, group in ((CONFIGMAPS, cm, "ConfigMap", ""),
                                      (AGENTS, agent, "Agent.agentcontroller.dev", "agentcontroller.dev")):
            uid = obj["metadata"]["uid"]
            with pytest.raises(ApiError) as info:
                await client.delete(res, ns, "victim", uid=other)
            assert info.value.status == 409 and info.value.reason == "Conflict"
            assert info.value.message == (
                f'Operation cannot be fulfilled on {kind} "victim": the UID in the precondition ({other}) does not '
                f"match the UID in record ({uid}). The object might have been deleted and then recreated")
            assert info.value.body["details"] == {"name": "victim", **({"group": group} if group else {}),
                                                  "kind": kind.split(".")[0]}
            stale = {"apiVersion": "v1", "kind": "DeleteOptions", "preconditions": {"resourceVersion": "1"}}
            with pytest.raises(ApiError) as info:
                await client.request("DELETE", res.path(ns, "victim"), body=stale)
            assert info.value.status == 409
            assert info.value.message == (
                f'Operation cannot be fulfilled on {kind} "victim": the ResourceVersion in the precondition (1) does '
                f"not match the ResourceVersion in record ({obj['metadata']['resourceVersion']}). "
                "The object might have been modified")
            assert await client.get_or_none(res, ns, "victim") is not None
            await client.delete(res, ns, "victim", uid=uid)
            assert await client.get_or_none(res, ns, "victim") is None
        # a missing object: 404, worded on the resource
        for res, qualified in ((CONFIGMAPS, "configmaps"), (AGENTS, "agents.agentcontroller.dev")):
            for name in ("victim", "never-was"):
                with pytest.raises(ApiError) as info:
                    await client.delete(res, ns, name, uid=other)
                assert info.value.status == 404 and info.value.reason == "NotFound"
                assert info.value.message == f'{qualified} "{name}" not found'
                assert info.value.body["details"] == {"name": name, **({"group": res.group} if res.group else {}),
                                                      "kind": res.plural}

    conf.run(scenario)


# ------------------------------------------------------------------------------ lists

def test_list_chunks_return_every_item_once(conf: Any) -> None:
    names = [f"chunk-{i:02d}" for i in range(7)]
    for name in names:
        create_configmap(conf, name, labels={"conf": "chunk"})
    create_configmap(conf, "unlabelled")
    other_ns = conf.ns + "-b"      # sorts before conf.ns/ in the real server's keys ('-' < '/')
    conf.backend.create_namespace(other_ns)

    async def pages(client: KubeClient, selector: str | None) -> list[dict[str, Any]]:
        return [page async for page in client.list_pages(CONFIGMAPS, conf.ns, label_selector=selector, limit=3)]

    async def scenario(client: KubeClient) -> None:
        for selector in ("conf=chunk", None):
            got = await pages(client, selector)
            items = [i["metadata"]["name"] for page in got for i in page["items"]]
            assert len(items) == len(set(items)), items               # nothing twice
            if selector:
                assert items == names                                  # every one, in name order
            else:
                assert set(names + ["unlabelled"]) <= set(items) and items == sorted(items)
            assert len(got) >= 3 and all(len(page["items"]) <= 3 for page in got)
            for i, page in enumerate(got):
                meta = page["metadata"]
                last = i == len(got) - 1
                assert bool(meta.get("continue")) is not last, meta
                if "remainingItemCount" in meta:      # optional; where given, exact
                    assert meta["remainingItemCount"] == sum(len(p["items"]) for p in got[i + 1:]), meta
                # every page is of the first page's snapshot
                assert meta["resourceVersion"] == got[0]["metadata"]["resourceVersion"]
                assert page["kind"] == "ConfigMapList"
        # the next pages are of the first page's snapshot: what changed since is not seen
        first_page = json.loads(await client.list_raw(CONFIGMAPS, conf.ns, label_selector="conf=chunk", limit=3))
        await client.patch(CONFIGMAPS, conf.ns, "chunk-04", {"data": {"k": "changed"}})
        await client.delete(CONFIGMAPS, conf.ns, "chunk-06")
        await client.create(CONFIGMAPS, conf.ns, configmap("chunk-05a", labels={"conf": "chunk"}))
        token, later = first_page["metadata"]["continue"], []
        while token:
            page = json.loads(await client.list_raw(CONFIGMAPS, conf.ns, label_selector="conf=chunk", limit=3,
                                                    continue_token=token))
            later += page["items"]
            token = page["metadata"].get("continue")
        assert [i["metadata"]["name"] for i in later] == names[3:]
        assert all(i["data"] == {"k": "v"} for i in later)
        # across namespaces, as the sweep lists (the order across namespaces is the server's own)
        wide = {"conf-wide": conf.ns}
        for name in ("w1", "w2", "w3"):
            await client.create(CONFIGMAPS, conf.ns, configmap(name, labels=wide))
            await client.create(CONFIGMAPS, other_ns, configmap(name, labels=wide))
        everywhere = [page async for page in client.list_pages(CONFIGMAPS, None, label_selector=f"conf-wide={conf.ns}",
                                                                 limit=2)]
        seen = [(i["metadata"]["namespace"], i["metadata"]["name"]) for page in everywhere for i in page["items"]]
        assert sorted(seen) == sorted((ns, name) for ns in (conf.ns, other_ns) for name in ("w1", "w2", "w3"))
        assert len(everywhere) >= 3 and all(page["metadata"].get("continue") for page in everywhere[:-1])
        # what is refused: a token that is none, a resourceVersion with a token, a limit that is no number
        first = got[0]["metadata"]["continue"]
        for params, message in (({"limit": 3, "continue": "not-a-token"}, "invalid continue token: continue key is not valid: "),
                                ({"limit": 3, "continue": first, "resourceVersion": got[0]["metadata"]["resourceVersion"]},
                                 "specifying resource version is not allowed when using continue"),
                                ({"limit": "many"}, 'strconv.ParseInt: parsing "many": invalid syntax')):
            with pytest.raises(ApiError) as info:
                await client.request("GET", CONFIGMAPS.path(conf.ns), params=params)
            assert info.value.status == 400 and info.value.reason == "BadRequest"
            assert info.value.message.startswith(message), info.value.message

    try:
        conf.run(scenario)
    finally:
        conf.api.call("DELETE", f"/api/v1/namespaces/{other_ns}")


def test_label_selectors(conf: Any) -> None:
    for name, labels in (("a", {"tier": "web", "env": "prod"}), ("b", {"tier": "db", "env": "prod"}),
                         ("c", {"tier": "web"}), ("d", {})):
        create_configmap(conf, name, labels={"conf": "sel", **labels})
    cases = {"conf=sel": "abcd", "conf=sel,tier=web": "ac", "conf=sel,tier==web": "ac", "conf=sel,tier!=web": "bd",
             "conf=sel,tier in (web,db)": "abc", "conf=sel,tier notin (web)": "bd", "conf=sel,env": "ab",
             "conf=sel,!env": "cd", "conf=sel,tier in (web),env": "a", "conf=sel,tier=nothing": ""}
    for selector, expected in cases.items():
        got = "".join(cm["metadata"]["name"] for cm in conf.api.objects("configmap", conf.ns, selector))
        assert got == expected, selector
    body = expect_error(400, conf.api.objects, "configmap", conf.ns, "tier in web")
    assert body["reason"] == "BadRequest"


def test_a_metadata_only_list(conf: Any) -> None:
    create_configmap(conf, "meta-1", labels={"conf": "meta"}, data={"big": "x" * 1000})
    create_configmap(conf, "meta-2", labels={"conf": "meta"})
    conf.api.create_agent(conf.ns, "meta-agent", {"image": "agent:1"}, labels={"conf": "meta"})

    async def scenario(client: KubeClient) -> None:
        for res, expected in ((CONFIGMAPS, ["meta-1", "meta-2"]), (AGENTS, ["meta-agent"])):
            page = json.loads(await client.list_raw(res, conf.ns, label_selector="conf=meta", metadata_only=True))
            assert page["kind"] == "PartialObjectMetadataList" and page["apiVersion"] == "meta.k8s.io/v1"
            assert page["metadata"]["resourceVersion"]
            assert [i["metadata"]["name"] for i in page["items"]] == expected
            for item in page["items"]:
                assert set(item) == {"kind", "apiVersion", "metadata"}, item
                assert item["kind"] == "PartialObjectMetadata" and item["apiVersion"] == "meta.k8s.io/v1"
                assert item["metadata"]["labels"] == {"conf": "meta"} and item["metadata"]["uid"]
                assert item["metadata"]["namespace"] == conf.ns
        # chunked, as the sweep lists
        pages = [page async for page in client.list_pages(CONFIGMAPS, conf.ns, label_selector="conf=meta",
                                                            metadata_only=True, limit=1)]
        assert [i["metadata"]["name"] for p in pages for i in p["items"]] == ["meta-1", "meta-2"]
        assert all(p["kind"] == "PartialObjectMetadataList" for p in pages)
        assert pages[0]["metadata"]["continue"] and not pages[-1]["metadata"].get("continue")

    conf.run(scenario)


# ------------------------------------------------------------------------------ watch

@pytest.mark.parametrize("kind", ["configmaps", "agents"])
def test_watch_from_a_list_sees_every_change_in_order(conf: Any, kind: str) -> None:
    ns = conf.ns
    res = CONFIGMAPS if kind == "configmaps" else AGENTS
    labels = {"conf": "watch"}
    if res is CONFIGMAPS:
        body, other = configmap("w", labels=labels), configmap("unwatched")
    else:
        body = {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                "metadata": {"name": "w", "labels": labels}, "spec": {"image": "agent:1"}}
        other = {**body, "metadata": {"name": "unwatched"}}

    async def change(client: KubeClient) -> dict[str, Any]:
        if res is CONFIGMAPS:
            return await client.patch(CONFIGMAPS, ns, "w", {"data": {"k": "v2"}})
        return await client.patch(AGENTS, ns, "w", {"status": {"phase": "Running"}}, sub="status")

    async def scenario(client: KubeClient) -> None:
        listing = await client.list(res, ns, label_selector="conf=watch")
        assert listing["items"] == []
        seen: list[dict[str, Any]] = []
        bookmarks: list[dict[str, Any]] = []

        async def watch() -> None:
            async for event in client.watch(res, ns, resource_version=listing["metadata"]["resourceVersion"],
                                            label_selector="conf=watch", timeout_seconds=60):
                if event["type"] == "BOOKMARK":
                    bookmarks.append(event)
                    continue
                seen.append(event)
                if event["type"] == "DELETED":
                    return

        watching = asyncio.create_task(watch())
        created = await client.create(res, ns, body)
        changed = await change(client)
        await client.delete(res, ns, "w", uid=created["metadata"]["uid"])
        await client.create(res, ns, other)          # not selected
        await watching
        assert [e["type"] for e in seen] == ["ADDED", "MODIFIED", "DELETED"]
        assert all(e["object"]["metadata"]["name"] == "w" for e in seen)
        assert all(e["object"]["metadata"]["uid"] == created["metadata"]["uid"] for e in seen)
        assert seen[0]["object"]["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        assert seen[1]["object"]["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
        assert seen[1]["object"] == changed and seen[2]["object"].get("data") == changed.get("data")
        assert seen[0]["object"]["kind"] == body["kind"] and seen[0]["object"]["apiVersion"] == body["apiVersion"]
        for bookmark in bookmarks:        # allowed, not required
            assert bookmark["object"]["kind"] == body["kind"] and bookmark["object"]["metadata"]["resourceVersion"]

    conf.run(scenario)


def test_a_watch_from_a_too_old_resource_version_is_410(conf: Any) -> None:
    """The watch cache of a custom resource begins when its CRD is served: resourceVersion 1 is older
    (built-in resources may still replay it: their cache began with the server)."""
    async def scenario(client: KubeClient) -> None:
        with pytest.raises(ApiError) as info:
            async for _ in client.watch(AGENTS, conf.ns, resource_version="1", timeout_seconds=10):
                pass
        assert info.value.status == 410 and info.value.reason == "Expired", info.value
        assert info.value.message.startswith("too old resource version: 1 ("), info.value.message
        # the controller's answer: list again, and watch from there
        listing = await client.list(AGENTS, conf.ns)
        rv = listing["metadata"]["resourceVersion"]
        await client.create(AGENTS, conf.ns, {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                              "metadata": {"name": "after"}, "spec": {"image": "agent:1"}})
        async for event in client.watch(AGENTS, conf.ns, resource_version=rv, timeout_seconds=30):
            if event["type"] != "BOOKMARK":
                assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "after")
                break

    conf.run(scenario)


# ------------------------------------------------------------------------------ logs and events

def test_the_log_of_a_missing_pod_is_404(conf: Any) -> None:
    async def scenario(client: KubeClient) -> None:
        with pytest.raises(ApiError) as info:
            await client.stream_log(conf.ns, "no-such-pod", "agent", follow=False)
        assert info.value.status == 404 and info.value.reason == "NotFound"
        assert info.value.message == 'pods "no-such-pod" not found'

    conf.run(scenario)


def test_events_are_created_and_aggregated(conf: Any) -> None:
    from controller.events import EventRecorder

    ns = conf.ns
    agent = conf.api.create_agent(ns, "evented", {"image": "agent:1"})
    clock = lambda: datetime.datetime.now(datetime.UTC)  # noqa: E731

    async def scenario(client: KubeClient) -> None:
        recorder = EventRecorder(client, clock)
        await recorder.post(agent, "Normal", "ConformanceCheck", "first", aggregate=True)
        await recorder.post(agent, "Normal", "ConformanceCheck", "second", aggregate=True)
        await recorder.post(agent, "Warning", "ConformanceOther", "other")
        core = (await client.list(EVENTS, ns))["items"]
        mine = {e["reason"]: e for e in core if e["involvedObject"].get("uid") == agent["metadata"]["uid"]}
        assert set(mine) == {"ConformanceCheck", "ConformanceOther"}, core
        check = mine["ConformanceCheck"]
        assert (check["count"], check["message"], check["type"]) == (2, "second", "Normal")
        assert check["involvedObject"]["kind"] == "Agent" and check["involvedObject"]["name"] == "evented"
        # the same Events through events.k8s.io/v1
        new = (await client.request("GET", f"/apis/events.k8s.io/v1/namespaces/{ns}/events"))["items"]
        check_v1 = next(e for e in new if e["reason"] == "ConformanceCheck")
        assert (check_v1["note"], check_v1["deprecatedCount"]) == ("second", 2)
        assert check_v1["regarding"]["uid"] == agent["metadata"]["uid"]
        # and an events.k8s.io/v1 Event created as such
        created = await client.request("POST", f"/apis/events.k8s.io/v1/namespaces/{ns}/events", body={
            "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "evented.v1"},
            "eventTime": clock().strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "type": "Normal", "reason": "ConformanceV1",
            "action": "Checking", "note": "from events.k8s.io", "reportingController": "agentcontroller.dev/conformance",
            "reportingInstance": "conformance-1",
            "regarding": {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": "evented",
                          "namespace": ns, "uid": agent["metadata"]["uid"]}})
        assert created["kind"] == "Event" and created["apiVersion"] == "events.k8s.io/v1"
        as_core = await client.get(EVENTS, ns, "evented.v1")
        assert (as_core["reason"], as_core["message"], as_core["involvedObject"]["name"]) == (
            "ConformanceV1", "from events.k8s.io", "evented")
        assert as_core["reportingComponent"] == "agentcontroller.dev/conformance"

    conf.run(scenario)


# ------------------------------------------------------------------------------ Table output

COLUMNS = [  # (name, type, format, priority): Name, then the CRD's additionalPrinterColumns in order
    ("Name", "string", "name", 0), ("Phase", "string", "", 0), ("Reason", "string", "", 0),
    ("Progress", "integer", "", 0), ("Pod", "string", "", 0), ("Cleanup", "string", "", 0),
    ("Age", "date", "", 0), ("Node", "string", "", 1), ("Trigger", "string", "", 1),
    ("Archived", "integer", "int64", 1), ("Finished", "date", "", 1)]


def test_a_table_of_agents_has_the_crd_printer_columns(conf: Any) -> None:
    conf.api.create_agent(conf.ns, "tabled", {"image": "agent:1"})
    conf.api.patch_agent(conf.ns, "tabled", {"status": {"phase": "Working", "progress": 40}}, status=True)

    async def scenario(client: KubeClient) -> None:
        for path in (AGENTS.path(conf.ns), AGENTS.path(conf.ns, "tabled")):
            table = json.loads(await client.request_bytes("GET", path, accept=TABLE_ACCEPT))
            assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
            assert [(c["name"], c["type"], c.get("format", ""), c.get("priority", 0))
                    for c in table["columnDefinitions"]] == COLUMNS
            descriptions = {c["name"]: c.get("description", "") for c in table["columnDefinitions"]}
            assert descriptions["Phase"] == "Phase of the agent."
            assert descriptions["Progress"] == "Progress in percent, as last reported by the agent."
            assert len(table["rows"]) == 1
            row = table["rows"][0]
            assert row["cells"][:6] == ["tabled", "Working", None, 40, None, None]
            assert isinstance(row["cells"][6], str) and row["cells"][6]                  # the age
            assert row["cells"][7:] == [None, None, None, None]
            assert row["object"]["kind"] == "PartialObjectMetadata"
            assert row["object"]["metadata"]["name"] == "tabled"
        # kubectl get asks for tables in chunks (limit=500): a page carries continue and remainingItemCount
        await client.create(AGENTS, conf.ns, {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                                              "metadata": {"name": "tabled-2"}, "spec": {"image": "agent:1"}})
        first = json.loads(await client.request_bytes("GET", AGENTS.path(conf.ns) + "?limit=1", accept=TABLE_ACCEPT))
        assert [r["cells"][0] for r in first["rows"]] == ["tabled"]
        assert first["metadata"]["continue"] and first["metadata"].get("remainingItemCount", 1) == 1
        rest = json.loads(await client.request_bytes(
            "GET", AGENTS.path(conf.ns), params={"limit": 1, "continue": first["metadata"]["continue"]},
            accept=TABLE_ACCEPT))
        assert [r["cells"][0] for r in rest["rows"]] == ["tabled-2"] and not rest["metadata"].get("continue")
        assert [c["name"] for c in rest["columnDefinitions"]] == [c[0] for c in COLUMNS]

    conf.run(scenario)
