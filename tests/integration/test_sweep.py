"""The safety net: sweep, leak metrics, health — through the API and the scraped /metrics text."""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from helpers import leftovers, script, wait_for
from test_lifecycle import assert_manifest, cleaned

from controller import api as capi
from controller.runtime import utcnow

MANAGED = "app.kubernetes.io/managed-by=agent-controller"
ROOT = Path(__file__).resolve().parents[2]


def scrape(ctl) -> str:
    with urllib.request.urlopen(ctl.metrics_url, timeout=10) as resp:
        return resp.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """Value of one sample; labels must match exactly."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (.+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if found == labels:
            return float(m.group(4))
    raise KeyError(f"{name}{labels} not in metrics")


def healthz(ctl) -> int:
    try:
        with urllib.request.urlopen(ctl.health_url, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def orphan(api, ns, name, kind="pod", logs=b"orphan output\n"):
    labels = {"app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "gone",
              "agentcontroller.dev/agent-uid": str(uuid.uuid4())}
    if kind == "pod":
        env = script([{"logB64": __import__("base64").b64encode(logs).decode()}, {"sleep": 3600}])
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                "spec": {"terminationGracePeriodSeconds": 1,
                         "containers": [{"name": "agent", "image": "agent:1", "env": env}]}}
        return api.create_pod(ns, body)
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels},
            "data": {"prompt.txt": "x"}}
    return api.call("POST", f"/api/v1/namespaces/{ns}/configmaps", body)


def test_orphans_are_archived_reaped_and_counted(api, ns, cluster, controller, archive_dir):
    pod = orphan(api, ns, "stray")
    orphan(api, ns, "stray-prompt", kind="configmap")
    wait_for(lambda: (api.pod(ns, "stray") or {}).get("status", {}).get("phase") == "Running")
    report = controller.sweep()
    assert report is not None and not report.errors
    text = scrape(controller)
    assert sample(text, "agent_controller_leaks_detected_total", kind="pod", reason="orphaned") == 1
    assert sample(text, "agent_controller_leaks_detected_total", kind="configmap", reason="orphaned") == 1
    assert sample(text, "agent_controller_leaked_resources", kind="pod", reason="orphaned") == 1
    assert sample(text, "agent_controller_leaked_resources", kind="configmap", reason="orphaned") == 1
    assert sample(text, "agent_controller_leaks_reaped_total", kind="pod") == 1
    assert sample(text, "agent_controller_leaks_reaped_total", kind="configmap") == 1
    directory = archive_dir / ns / "_orphans" / pod["metadata"]["uid"]
    assert_manifest(directory)
    assert (directory / "agent.log").read_bytes() == b"orphan output\n"
    assert leftovers(api, ns, MANAGED) == {}
    controller.sweep()
    text = scrape(controller)
    assert sample(text, "agent_controller_leaked_resources", kind="pod", reason="orphaned") == 0
    assert sample(text, "agent_controller_leaks_detected_total", kind="pod", reason="orphaned") == 1
    wait_for(lambda: "LeakReaped" in {e.get("reason") for e in api.events(ns)}, message="LeakReaped event")


def test_terminal_agent_leftover_is_reaped(api, ns, cluster, make_controller):
    offset = [datetime.timedelta(0)]
    ctl = make_controller(clock=lambda: utcnow() + offset[0])
    created = api.create_agent(ns, "t1", {"image": "agent:1", "env": script([{"exit": 0}])})
    uid = created["metadata"]["uid"]
    agent = wait_for(cleaned(api, ns, "t1"))
    # Someone re-creates the pod by hand, with our labels.
    labels = {"app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "t1",
              "agentcontroller.dev/agent-uid": uid}
    api.create_pod(ns, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t1-again", "labels": labels},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": [{"name": "agent", "image": "agent:1"}]}})
    ctl.sweep()
    assert sample(scrape(ctl), "agent_controller_leaked_resources", kind="pod", reason="terminal") == 0  # in grace
    offset[0] = datetime.timedelta(minutes=5)
    report = ctl.sweep()
    assert report.found[("pod", "terminal")] == 1 and not report.errors
    text = scrape(ctl)
    assert sample(text, "agent_controller_leaks_detected_total", kind="pod", reason="terminal") == 1
    assert sample(text, "agent_controller_leaks_reaped_total", kind="pod") == 1
    assert leftovers(api, ns, "agentcontroller.dev/agent-uid=" + uid) == {}
    assert api.agent(ns, "t1")["status"]["cleanup"]["state"] == "Succeeded"
    assert agent["status"]["cleanup"]["archivedFiles"] == api.agent(ns, "t1")["status"]["cleanup"]["archivedFiles"]


def test_archive_failed_pod_is_kept_counted_then_reaped(api, ns, cluster, make_controller, tmp_path):
    blocker = tmp_path / "volume"
    blocker.write_text("")
    archive_dir = blocker / "archive"
    ctl = make_controller(archive_dir=archive_dir)
    created = api.create_agent(ns, "af", {"image": "agent:1", "env": script([{"log": "keep me\n"},
                                                                             {"sleep": 3600}])})
    uid = created["metadata"]["uid"]
    wait_for(lambda: api.agent(ns, "af").get("status", {}).get("phase") == "Running")
    api.patch_agent(ns, "af", {"status": {"phase": "Failed", "message": "gave up"}}, status=True)
    wait_for(lambda: (api.agent(ns, "af")["status"].get("cleanup") or {}).get("state") == "Retrying")
    report = ctl.sweep()
    assert report.found[("pod", "archive_failed")] == 1
    text = scrape(ctl)
    assert sample(text, "agent_controller_leaked_resources", kind="pod", reason="archive_failed") == 1
    assert sample(text, "agent_controller_archive_errors_total", reason="not_writable") >= 1
    assert api.pod(ns, "af") is not None
    blocker.unlink()
    archive_dir.mkdir(parents=True)
    ctl.sweep()
    wait_for(cleaned(api, ns, "af"))
    assert (archive_dir / ns / "af" / uid / "agent.log").read_bytes() == b"keep me\n"
    assert leftovers(api, ns, "agentcontroller.dev/agent-uid=" + uid) == {}
    ctl.sweep()
    assert sample(scrape(ctl), "agent_controller_leaked_resources", kind="pod", reason="archive_failed") == 0


def test_sweep_racing_reconcile_archives_once_and_counts_once(api, ns, cluster, controller, archive_dir):
    names = [f"r{i}" for i in range(8)]
    for n in names:
        api.create_agent(ns, n, {"image": "agent:1", "env": script([{"log": f"{n}\n"}, {"sleep": 3600}])})
    wait_for(lambda: all(api.agent(ns, n).get("status", {}).get("phase") == "Running" for n in names), timeout=120)
    long_ago = capi.format_time(utcnow() - datetime.timedelta(hours=1))
    for n in names:   # finished an hour ago: the sweep counts it as a terminal leak at once
        api.patch_agent(ns, n, {"status": {"phase": "Completed", "completionTime": long_ago}}, status=True)
    reports = [controller.sweep() for _ in range(6)]
    for n in names:
        wait_for(cleaned(api, ns, n), timeout=120)
    controller.sweep()
    assert all(r is not None and not r.errors for r in reports)
    for n in names:
        agent = api.agent(ns, n)
        uid = agent["metadata"]["uid"]
        assert os.listdir(archive_dir / ns / n) == [uid]
        assert (archive_dir / ns / n / uid / "agent.log").read_bytes() == f"{n}\n".encode()
    text = scrape(controller)
    total = sum(sample(text, "agent_controller_cleanups_total", trigger=t, result="success")
                for t in capi.TRIGGERS)
    assert total == len(names)
    assert sum(sample(text, "agent_controller_cleanups_total", trigger=t, result="failure")
               for t in capi.TRIGGERS) == 0
    assert leftovers(api, ns, MANAGED) == {}


def test_hanging_api_fails_the_sweep_and_health(api, ns, cluster, make_controller):
    ctl = make_controller(sweep_interval=0.5, sweep_timeout=0.4)
    wait_for(lambda: ctl.sweeper.last_success is not None, message="first sweep")
    assert healthz(ctl) == 200
    cluster.faults.inject(verb="list", resource="agents", hang=True, times=10_000)
    wait_for(lambda: healthz(ctl) == 503, message="/healthz 503")
    frozen = sample(scrape(ctl), "agent_controller_last_sweep_success_timestamp_seconds")
    assert ctl.sweeper.last_error
    assert sample(scrape(ctl), "agent_controller_last_sweep_success_timestamp_seconds") == frozen
    cluster.faults.clear()
    wait_for(lambda: healthz(ctl) == 200, message="/healthz recovers")
    assert sample(scrape(ctl), "agent_controller_last_sweep_success_timestamp_seconds") > frozen


def test_agents_gauge_exact_after_restart(api, ns, cluster, make_controller):
    first = make_controller()
    phases = ["Running", "Working", "Blocked", "Completed", "Failed", "Error", "Terminated"]
    expected: dict[str, int] = {}
    for i in range(50):
        phase = phases[i % len(phases)]
        api.create_agent(ns, f"g{i}", {"image": "agent:1", "env": script([{"sleep": 3600}])})
        expected[phase] = expected.get(phase, 0) + 1
    wait_for(lambda: all(api.agent(ns, f"g{i}").get("status", {}).get("phase") == "Running" for i in range(50)),
             timeout=120)
    for i in range(50):
        phase = phases[i % len(phases)]
        if phase != "Running":
            api.patch_agent(ns, f"g{i}", {"status": {"phase": phase}}, status=True)
    for i in range(50):
        if phases[i % len(phases)] in capi.TERMINAL_PHASES:
            wait_for(cleaned(api, ns, f"g{i}"), timeout=120)
    first.stop()
    second = make_controller()

    def exact():
        text = scrape(second)
        return all(sample(text, "agent_controller_agents", phase=p) == expected.get(p, 0) for p in capi.PHASES)
    wait_for(exact, timeout=30, message="agents gauge matches the API")


def promtool() -> str | None:
    for candidate in (ROOT / ".tools" / "prometheus" / "usr" / "bin" / "promtool", shutil.which("promtool")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    return None


def test_metrics_text_is_valid_and_complete(api, ns, cluster, controller):
    api.create_agent(ns, "m", {"image": "agent:1", "env": script([{"exit": 0}])})
    wait_for(cleaned(api, ns, "m"))
    controller.sweep()
    text = scrape(controller)
    contract = yaml.safe_load((ROOT / "tests" / "shipping" / "data" / "contract.yaml").read_text())
    expected = {
        "agent_controller_agents": {"phase"},
        "agent_controller_phase_transitions_total": {"to"},
        "agent_controller_cleanups_total": {"trigger", "result"},
        "agent_controller_cleanup_duration_seconds_bucket": {"trigger", "le"},
        "agent_controller_leaked_resources": {"kind", "reason"},
        "agent_controller_leaks_detected_total": {"kind", "reason"},
        "agent_controller_leaks_reaped_total": {"kind"},
        "agent_controller_archived_bytes_total": set(),
        "agent_controller_archive_errors_total": {"reason"},
        "agent_controller_sweep_duration_seconds_bucket": {"le"},
        "agent_controller_last_sweep_success_timestamp_seconds": set(),
        "agent_controller_incomplete_logs_total": {"reason"},
        "agent_controller_cleanups_retrying": set(),
        "agent_controller_cleanup_retrying_longest_seconds": set(),
    }
    for name in contract["metrics"]:  # every metric of the contract is checked below
        assert any(k == name or k.startswith(name + "_") for k in expected), name
    for name, labels in expected.items():
        lines = [ln for ln in text.splitlines() if ln.startswith(name + "{") or ln.startswith(name + " ")]
        assert lines, f"{name} missing"
        for line in lines:
            found = set(re.findall(r'(\w+)="', line.split(" ")[0]))
            assert found == labels, (name, line)
    assert sample(text, "agent_controller_cleanups_total", trigger="Completed", result="success") == 1
    assert sample(text, "agent_controller_archived_bytes_total") > 0
    assert sample(text, "agent_controller_phase_transitions_total", to="Completed") >= 1
    tool = promtool()
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed (scripts/install-test-tools.sh)")
        pytest.skip("promtool not installed; run scripts/install-test-tools.sh")
    proc = subprocess.run([tool, "check", "metrics"], input=text.encode(), capture_output=True)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()


@pytest.mark.slow
def test_seed_load_test_50_sequential_then_5_killed_at_once(api, ns, cluster, controller, archive_dir):
    for i in range(50):
        api.create_agent(ns, f"l{i}", {"image": "agent:1", "cleanup": {"gracePeriodSeconds": 0},
                                       "env": script([{"log": f"agent {i}\n"}, {"exit": 0}])})
        wait_for(cleaned(api, ns, f"l{i}"), timeout=60)
    for i in range(5):
        api.create_agent(ns, f"k{i}", {"image": "agent:1", "env": script([{"log": "wait\n"}, {"sleep": 3600}])})
    wait_for(lambda: all(api.agent(ns, f"k{i}").get("status", {}).get("phase") == "Running" for i in range(5)))
    for i in range(5):
        api.patch_agent(ns, f"k{i}", {"spec": {"terminate": True}})
    for i in range(5):
        agent = wait_for(cleaned(api, ns, f"k{i}"), timeout=120)
        assert agent["status"]["reason"] == "Killed"
    controller.sweep()
    assert leftovers(api, ns, MANAGED) == {}
    manifests = list(archive_dir.glob(f"{ns}/*/*/MANIFEST.json"))
    assert len(manifests) == 55
    for m in manifests:
        assert_manifest(m.parent)
        json.loads((m.parent / "agent.json").read_text())
    text = scrape(controller)
    assert sum(sample(text, "agent_controller_leaked_resources", kind=k, reason=r)
               for k in ("pod", "configmap", "serviceaccount", "role", "rolebinding")
               for r in ("orphaned", "terminal", "archive_failed")) == 0
    for i in range(50):
        status = api.agent(ns, f"l{i}")["status"]
        assert status["phase"] == "Completed" and status["cleanup"]["verifiedNoLeaks"] is True
