"""Failure is normal: conflicts, server errors, unwritable archives, crashes, re-created names, RBAC."""

from __future__ import annotations

import json
import os

import pytest
from helpers import Api, HttpError, leftovers, script, wait_for
from test_lifecycle import archive_path, assert_manifest, cleaned

SEL = "agentcontroller.dev/agent-uid="


def running(api, ns, name):
    return lambda: api.agent(ns, name).get("status", {}).get("phase") == "Running"


def test_conflict_on_status_patch_is_retried(api, ns, cluster, controller):
    cluster.faults.inject(verb="patch", resource="agents/status", status=409, times=2)
    api.create_agent(ns, "c409", {"image": "agent:1", "env": script([{"log": "x\n"}, {"exit": 0}])})
    agent = wait_for(cleaned(api, ns, "c409"))
    assert agent["status"]["phase"] == "Completed"
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_server_error_on_pod_delete_is_retried(api, ns, cluster, controller):
    api.create_agent(ns, "c500", {"image": "agent:1", "env": script([{"log": "x\n"}, {"sleep": 3600}])})
    wait_for(running(api, ns, "c500"))
    cluster.faults.inject(verb="delete", resource="pods", status=500, times=5)
    api.patch_agent(ns, "c500", {"status": {"phase": "Completed"}}, status=True)
    agent = wait_for(cleaned(api, ns, "c500"), timeout=120)
    assert agent["status"]["cleanup"]["podDeleted"] is True
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_a_log_the_api_never_serves_is_given_log_timeout_then_torn_down(api, ns, cluster, controller,
                                                                        archive_dir):
    # Every log request of the agent's pod answered 500 (as for a node lost before the controller's
    # first look at its running pod): the capture begun while it runs never gets a stream, and the
    # cleanup gives it cleanup.logTimeoutSeconds, as any log the node cannot serve, instead of
    # waiting for it forever (found by the chaos run).
    cluster.faults.inject(verb="get", resource="pods/log", namespace=ns, status=500, times=None)
    try:
        api.create_agent(ns, "nolog", {"image": "agent:1", "env": script([{"log": "x\n"}, {"sleep": 3600}]),
                                       "cleanup": {"logTimeoutSeconds": 1, "gracePeriodSeconds": 0}})
        wait_for(running(api, ns, "nolog"))
        api.patch_agent(ns, "nolog", {"spec": {"terminate": True}})
        agent = wait_for(cleaned(api, ns, "nolog"), timeout=120)
    finally:
        cluster.faults.clear()
    manifest = assert_manifest(archive_path(archive_dir, agent))
    entry = next(e for e in manifest["files"] if e["name"] == "agent.log")
    assert (entry["complete"], entry["missing"]) == (False, "kubelet_unreachable")
    assert agent["status"]["cleanup"]["logsComplete"] is False
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}


def test_handler_failure_is_an_event_on_the_agent(api, ns, cluster, controller):
    """`kubectl describe agent` shows why it is stuck: kopf's retried handler failure is a Warning Event."""
    cluster.faults.inject(verb="create", resource="pods", namespace=ns, status=500, times=6)  # > client retries
    created = api.create_agent(ns, "ev500", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(running(api, ns, "ev500"), timeout=120)

    def warning():
        return [e for e in api.events(ns) if e.get("involvedObject", {}).get("uid") == uid
                and e.get("type") in ("Warning", "Error")]
    events = wait_for(warning, message="a Warning/Error Event about the failed handler")
    assert any("500" in e.get("message", "") or "failed" in e.get("message", "") for e in events), events


def test_unwritable_archive_keeps_pod_then_recovers(api, ns, cluster, make_controller, tmp_path):
    blocker = tmp_path / "volume"
    blocker.write_text("not a directory: the archive volume is broken")
    archive_dir = blocker / "archive"
    make_controller(archive_dir=archive_dir)
    created = api.create_agent(ns, "ro", {"image": "agent:1",
                                          "env": script([{"log": "precious\n"}, {"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(running(api, ns, "ro"))
    api.patch_agent(ns, "ro", {"status": {"phase": "Completed"}}, status=True)

    def retrying():
        c = api.agent(ns, "ro")["status"].get("cleanup") or {}
        return c.get("state") == "Retrying" and c.get("errors") and c
    c = wait_for(retrying, message="Retrying")
    assert "not writable" in c["errors"][-1]
    pod = api.pod(ns, "ro")
    assert pod is not None and pod["metadata"].get("deletionTimestamp") is None   # data first: pod kept
    assert leftovers(api, ns, SEL + uid)["pod"] == ["ro"]

    blocker.unlink()
    archive_dir.mkdir(parents=True)
    agent = wait_for(cleaned(api, ns, "ro"), timeout=120, message="recovered cleanup")
    assert agent["status"]["cleanup"]["attempts"] >= 2
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"precious\n"
    assert leftovers(api, ns, SEL + uid) == {}


@pytest.mark.parametrize("hang_on", ["pods", "configmaps"])
def test_controller_stopped_mid_cleanup_then_restarted_archives_exactly_once(
        api, ns, cluster, make_controller, archive_dir, hang_on):
    first = make_controller()
    created = api.create_agent(ns, "crash", {"image": "agent:1", "prompt": "p",
                                             "env": script([{"log": "line\n"}, {"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(running(api, ns, "crash"))
    seen = cluster.requests[("delete", hang_on)]
    cluster.faults.inject(verb="delete", resource=hang_on, namespace=ns, hang=True, times=100)
    api.patch_agent(ns, "crash", {"status": {"phase": "Completed"}}, status=True)
    wait_for(lambda: cluster.requests[("delete", hang_on)] > seen, message=f"controller reached delete {hang_on}")
    first.stop()
    cluster.faults.clear()
    directory = archive_dir / ns / "crash" / uid
    before = (directory / "MANIFEST.json").stat().st_ino if (directory / "MANIFEST.json").exists() else None
    make_controller()
    agent = wait_for(cleaned(api, ns, "crash"), timeout=120)
    assert_manifest(directory)
    if before is not None:   # an archive once complete is never written again
        assert (directory / "MANIFEST.json").stat().st_ino == before
    assert (directory / "agent.log").read_bytes() == b"line\n"
    assert os.listdir(directory.parent) == [uid]      # one archive, no partial leftovers
    assert leftovers(api, ns, SEL + uid) == {}
    assert agent["status"]["cleanup"]["verifiedNoLeaks"] is True


def test_controller_stopped_while_streaming_after_pod_delete_keeps_the_streamed_log(
        api, ns, cluster, make_controller, archive_dir):
    """Crash after the pod was asked to stop but before the archive was finished: the pod (and the
    log the kubelet held) is gone by the restart, so the partially streamed log is finished, not lost."""
    first = make_controller()
    created = api.create_agent(ns, "mid", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 600},
                                           "env": script([{"log": "streamed before the crash\n"}, {"sleep": 3600}],
                                                         on_term=[{"log": "terminating\n"}, {"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(running(api, ns, "mid"))
    api.patch_agent(ns, "mid", {"status": {"phase": "Completed"}}, status=True)
    wait_for(lambda: (api.pod(ns, "mid") or {}).get("metadata", {}).get("deletionTimestamp"),
             message="pod terminating")
    partial = archive_dir / ns / "mid"
    capture = partial / f".{uid}.capture" / "agent.log"
    wait_for(lambda: capture.exists() and capture.read_bytes().endswith(b"terminating\n"),
             message="log streamed into the in-progress archive")
    first.stop()
    api.call("DELETE", f"/api/v1/namespaces/{ns}/pods/mid", {"gracePeriodSeconds": 0})
    wait_for(lambda: api.pod(ns, "mid") is None)
    make_controller()
    agent = wait_for(cleaned(api, ns, "mid"), timeout=120)
    directory = archive_dir / ns / "mid" / uid
    assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b"streamed before the crash\nterminating\n"
    assert os.listdir(partial) == [uid]
    assert agent["status"]["cleanup"]["verifiedNoLeaks"] is True


def test_recreated_agent_is_never_touched_by_the_old_cleanup(api, ns, cluster, controller):
    old = api.create_agent(ns, "same", {"image": "agent:1", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "same"))
    api.delete_agent(ns, "same")
    wait_for(lambda: api.agent_or_none(ns, "same") is None)
    new = api.create_agent(ns, "same", {"image": "agent:1", "prompt": "new", "env": script([{"sleep": 3600}])})
    wait_for(running(api, ns, "same"))
    # Replay the old agent's cleanup (as a late retry would): UID preconditions protect the new one.
    from controller.cleanup import clean_up
    stale = dict(old, status={"phase": "Completed"})
    controller.call(lambda: clean_up(controller.runtime, stale, "Sweep", thorough=True))
    now = api.agent(ns, "same")
    assert now["metadata"]["uid"] == new["metadata"]["uid"] and now["status"]["phase"] == "Running"
    assert leftovers(api, ns, SEL + new["metadata"]["uid"]) == {
        "pod": ["same"], "configmap": ["same-prompt"], "serviceaccount": ["same-agent"],
        "role": ["same-agent"], "rolebinding": ["same-agent"]}


def test_agent_credentials_are_its_own_only(api, ns, cluster, controller):
    api.create_agent(ns, "me", {"image": "agent:1"})
    api.create_agent(ns, "other", {"image": "agent:1"})
    wait_for(running(api, ns, "me"))
    wait_for(running(api, ns, "other"))
    agent_api = Api(cluster.url, cluster.service_account_token(ns, "me-agent"), getattr(cluster, "ca_file", None))
    agent_api.patch_agent(ns, "me", {"status": {"phase": "Working", "progress": 40}}, status=True)
    assert api.agent(ns, "me")["status"]["progress"] == 40
    assert agent_api.agent(ns, "me")["metadata"]["name"] == "me"
    for attempt in (lambda: agent_api.patch_agent(ns, "other", {"status": {"progress": 1}}, status=True),
                    lambda: agent_api.patch_agent(ns, "me", {"spec": {"image": "evil"}}),
                    lambda: agent_api.agent(ns, "other"),
                    lambda: agent_api.call("GET", f"/apis/agentcontroller.dev/v1alpha1/namespaces/{ns}/agents")):
        with pytest.raises(HttpError) as info:
            attempt()
        assert info.value.status == 403


@pytest.mark.parametrize("spec,status,needle", [
    ({}, None, "spec.image: Required value"),
    ({"image": "i", "cleanup": {"gracePeriodSeconds": -1}}, None, "gracePeriodSeconds"),
    ({"image": "i", "cleanup": {"logs": "Keep"}}, None, "supported values"),
    ({"image": "i"}, {"progress": 150}, "less than or equal to 100"),
    ({"image": "i"}, {"phase": "Sleeping"}, "supported values"),
])
def test_malformed_specs_are_rejected_by_the_crd(api, ns, spec, status, needle):
    if status is None:
        with pytest.raises(HttpError) as info:
            api.create_agent(ns, "bad", spec)
    else:
        api.create_agent(ns, "bad", spec)
        with pytest.raises(HttpError) as info:
            api.patch_agent(ns, "bad", {"status": status}, status=True)
    assert info.value.status == 422
    assert needle in info.value.body["message"]


def test_terminal_phase_is_final_in_the_api(api, ns):
    api.create_agent(ns, "fin", {"image": "i"})
    api.patch_agent(ns, "fin", {"status": {"phase": "Completed"}}, status=True)
    with pytest.raises(HttpError) as info:
        api.patch_agent(ns, "fin", {"status": {"phase": "Running"}}, status=True)
    assert info.value.status == 422 and "terminal" in info.value.body["message"]
    api.patch_agent(ns, "fin", {"status": {"message": "still fine"}}, status=True)
    assert json.dumps(api.agent(ns, "fin")["status"]["phase"]) == '"Completed"'



@pytest.fixture
def small_volume(tmp_path):
    """A size-limited file system (a 4 MiB tmpfs) for the archive; skips where none can be mounted."""
    import subprocess

    volume = tmp_path / "small-volume"
    volume.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(volume)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield volume
    subprocess.run(["umount", "-l", str(volume)], capture_output=True, check=False)


def test_a_full_volume_keeps_the_pod_until_the_archive_is_written(api, ns, make_controller, small_volume):
    """The archive volume fills up while the agent runs (ENOSPC, not a permission: the controller
    may run as root): the pod — and the node's copy of its log — is kept while the cleanup retries,
    and once there is room again the archive holds every byte, complete (found by the chaos run)."""
    from bench.chaos import fill_volume
    from controller.nodesim import generate_output

    make_controller(archive_dir=small_volume)
    created = api.create_agent(ns, "full", {"image": "agent:1", "podTemplate": {"metadata": {"annotations": {
        "sim.agentcontroller.dev/script": json.dumps({"steps": [{"write": {"bytes": 20_000, "lineBytes": 100}},
                                                               {"sleep": 3600}]})}}}})
    uid = created["metadata"]["uid"]
    wait_for(running(api, ns, "full"))
    filler = small_volume / "filler"
    fill_volume(filler)
    api.patch_agent(ns, "full", {"status": {"phase": "Completed"}}, status=True)

    def retrying():
        c = api.agent(ns, "full")["status"].get("cleanup") or {}
        return c.get("state") == "Retrying" and c.get("errors") and c
    c = wait_for(retrying, message="Retrying on the full volume")
    assert "No space left on device" in c["errors"][-1], c["errors"]
    pod = api.pod(ns, "full")
    assert pod is not None and pod["metadata"].get("deletionTimestamp") is None   # data first: pod kept
    filler.unlink()
    agent = wait_for(lambda: (a := api.agent(ns, "full")).get("status", {}).get("cleanup", {}).get("state")
                     == "Succeeded" and a, timeout=120, message="cleaned up once there is room")
    directory = small_volume / ns / "full" / uid
    manifest = assert_manifest(directory)
    entry = next(e for e in manifest["files"] if e["name"] == "agent.log")
    assert entry["complete"] is True, entry
    assert (directory / "agent.log").read_bytes() == generate_output(20_000, line_bytes=100)
    assert leftovers(api, ns, SEL + uid) == {}
