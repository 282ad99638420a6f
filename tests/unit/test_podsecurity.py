"""The policy table of controller/podsecurity.py against the Pod Security Standards (every control,
each level), and the pod children.py builds from a podTemplate: restricted defaults in every
container, deep merge of the agent container, InvalidSpec naming the field for whatever the level
does not allow, hostile shapes. Pure: no API server (tests/security runs the same cases against a
real one's Pod Security Admission)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller import children, podsecurity
from controller.podsecurity import BASELINE, LEVELS, PRIVILEGED, RESTRICTED
from security.pss_cases import CASES, OWN_CASES, Case, base

RANK = {PRIVILEGED: 0, BASELINE: 1, RESTRICTED: 2}
UID = "0b0c0d0e-1111-2222-3333-444455556666"


# --- the table ------------------------------------------------------------------------------------


def test_every_pod_security_standards_control_is_in_the_table() -> None:
    pss = {c.title for c in podsecurity.CONTROLS if c.source == podsecurity.PSS}
    assert pss == {
        "HostProcess", "Host Namespaces", "Privileged Containers", "Capabilities", "HostPath Volumes",
        "Host Ports", "AppArmor", "SELinux", "/proc Mount Type", "Seccomp", "Sysctls",  # baseline
        "Volume Types", "Privilege Escalation", "Running as Non-root", "Running as Non-root user",  # restricted
    }
    levels = {(c.title, c.level) for c in podsecurity.CONTROLS if c.source == podsecurity.PSS}
    assert ("Capabilities", BASELINE) in levels and ("Capabilities", RESTRICTED) in levels
    assert ("Seccomp", BASELINE) in levels and ("Seccomp", RESTRICTED) in levels
    for title in ("Volume Types", "Privilege Escalation", "Running as Non-root", "Running as Non-root user"):
        assert (title, RESTRICTED) in levels
    ours = {c.id for c in podsecurity.CONTROLS if c.source == podsecurity.OURS}
    assert ours == {"nodeName", "serviceAccount", "automountServiceAccountToken"}


def test_every_control_has_a_case() -> None:
    """Each control is shown violated by at least one case (and so tested at each level)."""
    hit: set[str] = set()
    # Unmasked without a user namespace: the API refuses it anyway (so it is no case of the real test)
    unmasked = Case("unmasked-no-userns", lambda s: s["containers"][0]["securityContext"].update(procMount="Unmasked"),
                    "privileged", "spec.containers[0].securityContext.procMount")
    assert [v.control.id for v in podsecurity.pss_violations(unmasked.spec(), BASELINE)] == ["procMountBaseline"]
    for case in CASES + OWN_CASES + [unmasked]:
        spec = case.spec()
        for level in (BASELINE, RESTRICTED):
            for v in podsecurity.violations(spec, level, paths=podsecurity.Paths(own_service_account="a1-agent")):
                hit.add(v.control.id)
    assert hit == set(podsecurity.CONTROLS_BY_ID)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_pod_security_standards(case: Case, level: str) -> None:
    found = podsecurity.pss_violations(case.spec(), level)
    admitted = RANK[case.level] >= RANK[level]
    assert (not found) == admitted, [str(v) for v in found]
    if not admitted:
        assert found[0].field == case.field, [str(v) for v in found]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("case", OWN_CASES, ids=[c.id for c in OWN_CASES])
def test_our_own_controls(case: Case, level: str) -> None:
    found = podsecurity.violations(case.spec(), level, paths=podsecurity.Paths(own_service_account="a1-agent"))
    admitted = RANK[case.level] >= RANK[level]
    assert (not found) == admitted, [str(v) for v in found]
    if not admitted:
        assert [v.field for v in found] == [case.field]
        assert found[0].control.source == podsecurity.OURS


def test_annotations_apparmor_and_seccomp() -> None:
    spec = base()
    for ann, level in (
        ({"container.apparmor.security.beta.kubernetes.io/main": "unconfined"}, PRIVILEGED),
        ({"container.apparmor.security.beta.kubernetes.io/main": "runtime/default"}, RESTRICTED),
        ({"container.apparmor.security.beta.kubernetes.io/main": "localhost/prof"}, RESTRICTED),
        ({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}, PRIVILEGED),
        ({"unrelated": "unconfined"}, RESTRICTED),
    ):
        assert bool(podsecurity.pss_violations(spec, BASELINE, ann)) == (level == PRIVILEGED), ann


def test_violation_text_names_field_rule_and_flag() -> None:
    spec = base()
    spec["hostNetwork"] = True
    (v,) = podsecurity.violations(spec, RESTRICTED)
    assert str(v) == ("spec.hostNetwork: must not be true (Host Namespaces: unset or false; allowed only at "
                      "--pod-security privileged)")


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="restricted, baseline or privileged"):
        podsecurity.violations(base(), "strict")
    with pytest.raises(ValueError):
        children.pod(agent(), pod_security="none")


def test_table_markdown_lists_every_control() -> None:
    text = podsecurity.table_markdown()
    assert len(text.splitlines()) == 2 + len(podsecurity.CONTROLS)


# --- the pod children.py builds ----------------------------------------------------------------


def agent(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "a1", "namespace": "ns", "uid": UID}, "spec": {"image": "img:1", **spec}}


def build(template_spec: dict[str, Any], level: str = RESTRICTED, **spec: Any) -> dict[str, Any]:
    return children.pod(agent(podTemplate={"spec": template_spec}, **spec), pod_security=level)


def by_name(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {i["name"]: i for i in items}


SIDECARS = {
    "initContainers": [{"name": "fetch", "image": "busybox:1"},
                       {"name": "proxy", "image": "envoy:1", "restartPolicy": "Always",
                        "securityContext": {"readOnlyRootFilesystem": True}}],
    "containers": [{"name": "logger", "image": "fluent:1",
                    "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}, "runAsUser": 1000}}],
}


def test_every_container_gets_the_restricted_defaults() -> None:
    pod = build(copy.deepcopy(SIDECARS), prompt="p")
    spec = pod["spec"]
    assert podsecurity.violations(spec, RESTRICTED, paths=podsecurity.Paths(own_service_account="a1-agent")) == []
    for c in spec["initContainers"] + spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["runAsNonRoot"] is True, c["name"]
        assert "ALL" in sc["capabilities"]["drop"] and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    init = by_name(spec["initContainers"])
    assert init["proxy"]["securityContext"]["readOnlyRootFilesystem"] is True  # the user's value stays
    assert init["proxy"]["restartPolicy"] == "Always"  # a native sidecar
    logger = by_name(spec["containers"])["logger"]["securityContext"]
    assert logger["capabilities"] == {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]} and logger["runAsUser"] == 1000
    assert spec["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert spec["serviceAccountName"] == "a1-agent" and spec["automountServiceAccountToken"] is True


def test_agent_container_fields_merge_with_the_generated_ones() -> None:
    template = {
        "containers": [{
            "name": "agent", "image": "ignored:1", "workingDir": "/work",
            "env": [{"name": "FROM_TEMPLATE", "value": "t"}, {"name": "SHARED", "value": "template"},
                    {"name": "AGENT_NAME", "value": "forged"}],
            "envFrom": [{"configMapRef": {"name": "settings"}}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"},
                             {"name": "other", "mountPath": "/var/run/agent"}],
            "securityContext": {"readOnlyRootFilesystem": True, "runAsUser": 1000,
                                "seccompProfile": {"type": "Localhost", "localhostProfile": "agent.json"}},
            "resources": {"limits": {"memory": "1Gi", "cpu": "2"}},
            "ports": [{"containerPort": 8080, "name": "http"}],
        }],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "other", "emptyDir": {}}],
    }
    pod = build(template, prompt="hi", env=[{"name": "SHARED", "value": "spec"}],
                resources={"limits": {"cpu": "1"}, "requests": {"cpu": "500m"}})
    (c,) = pod["spec"]["containers"]
    assert c["image"] == "img:1" and c["workingDir"] == "/work" and c["ports"][0]["containerPort"] == 8080
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FROM_TEMPLATE"] == "t" and env["SHARED"] == "spec" and env["AGENT_NAME"] == "a1"
    assert [e["name"] for e in c["env"]].count("AGENT_NAME") == 1
    assert c["envFrom"] == [{"configMapRef": {"name": "settings"}}]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/scratch"]["name"] == "scratch"  # the user's mount is kept next to the prompt's
    assert mounts["/var/run/agent"] == {"name": "agent-prompt", "mountPath": "/var/run/agent", "readOnly": True}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["runAsUser"] == 1000
    assert sc["seccompProfile"] == {"type": "Localhost", "localhostProfile": "agent.json"}
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"] == {"limits": {"memory": "1Gi", "cpu": "1"}, "requests": {"cpu": "500m"}}


def test_template_command_is_kept_when_the_spec_has_none() -> None:
    (c,) = build({"containers": [{"name": "agent", "command": ["run"], "args": ["x"]}]})["spec"]["containers"]
    assert c["command"] == ["run"] and c["args"] == ["x"]
    (c,) = build({"containers": [{"name": "agent", "command": ["run"]}]}, command=["other"])["spec"]["containers"]
    assert c["command"] == ["other"]


ESCALATIONS: list[tuple[str, dict[str, Any], str, str]] = [
    # (id, template spec, field named, strictest level that allows it)
    ("hostNetwork", {"hostNetwork": True}, "spec.podTemplate.spec.hostNetwork", PRIVILEGED),
    ("hostPID", {"hostPID": True}, "spec.podTemplate.spec.hostPID", PRIVILEGED),
    ("hostPath", {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]},
     "spec.podTemplate.spec.volumes[0].hostPath", PRIVILEGED),
    ("privileged-init", {"initContainers": [{"name": "i", "image": "x", "securityContext": {"privileged": True}}]},
     "spec.podTemplate.spec.initContainers[0].securityContext.privileged", PRIVILEGED),
    ("privileged-agent", {"containers": [{"name": "agent", "securityContext": {"privileged": True}}]},
     "spec.podTemplate.spec.containers[0].securityContext.privileged", PRIVILEGED),
    ("sys-admin", {"containers": [{"name": "agent", "securityContext": {"capabilities": {"add": ["CAP_SYS_ADMIN"]}}}]},
     "spec.podTemplate.spec.containers[0].securityContext.capabilities.add", PRIVILEGED),
    ("cap-add", {"containers": [{"name": "side", "image": "x",
                                 "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
     "spec.podTemplate.spec.containers[0].securityContext.capabilities.add", PRIVILEGED),
    ("cap-add-baseline", {"containers": [{"name": "side", "image": "x",
                                          "securityContext": {"capabilities": {"add": ["CHOWN"]}}}]},
     "spec.podTemplate.spec.containers[0].securityContext.capabilities.add", BASELINE),
    ("procMount", {"containers": [{"name": "agent", "securityContext": {"procMount": "Unmasked"}}]},
     "spec.podTemplate.spec.containers[0].securityContext.procMount", PRIVILEGED),
    ("procMount-userns", {"hostUsers": False,
                          "containers": [{"name": "agent", "securityContext": {"procMount": "Unmasked"}}]},
     "spec.podTemplate.spec.containers[0].securityContext.procMount", BASELINE),
    ("nodeName", {"nodeName": "control-plane"}, "spec.podTemplate.spec.nodeName", PRIVILEGED),
    ("serviceAccountName", {"serviceAccountName": "admin"}, "spec.podTemplate.spec.serviceAccountName", PRIVILEGED),
    ("serviceAccount", {"serviceAccount": "admin"}, "spec.podTemplate.spec.serviceAccount", PRIVILEGED),
    ("automount", {"automountServiceAccountToken": False},
     "spec.podTemplate.spec.automountServiceAccountToken", PRIVILEGED),
    ("escalation", {"containers": [{"name": "agent", "securityContext": {"allowPrivilegeEscalation": True}}]},
     "spec.podTemplate.spec.containers[0].securityContext.allowPrivilegeEscalation", BASELINE),
    ("root", {"securityContext": {"runAsUser": 0}}, "spec.podTemplate.spec.securityContext.runAsUser", BASELINE),
    ("nonroot-false", {"securityContext": {"runAsNonRoot": False}},
     "spec.podTemplate.spec.securityContext.runAsNonRoot", BASELINE),
    ("unconfined", {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
     "spec.podTemplate.spec.securityContext.seccompProfile.type", PRIVILEGED),
    ("nfs", {"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]},
     "spec.podTemplate.spec.volumes[0].nfs", BASELINE),
    ("hostPort", {"containers": [{"name": "agent", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
     "spec.podTemplate.spec.containers[0].ports[0].hostPort", PRIVILEGED),
]


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize(("template", "field", "allowed_at"), [e[1:] for e in ESCALATIONS],
                         ids=[e[0] for e in ESCALATIONS])
def test_escalating_templates_are_invalid_spec_naming_the_field(
    template: dict[str, Any], field: str, allowed_at: str, level: str
) -> None:
    if RANK[allowed_at] >= RANK[level]:
        pod = build(copy.deepcopy(template), level)
        assert pod["spec"]["containers"]
        return
    with pytest.raises(children.InvalidSpec) as err:
        build(copy.deepcopy(template), level)
    assert str(err.value).startswith(field + ": "), str(err.value)
    assert "--pod-security" in str(err.value)


def test_privileged_level_uses_the_templates_account_and_node() -> None:
    pod = build({"serviceAccountName": "builder", "nodeName": "n1", "automountServiceAccountToken": False,
                 "hostNetwork": True}, PRIVILEGED)
    spec = pod["spec"]
    assert spec["serviceAccountName"] == "builder" and spec["nodeName"] == "n1"
    assert spec["automountServiceAccountToken"] is False and spec["hostNetwork"] is True
    # even there, our defaults fill what the template left unset
    assert spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    # but not one the API refuses next to privileged: true
    pod = build({"containers": [{"name": "agent", "securityContext": {"privileged": True}}]}, PRIVILEGED)
    sc = pod["spec"]["containers"][0]["securityContext"]
    assert sc["privileged"] is True and "allowPrivilegeEscalation" not in sc and sc["capabilities"] == {"drop": ["ALL"]}


def test_own_service_account_name_in_the_template_is_fine() -> None:
    assert build({"serviceAccountName": "a1-agent"})["spec"]["serviceAccountName"] == "a1-agent"


@pytest.mark.parametrize(("template", "spec", "message"), [
    ({"containers": [{"name": "x", "image": "a"}, {"name": "x", "image": "b"}]}, {},
     "spec.podTemplate.spec.containers[1].name: Duplicate value: 'x'"),
    ({"initContainers": [{"name": "x", "image": "a"}], "containers": [{"name": "x", "image": "b"}]}, {},
     "spec.podTemplate.spec.containers[0].name: Duplicate value: 'x'"),
    ({"initContainers": [{"name": "agent", "image": "a"}]}, {},
     "spec.podTemplate.spec.initContainers[0].name: Duplicate value: 'agent'"),
    ({"volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]}, {},
     "spec.podTemplate.spec.volumes[1].name: Duplicate value: 'v'"),
    ({"volumes": [{"name": "agent-prompt", "emptyDir": {}}]}, {},
     "spec.podTemplate.spec.volumes[0].name: the volume name 'agent-prompt' is the controller's"),
    ({}, {"resources": {"limits": {"cpu": "lots"}}}, "spec.resources.limits.cpu: 'lots' is not a quantity"),
    ({}, {"resources": {"requests": {"memory": -1}}}, "spec.resources.requests.memory: must not be negative"),
    ({"containers": [{"name": "side", "image": "x", "resources": {"limits": {"memory": "1GB"}}}]}, {},
     "spec.podTemplate.spec.containers[0].resources.limits.memory: '1GB' is not a quantity"),
    ({"containers": [{"name": "agent", "resources": {"requests": {"cpu": True}}}]}, {},
     "spec.podTemplate.spec.containers[0].resources.requests.cpu: must be a quantity"),
    ({"overhead": {"cpu": "x"}}, {}, "spec.podTemplate.spec.overhead.cpu: 'x' is not a quantity"),
    ({"ephemeralContainers": [{"name": "debug", "image": "x"}]}, {},
     "spec.podTemplate.spec.ephemeralContainers: cannot be set"),
    ({"containers": [{"name": "agent", "env": "A=1"}]}, {}, "spec.podTemplate.spec.containers[0].env must be a list"),
    ({"containers": [{"name": "agent", "securityContext": {"capabilities": ["ALL"]}}]}, {},
     "spec.podTemplate.spec.containers[0].securityContext.capabilities must be an object"),
    ({"containers": [{"name": "side"}]}, {}, "spec.podTemplate.spec.containers[0].image: Required value"),
    ({"serviceAccountName": 7}, {}, "spec.podTemplate.spec.serviceAccountName must be a string"),
])
def test_hostile_or_broken_shapes_are_invalid_spec(template: dict[str, Any], spec: dict[str, Any], message: str) -> None:
    with pytest.raises(children.InvalidSpec) as err:
        build(template, **spec)
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize("depth", [40, 800, 5000])
def test_deep_nesting_is_invalid_spec_not_recursion_error(depth: int) -> None:
    deep: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        deep = {"x": deep}
    with pytest.raises(children.InvalidSpec) as err:
        build({"affinity": deep})
    assert str(err.value).startswith("spec.podTemplate.spec.affinity.x.x.x...: nested more than 32 levels deep")


def test_a_real_depth_is_fine() -> None:
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
        "weight": 1, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["agent"]}]}}}]}}
    assert build({"affinity": affinity})["spec"]["affinity"] == affinity


@pytest.mark.parametrize("value", ["1", "500m", "1.5Gi", "2e3", "+1", ".5", 1, 0.25, "0"])
def test_valid_quantities(value: Any) -> None:
    assert podsecurity.quantity_error(value) is None


@pytest.mark.parametrize("value", ["lots", "1GB", "1 Gi", "", "1.2.3", None, [1], "-1"])
def test_invalid_quantities(value: Any) -> None:
    assert podsecurity.quantity_error(value) is not None
