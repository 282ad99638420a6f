"""Who may write what in an Agent's status (SPEC §2): the shipped ValidatingAdmissionPolicy, the
agent's own RBAC and the CRD's root rule, seen through the API as the agent, the controller and an
administrator see them. Runs on the backend of conftest.py (emulator, or a real kube-apiserver)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from controller import children

from .conftest import AGENTS, Installed, agent_body
from .secclient import JSON_PATCH, Client, Reply

POLICY = "agent-controller-status-writers"
DENIED = f"ValidatingAdmissionPolicy '{POLICY}' with binding '{POLICY}' denied request: "
CONTROLLER = "system:serviceaccount:agent-controller:agent-controller"


def refused_fields(fields: str, user: str) -> str:
    return (f"{fields} may be written only by the agent-controller ({CONTROLLER}), not by {user}; "
            "others may change only status.phase, progress, message, reason and output")


def refused_phase(phase: str, user: str) -> str:
    return (f"status.phase {phase} may be set only by the agent-controller, not by {user}; "
            "others may set Running, Working, Blocked, Completed, Failed or Error")


@dataclass
class AgentUnderTest:
    ns: str
    name: str
    user: str  # the agent's ServiceAccount, as the API names it
    me: Client  # the agent's own token (what agentctl uses inside the pod)


def make_agent(installed: Installed, ns: str, name: str) -> AgentUnderTest:
    """An Agent with the credentials the controller gives it (children.py), started by the
    controller: status Pending with podName, cleanup and conditions set by the controller's SA."""
    admin = installed.admin
    agent = admin.ok("POST", f"{AGENTS}/namespaces/{ns}/agents", agent_body(ns, name))
    for obj in (children.service_account(agent), children.role(agent), children.role_binding(agent)):
        admin.apply(obj)
    sa = children.service_account(agent)["metadata"]["name"]
    reply = installed.controller.patch_status(ns, name, {"status": {
        "phase": "Pending", "reason": "Created", "podName": name, "observedGeneration": 1,
        "cleanup": {"state": "Pending"},
        "conditions": [{"type": "Ready", "status": "False", "reason": "Created",
                        "lastTransitionTime": "2030-01-01T00:00:00Z"}],
    }})
    assert reply.status == 200, reply.message
    return AgentUnderTest(ns, name, f"system:serviceaccount:{ns}:{sa}", admin.as_token(admin.sa_token(ns, sa)))


@pytest.fixture
def agent(installed: Installed, ns: str) -> AgentUnderTest:
    return make_agent(installed, ns, "a1")


def denied(reply: Reply, code: int, message: str) -> None:
    assert reply.status == code, (reply.status, reply.message)
    assert reply.message.startswith('agents.agentcontroller.dev "'), reply.message
    assert reply.message.endswith('" is forbidden: ' + message), reply.message


def test_agent_reports_progress_and_completion(installed: Installed, agent: AgentUnderTest) -> None:
    me = agent.me
    for patch in (
        {"status": {"phase": "Running", "reason": "Started", "message": "starting"}},
        {"status": {"phase": "Working", "progress": 40, "message": "step 2 of 5"}},
        {"status": {"phase": "Blocked", "reason": "WaitingForInput"}},
        {"status": {"phase": "Working", "progress": 90}},
        {"status": {"phase": "Completed", "progress": 100, "reason": "Done", "message": "all done",
                    "output": {"bytes": 12, "stdoutBytes": 10, "stderrBytes": 2}}},
    ):
        reply = me.patch_status(agent.ns, agent.name, patch)
        assert reply.status == 200, (patch, reply.message)
    status = installed.admin.agent(agent.ns, agent.name)["status"]
    assert status["phase"] == "Completed" and status["progress"] == 100
    assert status["output"] == {"bytes": 12, "stdoutBytes": 10, "stderrBytes": 2}
    assert status["cleanup"] == {"state": "Pending"} and status["podName"] == agent.name


@pytest.mark.parametrize(("patch", "fields"), [
    ({"cleanup": {"state": "Succeeded"}}, "status.cleanup"),
    ({"cleanup": {"podDeleted": True, "verifiedNoLeaks": True, "logsComplete": True}}, "status.cleanup"),
    ({"conditions": [{"type": "CleanedUp", "status": "True"}]}, "status.conditions"),
    ({"podName": "elsewhere"}, "status.podName"),
    ({"nodeName": "node-9"}, "status.nodeName"),
    ({"startTime": "2030-01-01T00:00:00Z"}, "status.startTime"),
    ({"completionTime": "2030-01-01T00:00:00Z"}, "status.completionTime"),
    ({"observedGeneration": 7}, "status.observedGeneration"),
    ({"cleanup": None}, "status.cleanup"),
    ({"phase": "Completed", "podName": "x", "conditions": []}, "status.conditions, status.podName"),
])
def test_agent_cannot_write_controller_fields(agent: AgentUnderTest, patch: dict[str, Any], fields: str) -> None:
    reply = agent.me.patch_status(agent.ns, agent.name, {"status": patch})
    denied(reply, 403, DENIED + refused_fields(fields, agent.user))


@pytest.mark.parametrize("phase", ["Pending", "Terminated"])
def test_agent_cannot_set_controller_phases(agent: AgentUnderTest, phase: str) -> None:
    reply = agent.me.patch_status(agent.ns, agent.name, {"status": {"phase": "Running"}})
    assert reply.status == 200, reply.message
    reply = agent.me.patch_status(agent.ns, agent.name, {"status": {"phase": phase}})
    denied(reply, 403, DENIED + refused_phase(phase, agent.user))


def test_agent_cannot_remove_its_phase_or_status(agent: AgentUnderTest) -> None:
    reply = agent.me.patch_status(agent.ns, agent.name, {"status": {"phase": None}})
    denied(reply, 403, DENIED + f"status.phase may be removed only by the agent-controller, not by {agent.user}")
    # Removing the whole status removes the controller's fields too: that is what is reported first.
    reply = agent.me.patch_status(agent.ns, agent.name, {"status": None})
    denied(reply, 403, DENIED + refused_fields(
        "status.cleanup, status.conditions, status.podName, status.observedGeneration", agent.user))
    reply = agent.me.patch_status(agent.ns, agent.name, [{"op": "remove", "path": "/status/cleanup"}], JSON_PATCH)
    denied(reply, 403, DENIED + refused_fields("status.cleanup", agent.user))


def test_agent_cannot_touch_another_agents_status_or_its_own_spec(
    installed: Installed, ns: str, agent: AgentUnderTest
) -> None:
    other = make_agent(installed, ns, "a2")
    reply = agent.me.patch_status(ns, other.name, {"status": {"progress": 1}})
    assert reply.status == 403, reply.message
    assert reply.body.get("reason") == "Forbidden"
    assert f'User "{agent.user}" cannot patch resource "agents/status"' in reply.message, reply.message
    reply = agent.me.patch_agent(ns, agent.name, {"spec": {"image": "evil:1"}})
    assert reply.status == 403, reply.message
    assert f'User "{agent.user}" cannot patch resource "agents"' in reply.message, reply.message
    reply = agent.me.patch_agent(ns, agent.name, {"spec": {"terminate": True}})
    assert reply.status == 403, reply.message
    # it may read its own Agent and write its own status, nothing of the other
    assert agent.me.request("GET", f"{AGENTS}/namespaces/{ns}/agents/{agent.name}").status == 200
    assert agent.me.request("GET", f"{AGENTS}/namespaces/{ns}/agents/{other.name}").status == 403
    assert installed.admin.agent(ns, other.name)["status"].get("progress") is None


def test_controller_writes_every_status_field(installed: Installed, agent: AgentUnderTest) -> None:
    ctl = installed.controller
    for patch in (
        {"phase": "Running", "reason": "PodRunning", "startTime": "2030-01-01T00:00:01Z", "nodeName": "node-1"},
        {"phase": "Terminated", "reason": "Killed", "completionTime": "2030-01-01T00:01:00Z",
         "cleanup": {"state": "Running", "trigger": "Terminated"}},
        {"cleanup": {"state": "Succeeded", "podDeleted": True, "promptDeleted": True,
                     "credentialsDeleted": True, "logsArchived": True, "logsComplete": True,
                     "verifiedNoLeaks": True, "archivedBytes": 10, "archivedFiles": ["a/b/agent.log"],
                     "attempts": 1, "completionTime": "2030-01-01T00:01:05Z"},
         "conditions": [{"type": "CleanedUp", "status": "True", "reason": "Succeeded",
                         "lastTransitionTime": "2030-01-01T00:01:05Z"}], "observedGeneration": 2},
    ):
        reply = ctl.patch_status(agent.ns, agent.name, {"status": patch})
        assert reply.status == 200, (patch, reply.message)
    status = installed.admin.agent(agent.ns, agent.name)["status"]
    assert status["phase"] == "Terminated" and status["cleanup"]["state"] == "Succeeded"
    assert status["nodeName"] == "node-1"


def test_not_even_an_administrator_forges_the_cleanup(installed: Installed, agent: AgentUnderTest) -> None:
    """The exemption is the controller's ServiceAccount, not a privilege level."""
    admin = installed.admin.impersonating("jane", "system:masters")
    reply = admin.patch_status(agent.ns, agent.name, {"status": {"cleanup": {"state": "Succeeded"}}})
    denied(reply, 403, DENIED + refused_fields("status.cleanup", "jane"))
    reply = admin.patch_status(agent.ns, agent.name, {"status": {"progress": 5, "message": "nudged"}})
    assert reply.status == 200, reply.message


def test_a_terminal_phase_is_final_for_everyone(installed: Installed, agent: AgentUnderTest) -> None:
    """The CRD's root rule (not the policy): no writer, the controller included, changes or
    removes a terminal phase — also not by removing `status` altogether."""
    assert agent.me.patch_status(agent.ns, agent.name, {"status": {"phase": "Failed"}}).status == 200
    terminal = ("status.phase: Forbidden: status.phase is terminal (Completed, Failed, Error or Terminated): "
                "it cannot change, and neither status nor status.phase can be removed")
    for who in (installed.controller, agent.me):
        for patch in ({"status": {"phase": "Running"}}, {"status": None}, {"status": {"phase": None}}):
            reply = who.patch_status(agent.ns, agent.name, patch)
            # the schema is validated before admission: 422 also where the policy would refuse
            assert reply.status == 422, (patch, reply.status, reply.message)
            assert reply.message == f'Agent.agentcontroller.dev "{agent.name}" is invalid: {terminal}', reply.message
    # a main-resource write cannot touch the status at all (status subresource)
    reply = installed.admin.patch_agent(agent.ns, agent.name, {"status": None, "metadata": {"labels": {"x": "y"}}})
    assert reply.status == 200, reply.message
    assert installed.admin.agent(agent.ns, agent.name)["status"]["phase"] == "Failed"
