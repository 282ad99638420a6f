"""``agentctl report`` / ``kill`` and the report of ``agentctl run``, against a tiny stand-in API.

The stand-in (:mod:`fakeapi`) serves only the Agent endpoints agentctl uses (GET/PATCH of
``agents`` and ``agents/status``), enforces ``resourceVersion`` preconditions (409), the
terminal-phase rule (422) and lets a test inject failures or a concurrent writer. RBAC and the
real CRD rules are exercised against the project's API emulator in ``test_agentctl_api.py``;
credentials (in-cluster, kubeconfig variants, TLS) in ``test_agentctl_kubeapi.py``.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentctl_helpers import DEADLINE, agentctl, clean_env, popen_agentctl, write_kubeconfig
from fakeapi import FakeAPI

from controller.agentctl import status as st

RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAPI]:
    fake = FakeAPI()
    kc = write_kubeconfig(tmp_path / "kubeconfig", fake.url, "agent-token", "team-a")
    for k, v in clean_env(AGENT_NAME="a1", AGENT_NAMESPACE="team-a", KUBECONFIG=str(kc)).items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    yield fake
    fake.stop()


def env_for(tmp_path: Path, api: FakeAPI, **extra: str) -> dict[str, str]:
    kc = write_kubeconfig(tmp_path / "kubeconfig", api.url, "agent-token", "team-a")
    return clean_env(AGENT_NAME="a1", AGENT_NAMESPACE="team-a", KUBECONFIG=str(kc), **extra)


# ------------------------------------------------------------------ report


def test_report_merge_patches_status_with_resource_version(api: FakeAPI) -> None:
    agent = api.add_agent("team-a", "a1", {"phase": "Running", "reason": "PodRunning", "message": "pod up",
                                           "podName": "a1"})
    rv = agent["metadata"]["resourceVersion"]
    res = st.report("Working", progress=40, message="halfway")
    assert res.written and res.previous_phase == "Running"
    s = api.objects[("team-a", "a1")]["status"]
    assert s == {"phase": "Working", "progress": 40, "message": "halfway", "podName": "a1"}  # stale reason cleared
    (patch,) = api.patches()
    assert patch["path"].endswith("/namespaces/team-a/agents/a1/status")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"]["metadata"] == {"resourceVersion": rv}
    assert patch["auth"] == "Bearer agent-token"
    assert "completionTime" not in patch["body"]["status"]


def test_report_same_phase_keeps_message_and_updates_progress(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Working", "message": "step 1", "progress": 10})
    st.report("Working", progress=50)
    assert api.objects[("team-a", "a1")]["status"] == {"phase": "Working", "message": "step 1", "progress": 50}


def test_terminal_report_leaves_completion_time_to_the_controller(api: FakeAPI) -> None:
    """Only the controller writes completionTime (the status ValidatingAdmissionPolicy refuses it
    from the agent's token)."""
    api.add_agent("team-a", "a1", {"phase": "Working"})
    st.report("Completed", progress=100, message="done", reason="TaskDone")
    s = api.objects[("team-a", "a1")]["status"]
    assert s["phase"] == "Completed" and s["reason"] == "TaskDone" and s["progress"] == 100
    assert "completionTime" not in s


def test_terminal_phase_is_never_overwritten(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "a1", {"phase": "Completed", "completionTime": "2024-01-01T00:00:00Z"})
    res = st.report("Failed", message="late")
    assert not res.written and res.phase == "Completed"
    r = agentctl("report", "--phase", "Working", env=env_for(tmp_path, api))
    assert r.returncode == 0
    assert r.stderr.decode().count("\n") == 1 and b"Completed" in r.stderr
    assert api.patches() == []
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Completed"


def test_conflict_is_retried_with_a_fresh_read(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})

    def concurrent_writer(fake: FakeAPI, obj: dict[str, Any]) -> None:
        obj["status"]["podName"] = "a1"
        fake.bump(obj)

    api.before_patch = concurrent_writer
    assert st.report("Blocked", message="waiting for approval").written
    assert len(api.patches()) == 2
    assert api.objects[("team-a", "a1")]["status"] == {"phase": "Blocked", "message": "waiting for approval",
                                                       "podName": "a1"}


def test_conflict_with_a_terminal_write_does_not_overwrite_it(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})

    def controller_kills(fake: FakeAPI, obj: dict[str, Any]) -> None:
        obj["status"].update(phase="Terminated", reason="Killed")
        fake.bump(obj)

    api.before_patch = controller_kills
    res = st.report("Working")
    assert not res.written and res.phase == "Terminated"
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Terminated"


def test_transient_errors_are_retried(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})
    api.fail = [503, 500, 429]
    assert st.report("Working").written
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Working"


@pytest.mark.parametrize("code,text", [(403, "forbidden"), (404, "not found"), (422, "injected 422")])
def test_permanent_errors_are_one_line_exit_1(api: FakeAPI, tmp_path: Path, code: int, text: str) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})
    api.fail = [code]
    r = agentctl("report", "--phase", "Working", env=env_for(tmp_path, api))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("agentctl: error: ") and text in err, err
    assert "Traceback" not in err
    assert len(api.requests) == 1  # not retried


def test_report_of_missing_agent(api: FakeAPI, tmp_path: Path) -> None:
    r = agentctl("report", "--phase", "Working", env=env_for(tmp_path, api))
    assert r.returncode == 1
    assert r.stderr == b"agentctl: error: cannot read status of agent team-a/a1: agent team-a/a1 not found\n"


# ------------------------------------------------------------------ kill


def test_kill_sets_spec_terminate(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-b", "other", {"phase": "Working"})
    r = agentctl("kill", "other", "-n", "team-b", env=env_for(tmp_path, api))
    assert r.returncode == 0, r.stderr
    assert api.objects[("team-b", "other")]["spec"] == {"image": "x", "terminate": True}
    (patch,) = api.patches()
    assert patch["path"].endswith("/namespaces/team-b/agents/other")
    assert patch["content_type"] == "application/merge-patch+json"
    assert patch["body"] == {"spec": {"terminate": True}}


def test_kill_defaults_to_the_kubeconfig_namespace(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "b2")
    r = agentctl("kill", "b2", env=env_for(tmp_path, api))
    assert r.returncode == 0, r.stderr
    assert api.objects[("team-a", "b2")]["spec"]["terminate"] is True


def test_kill_missing_agent_is_one_line_error(api: FakeAPI, tmp_path: Path) -> None:
    r = agentctl("kill", "nope", "-n", "x", env=env_for(tmp_path, api))
    assert r.returncode == 1
    assert r.stderr == b"agentctl: error: cannot kill agent x/nope: agent x/nope not found\n"


@pytest.mark.parametrize("phase", ["Completed", "Failed", "Error", "Terminated"])
def test_kill_of_an_agent_that_already_ended_changes_nothing(api: FakeAPI, tmp_path: Path, phase: str) -> None:
    api.add_agent("team-b", "done", {"phase": phase})
    r = agentctl("kill", "done", "-n", "team-b", env=env_for(tmp_path, api))
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"agent.agentcontroller.dev/done already ended ({phase}); nothing to kill\n".encode()
    assert r.stderr == b""
    assert api.patches() == []
    assert api.objects[("team-b", "done")]["spec"] == {"image": "x"}


def test_kill_of_a_running_agent_reads_it_then_patches(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-b", "busy", {"phase": "Working"})
    r = agentctl("kill", "busy", "-n", "team-b", env=env_for(tmp_path, api))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"agent.agentcontroller.dev/busy terminate requested (namespace team-b)\n"
    assert [q["method"] for q in api.requests] == ["GET", "PATCH"]
    assert api.requests[0]["path"] == "/apis/agentcontroller.dev/v1alpha1/namespaces/team-b/agents/busy"


def test_kill_when_reading_is_forbidden_still_tries_the_patch(api: FakeAPI) -> None:
    """Credentials that may patch an Agent but not get it kill it as before."""
    api.add_agent("team-b", "busy", {"phase": "Working"})
    api.fail = [403]
    res = st.kill("busy", "team-b", retry_seconds=5)
    assert res.requested and res.phase is None
    assert [q["method"] for q in api.requests] == ["GET", "PATCH"]
    assert api.objects[("team-b", "busy")]["spec"]["terminate"] is True


def test_kill_retries_transient_errors_of_the_read(api: FakeAPI) -> None:
    api.add_agent("team-b", "done", {"phase": "Completed"})
    api.fail = [503, 500]
    res = st.kill("done", "team-b", retry_seconds=5)
    assert not res.requested and res.phase == "Completed"
    assert api.patches() == []


# ------------------------------------------------------------------ Retry-After


def test_retry_after_is_honoured(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})
    api.fail = [(429, {"Retry-After": "1"})]
    assert st.report("Working", retry_seconds=10).written
    first, second = api.requests[0], api.requests[1]
    assert second["at"] - first["at"] >= 0.95, "retried before the time the API asked for"
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Working"


def test_retry_after_beyond_the_deadline_is_not_waited_for(api: FakeAPI) -> None:
    api.add_agent("team-a", "a1", {"phase": "Running"})
    api.fail = [(503, {"Retry-After": "120"})]
    t0 = time.monotonic()
    with pytest.raises(st.StatusError, match=r"^cannot read status of agent team-a/a1: injected 503$"):
        st.report("Working", retry_seconds=3)
    assert time.monotonic() - t0 < 2
    assert len(api.requests) == 1


# ------------------------------------------------------------------ run reports the exit


@pytest.mark.parametrize("code", [0, 3])
def test_run_reports_the_exit(api: FakeAPI, tmp_path: Path, code: int) -> None:
    api.add_agent("team-a", "a1", {"phase": "Working", "progress": 70})
    r = agentctl("run", "--", "sh", "-c", f"exit {code}", env=env_for(tmp_path, api))
    assert r.returncode == code
    assert r.stderr == b""
    s = api.objects[("team-a", "a1")]["status"]
    if code == 0:
        assert s["phase"] == "Completed"
    else:
        assert s["phase"] == "Failed"
        assert "3" in s["message"]
    assert s["reason"] == "ExitCode"
    assert "completionTime" not in s  # the controller's to set
    assert s["progress"] == 70


def test_run_does_not_overwrite_a_reported_terminal_phase(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "a1", {"phase": "Completed", "message": "all done"})
    r = agentctl("run", "--", "sh", "-c", "printf abc; exit 3", env=env_for(tmp_path, api))
    assert r.returncode == 3
    # Only the output counts are added: the phase and message stay the agent's.
    assert [p["body"] for p in api.patches()] == [
        {"status": {"output": {"bytes": 3, "stdoutBytes": 3, "stderrBytes": 0}}}]
    assert api.objects[("team-a", "a1")]["status"] == {
        "phase": "Completed", "message": "all done", "output": {"bytes": 3, "stdoutBytes": 3, "stderrBytes": 0}}
    assert b"already reported Completed" in r.stderr


def test_run_passes_output_through_unchanged_and_reports_its_counts(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "a1", {"phase": "Working"})
    r = agentctl("run", "--", "sh", "-c", "printf 'out\\n'; printf 'err!' >&2; printf more; exit 0",
                 env=env_for(tmp_path, api))
    assert r.returncode == 0
    assert r.stdout == b"out\nmore"
    assert r.stderr.startswith(b"err!")
    s = api.objects[("team-a", "a1")]["status"]
    assert s["phase"] == "Completed"
    assert s["output"] == {"bytes": 12, "stdoutBytes": 8, "stderrBytes": 4}


def test_run_retries_a_briefly_failing_api(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "a1", {"phase": "Working"})
    api.fail = [503, 503]
    r = agentctl("run", "--", "sh", "-c", "exit 5", env=env_for(tmp_path, api))
    assert r.returncode == 5
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Failed"


def test_sigterm_while_reporting_does_not_change_the_exit_code(api: FakeAPI, tmp_path: Path) -> None:
    api.add_agent("team-a", "a1", {"phase": "Working"})
    api.delay = 1.0
    proc = popen_agentctl("run", "--", "sh", "-c", "exit 3", env=env_for(tmp_path, api))
    end = time.monotonic() + DEADLINE
    while api.arrived == 0 and time.monotonic() < end:
        time.sleep(0.02)
    assert api.arrived > 0, "agentctl never reported"
    proc.send_signal(signal.SIGTERM)  # the pod is being deleted while agentctl reports
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == 3, err
    assert api.objects[("team-a", "a1")]["status"]["phase"] == "Failed"
