"""`agentctl run` ships the agent's output to the controller as it is written (SPEC §4
"Completeness", §6): real processes on the node simulator (`sim.local/` images), the controller's
HTTPS endpoint, the pod's own projected token reviewed by the API server. Asserted through the API
and the archive: the sealed log is byte for byte what the process wrote, past rotations, a lost
node and controller restarts; without the wrapper the same output is marked `rotated`."""

from __future__ import annotations

import sys
from pathlib import Path

from controller.names import pod_name
from controller.nodesim import generate_output
from helpers import leftovers, wait_for
from test_archive_completeness import SEL, agent_entry, assert_archived_whole, incomplete
from test_lifecycle import archive_path, assert_manifest, cleaned
from test_sweep import sample, scrape

SIM = "sim.agentcontroller.dev/"
MiB = 1024 * 1024


def writer(total: int, then: str = "") -> list[str]:
    """A command writing generate_output(total) to stdout (100-byte lines), then running `then` (Python)."""
    code = ("import sys; from controller.nodesim import generate_output; "
            f"sys.stdout.buffer.write(generate_output({total}, line_bytes=100)); sys.stdout.flush(); {then}")
    return [sys.executable, "-c", code]


def wrapped(command: list[str]) -> list[str]:
    return ["agentctl", "run", "--", *command]


def agent_spec(command: list[str], **annotations: str) -> dict:
    return {"image": "sim.local/agent", "command": command, "cleanup": {"logTimeoutSeconds": 2},
            "podTemplate": {"metadata": {"annotations": {SIM + k.replace("_", "-"): v
                                                         for k, v in annotations.items()}}}}


def capture_dir(archive_dir: Path, ns: str, name: str, uid: str) -> Path:
    return archive_dir / ns / name / f".{uid}.capture"


def shipped_so_far(archive_dir: Path, ns: str, name: str, uid: str) -> int:
    path = capture_dir(archive_dir, ns, name, uid) / "agent.log.shipped"
    return path.stat().st_size if path.is_file() else 0


def test_output_under_agentctl_run_is_archived_whole_past_rotations(api, ns, make_controller, archive_dir):
    """50 MiB through a kubelet that keeps 1 MiB: the archive has every byte, and says so."""
    controller = make_controller(ship_port=0)
    total = 50 * MiB
    api.create_agent(ns, "big", agent_spec(wrapped(writer(total)), log_max_size="1Mi"))
    agent = wait_for(cleaned(api, ns, "big"), timeout=600)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == generate_output(total, line_bytes=100)
    entry = agent_entry(manifest)
    assert entry["complete"] is True and "missing" not in entry
    status = agent["status"]
    assert status["output"]["bytes"] == total and status["output"]["stdoutBytes"] == total
    assert (status["cleanup"]["logsComplete"], status["cleanup"]["logsArchived"]) == (True, True)
    text = scrape(controller)
    assert sample(text, "agent_controller_shipped_bytes_total") == total
    assert set(incomplete(controller).values()) == {0}
    assert not capture_dir(archive_dir, ns, "big", agent["metadata"]["uid"]).exists()


def test_without_the_wrapper_the_rotated_output_is_marked_missing(api, ns, make_controller, archive_dir):
    """The same kind of agent without agentctl run: the node kept only its last file."""
    controller = make_controller(ship_port=0)
    total = 5 * MiB
    api.create_agent(ns, "bare", agent_spec(writer(total), log_max_size="1Mi"))
    agent = wait_for(cleaned(api, ns, "bare"), timeout=300)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    kept = (directory / "agent.log").read_bytes()
    # What was read while it ran and what the node still had: lines of the output, in order, none twice.
    where = {line: i for i, line in enumerate(generate_output(total, line_bytes=100).splitlines(keepends=True))}
    positions = [where[line] for line in kept.splitlines(keepends=True)]
    assert len(kept) < total and positions == sorted(set(positions))
    entry = agent_entry(manifest)
    assert (entry["complete"], entry["missing"]) == (False, "rotated")
    assert agent["status"]["cleanup"]["logsComplete"] is False
    assert incomplete(controller)["rotated"] == 1
    assert sample(scrape(controller), "agent_controller_shipped_bytes_total") == 0
    wait_for(lambda: any(e.get("reason") == "LogsIncomplete" and e["type"] == "Warning"
                         for e in api.events(ns)), message="a Warning Event for the incomplete log")


def test_a_node_lost_after_the_output_was_written_loses_nothing(
        api, ns, make_controller, archive_dir, backend_name, cluster, node_of_its_own, tmp_path):
    """The output is shipped; the node is lost (its log unreadable); then the agent ends: complete."""
    make_controller(ship_port=0)
    total = 3 * MiB
    go = tmp_path / "go"
    then = f"import os, time\nwhile not os.path.exists({str(go)!r}): time.sleep(0.05)"
    spec = agent_spec(wrapped(writer(total, then=f"exec({then!r})")), log_max_size="1Mi")
    spec["podTemplate"]["spec"] = node_of_its_own()
    agent = api.create_agent(ns, "lost", spec)
    uid = agent["metadata"]["uid"]
    wait_for(lambda: shipped_so_far(archive_dir, ns, "lost", uid) == total, timeout=300,
             message="the whole output shipped")
    if backend_name == "control-plane":
        cluster.backend.sim.lose_node(api.pod(ns, pod_name("lost"))["spec"]["nodeName"])
    else:
        cluster.kubelet.lose_node(ns, pod_name("lost"))
    go.touch()          # the agent ends: agentctl run sends `final` and reports Completed
    agent = wait_for(cleaned(api, ns, "lost"), timeout=300)
    assert_archived_whole(archive_dir, agent, generate_output(total, line_bytes=100))
    assert leftovers(api, ns, SEL + uid) == {}


def test_shipping_resumes_across_controller_restarts_without_a_duplicated_byte(
        api, ns, make_controller, archive_dir, tmp_path):
    """The controller is stopped three times while the agent writes: exactly one whole copy."""
    total = 8 * MiB
    go = tmp_path / "go"
    # Writes in four parts, each after the test says so (the controller is restarted in between).
    parts = 4
    then = (f"import os, sys, time\nfrom controller.nodesim import generate_output\n"
            f"data = generate_output({total}, line_bytes=100)\n"
            f"for i in range(1, {parts}):\n"
            f"    while not os.path.exists({str(go)!r} + str(i)): time.sleep(0.05)\n"
            f"    sys.stdout.buffer.write(data[i * {total // parts}:(i + 1) * {total // parts}]); sys.stdout.flush()")
    code = ("import sys; from controller.nodesim import generate_output; "
            f"sys.stdout.buffer.write(generate_output({total}, line_bytes=100)[:{total // parts}]); "
            f"sys.stdout.flush(); exec({then!r})")
    controller = make_controller(ship_port=0)      # its CA made in <archive>/.ship-tls
    agent = api.create_agent(ns, "restarts", agent_spec(wrapped([sys.executable, "-c", code]), log_max_size="1Mi"))
    uid = agent["metadata"]["uid"]
    port = controller.runtime.ship.url.rsplit(":", 1)[1].split("/")[0]
    for i in range(1, parts):
        wait_for(lambda: shipped_so_far(archive_dir, ns, "restarts", uid) == i * (total // parts), timeout=300,
                 message=f"part {i} shipped")
        controller.stop()
        (tmp_path / f"go{i}").touch()          # the agent writes while no controller listens
        # The same address (a Service in a cluster) and, from the archive volume, the same CA.
        controller = make_controller(ship_port=int(port))
    agent = wait_for(cleaned(api, ns, "restarts"), timeout=300)
    directory = archive_path(archive_dir, agent)
    manifest = assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == generate_output(total, line_bytes=100)
    assert agent_entry(manifest)["complete"] is True


def test_the_cleanup_waits_for_a_shipment_held_up_at_the_end(api, ns, make_controller, archive_dir, cluster):
    """The agent ends while the controller cannot take its output (every TokenReview fails, as
    while the API server restarts): agentctl run reports its byte counts first, the cleanup keeps
    the pod — and the wrapper — until the rest arrived, and the archive is whole. (Were the pod
    stopped at once, the archive would hold the node's last 1 MiB, `rotated`.)"""
    controller = make_controller(ship_port=0)
    total = 4 * MiB
    fault = cluster.faults.inject(verb="create", resource="tokenreviews", status=500, times=None)
    try:
        spec = agent_spec(wrapped(writer(total)), log_max_size="1Mi")
        spec["cleanup"]["logTimeoutSeconds"] = 3600
        agent = api.create_agent(ns, "held", spec)
        uid = agent["metadata"]["uid"]
        reported = wait_for(lambda: ((api.agent(ns, "held").get("status") or {}).get("output") or {}).get("bytes"),
                            timeout=300, message="agentctl run reported its byte counts")
        assert reported == total
        assert wait_for(lambda: fault.hits >= 1, message="the shipment refused meanwhile")
        assert shipped_so_far(archive_dir, ns, "held", uid) == 0
        # The cleanup has begun and waits: the pod is still there, its container running.
        wait_for(lambda: (api.agent(ns, "held").get("status") or {}).get("phase") == "Completed")
        pod = api.pod(ns, pod_name("held"))
        assert pod["metadata"].get("deletionTimestamp") is None
    finally:
        cluster.faults.remove(fault)
    agent = wait_for(cleaned(api, ns, "held"), timeout=300)
    assert_archived_whole(archive_dir, agent, generate_output(total, line_bytes=100))
    assert sample(scrape(controller), "agent_controller_shipped_bytes_total") == total
