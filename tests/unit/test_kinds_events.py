"""controller/kinds.py (the one table of child kinds) and controller/events.py (EventRecorder)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest

from aiotest import async_test
from controller import events as events_mod
from controller import kinds, metrics
from controller.events import NORMAL, WARNING, EventRecorder
from controller.kinds import BY_LABEL, CHILD_KINDS, CREATE_STAGES, LABELS
from controller.kube.client import ApiError
from controller.kube.resources import EVENTS
from controller.names import AGENT_UID_LABEL, credentials_name, pod_name, prompt_configmap_name

UID = "0b0c0d0e-1111-2222-3333-444455556666"
SPEC_KINDS = {"pod", "configmap", "serviceaccount", "role", "rolebinding"}     # SPEC §5, label `kind`


def agent(prompt: str | None = "hello") -> dict[str, Any]:
    spec: dict[str, Any] = {"image": "img:1"}
    if prompt is not None:
        spec["prompt"] = prompt
    return {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a1", "namespace": "ns", "uid": UID}, "spec": spec}


# ---------------------------------------------------------------- the kinds table

def test_every_kind_once():
    assert len(CHILD_KINDS) == len(SPEC_KINDS)
    assert set(LABELS) == SPEC_KINDS and len(set(LABELS)) == len(LABELS)
    assert len({k.resource for k in CHILD_KINDS}) == len(CHILD_KINDS)
    assert len({(k.api_version, k.kind) for k in CHILD_KINDS}) == len(CHILD_KINDS)
    assert BY_LABEL == {k.label: k for k in CHILD_KINDS}
    assert LABELS == tuple(k.label for k in CHILD_KINDS)


@pytest.mark.parametrize("kind", CHILD_KINDS, ids=lambda k: k.label)
def test_resource_agrees_with_api_version_and_kind(kind):
    group, _, version = kind.api_version.rpartition("/")
    assert (kind.resource.group, kind.resource.version) == (group, version)
    assert kind.resource.plural == kind.kind.lower() + "s"
    assert kind.resource.namespaced
    assert kind.label == kind.kind.lower()


def test_every_kind_is_created_in_exactly_one_stage():
    staged = [k for stage in CREATE_STAGES for k in stage]
    assert sorted(k.label for k in staged) == sorted(LABELS)
    assert all(stage for stage in CREATE_STAGES)
    stage_of = {k.label: i for i, stage in enumerate(CREATE_STAGES) for k in stage}
    assert [stage_of[k.label] for k in CHILD_KINDS] == [
        sorted({k.create_stage for k in CHILD_KINDS}).index(k.create_stage) for k in CHILD_KINDS]


def test_role_binding_is_created_after_its_role():
    stage_of = {k.label: i for i, stage in enumerate(CREATE_STAGES) for k in stage}
    assert stage_of["rolebinding"] > stage_of["role"]


def test_the_pod_is_created_last_and_alone():
    """After its ServiceAccount (admission looks it up), its prompt ConfigMap (mounted) and its
    RoleBinding (the agent's credentials work from its first line)."""
    assert CREATE_STAGES[-1] == (kinds.POD,)
    assert all(k.create_stage < kinds.POD.create_stage for k in CHILD_KINDS if k is not kinds.POD)


def test_credentials_are_the_service_account_role_and_binding():
    assert {k.label for k in CHILD_KINDS if k.credential} == {"serviceaccount", "role", "rolebinding"}


def test_names_follow_from_the_agents_name():
    assert BY_LABEL["pod"].name("a1") == pod_name("a1") == "a1"
    assert BY_LABEL["configmap"].name("a1") == prompt_configmap_name("a1") == "a1-prompt"
    for label in ("serviceaccount", "role", "rolebinding"):
        assert BY_LABEL[label].name("a1") == credentials_name("a1") == "a1-agent"


@pytest.mark.parametrize("kind", CHILD_KINDS, ids=lambda k: k.label)
def test_builders_make_the_kind_the_table_says(kind):
    body = kind.build(agent(), "restricted")
    assert body is not None
    assert (body["apiVersion"], body["kind"]) == (kind.api_version, kind.kind)
    meta = body["metadata"]
    assert meta["name"] == kind.name("a1") and meta["namespace"] == "ns"
    assert meta["labels"][AGENT_UID_LABEL] == UID
    (owner,) = meta["ownerReferences"]
    assert owner["uid"] == UID and owner["controller"] is True


def test_no_prompt_no_configmap():
    assert BY_LABEL["configmap"].build(agent(prompt=None), "restricted") is None
    assert all(k.build(agent(prompt=None), "restricted") is not None for k in CHILD_KINDS if k.label != "configmap")


def test_metrics_kind_labels_are_the_tables():
    assert metrics.KINDS == LABELS
    text = metrics.Metrics().render().decode()
    for family in ("agent_controller_leaked_resources", "agent_controller_leaks_detected_total"):
        series = set(re.findall(family + r'\{kind="([a-z]+)",reason="([a-z_]+)"\}', text))
        assert series == {(k, r) for k in LABELS for r in metrics.LEAK_REASONS}, family
    reaped = set(re.findall(r'agent_controller_leaks_reaped_total\{kind="([a-z]+)"\}', text))
    assert reaped == set(LABELS)


# ---------------------------------------------------------------- EventRecorder

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
WINDOW = events_mod.AGGREGATE_WITHIN_SECONDS


class FakeEvents:
    """The Events API: create (generateName) and merge-patch, with failures on demand."""

    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self.patches: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_create = False
        self.fail_patch: ApiError | None = None

    async def create(self, res: Any, ns: str, body: dict[str, Any]) -> dict[str, Any]:
        assert res is EVENTS
        if self.fail_create:
            raise ApiError(403, "Forbidden", "events is forbidden")
        name = body["metadata"]["name"]
        stored = {**body, "metadata": {**body["metadata"], "name": name, "namespace": ns}}
        self.created.append(stored)
        return stored

    async def patch(self, res: Any, ns: str, name: str, patch: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        assert res is EVENTS
        if self.fail_patch is not None:
            raise self.fail_patch
        self.patches.append((ns, name, patch))
        return {"metadata": {"name": name, "namespace": ns}, **patch}


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


def recorder() -> tuple[EventRecorder, FakeEvents, Clock]:
    api, clock = FakeEvents(), Clock()
    return EventRecorder(api, clock), api, clock     # type: ignore[arg-type]


def obj(uid: str = UID, name: str = "a1") -> dict[str, Any]:
    return {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": name, "namespace": "ns", "uid": uid, "resourceVersion": "42"}}


@async_test
async def test_first_post_creates_an_event():
    rec, api, _ = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 1: boom", aggregate=True)
    (event,) = api.created
    assert api.patches == []
    assert event["metadata"]["name"].startswith("a1.") and event["metadata"]["namespace"] == "ns"
    int(event["metadata"]["name"].split(".")[1], 16)        # <object>.<unix nanos, hex>, as client-go names them
    assert event["involvedObject"] == {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": "a1",
                                       "namespace": "ns", "uid": UID, "resourceVersion": "42"}
    assert (event["type"], event["reason"], event["message"], event["count"]) == (WARNING, "CleanupRetrying",
                                                                                 "attempt 1: boom", 1)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-01-01T12:00:00Z"
    assert event["source"] == {"component": "agent-controller"} and event["reportingComponent"] == "agent-controller"


@async_test
async def test_a_repeat_within_the_window_patches_count_and_message():
    rec, api, clock = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 1", aggregate=True)
    clock.advance(30)
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 2", aggregate=True)
    clock.advance(30)
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 3", aggregate=True)
    assert len(api.created) == 1
    name = api.created[0]["metadata"]["name"]
    assert api.patches == [
        ("ns", name, {"count": 2, "lastTimestamp": "2026-01-01T12:00:30Z", "message": "attempt 2"}),
        ("ns", name, {"count": 3, "lastTimestamp": "2026-01-01T12:01:00Z", "message": "attempt 3"}),
    ]


@async_test
async def test_the_window_runs_from_the_latest_repeat():
    rec, api, clock = recorder()
    for _ in range(4):
        await rec.post(obj(), WARNING, "SyncFailed", "x", aggregate=True)
        clock.advance(WINDOW - 1)
    assert len(api.created) == 1 and [p[2]["count"] for p in api.patches] == [2, 3, 4]


@async_test
async def test_after_the_window_a_new_event_is_created():
    rec, api, clock = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 1", aggregate=True)
    clock.advance(WINDOW + 1)
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 9", aggregate=True)
    assert len(api.created) == 2 and api.patches == []
    assert api.created[1]["count"] == 1 and api.created[1]["message"] == "attempt 9"
    clock.advance(1)
    await rec.post(obj(), WARNING, "CleanupRetrying", "attempt 10", aggregate=True)
    assert api.patches and api.patches[0][1] == api.created[1]["metadata"]["name"]


@async_test
async def test_another_reason_type_or_object_creates_its_own_event():
    rec, api, _ = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "m", aggregate=True)
    await rec.post(obj(), WARNING, "SyncFailed", "m", aggregate=True)
    await rec.post(obj(), NORMAL, "CleanupRetrying", "m", aggregate=True)
    await rec.post(obj(uid="other-uid", name="a2"), WARNING, "CleanupRetrying", "m", aggregate=True)
    assert len(api.created) == 4 and api.patches == []


@async_test
async def test_without_aggregate_every_post_creates():
    rec, api, _ = recorder()
    for _ in range(3):
        await rec.post(obj(), NORMAL, "CleanedUp", "done")
    assert len(api.created) == 3 and api.patches == []
    await rec.post(obj(), NORMAL, "CleanedUp", "done", aggregate=True)   # nothing aggregated to build on
    assert len(api.created) == 4


@async_test
async def test_forget_starts_over():
    rec, api, _ = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "m", aggregate=True)
    rec.forget(UID)
    await rec.post(obj(), WARNING, "CleanupRetrying", "m", aggregate=True)
    assert len(api.created) == 2 and api.patches == []
    rec.forget("never-seen")


@async_test
async def test_a_repeat_whose_event_is_gone_creates_a_new_one():
    rec, api, _ = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "1", aggregate=True)
    api.fail_patch = ApiError(404, "NotFound", "events not found")     # expired (the event TTL)
    await rec.post(obj(), WARNING, "CleanupRetrying", "2", aggregate=True)
    assert len(api.created) == 2 and api.created[1]["message"] == "2" and api.created[1]["count"] == 1
    api.fail_patch = None
    await rec.post(obj(), WARNING, "CleanupRetrying", "3", aggregate=True)
    assert api.patches[-1][1] == api.created[1]["metadata"]["name"] and api.patches[-1][2]["count"] == 2


@async_test
async def test_a_failed_post_is_not_raised_nor_remembered():
    rec, api, _ = recorder()
    api.fail_create = True
    await rec.post(obj(), WARNING, "CleanupRetrying", "1", aggregate=True)
    api.fail_create = False
    await rec.post(obj(), WARNING, "CleanupRetrying", "2", aggregate=True)
    assert len(api.created) == 1 and api.patches == []


@async_test
async def test_refused_by_rbac_is_a_warning_in_the_log(caplog):
    """A role without `create` / `patch` on events is the administrator's to fix: logged as a
    warning (every other failure at debug level), and a repeat still posts an Event of its own."""
    rec, api, _ = recorder()
    api.fail_create = True
    with caplog.at_level("DEBUG", logger="controller.events"):
        await rec.post(obj(), WARNING, "CleanupRetrying", "1", aggregate=True)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "forbidden" in caplog.text
    api.fail_create = False
    await rec.post(obj(), WARNING, "CleanupRetrying", "2", aggregate=True)
    caplog.clear()
    api.fail_patch = ApiError(403, "Forbidden", 'events "a1.1" is forbidden: cannot patch resource "events"')
    with caplog.at_level("DEBUG", logger="controller.events"):
        await rec.post(obj(), WARNING, "CleanupRetrying", "3", aggregate=True)
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "patch on events" in caplog.text
    assert len(api.created) == 2 and api.created[1]["message"] == "3"
    caplog.clear()
    api.fail_patch = ApiError(500, "InternalError", "etcd timeout")
    with caplog.at_level("DEBUG", logger="controller.events"):
        await rec.post(obj(), WARNING, "CleanupRetrying", "4", aggregate=True)
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


@async_test
async def test_messages_are_bounded():
    rec, api, _ = recorder()
    await rec.post(obj(), WARNING, "CleanupRetrying", "x" * 5000, aggregate=True)
    await rec.post(obj(), WARNING, "CleanupRetrying", "y" * 5000, aggregate=True)
    assert len(api.created[0]["message"]) == 1024 and len(api.patches[0][2]["message"]) == 1024


@async_test
async def test_memory_is_bounded_oldest_objects_forgotten_first(monkeypatch):
    monkeypatch.setattr(events_mod, "_REMEMBERED", 3)
    rec, api, _ = recorder()
    for i in range(4):
        await rec.post(obj(uid=f"u{i}", name=f"a{i}"), WARNING, "R", "m", aggregate=True)
    await rec.post(obj(uid="u3", name="a3"), WARNING, "R", "m", aggregate=True)   # remembered: patched
    assert len(api.patches) == 1
    await rec.post(obj(uid="u0", name="a0"), WARNING, "R", "m", aggregate=True)   # forgotten: created
    assert len(api.created) == 5 and len(api.patches) == 1
