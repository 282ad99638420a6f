"""High availability end to end: two real controller replicas (kopf, each in its own thread with its
own client) peering through a KopfPeering against the API emulator, as the chart deploys them with
`replicas: 2` and `watchNamespaces` (the peering CRDs from the chart's crds/, the peering object as
templates/peering.yaml renders it, `--peering <name>` on every replica).

kopf pauses every peer but the one with the highest priority. kopf pauses only its own handlers:
the sweep, the alarms (deadlines, cleanup delays, TTLs) and background cleanup retries ask the
peering object themselves (controller/peering.py, Runtime.standing_by()). A replica that stops
cleanly removes its own record (kopf's keep-alive does that on exit), so the standby resumes at
once; a record left behind by a replica that died is honoured until `lastseen + lifetime`, then
dropped.

Mostly the higher priority starts first: a replica always starts paused (mandatory peering) and
stays paused while it sees a live higher peer, so there is no moment when both could act. When a
higher-priority replica joins later, the running one pauses only once it sees the new record (kopf
has no per-object locks: that short window is kopf's); what must hold is that the paused one's own
timers stand by from then on (test_a_replica_paused_by_a_higher_peer_leaves_its_alarms_to_it).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import os
from pathlib import Path
from typing import Any

import pytest
from helpers import leftovers, script, wait_for
from test_lifecycle import archive_path, assert_manifest, cleaned
from test_sweep import orphan, sample, scrape

from controller import api as capi
from controller.runtime import utcnow
from controller.sweep import SweepReport

ROOT = Path(__file__).resolve().parents[2]
# kopf peering (until the Lease-based leader election replaces it): the CRDs the chart used to ship
PEERING_CRDS = Path(__file__).resolve().parent / "data" / "kopfpeerings.kopf.dev.yaml"
PEERING = "agent-controller"          # the chart's default: the release's full name
MANAGED = "app.kubernetes.io/managed-by=agent-controller"
SEL = "agentcontroller.dev/agent-uid="
HIGH, LOW = 200, 100
FAILSAFE = 120.0


@pytest.fixture
def peering(cluster: Any, ns: str) -> str:
    """The chart's peering CRDs and, as templates/peering.yaml renders it for watchNamespaces=[ns],
    a KopfPeering in the watched namespace."""
    cluster.apply_file(str(PEERING_CRDS))
    cluster.create({"apiVersion": "kopf.dev/v1", "kind": "KopfPeering",
                    "metadata": {"name": PEERING, "namespace": ns,
                                 "labels": {"app.kubernetes.io/name": "agent-controller"}}})
    return PEERING


def peers(cluster: Any, ns: str) -> dict[str, Any]:
    return (cluster.get("KopfPeering", PEERING, ns, api_version="kopf.dev/v1") or {}).get("status") or {}


def identity(ctl: Any) -> str:
    return str(ctl.sweeper.peering.identity)


@pytest.fixture
def replicas(cluster: Any, ns: str, peering: str, make_controller: Any) -> tuple[Any, Any]:
    """(active, standby): the higher priority first, each one's record in the peering object."""
    active = make_controller(peering=peering, peering_priority=HIGH)
    wait_for(lambda: identity(active) in peers(cluster, ns), timeout=FAILSAFE, message="active's record")
    standby = make_controller(peering=peering, peering_priority=LOW)
    wait_for(lambda: identity(standby) in peers(cluster, ns), timeout=FAILSAFE, message="standby's record")
    status = peers(cluster, ns)
    assert status[identity(active)]["priority"] == HIGH and status[identity(standby)]["priority"] == LOW
    return active, standby


def stood_by(report: SweepReport | None) -> bool:
    """The sweep of a standby: it listed nothing and found nothing (not a failed sweep: None)."""
    return report is not None and report == SweepReport(seconds=report.seconds)


def cleanups(ctl: Any, result: str = "success") -> float:
    text = scrape(ctl)
    return sum(sample(text, "agent_controller_cleanups_total", trigger=t, result=result) for t in capi.TRIGGERS)


def events(api: Any, ns: str, uid: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.events(ns) if e.get("reason") == reason and e.get("involvedObject", {}).get("uid") == uid]


def assert_cleaned_once(api: Any, ns: str, name: str, archive_dir: Path) -> dict[str, Any]:
    """Succeeded and verified, one archive directory, one CleanedUp Event, nothing left."""
    agent = wait_for(cleaned(api, ns, name), timeout=FAILSAFE, message=f"{name} cleaned up")
    uid = agent["metadata"]["uid"]
    c = agent["status"]["cleanup"]
    assert c["state"] == "Succeeded" and c["verifiedNoLeaks"] is True and c["attempts"] == 1, c
    assert os.listdir(archive_dir / ns / name) == [uid]
    assert_manifest(archive_path(archive_dir, agent))
    wait_for(lambda: events(api, ns, uid, "CleanedUp"), timeout=FAILSAFE, message=f"{name}'s CleanedUp event")
    assert len(events(api, ns, uid, "CleanedUp")) == 1
    assert leftovers(api, ns, SEL + uid) == {}
    return agent


def completing(api: Any, ns: str, name: str) -> dict[str, Any]:
    """An Agent whose pod writes a line and exits 0."""
    return api.create_agent(ns, name, {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 0},
                                       "env": script([{"log": f"{name} done\n"}, {"exit": 0}])})


def test_two_replicas_clean_up_a_completed_agent_exactly_once(api, ns, cluster, replicas, archive_dir):
    active, standby = replicas
    completing(api, ns, "once")
    agent = assert_cleaned_once(api, ns, "once", archive_dir)
    assert agent["status"]["phase"] == "Completed"
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"once done\n"
    assert cleanups(active) == 1
    assert cleanups(standby) == 0 and cleanups(standby, "failure") == 0
    assert sample(scrape(standby), "agent_controller_archived_bytes_total") == 0
    assert leftovers(api, ns, MANAGED) == {}


def test_only_the_active_replica_sweeps(api, ns, cluster, replicas, archive_dir):
    active, standby = replicas
    pod = orphan(api, ns, "stray")
    orphan(api, ns, "stray-prompt", kind="configmap")
    wait_for(lambda: (api.pod(ns, "stray") or {}).get("status", {}).get("phase") == "Running",
             timeout=FAILSAFE, message="orphan pod Running")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:    # both sweep at the same time
        on_active, on_standby = pool.map(lambda ctl: ctl.sweep(), [active, standby])
    assert stood_by(on_standby)
    assert on_active is not None and not on_active.errors
    assert on_active.found == {("pod", "orphaned"): 1, ("configmap", "orphaned"): 1}
    assert on_active.reaped == {"pod": 1, "configmap": 1}
    assert leftovers(api, ns, MANAGED) == {}
    assert os.listdir(archive_dir / ns / "_orphans") == [pod["metadata"]["uid"]]
    assert (archive_dir / ns / "_orphans" / pod["metadata"]["uid"] / "agent.log").read_bytes() == b"orphan output\n"
    for ctl, reaped in ((active, 1), (standby, 0)):
        text = scrape(ctl)
        assert sample(text, "agent_controller_leaks_reaped_total", kind="pod") == reaped
        assert sample(text, "agent_controller_leaks_reaped_total", kind="configmap") == reaped
        assert sample(text, "agent_controller_leaks_detected_total", kind="pod", reason="orphaned") == reaped
    wait_for(lambda: len([e for e in api.events(ns) if e.get("reason") == "LeakReaped"]) >= 2,
             timeout=FAILSAFE, message="LeakReaped events")
    assert sorted(e["involvedObject"]["name"] for e in api.events(ns) if e.get("reason") == "LeakReaped") \
        == ["stray", "stray-prompt"]
    # Again, both: nothing left to find, and the standby still stands by.
    assert stood_by(standby.sweep())
    again = active.sweep()
    assert again is not None and not again.found and not again.errors


def test_failover_when_the_active_replica_stops(api, ns, cluster, replicas, archive_dir):
    active, standby = replicas
    completing(api, ns, "before")
    before = assert_cleaned_once(api, ns, "before", archive_dir)
    # An Agent in flight when the active replica goes away: its pod runs on.
    api.create_agent(ns, "inflight", {"image": "agent:1", "env": script([{"log": "working\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "inflight").get("status", {}).get("phase") == "Running",
             timeout=FAILSAFE, message="inflight Running")
    assert cleanups(active) == 1 and cleanups(standby) == 0

    active.stop()
    assert active.error is None
    # A clean exit removes its own record: the standby need not wait for it to expire.
    wait_for(lambda: identity(active) not in peers(cluster, ns), timeout=FAILSAFE, message="record removed")
    assert identity(standby) in peers(cluster, ns)

    api.patch_agent(ns, "inflight", {"spec": {"terminate": True}})
    completing(api, ns, "after")
    inflight = assert_cleaned_once(api, ns, "inflight", archive_dir)
    assert (inflight["status"]["phase"], inflight["status"]["reason"]) == ("Terminated", "Killed")
    assert (archive_path(archive_dir, inflight) / "agent.log").read_bytes() == b"working\n"
    after = assert_cleaned_once(api, ns, "after", archive_dir)
    assert after["status"]["phase"] == "Completed"
    assert cleanups(standby) == 2

    # The new active replica sweeps too; the Agent cleaned before the failover is not cleaned again.
    pod = orphan(api, ns, "stray")
    wait_for(lambda: (api.pod(ns, "stray") or {}).get("status", {}).get("phase") == "Running",
             timeout=FAILSAFE, message="orphan pod Running")
    report = standby.sweep()
    assert report is not None and not report.errors
    assert report.found == {("pod", "orphaned"): 1} and report.reaped == {"pod": 1}
    assert os.listdir(archive_dir / ns / "_orphans") == [pod["metadata"]["uid"]]
    assert leftovers(api, ns, MANAGED) == {}
    assert len(events(api, ns, before["metadata"]["uid"], "CleanedUp")) == 1
    assert os.listdir(archive_dir / ns / "before") == [before["metadata"]["uid"]]
    assert api.agent(ns, "before")["status"]["cleanup"] == before["status"]["cleanup"]
    assert cleanups(standby) == 2


def test_a_dead_peers_record_is_honoured_until_it_expires(api, ns, cluster, peering, make_controller,
                                                          archive_dir):
    """A replica that died (no clean exit) leaves its record: the survivor stands by until
    `lastseen + lifetime`, then takes over (kopf drops the dead record)."""
    lifetime = 10
    seen = utcnow()
    deadline = seen + datetime.timedelta(seconds=lifetime)
    cluster.patch("KopfPeering", PEERING, {"status": {"dead-replica/000000": {
        "priority": HIGH, "lifetime": lifetime, "lastseen": seen.isoformat()}}}, ns, api_version="kopf.dev/v1")
    survivor = make_controller(peering=peering, peering_priority=LOW)
    api.create_agent(ns, "waits", {"image": "agent:1", "env": script([{"log": "waited\n"}, {"sleep": 3600}])})
    orphan(api, ns, "stray-prompt", kind="configmap")     # what an active sweep would find
    began = utcnow()
    report = survivor.sweep()
    ended = utcnow()
    if ended < deadline:       # the dead record was live throughout: the sweep stood by
        assert stood_by(report)
    elif began >= deadline:    # (a very slow machine) it had expired: the sweep ran
        assert report is not None and report.reaped == {"configmap": 1}
    wait_for(lambda: "dead-replica/000000" not in peers(cluster, ns), timeout=FAILSAFE,
             message="dead record dropped")
    pod = wait_for(lambda: api.pod(ns, "waits"), timeout=FAILSAFE, message="pod created")
    # Nothing was done for the Agent while the dead replica's record was live.
    created = capi.parse_time(pod["metadata"]["creationTimestamp"])
    assert created is not None and created >= deadline.replace(microsecond=0), (created, deadline)
    wait_for(lambda: api.agent(ns, "waits").get("status", {}).get("phase") == "Running",
             timeout=FAILSAFE, message="waits Running")
    api.patch_agent(ns, "waits", {"spec": {"terminate": True}})
    agent = assert_cleaned_once(api, ns, "waits", archive_dir)
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"waited\n"
    assert cleanups(survivor) == 1
    report = survivor.sweep()
    assert report is not None and not report.errors
    assert leftovers(api, ns, MANAGED) == {}


def test_a_replica_paused_by_a_higher_peer_leaves_its_alarms_to_it(api, ns, cluster, peering, make_controller,
                                                                  archive_dir):
    """A higher-priority replica joins (a restarted pod draws a new priority): kopf pauses the one
    that was active, but that one's own timers (here: a cleanup delay armed while it was active) must
    not act any more — the new active replica has armed the same alarm."""
    first = make_controller(peering=peering, peering_priority=LOW)
    wait_for(lambda: identity(first) in peers(cluster, ns), timeout=FAILSAFE, message="first's record")
    api.create_agent(ns, "delayed", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 0, "delaySeconds": 5},
                                     "env": script([{"log": "delayed\n"}, {"exit": 0}])})
    done = wait_for(lambda: (a := api.agent(ns, "delayed")).get("status", {}).get("phase") == "Completed" and a,
                    timeout=FAILSAFE, message="delayed Completed")
    due = capi.parse_time(done["status"]["completionTime"]) + datetime.timedelta(seconds=5)
    second = make_controller(peering=peering, peering_priority=HIGH)
    wait_for(lambda: identity(second) in peers(cluster, ns), timeout=FAILSAFE, message="second's record")
    joined = utcnow()
    assert_cleaned_once(api, ns, "delayed", archive_dir)
    assert not events(api, ns, done["metadata"]["uid"], "CleanupFailed")
    if joined < due:     # (on a very slow machine the delay may have passed while the first was alone)
        assert cleanups(first) == 0 and cleanups(first, "failure") == 0
        assert cleanups(second) == 1
    assert cleanups(first) + cleanups(second) == 1


def test_without_the_peering_object_a_replica_stands_by(api, ns, cluster, make_controller):
    """`--peering NAME` without the object (the chart creates it): kopf stays paused, and so does the
    sweep, rather than every replica sweeping."""
    cluster.apply_file(str(PEERING_CRDS))
    ctl = make_controller(peering=PEERING, peering_priority=LOW)
    orphan(api, ns, "stray-prompt", kind="configmap")
    assert stood_by(ctl.sweep())
    assert leftovers(api, ns, MANAGED) == {"configmap": ["stray-prompt"]}
