"""The Helm chart: lint, what it renders for each case of the values matrix, NOTES.txt, and the
values it rejects."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from .shiputil import (
    CHART,
    CONTRACT,
    MATRIX,
    NAMESPACE,
    ROOT,
    by_kind,
    helm_lint,
    helm_template,
    load_yaml_docs,
    one,
    render,
    render_notes,
)

FULLNAME = "agent-controller"
ARCHIVE_DIR = "/var/lib/agent-controller/archive"

# Exactly what the controller calls (issue #4); the RBAC sufficiency tests remove rules one by one.
EXPECTED_RULES = [
    {
        "apiGroups": ["agentcontroller.dev"],
        "resources": ["agents"],
        "verbs": ["get", "list", "watch", "patch", "delete"],
    },
    {"apiGroups": ["agentcontroller.dev"], "resources": ["agents/status"], "verbs": ["get", "patch"]},
    # blockOwnerDeletion on the children's ownerReferences (OwnerReferencesPermissionEnforcement)
    {"apiGroups": ["agentcontroller.dev"], "resources": ["agents/finalizers"], "verbs": ["update"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "create", "delete"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {
        "apiGroups": [""],
        "resources": ["configmaps", "serviceaccounts"],
        "verbs": ["get", "list", "create", "delete"],
    },
    {
        "apiGroups": ["rbac.authorization.k8s.io"],
        "resources": ["roles", "rolebindings"],
        "verbs": ["get", "list", "create", "delete"],
    },
    # core/v1 Events: created (the controller and kopf), patched to aggregate a repeat (the
    # controller's recorder); events.k8s.io is never used (tests/rbac: the scenarios pass without it).
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
]
LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": [FULLNAME],
     "verbs": ["get", "update"]},
]
POLICY = f"{FULLNAME}-status-writers"


CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding", "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deploy = one(docs, "Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    return c


def volume(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (v,) = [v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"] if v["name"] == name]
    return v


def flag_values(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


# --- lint ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_helm_lint_strict(case: str) -> None:
    proc = helm_lint(MATRIX[case])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    import tomllib

    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "agent-controller"
    assert chart["appVersion"] == version, (
        "Chart.yaml appVersion must be the package version of pyproject.toml"
    )


def test_every_matrix_case_renders_parseable_yaml() -> None:
    for case, values in MATRIX.items():
        docs = render(values)
        assert docs, case
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= set(doc), (case, doc)


# --- default install -------------------------------------------------------------------------------


def test_default_install_objects() -> None:
    docs = render()
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in docs)
    assert kinds == sorted(
        [
            ("ServiceAccount", FULLNAME),
            ("ClusterRole", FULLNAME),
            ("ClusterRoleBinding", FULLNAME),
            ("PersistentVolumeClaim", f"{FULLNAME}-archive"),
            ("Service", FULLNAME),
            ("ClusterRole", f"{FULLNAME}-ship"),
            ("ClusterRoleBinding", f"{FULLNAME}-ship"),
            ("Service", f"{FULLNAME}-ship"),
            ("Deployment", FULLNAME),
            ("ValidatingAdmissionPolicy", POLICY),
            ("ValidatingAdmissionPolicyBinding", POLICY),
        ]
    )
    for doc in docs:
        if doc["kind"] not in CLUSTER_SCOPED:
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["kind"]
        labels = doc["metadata"]["labels"]
        # The sweep reaps objects labelled managed-by=agent-controller: never the controller itself.
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_rbac_is_exactly_the_controllers_calls() -> None:
    docs = render()
    role = one(docs, "ClusterRole", FULLNAME)
    assert role["rules"] == EXPECTED_RULES
    binding = one(docs, "ClusterRoleBinding", FULLNAME)
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": FULLNAME,
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == FULLNAME
    for rule in role["rules"]:
        assert not {"escalate", "bind", "impersonate", "*"} & set(rule["verbs"]), rule
        assert "*" not in rule["resources"] and "secrets" not in rule["resources"], rule


def test_deployment_security_probes_resources() -> None:
    docs = render()
    deploy = one(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}, "one controller at a time without peering"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    c = container(docs)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["image"] == "agent-controller:0.1.0"
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 9102, "health": 8081, "ship": 9443}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts == {"archive": ARCHIVE_DIR, "tmp": "/tmp"}   # the ship CA lives on the archive volume
    assert volume(docs, "archive") == {
        "name": "archive",
        "persistentVolumeClaim": {"claimName": f"{FULLNAME}-archive"},
    }
    assert "emptyDir" in volume(docs, "tmp")


def test_default_controller_flags() -> None:
    args = container(render())["args"]
    assert "--all-namespaces" in args
    assert "--namespace" not in args and "--peering" not in args and "--leader-election" not in args
    assert flag_values(args, "--pod-security") == ["restricted"]
    assert flag_values(args, "--archive-dir") == [ARCHIVE_DIR]
    assert flag_values(args, "--metrics-port") == ["9102"]
    assert flag_values(args, "--health-port") == ["8081"]
    assert flag_values(args, "--sweep-interval") == ["60"]
    assert flag_values(args, "--log-format") == ["text"]


def test_flags_follow_values() -> None:
    values = {"sweepInterval": 15, "logFormat": "json", "metricsPort": 9200, "healthPort": 8181}
    docs = render(values)
    c = container(docs)
    args = c["args"]
    assert flag_values(args, "--sweep-interval") == ["15"]
    assert flag_values(args, "--log-format") == ["json"]
    assert flag_values(args, "--metrics-port") == ["9200"]
    assert flag_values(args, "--health-port") == ["8181"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"metrics": 9200, "health": 8181, "ship": 9443}
    svc = one(docs, "Service", FULLNAME)
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}
    ]


def test_controller_cli_accepts_the_rendered_arguments() -> None:
    """The chart's args parse with the real `agent-controller run` parser."""
    cli = pytest.importorskip("controller.cli")
    parser = cli.build_parser()
    run = next(a for a in parser._actions if a.dest and a.choices and "run" in a.choices).choices["run"]
    known = {o for a in run._actions for o in a.option_strings}
    missing = [f for f in ("--pod-security", "--leader-election") if f not in known]
    if missing:
        pytest.skip(f"controller.cli has no {', '.join(missing)} yet (the chart passes them)")
    for case in ("default", "watch-namespaces", "ha", "ha-namespaced", "baseline-no-status-policy"):
        args = container(render(MATRIX[case]))["args"]
        parsed = parser.parse_args(["run", *args])
        if case in ("watch-namespaces", "ha-namespaced"):
            assert parsed.namespace == ["team-a", "team-b"]
        assert parsed.leader_election is case.startswith("ha")
        assert parsed.pod_security == ("baseline" if case.startswith("baseline") else "restricted")


def test_pvc_kept_on_uninstall() -> None:
    pvc = one(render(), "PersistentVolumeClaim")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc["spec"]


def test_pvc_storage_class() -> None:
    pvc = one(
        render({"archive": {"persistence": {"storageClass": "fast", "size": "50Gi"}}}),
        "PersistentVolumeClaim",
    )
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    pvc = one(render({"archive": {"persistence": {"storageClass": "-"}}}), "PersistentVolumeClaim")
    assert pvc["spec"]["storageClassName"] == ""


def test_metrics_service() -> None:
    svc = one(render(), "Service", FULLNAME)
    assert svc["spec"]["ports"] == [
        {"name": "metrics", "port": 9102, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert svc["spec"]["selector"] == {
        "app.kubernetes.io/name": "agent-controller",
        "app.kubernetes.io/instance": "agent-controller",
    }


# --- matrix ----------------------------------------------------------------------------------------


def test_watch_namespaces_roles_only_there() -> None:
    docs = render(MATRIX["watch-namespaces"])
    # Only the ship endpoint's TokenReview grant is cluster-wide (TokenReviews are not namespaced).
    assert [r["metadata"]["name"] for r in by_kind(docs, "ClusterRole")] == [f"{FULLNAME}-ship"]
    assert [b["metadata"]["name"] for b in by_kind(docs, "ClusterRoleBinding")] == [f"{FULLNAME}-ship"]
    roles = by_kind(docs, "Role")
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for role in roles:
        assert role["rules"] == EXPECTED_RULES, "Roles and the ClusterRole come from one helper"
    for binding in bindings:
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": FULLNAME,
        }
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    args = container(docs)["args"]
    assert "--all-namespaces" not in args
    i = args.index("--namespace")
    assert args[i : i + 4] == ["--namespace", "team-a", "--namespace", "team-b"]


def test_existing_claim() -> None:
    docs = render(MATRIX["existing-claim"])
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert volume(docs, "archive")["persistentVolumeClaim"] == {"claimName": "my-archive"}


def test_persistence_disabled_uses_emptydir_and_warns() -> None:
    docs = render(MATRIX["no-persistence"])
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert "emptyDir" in volume(docs, "archive")
    notes = render_notes(MATRIX["no-persistence"])
    assert "WARNING" in notes and "emptyDir" in notes and "LOST" in notes
    assert "WARNING" not in render_notes()


def test_monitoring_objects() -> None:
    docs = render(MATRIX["monitoring"])
    sm = one(docs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    svc = one(docs, "Service", FULLNAME)
    for key, value in sm["spec"]["selector"]["matchLabels"].items():
        assert svc["metadata"]["labels"][key] == value, "the ServiceMonitor selects the metrics Service"
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}

    rule = one(docs, "PrometheusRule")
    plain = yaml.safe_load((ROOT / "deploy" / "prometheus" / "agent-controller-rules.yaml").read_text())
    assert rule["spec"] == plain, "PrometheusRule and the plain rules file come from one source"

    cm = one(docs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (key,) = cm["data"]
    assert key.endswith(".json")
    shipped = json.loads((ROOT / "deploy" / "grafana" / "agent-controller-dashboard.json").read_text())
    assert json.loads(cm["data"][key]) == shipped


def test_monitoring_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_alert_rules_follow_values() -> None:
    docs = render(
        {
            "prometheusRule": {"enabled": True, "job": "custom-job", "additionalAlertLabels": {"team": "ml"}},
            "sweepInterval": 30,
        }
    )
    rules = one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]
    by_name = {r["alert"]: r for r in rules}
    assert by_name["AgentControllerSweepNotSucceeding"]["expr"].endswith("> 90")
    assert by_name["AgentControllerSweepNotSucceeding"]["for"] == "1m"
    for r in rules:
        assert 'job="custom-job"' in r["expr"], r["alert"]
        assert r["labels"]["team"] == "ml"
        assert r["labels"]["severity"] in ("warning", "critical")


def test_alert_thresholds_follow_values() -> None:
    docs = render({"prometheusRule": {"enabled": True, "alerts": {
        "leakedForSeconds": 90, "cleanupStuckSeconds": 1800, "downForSeconds": 0, "incompleteLogsWindowSeconds": 7200}}})
    by_name = {r["alert"]: r for r in one(docs, "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert by_name["AgentControllerLeakedResources"]["for"] == "90s"
    assert "for more than 90s" in by_name["AgentControllerLeakedResources"]["annotations"]["summary"]
    assert by_name["AgentControllerCleanupsStuck"]["expr"].endswith("> 1800")
    assert "(more than 30m)" in by_name["AgentControllerCleanupsStuck"]["annotations"]["description"]
    assert by_name["AgentControllerDown"]["for"] == "0s"
    assert "[2h]" in by_name["AgentControllerIncompleteLogs"]["expr"]


def leader_election_role(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (role,) = [d for d in by_kind(docs, "Role") if d["metadata"]["name"] == f"{FULLNAME}-leader-election"]
    return role


def test_ha_leader_election() -> None:
    docs = render(MATRIX["ha"])
    deploy = one(docs, "Deployment")
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["type"] == "RollingUpdate"
    c = container(docs)
    assert "--leader-election" in c["args"] and "--peering" not in c["args"]
    env = {e["name"]: e for e in c["env"]}
    assert env["AGENT_CONTROLLER_LEASE_NAME"]["value"] == FULLNAME
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    role = leader_election_role(docs)
    assert role["metadata"]["namespace"] == NAMESPACE and role["rules"] == LEASE_RULES
    (binding,) = [d for d in by_kind(docs, "RoleBinding") if d["metadata"]["name"] == f"{FULLNAME}-leader-election"]
    assert binding["roleRef"]["name"] == f"{FULLNAME}-leader-election"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    assert one(docs, "ClusterRole", FULLNAME)["rules"] == EXPECTED_RULES, "no kopf peering rule any more"
    assert not {"ClusterKopfPeering", "KopfPeering"} & {d["kind"] for d in docs}
    assert one(docs, "PersistentVolumeClaim")["spec"]["accessModes"] == ["ReadWriteMany"]
    notes = render_notes(MATRIX["ha"])
    assert "High availability" in notes and f'Lease "{FULLNAME}"' in notes


def test_ha_namespaced_leader_election() -> None:
    docs = render(MATRIX["ha-namespaced"])
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in by_kind(docs, "Role")}
    assert set(roles) == {("team-a", FULLNAME), ("team-b", FULLNAME), (NAMESPACE, f"{FULLNAME}-leader-election")}
    assert roles[("team-a", FULLNAME)]["rules"] == EXPECTED_RULES
    assert "--leader-election" in container(docs)["args"]


def test_single_replica_has_no_lease_permissions() -> None:
    docs = render()
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    assert one(docs, "Deployment")["spec"]["strategy"] == {"type": "Recreate"}


def test_lease_name_values_stay_compatible() -> None:
    """peering.name of chart versions that used kopf peering still names the Lease."""
    base = MATRIX["ha"]
    for extra, name in (({"peering": {"name": "old-peering"}}, "old-peering"),
                        ({"leaderElection": {"leaseName": "my-lease"}, "peering": {"name": "old"}}, "my-lease")):
        docs = render({**base, **extra})
        env = {e["name"]: e.get("value") for e in container(docs)["env"]}
        assert env["AGENT_CONTROLLER_LEASE_NAME"] == name
        assert leader_election_role(docs)["rules"][1]["resourceNames"] == [name]


def test_only_the_agent_crd_is_shipped() -> None:
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == ["agents.agentcontroller.dev.yaml"]


def test_pod_security_value() -> None:
    for level in ("restricted", "baseline", "privileged"):
        args = container(render({"podSecurity": level}))["args"]
        assert flag_values(args, "--pod-security") == [level]
        assert f'level "{level}"' in render_notes({"podSecurity": level})


# --- the status ValidatingAdmissionPolicy -----------------------------------------------------------


def test_status_policy_lets_only_the_controller_write_its_fields() -> None:
    docs = render()
    policy = one(docs, "ValidatingAdmissionPolicy")
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [{
        "apiGroups": ["agentcontroller.dev"], "apiVersions": ["*"], "operations": ["UPDATE"],
        "resources": ["agents/status"]}]
    controller = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"
    assert spec["matchConditions"] == [{"name": "not-the-controller",
                                        "expression": f"request.userInfo.username != '{controller}'"}]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    writers = CONTRACT["statusWriters"]
    for field in writers["controllerOnly"]:
        assert f"'{field}'" in variables["controllerFields"], field
    for field in writers["anyone"]:
        assert f"'{field}'" in variables["agentFields"], field
    phases = spec["validations"][1]["expression"]
    for phase in writers["phasesAnyoneMaySet"]:
        assert f"'{phase}'" in phases
    assert "'Pending'" not in phases and "'Terminated'" not in phases
    for v in spec["validations"]:
        assert v["reason"] == "Forbidden" and "messageExpression" in v
    assert controller in spec["validations"][0]["messageExpression"]
    assert binding["spec"] == {"policyName": POLICY, "validationActions": ["Deny"]}


def test_status_policy_follows_values() -> None:
    docs = render({"serviceAccount": {"name": "ctl"}, "watchNamespaces": ["team-a"],
                   "statusPolicy": {"validationActions": ["Warn", "Audit"]}})
    policy = one(docs, "ValidatingAdmissionPolicy")
    assert "system:serviceaccount:agent-controller:ctl" in policy["spec"]["matchConditions"][0]["expression"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["validationActions"] == ["Warn", "Audit"]
    assert binding["spec"]["matchResources"] == {"namespaceSelector": {"matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]}}
    assert not {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} & {
        d["kind"] for d in render(MATRIX["baseline-no-status-policy"])}


# --- NOTES.txt -------------------------------------------------------------------------------------


def test_notes_first_agent_and_metrics() -> None:
    notes = render_notes()
    assert "kind: Agent" in notes and "apiVersion: agentcontroller.dev/v1alpha1" in notes
    assert "kubectl" in notes and "get agents" in notes
    assert "9102" in notes and "/metrics" in notes
    assert f"service/{FULLNAME}" in notes
    assert "{{" not in notes


def test_notes_upgrade_and_uninstall_steps() -> None:
    notes = render_notes()
    assert "never updates the CRD" in notes and "kubectl apply --server-side --force-conflicts" in notes
    delete, uninstall = "kubectl delete agents --all --all-namespaces --wait", "helm uninstall agent-controller"
    assert delete in notes and uninstall in notes and notes.index(delete) < notes.index(uninstall)
    assert "agentcontroller.dev/cleanup" in notes and "agent-controller uninstall --release-finalizers" in notes


def test_notes_first_agent_is_a_valid_agent(crd_schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    notes = render_notes()
    block = notes.split("<<'YAML'\n", 1)[1].split("YAML\n", 1)[0]
    agent = yaml.safe_load("\n".join(line[5:] for line in block.splitlines()))
    jsonschema.validate(agent, crd_schema)


# --- values.schema.json ----------------------------------------------------------------------------

REJECTED = {
    "negative sweep interval": ({"sweepInterval": -5}, ["sweepInterval", "greater than or equal to 1"]),
    "unknown log format": ({"logFormat": "xml"}, ["logFormat", '"text", "json"']),
    "unknown pod security level": ({"podSecurity": "strict"}, ["podSecurity", '"restricted", "baseline", "privileged"']),
    "Deny and Warn together": ({"statusPolicy": {"validationActions": ["Deny", "Warn"]}},
                               ["statusPolicy.validationActions"]),
    "non-string image tag": ({"image": {"tag": 1.5}}, ["image.tag", "Expected: string"]),
    "unknown value": ({"sweepIntervall": 30}, ["sweepIntervall", "not allowed"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_values_schema_rejects(case: str) -> None:
    values, fragments = REJECTED[case]
    for proc in (helm_lint(values), helm_template(values, check=False)):
        output = proc.stdout + proc.stderr
        assert proc.returncode != 0, f"{case}: accepted\n{output}"
        assert "values don't meet the specifications of the schema" in output, output
        for fragment in fragments:
            assert fragment in output, f"{case}: {fragment!r} not in\n{output}"


ACCEPTED = {
    "string image tag": {"image": {"tag": "1.5"}},
    "replicas 2 with ReadWriteMany": MATRIX["ha"],
    "replicas 2 with an existing claim": {
        "replicas": 2,
        "archive": {"persistence": {"existingClaim": "shared"}},
    },
    "replicas 2 without persistence": {"replicas": 2, "archive": {"persistence": {"enabled": False}}},
    "json logs": {"logFormat": "json"},
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_values_schema_accepts(case: str) -> None:
    proc = helm_lint(ACCEPTED[case])
    assert proc.returncode == 0, proc.stdout + proc.stderr


REPLICAS_MESSAGE = (
    "replicas=2: more than one replica is supported (the replicas elect a leader through a Lease, "
    "--leader-election), but every replica mounts the archive volume, and the chart's claim is ReadWriteOnce. "
    "Also set archive.persistence.accessModes={ReadWriteMany}"
)


@pytest.mark.parametrize("extra", [(), ("--skip-schema-validation",)])
def test_replicas_with_a_read_write_once_claim_says_what_to_change(extra: tuple[str, ...]) -> None:
    """`--set replicas=2` alone: refused, saying what else to set (not "Must be less than or equal to 1")."""
    proc = helm_template({"replicas": 2}, *extra, check=False)  # what `helm install` runs
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert REPLICAS_MESSAGE in output, output
    assert "existingClaim" in output and "Must be less than or equal to 1" not in output
    lint = helm_lint({"replicas": 2}, *extra)  # lint reports a template's fail() as [INFO]
    assert REPLICAS_MESSAGE in lint.stdout + lint.stderr


def test_the_ship_endpoint_is_exposed_with_what_agent_pods_need() -> None:
    docs = render()
    c = container(docs)
    assert flag_values(c["args"], "--ship-port") == ["9443"]
    assert flag_values(c["args"], "--ship-url") == [f"https://{FULLNAME}-ship.{NAMESPACE}.svc:9443/v1/ship"]
    # without a Secret, the self-made CA on the archive volume (one for every replica)
    assert flag_values(c["args"], "--ship-tls-dir") == [f"{ARCHIVE_DIR}/.ship-tls"]
    svc = one(docs, "Service", f"{FULLNAME}-ship")
    assert svc["spec"]["ports"] == [{"name": "ship", "port": 9443, "targetPort": "ship", "protocol": "TCP"}]
    assert one(docs, "ClusterRole", f"{FULLNAME}-ship")["rules"] == [
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    volumes = {v["name"]: v for v in one(docs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert "ship-tls" not in volumes
    with_secret = render({"ship": {"tls": {"secretName": "ship-cert"}, "networkPolicy": {"enabled": True}}})
    volumes = {v["name"]: v for v in one(with_secret, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["ship-tls"] == {"name": "ship-tls", "secret": {"secretName": "ship-cert"}}
    assert flag_values(container(with_secret)["args"], "--ship-tls-dir") == ["/etc/agent-controller/ship-tls"]
    assert {"name": "ship-tls", "mountPath": "/etc/agent-controller/ship-tls", "readOnly": True} in \
        container(with_secret)["volumeMounts"]
    policy = one(with_secret, "NetworkPolicy")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"] == {
        "matchLabels": {"app.kubernetes.io/managed-by": "agent-controller"}}
    off = render({"ship": {"enabled": False}})
    assert not flag_values(container(off)["args"], "--ship-port")
    assert [d["metadata"]["name"] for d in by_kind(off, "ClusterRole")] == [FULLNAME]
