"""controller/sweep.py `Classifier`: which managed objects should not exist (pure)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller import api, sweep
from controller.kinds import LABELS
from controller.names import AGENT_UID_LABEL, MANAGED_BY_LABEL, MANAGED_BY_VALUE
from controller.sweep import Classifier, Leak

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)
UID = "0b0c0d0e-1111-2222-3333-444455556666"
GONE_UID = "dead0000-1111-2222-3333-444455556666"
EXTRA = sweep.TERMINAL_GRACE_EXTRA


def ago(seconds: float) -> str:
    return api.format_time(NOW - datetime.timedelta(seconds=seconds))


def agent(phase: str | None = None, *, finished_ago: float | None = None, uid: str = UID,
          cleanup_status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if finished_ago is not None:
        status["completionTime"] = ago(finished_ago)
    if cleanup_status is not None:
        status["cleanup"] = cleanup_status
    return {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
            "metadata": {"name": "a1", "namespace": "ns", "uid": uid, "resourceVersion": "3",
                         "creationTimestamp": ago(3600)},
            "spec": {"image": "img", "prompt": "p" * 100, **spec}, "status": status}


def child(kind: str = "pod", owner: str | None = UID, name: str = "a1") -> dict[str, Any]:
    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    if owner is not None:
        labels[AGENT_UID_LABEL] = owner
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"{kind}-uid", "labels": labels,
                         "creationTimestamp": ago(7200)}}


def classify(agents: list[dict[str, Any]], kind: str, obj: dict[str, Any],
             failing: set[str] | None = None) -> Leak | None:
    return Classifier(agents, NOW, failing or set())(kind, obj)


# ---------------------------------------------------------------- orphaned

@pytest.mark.parametrize("kind", LABELS)
def test_child_of_an_agent_that_does_not_exist_is_an_orphan_candidate(kind):
    leak = classify([agent(api.RUNNING)], kind, child(kind, owner=GONE_UID))
    assert leak is not None and (leak.kind, leak.reason, leak.agent) == (kind, "orphaned", None)
    assert leak.key == f"{kind}-uid"


def test_child_without_an_agent_uid_label_is_an_orphan_candidate():
    leak = classify([agent(api.RUNNING)], "configmap", child("configmap", owner=None))
    assert leak is not None and leak.reason == "orphaned"


def test_no_agents_at_all():
    leak = classify([], "pod", child())
    assert leak is not None and leak.reason == "orphaned"


# ---------------------------------------------------------------- live agents

@pytest.mark.parametrize("phase", [None, api.PENDING, api.RUNNING, api.WORKING, api.BLOCKED])
@pytest.mark.parametrize("kind", LABELS)
def test_children_of_a_live_agent_are_not_leaks(phase, kind):
    assert classify([agent(phase, finished_ago=100_000)], kind, child(kind)) is None


def test_live_agent_in_the_archive_failing_set_is_not_a_leak():
    assert classify([agent(api.RUNNING)], "pod", child(), failing={UID}) is None


# ---------------------------------------------------------------- terminal

@pytest.mark.parametrize("phase", sorted(api.TERMINAL_PHASES))
@pytest.mark.parametrize("kind", LABELS)
def test_children_of_a_terminal_agent_past_its_allowance_are_terminal_leaks(phase, kind):
    allowance = api.DEFAULTS["cleanup.gracePeriodSeconds"] + EXTRA
    a = agent(phase, finished_ago=allowance + 1)
    leak = classify([a], kind, child(kind))
    assert leak is not None and (leak.kind, leak.reason) == (kind, "terminal")
    assert leak.agent is not None and leak.agent["metadata"]["uid"] == UID


@pytest.mark.parametrize("phase", sorted(api.TERMINAL_PHASES))
def test_children_of_a_terminal_agent_within_its_allowance_are_not_leaks_yet(phase):
    allowance = api.DEFAULTS["cleanup.gracePeriodSeconds"] + EXTRA
    assert classify([agent(phase, finished_ago=allowance)], "pod", child()) is None
    assert classify([agent(phase, finished_ago=1)], "pod", child()) is None


def test_an_agent_that_reported_terminal_without_completion_time_is_not_a_leak_yet():
    """The agent wrote its own terminal phase just now; the controller has not even begun the cleanup
    (which records completionTime)."""
    for kind in LABELS:
        assert classify([agent(api.COMPLETED)], kind, child(kind)) is None


@pytest.mark.parametrize("grace,delay", [(0, 0), (5, 0), (30, 0), (5, 300), (3600, 86400)])
def test_allowance_is_grace_plus_delay_plus_the_extra(grace, delay):
    allowance = grace + delay + EXTRA
    spec = {"cleanup": {"gracePeriodSeconds": grace, "delaySeconds": delay}}
    assert classify([agent(api.FAILED, finished_ago=allowance - 1, **spec)], "pod", child()) is None
    assert classify([agent(api.FAILED, finished_ago=allowance, **spec)], "pod", child()) is None
    leak = classify([agent(api.FAILED, finished_ago=allowance + 1, **spec)], "pod", child())
    assert leak is not None and leak.reason == "terminal"


def test_cleaned_up_agent_with_a_child_left_is_a_terminal_leak():
    a = agent(api.COMPLETED, finished_ago=3600, cleanup_status={"state": api.CLEANUP_SUCCEEDED,
                                                                  "verifiedNoLeaks": True})
    leak = classify([a], "rolebinding", child("rolebinding"))
    assert leak is not None and leak.reason == "terminal"


# ---------------------------------------------------------------- archive_failed

def test_pod_kept_because_its_archive_fails_is_archive_failed():
    a = agent(api.COMPLETED, finished_ago=1)               # even within the allowance
    leak = classify([a], "pod", child(), failing={UID})
    assert leak is not None and leak.reason == "archive_failed" and leak.agent is not None


def test_archive_failed_even_without_completion_time():
    leak = classify([agent(api.FAILED)], "pod", child(), failing={UID})
    assert leak is not None and leak.reason == "archive_failed"


@pytest.mark.parametrize("kind", [k for k in LABELS if k != "pod"])
def test_archive_failed_is_about_the_pod_only(kind):
    a = agent(api.COMPLETED, finished_ago=1)
    assert classify([a], kind, child(kind), failing={UID}) is None
    a = agent(api.COMPLETED, finished_ago=3600)
    leak = classify([a], kind, child(kind), failing={UID})
    assert leak is not None and leak.reason == "terminal"


def test_archive_failed_needs_logs_archive():
    """With cleanup.logs: Delete nothing is archived, so nothing is kept for the archive's sake."""
    spec = {"cleanup": {"logs": "Delete"}}
    assert classify([agent(api.COMPLETED, finished_ago=1, **spec)], "pod", child(), failing={UID}) is None
    leak = classify([agent(api.COMPLETED, finished_ago=3600, **spec)], "pod", child(), failing={UID})
    assert leak is not None and leak.reason == "terminal"


def test_archive_failing_of_another_agent_does_not_count():
    a = agent(api.COMPLETED, finished_ago=1)
    assert classify([a], "pod", child(), failing={GONE_UID}) is None


# ---------------------------------------------------------------- what the sweep keeps of listed objects

@pytest.mark.parametrize("phase,finished_ago,failing", [
    (api.RUNNING, None, set()),
    (api.COMPLETED, None, set()),
    (api.COMPLETED, 10, set()),
    (api.FAILED, 10_000, set()),
    (api.ERROR, 10, {UID}),
])
@pytest.mark.parametrize("kind", LABELS)
def test_slimmed_agents_and_children_classify_as_the_full_ones(phase, finished_ago, failing, kind):
    """The sweep keeps only a slim copy of each listed Agent and leak: the classification is the same."""
    full = agent(phase, finished_ago=finished_ago, cleanup_status={"state": "Pending"},
                 cleanup={"gracePeriodSeconds": 7, "delaySeconds": 3, "logs": "Archive"})
    slim = sweep._slim_agent(full)
    obj = child(kind)
    a = classify([full], kind, obj, failing)
    b = Classifier([slim], NOW, failing)(kind, sweep._slim_child(kind, obj))
    assert (a and (a.kind, a.reason)) == (b and (b.kind, b.reason))


def test_the_leak_holds_a_copy_of_the_object():
    obj = child()
    leak = classify([], "pod", obj)
    assert leak is not None
    leak.obj["metadata"] = {}
    assert obj["metadata"]["name"] == "a1"
