"""``agentctl`` command line: usage errors are one line with exit code 2; helpers."""

from __future__ import annotations

import os

import pytest
from agentctl_helpers import agentctl, clean_env

from controller.agentctl import status as st
from controller.agentctl import supervise as sv


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bogus"],
        ["report"],
        ["report", "--phase", "Terminated"],  # only the controller sets Terminated
        ["report", "--phase", "Pending"],
        ["report", "--phase", "Working", "--progress", "101"],
        ["report", "--phase", "Working", "--progress", "-1"],
        ["report", "--phase", "Working", "--progress", "half"],
        ["report", "--phase", "Working", "--reason", "not camel"],
        ["kill"],
        ["run"],
        ["run", "--"],
    ],
)
def test_usage_errors_are_one_line_exit_2(args: list[str]) -> None:
    r = agentctl(*args, env=clean_env(AGENT_NAME="a1", AGENT_NAMESPACE="ns"))
    assert r.returncode == 2, (args, r.stderr)
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err, err
    assert r.stdout == b""


def test_report_without_agent_name_is_a_usage_error() -> None:
    r = agentctl("report", "--phase", "Working")
    assert r.returncode == 2
    assert r.stderr == b"agentctl: error: AGENT_NAME is not set (agentctl report runs inside an agent pod)\n"


def test_missing_kubeconfig_is_one_line_exit_1() -> None:
    r = agentctl("report", "--phase", "Working", env=clean_env(AGENT_NAME="a1", AGENT_NAMESPACE="ns"))
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("agentctl: error: cannot load kubeconfig"), err
    r = agentctl("kill", "x", "-n", "ns")
    assert r.returncode == 1 and r.stderr.decode().count("\n") == 1


def test_help_and_version() -> None:
    for args in (["--help"], ["run", "--help"], ["report", "--help"], ["kill", "--help"]):
        r = agentctl(*args)
        assert r.returncode == 0 and b"usage:" in r.stdout
    r = agentctl("--version")
    assert r.returncode == 0 and r.stdout.startswith(b"agentctl ")


# ------------------------------------------------------------------ pure helpers


def test_validate_report() -> None:
    st.validate_report("Working", 0, "m", "SomeReason")
    st.validate_report("Error", 100, None, None)
    for bad in [("Terminated", None, None, None), ("Working", 101, None, None), ("Working", None, None, "bad reason"),
                ("Working", None, "x" * 40000, None)]:
        with pytest.raises(st.UsageError):
            st.validate_report(*bad)


def test_status_patch_shape() -> None:
    body = st._status_patch("Failed", None, "exit 3", "ExitCode", changed=True, rv="42")
    assert body["metadata"] == {"resourceVersion": "42"}
    assert body["status"]["phase"] == "Failed" and body["status"]["reason"] == "ExitCode"
    assert "completionTime" not in body["status"]  # the controller's to set
    body = st._status_patch("Working", 5, None, None, changed=False, rv=None)
    assert body == {"status": {"phase": "Working", "progress": 5}}
    body = st._status_patch("Working", None, None, None, changed=True, rv="1")
    assert body["status"] == {"phase": "Working", "message": None, "reason": None}


def test_exit_code_and_grace_helpers() -> None:
    assert sv.exit_code(0) == 0
    assert sv.exit_code(3 << 8) == 3
    assert sv.exit_code(9) == 137  # killed by SIGKILL
    assert sv.grace_seconds({}) == 5.0
    assert sv.grace_seconds({"AGENT_GRACE_SECONDS": "30"}) == 30.0
    assert sv.grace_seconds({"AGENT_GRACE_SECONDS": "0"}) == 0.0
    assert sv.grace_seconds({"AGENT_GRACE_SECONDS": "soon"}) == 5.0
    assert sv.grace_seconds({"AGENT_GRACE_SECONDS": "-3"}) == 5.0
    assert sv.tree_budget(0) == 0
    assert sv.tree_budget(1) == pytest.approx(0.9)
    assert sv.tree_budget(30) == pytest.approx(29.5)


def test_default_namespace_from_kubeconfig(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from pathlib import Path

    from agentctl_helpers import write_kubeconfig

    kc = write_kubeconfig(Path(tmp_path) / "kc", "http://127.0.0.1:1", "t", "team-z")
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(kc))
    assert st.default_namespace() == "team-z"
    monkeypatch.setenv("KUBECONFIG", str(Path(tmp_path) / "missing"))
    assert st.default_namespace() == "default"
