"""Every rendered object is valid Kubernetes: kubernetes-validate --strict (no unknown fields) for
Kubernetes 1.30 (the minimum: ValidatingAdmissionPolicy v1) and 1.37; prometheus-operator kinds against a minimal schema of our own; the
rendered output and the shipped YAML pass yamllint."""

from __future__ import annotations

import json
import pathlib
import tempfile

import pytest
import yaml

from .shiputil import (
    CHART,
    DATA,
    MATRIX,
    MONITORING_KINDS,
    ROOT,
    load_yaml_docs,
    render,
    render_text,
    run,
    tool,
)

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
SHIPPED_MANIFESTS = ["crd.yaml", "namespace.yaml", "archive-pvc.yaml", "install.yaml"]


def _write_cases(tmp: pathlib.Path) -> list[pathlib.Path]:
    files = []
    for case, values in MATRIX.items():
        docs = [d for d in render(values) if d["kind"] not in MONITORING_KINDS]
        path = tmp / f"{case}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        files.append(path)
    return files


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_validate_strict(version: str) -> None:
    validate = tool("kubernetes-validate")
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_cases(pathlib.Path(tmp))
        files += sorted((CHART / "crds").glob("*.yaml"))
        files += [ROOT / "manifests" / name for name in SHIPPED_MANIFESTS]
        proc = run([validate, "--strict", "--kubernetes-version", version, *map(str, files)], check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "ERROR" not in output, output
    # Everything was actually checked: no "couldn't find schema" warnings for built-in kinds.
    assert "Couldn't find schema" not in output, output
    assert output.count("passed for resource") >= 40, output


def test_monitoring_kinds_match_minimal_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    docs = render(MATRIX["monitoring"])
    seen = set()
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS:
            schema = json.loads((DATA / MONITORING_KINDS[doc["kind"]]).read_text())
            jsonschema.validate(doc, schema)
            seen.add(doc["kind"])
    assert seen == set(MONITORING_KINDS)


def test_minimal_monitoring_schemas_are_not_vacuous() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    rule = next(d for d in render(MATRIX["monitoring"]) if d["kind"] == "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "ten minutes"
    schema = json.loads((DATA / "prometheusrule.schema.json").read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, schema)


YAMLLINT_CONFIG = """
extends: default
rules:
  line-length: {max: 240}  # long PromQL and the dashboard JSON embedded in its ConfigMap
  indentation: {spaces: consistent, indent-sequences: whatever}
  document-start: disable
  comments: {min-spaces-from-content: 1}
  truthy: {check-keys: false}
"""


def test_yamllint_rendered_and_shipped_yaml() -> None:
    yamllint = tool("yamllint")
    with tempfile.TemporaryDirectory() as tmp:
        rendered = []
        for case in ("default", "monitoring", "ha-namespaced"):
            path = pathlib.Path(tmp) / f"rendered-{case}.yaml"
            path.write_text(render_text(MATRIX[case]))
            rendered.append(path)
        shipped = [
            *(ROOT / "manifests" / name for name in SHIPPED_MANIFESTS),
            ROOT / "deploy" / "prometheus" / "agent-controller-rules.yaml",
            ROOT / "deploy" / "prometheus" / "tests.yaml",
            CHART / "values.yaml",
            CHART / "Chart.yaml",
            *sorted((ROOT / "manifests" / "examples").glob("*.yaml")),
        ]
        proc = run([yamllint, "--strict", "-d", YAMLLINT_CONFIG, *map(str, rendered + shipped)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_install_yaml_is_the_default_install() -> None:
    docs = load_yaml_docs(ROOT / "manifests" / "install.yaml")
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "ClusterRole",            # the ship endpoint's (TokenReview), its binding and Service
            "ClusterRoleBinding",
            "Service",
            "Deployment",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ]
    )
    # the same objects as the chart's default install, but the claim
    chart = {(d["kind"], d["metadata"]["name"]): d for d in render() if d["kind"] != "PersistentVolumeClaim"}
    assert {(d["kind"], d["metadata"]["name"]): d for d in docs} == chart


def test_delete_install_yaml_never_deletes_the_archive() -> None:
    """`kubectl delete -f manifests/install.yaml` deletes neither the claim nor the namespace that
    holds it (deleting a namespace deletes its claims): both are files of their own."""
    kinds = {d["kind"] for d in load_yaml_docs(ROOT / "manifests" / "install.yaml")}
    assert not kinds & {"Namespace", "PersistentVolumeClaim"}
    (ns,) = load_yaml_docs(ROOT / "manifests" / "namespace.yaml")
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "agent-controller"
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (pvc,) = load_yaml_docs(ROOT / "manifests" / "archive-pvc.yaml")
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["namespace"] == "agent-controller"
    deploy = next(d for d in load_yaml_docs(ROOT / "manifests" / "install.yaml") if d["kind"] == "Deployment")
    claims = [v["persistentVolumeClaim"]["claimName"] for v in deploy["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == [pvc["metadata"]["name"]]
    assert "persistentVolumeReclaimPolicy" in (ROOT / "manifests" / "archive-pvc.yaml").read_text()
    assert sorted(p.name for p in (ROOT / "manifests").glob("*.yaml")) == sorted(SHIPPED_MANIFESTS)
