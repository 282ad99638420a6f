"""Pure parts of the sweep (classification) and of the HA check (who is the active replica)."""

from __future__ import annotations

import datetime

from controller import api
from controller.peering import Peering
from controller.sweep import classify

NOW = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.UTC)


def seen(seconds_ago: float) -> str:
    return (NOW - datetime.timedelta(seconds=seconds_ago)).isoformat()


def test_active_unless_a_live_peer_outranks_us():
    me = Peering("p", None, identity="me", priority=10)
    assert not me.outranked({}, NOW)
    assert not me.outranked({"me": {"priority": 10, "lastseen": seen(1), "lifetime": 60}}, NOW)
    assert not me.outranked({"low": {"priority": 5, "lastseen": seen(1), "lifetime": 60}}, NOW)
    assert me.outranked({"high": {"priority": 11, "lastseen": seen(1), "lifetime": 60}}, NOW)
    assert me.outranked({"same": {"priority": 10, "lastseen": seen(1), "lifetime": 60}}, NOW)
    assert not me.outranked({"dead": {"priority": 99, "lastseen": seen(120), "lifetime": 60}}, NOW)
    assert not me.outranked({"junk": "x", "bad": {"priority": 99, "lastseen": "never"}}, NOW)


def obj(kind_uid: str, name: str = "x") -> dict:
    return {"metadata": {"name": name, "uid": f"u-{name}", "labels": {"agentcontroller.dev/agent-uid": kind_uid}}}


def agent(uid: str, phase: str, finished_ago: float | None = None, **spec) -> dict:
    status = {"phase": phase}
    if finished_ago is not None:
        status["completionTime"] = api.format_time(NOW - datetime.timedelta(seconds=finished_ago))
    return {"metadata": {"uid": uid, "name": uid}, "spec": {"image": "i", **spec}, "status": status}


def test_classify():
    agents = [agent("live", "Running"), agent("fresh", "Completed", 10), agent("old", "Failed", 600),
              agent("stuck", "Completed", 5), agent("delayed", "Completed", 100, cleanup={"delaySeconds": 3600})]
    objects = {"pod": [obj("live", "p1"), obj("fresh", "p2"), obj("old", "p3"), obj("gone", "p4"), obj("stuck", "p5"),
                       obj("delayed", "p6")],
               "configmap": [obj("gone", "c1"), obj("old", "c2")]}
    leaks = classify(agents, objects, NOW, archive_failing={"stuck"})
    got = sorted((l.kind, l.obj["metadata"]["name"], l.reason) for l in leaks)
    assert got == [("configmap", "c1", "orphaned"), ("configmap", "c2", "terminal"), ("pod", "p3", "terminal"),
                   ("pod", "p4", "orphaned"), ("pod", "p5", "archive_failed")]
