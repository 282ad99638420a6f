"""agentctl against the project's Kubernetes API emulator, with the agent's own RBAC.

For each test the emulator gets the CRD (manifests/crd.yaml), an Agent, its ServiceAccount
``<agent>-agent`` and the Role/RoleBinding of SPEC §3 (``get`` on its own Agent, ``get``/``patch``
on its own ``agents/status``, nothing else). agentctl runs as a subprocess with a kubeconfig
holding that service account's token, and ``AGENT_NAME``/``AGENT_NAMESPACE`` set.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from agentctl_helpers import REPO, agentctl, clean_env, write_kubeconfig

try:
    from controller.devcluster import DevCluster
except ImportError as exc:  # built by another part of the project
    DevCluster = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR = str(exc)
else:
    _IMPORT_ERROR = ""

pytestmark = pytest.mark.skipif(
    DevCluster is None,
    reason=f"the API emulator is not available (from controller.devcluster import DevCluster failed: {_IMPORT_ERROR})",
)

GROUP, VERSION, PLURAL = "agentcontroller.dev", "v1alpha1", "agents"
NS = "team-a"
RFC3339_Z = r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$"


class Env:
    """One emulator with agents and their credentials."""

    def __init__(self, cluster: Any, tmp: Path) -> None:
        from kubernetes import client, config

        self.cluster = cluster
        self.tmp = tmp
        admin_kc = cluster.kubeconfig_path(str(tmp / "admin.kubeconfig"), user="admin")
        self.admin_kubeconfig = str(admin_kc)
        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=self.admin_kubeconfig))

    def add_agent(self, name: str, status: dict[str, Any] | None = None) -> dict[str, str]:
        """Create the Agent, its ServiceAccount/Role/RoleBinding; return agentctl's environment."""
        meta = {"name": name, "namespace": NS}
        self.cluster.create({"apiVersion": f"{GROUP}/{VERSION}", "kind": "Agent", "metadata": dict(meta),
                             "spec": {"image": "example.com/agent:1"}})
        sa = f"{name}-agent"
        self.cluster.create({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, "namespace": NS}})
        self.cluster.create({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": sa, "namespace": NS},
            "rules": [
                {"apiGroups": [GROUP], "resources": ["agents"], "resourceNames": [name], "verbs": ["get"]},
                {"apiGroups": [GROUP], "resources": ["agents/status"], "resourceNames": [name],
                 "verbs": ["get", "patch"]},
            ],
        })
        self.cluster.create({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": sa, "namespace": NS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": sa},
            "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NS}],
        })
        if status:
            self.patch_status(name, status)
        token = self.cluster.service_account_token(NS, sa)
        kc = write_kubeconfig(self.tmp / f"{name}.kubeconfig", self.cluster.url, token, NS)
        return clean_env(AGENT_NAME=name, AGENT_NAMESPACE=NS, KUBECONFIG=str(kc))

    def patch_status(self, name: str, status: dict[str, Any]) -> None:
        """As admin (the controller's role in these tests)."""
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, NS, PLURAL, name, {"status": status}, _content_type="application/merge-patch+json"
        )

    def agent(self, name: str) -> dict[str, Any]:
        obj: Any = self.api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, name)
        return obj

    def status(self, name: str) -> dict[str, Any]:
        return self.agent(name).get("status") or {}


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    assert DevCluster is not None
    cluster = DevCluster()
    cluster.start()
    try:
        cluster.apply_file(str(REPO / "manifests" / "crd.yaml"))
        if not cluster.get("Namespace", NS):
            cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        yield Env(cluster, tmp_path)
    finally:
        cluster.stop()


def test_run_exit_3_reports_failed_with_the_code(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Running"})
    r = agentctl("run", "--", "sh", "-c", "echo working; exit 3", env=agent_env)
    assert r.returncode == 3
    assert r.stdout == b"working\n"
    assert r.stderr == b"", r.stderr
    s = env.status("a1")
    assert s["phase"] == "Failed"
    assert s["reason"] == "ExitCode"
    assert "3" in s["message"]
    assert "completionTime" not in s, s  # the controller's to set
    assert env.cluster.requests[("patch", "agents/status")] >= 1


def test_run_exit_0_reports_completed(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Working", "progress": 90})
    r = agentctl("run", "--", "true", env=agent_env)
    assert r.returncode == 0, r.stderr
    s = env.status("a1")
    assert (s["phase"], s["reason"], s["progress"]) == ("Completed", "ExitCode", 90)


def test_run_does_not_overwrite_a_terminal_phase_the_agent_reported(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Running"})
    # The agent itself reports Completed, then its process exits 3.
    script = '"$PY" -m controller.agentctl.cli report --phase Completed --message done && exit 3'
    r = agentctl("run", "--", "sh", "-c", script, env={**agent_env, "PY": sys.executable})
    assert r.returncode == 3, r.stderr
    s = env.status("a1")
    assert s["phase"] == "Completed" and s["message"] == "done"
    assert b"already reported Completed" in r.stderr


def test_report_works_with_only_the_agents_own_rbac(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Running"})
    r = agentctl("report", "--phase", "Working", "--progress", "40", "--message", "halfway", env=agent_env)
    assert r.returncode == 0, r.stderr
    s = env.status("a1")
    assert (s["phase"], s["progress"], s["message"]) == ("Working", 40, "halfway")
    r = agentctl("report", "--phase", "Blocked", "--reason", "NeedsApproval", env=agent_env)
    assert r.returncode == 0, r.stderr
    s = env.status("a1")
    assert (s["phase"], s["reason"]) == ("Blocked", "NeedsApproval")
    assert "message" not in s  # the message of the previous phase is not kept


def test_agent_cannot_patch_another_agents_status(env: Env) -> None:
    a1_env = env.add_agent("a1", {"phase": "Running"})
    env.add_agent("a2", {"phase": "Running"})
    r = agentctl("report", "--phase", "Completed", env={**a1_env, "AGENT_NAME": "a2"})
    assert r.returncode == 1
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "forbidden" in err.lower(), err
    assert env.status("a2")["phase"] == "Running"


def test_agent_credentials_cannot_kill_agents(env: Env) -> None:
    a1_env = env.add_agent("a1", {"phase": "Running"})
    env.add_agent("a2", {"phase": "Running"})
    for target in ("a1", "a2"):
        r = agentctl("kill", target, env=a1_env)
        assert r.returncode == 1 and b"forbidden" in r.stderr.lower(), r.stderr
        assert not env.agent(target)["spec"].get("terminate")


def test_kill_with_user_credentials_sets_terminate(env: Env) -> None:
    env.add_agent("a1", {"phase": "Running"})
    r = agentctl("kill", "a1", "-n", NS, env=clean_env(KUBECONFIG=env.admin_kubeconfig))
    assert r.returncode == 0, r.stderr
    assert env.agent("a1")["spec"]["terminate"] is True


def test_report_retries_transient_api_errors(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Running"})
    env.cluster.faults.inject(verb="patch", resource="agents/status", status=500, times=2)
    before = env.cluster.requests[("patch", "agents/status")]
    r = agentctl("report", "--phase", "Working", env=agent_env)
    assert r.returncode == 0, r.stderr
    assert env.status("a1")["phase"] == "Working"
    assert env.cluster.requests[("patch", "agents/status")] - before == 3  # 2 injected failures + 1


def test_run_exit_code_survives_a_hanging_api(env: Env) -> None:
    agent_env = env.add_agent("a1", {"phase": "Running"})
    env.cluster.faults.inject(resource="agents/status", hang=True)
    env.cluster.faults.inject(resource="agents", hang=True)
    t0 = time.monotonic()
    try:
        r = agentctl("run", "--", "sh", "-c", "exit 4", env=agent_env)
    finally:
        env.cluster.faults.clear()
    assert r.returncode == 4
    assert time.monotonic() - t0 < 45
    assert r.stderr.startswith(b"agentctl: could not report Failed (exit code 4)"), r.stderr
