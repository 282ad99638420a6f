"""High availability: replicas with `--leader-election` hold one `coordination.k8s.io/v1` Lease;
only the holder acts (watches, cleanups, sweeps), a standby takes over when the holder stops or stops
renewing, and a holder that could not renew stops acting before a standby may take over — also when
it was paused (SIGSTOP) in the middle of a cleanup: exactly one archive, intact.

The first tests run replicas in this process (BackgroundController); the pause test runs two real
`agent-controller run` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import leftovers, script, wait_for
from test_lifecycle import archive_path, assert_manifest, cleaned
from test_sweep import sample, scrape

from controller import api as capi

SEL = "agentcontroller.dev/agent-uid="
MANAGED = "app.kubernetes.io/managed-by=agent-controller"
FAILSAFE = 120.0
LEASE = "agent-controller"
FAST = dict(lease_duration=3.0, renew_deadline=2.0, retry_period=0.3)


def holder(api: Any, ns: str) -> str | None:
    try:
        lease = api.call("GET", f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{LEASE}")
    except Exception:  # noqa: BLE001 - not created yet
        return None
    return (lease.get("spec") or {}).get("holderIdentity") or None


@pytest.fixture
def lease_ns(ns: str, backend_name: str) -> str:
    """Where the replicas' Lease lives: on the control plane the release namespace, as the chart's RBAC
    has it (a Lease of that one name there); on the emulator the test's own namespace."""
    if backend_name == "control-plane":
        from backends import CONTROLLER_NAMESPACE

        return CONTROLLER_NAMESPACE
    return ns


@pytest.fixture
def replicas(api: Any, ns: str, make_controller: Any, lease_ns: str) -> tuple[Any, Any]:
    """(leader, standby): the first one started holds the Lease."""
    leader = make_controller(leader_election=True, leader_election_namespace=lease_ns, **FAST)
    wait_for(lambda: holder(api, lease_ns) == leader.elector.identity, timeout=FAILSAFE, message="leader holds the lease")
    standby = make_controller(leader_election=True, leader_election_namespace=lease_ns, **FAST)
    assert holder(api, lease_ns) == leader.elector.identity and not standby.elector.leading
    return leader, standby


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
    assert c["state"] == "Succeeded" and c["verifiedNoLeaks"] is True, c
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


def test_only_the_leader_acts(api, ns, replicas, archive_dir):
    leader, standby = replicas
    completing(api, ns, "once")
    agent = assert_cleaned_once(api, ns, "once", archive_dir)
    assert agent["status"]["phase"] == "Completed"
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"once done\n"
    assert cleanups(leader) == 1
    assert cleanups(standby) == 0 and cleanups(standby, "failure") == 0
    report = standby.sweep()
    assert report is not None and report.objects == 0 and not report.found     # a standby does not sweep
    assert leader.sweep().objects > 0 or leftovers(api, ns, MANAGED) == {}
    health = __import__("urllib.request").request.urlopen(standby.health_url, timeout=10)
    assert health.status == 200          # a standby is healthy: it is waiting, not failing


def test_failover_when_the_leader_stops(api, ns, replicas, archive_dir, lease_ns):
    leader, standby = replicas
    api.create_agent(ns, "inflight", {"image": "agent:1", "env": script([{"log": "working\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "inflight").get("status", {}).get("phase") == "Running",
             timeout=FAILSAFE, message="inflight Running")
    leader.stop()
    assert leader.error is None
    # A clean stop releases the Lease: the standby takes it without waiting for it to expire.
    wait_for(lambda: holder(api, lease_ns) == standby.elector.identity, timeout=FAILSAFE, message="standby took over")
    api.patch_agent(ns, "inflight", {"spec": {"terminate": True}})
    inflight = assert_cleaned_once(api, ns, "inflight", archive_dir)
    assert (inflight["status"]["phase"], inflight["status"]["reason"]) == ("Terminated", "Killed")
    assert (archive_path(archive_dir, inflight) / "agent.log").read_bytes() == b"working\n"
    assert cleanups(standby) == 1


def run_replica(kubeconfig: str, archive: Path, ns: str, log: Path, lease_ns: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "controller.cli", "run", "--kubeconfig", kubeconfig, "--namespace", ns,
           "--archive-dir", str(archive), "--metrics-port", "0", "--health-port", "0", "--leader-election",
           "--leader-election-namespace", lease_ns, "--leader-election-lease-duration", "4",
           "--leader-election-renew-deadline", "3", "--leader-election-retry-period", "0.5"]
    return subprocess.Popen(cmd, stderr=log.open("wb"), stdout=subprocess.DEVNULL)


def test_a_paused_leader_stops_before_the_new_one_takes_over(tmp_path, cluster, api, ns, lease_ns, backend_name):
    """The leader is paused (SIGSTOP) in the middle of a cleanup, its pod terminating and its log being
    streamed; the standby takes over once the Lease expired and finishes the cleanup; resumed, the old
    leader finds it lost the Lease and exits without writing anything: one archive, byte-identical to
    what the container wrote, no partial directory left."""
    # The controller's own credentials (on the control plane: its ServiceAccount with the chart's RBAC).
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), token=getattr(cluster, "controller_token", None))
    archive = tmp_path / "archive"
    first = run_replica(kubeconfig, archive, ns, tmp_path / "first.log", lease_ns)
    second: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: holder(api, lease_ns), timeout=FAILSAFE, message="first replica holds the lease")
        first_identity = holder(api, lease_ns)
        second = run_replica(kubeconfig, archive, ns, tmp_path / "second.log", lease_ns)
        created = api.create_agent(ns, "paused", {
            "image": "agent:1", "cleanup": {"gracePeriodSeconds": 10},
            "env": script([{"log": "before the end\n"}, {"sleep": 3600}],
                          on_term=[{"log": "terminating\n"}, {"sleep": 2}, {"log": "still flushing\n"},
                                   {"sleep": 3600}])})
        uid = created["metadata"]["uid"]
        wait_for(lambda: api.agent(ns, "paused").get("status", {}).get("phase") == "Running", timeout=FAILSAFE)
        api.patch_agent(ns, "paused", {"status": {"phase": "Completed"}}, status=True)
        wait_for(lambda: (api.pod(ns, "paused") or {}).get("metadata", {}).get("deletionTimestamp"),
                 timeout=FAILSAFE, message="the leader asked the pod to stop")
        first.send_signal(signal.SIGSTOP)
        wait_for(lambda: holder(api, lease_ns) not in (None, first_identity), timeout=FAILSAFE,
                 message="the second replica took the lease")
        agent = wait_for(cleaned(api, ns, "paused"), timeout=FAILSAFE, message="cleaned by the new leader")
        first.send_signal(signal.SIGCONT)
        assert first.wait(timeout=FAILSAFE) == 1
        assert "lost the leader-election lease" in (tmp_path / "first.log").read_text()
        assert api.agent(ns, "paused")["status"]["cleanup"] == agent["status"]["cleanup"]   # nothing written after
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait()
    directory = archive / ns / "paused" / uid
    assert os.listdir(archive / ns / "paused") == [uid], "exactly one archive, no partial directory"
    assert_manifest(directory)
    archived = (directory / "agent.log").read_bytes()
    if backend_name == "emulator":      # what the container wrote, as its node recorded it
        assert archived == cluster.kubelet.served_log(ns, "paused", "agent")
    # (the script: "before the end", then on SIGTERM "terminating", 2 s, "still flushing")
    assert archived.startswith(b"before the end\nterminating\n")
    assert b"before the end\nterminating\nstill flushing\n".startswith(archived)
    assert agent["status"]["cleanup"]["verifiedNoLeaks"] is True


def test_a_leader_whose_stopping_hangs_still_exits_once_its_lease_is_lost(tmp_path, cluster, api, ns, lease_ns):
    """The archive volume hangs (as a lost NFS server does): a read of the agent's capture never
    returns, and a thread blocked in it cannot be cancelled. Then the leader's Lease renewals hang:
    it loses the Lease and its process exits within LEASE_LOST_EXIT_SECONDS although stopping cannot
    finish — not a replica that neither leads nor ever stands by again, its /healthz still ok
    (found by the chaos run on the control plane)."""
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), token=getattr(cluster, "controller_token", None))
    url = getattr(cluster, "controller_url", None)      # on the control plane: through the fault proxy
    if url is not None:
        config = yaml.safe_load(Path(kubeconfig).read_text())
        for entry in config["clusters"]:
            entry["cluster"] = {"server": url}
        Path(kubeconfig).write_text(yaml.safe_dump(config))
    archive = tmp_path / "archive"
    created = api.create_agent(ns, "stuck", {"image": "agent:1", "env": script([{"log": "x\n"}, {"sleep": 3600}])})
    capture = archive / ns / "stuck" / f".{created['metadata']['uid']}.capture"
    capture.mkdir(parents=True)
    os.mkfifo(capture / "agent.log.state")          # reading it blocks: the hung volume
    first = run_replica(kubeconfig, archive, ns, tmp_path / "first.log", lease_ns)
    try:
        wait_for(lambda: holder(api, lease_ns), timeout=FAILSAFE, message="the replica holds the lease")
        wait_for(lambda: api.agent(ns, "stuck").get("status", {}).get("phase") == "Running", timeout=FAILSAFE)
        cluster.faults.inject(verb="update", resource="leases", namespace=lease_ns, hang=True, times=None)
        assert first.wait(timeout=FAILSAFE) == 1
        assert "stopping took over" in (tmp_path / "first.log").read_text()
    finally:
        cluster.faults.clear()
        if first.poll() is None:
            first.kill()
            first.wait()
