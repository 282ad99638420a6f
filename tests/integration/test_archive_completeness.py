"""The archive never claims more than it holds (SPEC §4 "Completeness"), through the API: an Agent
whose node breaks its log streams, garbage-collects its container, rotates its log or becomes
unreachable — then the archive files byte for byte, MANIFEST.json's entries, status.cleanup and the
scraped `agent_controller_incomplete_logs_total`."""

from __future__ import annotations

import json

from controller.nodesim import generate_output
from helpers import leftovers, wait_for
from test_lifecycle import archive_path, assert_manifest, cleaned
from test_sweep import sample, scrape

SIM = "sim.agentcontroller.dev/"
SEL = "agentcontroller.dev/agent-uid="
REASONS = ("rotated", "stream_broken", "kubelet_unreachable", "container_gone", "pod_gone")


def simulated(steps: list[dict], **annotations: str) -> dict:
    return {"metadata": {"annotations": {SIM + "script": json.dumps({"steps": steps}),
                                         **{SIM + k.replace("_", "-"): v for k, v in annotations.items()}}}}


def agent_entry(manifest: dict, name: str = "agent.log") -> dict:
    return next(e for e in manifest["files"] if e["name"] == name)


def assert_archived_whole(archive_dir, agent: dict, content: bytes) -> dict:
    """The Agent's archive holds exactly `content` as agent.log, complete, and its status says so;
    its MANIFEST."""
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == content
    assert agent_entry(manifest)["complete"] is True
    assert agent["status"]["cleanup"]["logsComplete"] is True
    return manifest


def incomplete(controller) -> dict[str, float]:
    text = scrape(controller)
    return {r: sample(text, "agent_controller_incomplete_logs_total", reason=r) for r in REASONS}


def test_a_clean_log_is_complete(api, ns, controller, archive_dir):
    api.create_agent(ns, "clean", {"image": "agent:1", "podTemplate": simulated(
        [{"log": "one\n"}, {"log": "two\n"}, {"exit": 0}])})
    agent = wait_for(cleaned(api, ns, "clean"))
    manifest = assert_manifest(archive_path(archive_dir, agent))
    assert (archive_path(archive_dir, agent) / "agent.log").read_bytes() == b"one\ntwo\n"
    assert agent_entry(manifest) | {"size": 0, "sha256": ""} == {
        "name": "agent.log", "size": 0, "sha256": "", "container": "agent", "previous": False, "complete": True}
    assert agent["status"]["cleanup"]["logsComplete"] is True
    assert agent["status"]["cleanup"]["logsArchived"] is True
    assert set(incomplete(controller).values()) == {0}


def simulated_script(script: dict, **annotations: str) -> dict:
    return {"metadata": {"annotations": {SIM + "script": json.dumps(script),
                                         **{SIM + k.replace("_", "-"): v for k, v in annotations.items()}}}}


def test_broken_streams_of_an_ended_pod_are_resumed_without_a_duplicated_or_missing_line(
        api, ns, controller, archive_dir):
    total = 300_000
    api.create_agent(ns, "ended", {"image": "agent:1", "podTemplate": simulated(
        [{"write": {"bytes": total, "lineBytes": 100}}, {"exit": 0}],
        break_log_stream_after_bytes="40000", break_log_stream_times="3")})
    agent = wait_for(cleaned(api, ns, "ended"), timeout=120)
    assert_archived_whole(archive_dir, agent, generate_output(total, line_bytes=100))
    assert set(incomplete(controller).values()) == {0}


def test_a_broken_stream_of_a_stopping_pod_is_resumed(api, ns, controller, archive_dir):
    """The agent writes its output, then more during its grace period; the first stream is cut."""
    total = 300_000
    api.create_agent(ns, "stopping", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 30},
                                      "podTemplate": simulated_script(
        {"steps": [{"write": {"bytes": total, "lineBytes": 100}}, {"report": {"phase": "Working"}},
                   {"sleep": 3600}],
         "onTerm": [{"sleep": 1}, {"log": "bye\n"}, {"exit": 0}]},
        break_log_stream_after_bytes="40000", break_log_stream_times="2")})
    wait_for(lambda: api.agent(ns, "stopping").get("status", {}).get("phase") == "Working",
             message="the whole output written")
    api.patch_agent(ns, "stopping", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "stopping"), timeout=120)
    assert_archived_whole(archive_dir, agent, generate_output(total, line_bytes=100) + b"bye\n")


def test_a_stream_cut_while_the_agent_is_quiet_is_followed_again(api, ns, controller, archive_dir):
    """The stream is cut right after the agent's last line so far, while it runs and writes nothing:
    the node's last line is the last one read, yet this is not the end (c0588 of the chaos run: an
    agent.log sealed complete and empty). What it writes later — here in its grace period — is kept."""
    first = b"2026-01-01T00:00:00.000000000Z one\n"      # the first line as the stream serves it
    api.create_agent(ns, "quiet", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 30},
                                   "podTemplate": simulated_script(
        {"steps": [{"log": "one\n"}, {"report": {"phase": "Working"}}, {"sleep": 3600}],
         "onTerm": [{"sleep": 1}, {"log": "bye\n"}, {"exit": 0}]},
        break_log_stream_after_bytes=str(len(first)), break_log_stream_times="1")})
    agent = wait_for(lambda: (a := api.agent(ns, "quiet")).get("status", {}).get("phase") == "Working" and a)
    capture = archive_dir / ns / "quiet" / f".{agent['metadata']['uid']}.capture" / "agent.log"
    wait_for(lambda: capture.is_file() and capture.stat().st_size > 0, timeout=180,
             message="the first line captured (its stream is cut after it)")
    api.patch_agent(ns, "quiet", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "quiet"), timeout=120)
    assert_archived_whole(archive_dir, agent, b"one\nbye\n")


def test_a_cut_stream_that_cannot_be_resumed_is_marked_incomplete(api, ns, controller, archive_dir):
    """Every stream is cut: whatever the archive holds, it does not claim to be complete."""
    total = 300_000
    api.create_agent(ns, "cut", {"image": "agent:1", "podTemplate": simulated(
        [{"write": {"bytes": total, "lineBytes": 100}}, {"exit": 0}],
        break_log_stream_after_bytes="40000", break_log_stream_times="always")})
    agent = wait_for(cleaned(api, ns, "cut"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    kept = (directory / "agent.log").read_bytes()
    assert generate_output(total, line_bytes=100).startswith(kept) and len(kept) < total
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"]) == (False, "stream_broken")
    assert agent["status"]["cleanup"]["logsComplete"] is False
    assert incomplete(controller)["stream_broken"] == 1


def test_a_garbage_collected_container_is_not_archived_as_its_output(api, ns, controller, archive_dir):
    api.create_agent(ns, "gone", {"image": "agent:1", "podTemplate": simulated(
        [{"log": "lost forever\n"}, {"exit": 0}], gc_after_exit="true")})
    agent = wait_for(cleaned(api, ns, "gone"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b""         # not "unable to retrieve container logs…"
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"]) == (False, "container_gone")
    assert "unable to retrieve container logs" in entry["detail"]
    cleanup = agent["status"]["cleanup"]
    assert (cleanup["logsComplete"], cleanup["logsArchived"], cleanup["verifiedNoLeaks"]) == (False, False, True)
    assert incomplete(controller)["container_gone"] == 1
    reasons = {e["reason"] for e in api.events(ns) if e["involvedObject"]["name"] == "gone"}
    assert "LogsIncomplete" in reasons


def numbered(kept: bytes, total: int) -> list[int]:
    """The line numbers of `kept`, each line checked against the deterministic output."""
    whole = generate_output(total, line_bytes=100)
    out = []
    for line in kept.splitlines(keepends=True):
        n = int(line[:9])
        assert whole[n * 100:(n + 1) * 100] == line
        out.append(n)
    return out


def test_rotated_output_is_counted_against_what_the_agent_reported(api, ns, controller, archive_dir):
    total = 400_000
    api.create_agent(ns, "rotated", {"image": "agent:1", "podTemplate": simulated(
        [{"write": {"bytes": total, "lineBytes": 100}},
         {"report": {"phase": "Completed", "output": {"bytes": total, "stdoutBytes": total, "stderrBytes": 0}}},
         {"sleep": 3600}], log_max_size="64Ki")})
    agent = wait_for(cleaned(api, ns, "rotated"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    kept = (directory / "agent.log").read_bytes()
    lines = numbered(kept, total)
    assert lines == sorted(set(lines)) and 0 < len(kept) < total        # in order, no line twice
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"], entry["missingBytes"]) == (False, "rotated", total - len(kept))
    assert agent["status"]["cleanup"]["logsComplete"] is False
    assert agent["status"]["cleanup"]["logsArchived"] is True    # read and sealed; rotated away before
    assert incomplete(controller)["rotated"] == 1


def test_a_rotation_while_the_stream_stalls_is_noticed_without_any_counts(api, ns, controller, archive_dir):
    """No wrapper, no counts: the log is read from when the pod runs; the kubelet's follow stream
    stops at the rotation; at cleanup the resumed stream no longer finds the last line read."""
    total = 400_000
    api.create_agent(ns, "stall", {"image": "agent:1", "podTemplate": simulated(
        [{"log": "first\n"}, {"report": {"phase": "Working"}}, {"sleep": 1},
         {"write": {"bytes": total, "lineBytes": 100}}, {"report": {"phase": "Blocked"}}, {"sleep": 3600}],
        log_max_size="64Ki")})
    wait_for(lambda: api.agent(ns, "stall").get("status", {}).get("phase") == "Blocked", message="all written")
    api.patch_agent(ns, "stall", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "stall"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    kept = (directory / "agent.log").read_bytes()
    assert kept.startswith(b"first\n")                  # read from the start
    lines = numbered(kept[len(b"first\n"):], total)
    assert lines == sorted(set(lines)) and lines[-1] == total // 100 - 1 and len(lines) < total // 100
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"]) == (False, "rotated")
    assert "missingBytes" not in entry                  # how many, only the agent's own counts could say
    assert agent["status"]["cleanup"]["logsComplete"] is False
    assert incomplete(controller)["rotated"] == 1
    reasons = {e["reason"] for e in api.events(ns) if e["involvedObject"]["name"] == "stall"}
    assert "LogsIncomplete" in reasons


def test_a_kubelet_that_follows_rotations_gives_the_whole_log(api, ns, controller, archive_dir):
    total = 400_000
    api.create_agent(ns, "reopen", {"image": "agent:1", "podTemplate": simulated(
        [{"log": "first\n"}, {"report": {"phase": "Working"}}, {"sleep": 1},
         {"write": {"bytes": total, "lineBytes": 100}}, {"report": {"phase": "Blocked"}}, {"sleep": 3600}],
        log_max_size="64Ki", follow_at_rotation="reopen")})
    wait_for(lambda: api.agent(ns, "reopen").get("status", {}).get("phase") == "Blocked", message="all written")
    api.patch_agent(ns, "reopen", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "reopen"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b"first\n" + generate_output(total, line_bytes=100)
    assert agent_entry(manifest)["complete"] is True


def test_a_restarted_controller_resumes_the_capture_without_duplicates(api, ns, make_controller, archive_dir):
    first = make_controller()
    api.create_agent(ns, "resume", {"image": "agent:1", "podTemplate": simulated(
        [{"write": {"bytes": 50_000, "lineBytes": 100}}, {"report": {"phase": "Working"}}, {"sleep": 3600}])})
    agent = wait_for(lambda: (a := api.agent(ns, "resume")).get("status", {}).get("phase") == "Working" and a)
    capture = archive_dir / ns / "resume" / f".{agent['metadata']['uid']}.capture" / "agent.log"
    # (a failsafe wait, not a timing assertion: the capture begins once the controller saw the pod run)
    wait_for(lambda: capture.is_file() and capture.stat().st_size > 0, timeout=180,
             message="the capture on the volume")
    first.stop()
    make_controller()
    api.patch_agent(ns, "resume", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "resume"), timeout=120)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == generate_output(50_000, line_bytes=100)
    assert agent_entry(manifest)["complete"] is True
    assert not capture.parent.exists()


def test_an_unreachable_node_is_given_log_timeout_then_torn_down(api, ns, controller, archive_dir,
                                                                  node_of_its_own):
    template = simulated([{"log": "before\n"}, {"sleep": 0.5}, {"loseNode": True},
                          {"report": {"phase": "Working"}}, {"sleep": 3600}])
    template["spec"] = node_of_its_own()
    api.create_agent(ns, "lost", {"image": "agent:1", "cleanup": {"logTimeoutSeconds": 1, "gracePeriodSeconds": 0},
                                  "podTemplate": template})
    wait_for(lambda: api.agent(ns, "lost").get("status", {}).get("phase") == "Working",
             message="the node lost (the agent reports after that)")
    api.patch_agent(ns, "lost", {"spec": {"terminate": True}})
    agent = wait_for(cleaned(api, ns, "lost"), timeout=120)
    manifest = assert_manifest(archive_path(archive_dir, agent))
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"]) == (False, "kubelet_unreachable")
    cleanup = agent["status"]["cleanup"]
    assert (cleanup["logsComplete"], cleanup["logsArchived"], cleanup["podDeleted"]) == (False, False, True)
    assert leftovers(api, ns, SEL + agent["metadata"]["uid"]) == {}
    assert incomplete(controller)["kubelet_unreachable"] == 1


def test_a_pod_gone_before_anything_read_its_log_is_recorded_as_lost(api, ns, make_controller, archive_dir):
    # The controller was away while the agent's pod ran and vanished (as its status, written before,
    # says): nothing read its log. The archive has an empty agent.log marked `pod_gone`, and
    # logsArchived is false — the log is not left out as if there had been none.
    api.create_agent(ns, "unread", {"image": "agent:1"})
    api.patch_agent(ns, "unread", {"status": {"phase": "Running", "reason": "PodRunning", "podName": "unread",
                                              "startTime": "2026-01-01T00:00:00Z"}}, status=True)
    controller = make_controller()
    agent = wait_for(cleaned(api, ns, "unread"), timeout=120)
    assert (agent["status"]["phase"], agent["status"]["reason"]) == ("Error", "PodLost")
    directory = archive_path(archive_dir, agent)
    entry = agent_entry(assert_manifest(directory))
    assert (entry["complete"], entry["missing"], entry["size"]) == (False, "pod_gone", 0)
    assert (directory / "agent.log").read_bytes() == b""
    cleanup = agent["status"]["cleanup"]
    assert (cleanup["logsArchived"], cleanup["logsComplete"]) == (False, False)
    assert incomplete(controller)["pod_gone"] == 1
