"""The shipped CRD, chart and CLI against the product contract kept in data/contract.yaml: every
field with its default and limits (and a description saying them, for `kubectl explain`), the
printer columns, the status write policy, the run flags, the child labels and the finalizer."""

from __future__ import annotations

import re
from typing import Any

import pytest

from controller import FINALIZER, names

from .shiputil import CONTRACT, ROOT, load_yaml_docs

API = CONTRACT["api"]


def crd() -> dict[str, Any]:
    (doc,) = load_yaml_docs(ROOT / "manifests" / "crd.yaml")
    return doc


def version() -> dict[str, Any]:
    (v,) = [v for v in crd()["spec"]["versions"] if v["storage"]]
    return v


def node(root: dict[str, Any], dotted: str) -> dict[str, Any]:
    cur = root
    for part in dotted.split("."):
        cur = cur["properties"][part]
    return cur


def test_names() -> None:
    spec = crd()["spec"]
    assert spec["group"] == API["group"] and spec["scope"] == API["scope"]
    assert version()["name"] == API["version"] and version()["served"] and "status" in version()["subresources"]
    n = spec["names"]
    assert (n["kind"], n["plural"], n["singular"], n["shortNames"]) == (
        API["kind"], API["plural"], API["singular"], API["shortNames"])
    assert crd()["metadata"]["name"] == f"{API['plural']}.{API['group']}"


def test_printer_columns_keep_the_contracts_order() -> None:
    columns = version()["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert [c for c in default if c in API["printerColumns"]] == API["printerColumns"]
    by = {c["name"]: c for c in columns}
    assert by["Reason"]["jsonPath"] == ".status.reason" and not by["Reason"].get("priority")
    wide = {c["name"]: c["jsonPath"] for c in columns if c.get("priority") == 1}
    assert wide == {"Node": ".status.nodeName", "Trigger": ".status.cleanup.trigger",
                    "Archived": ".status.cleanup.archivedBytes", "Finished": ".status.completionTime"}
    assert by["Finished"]["type"] == "date" and by["Age"]["type"] == "date"
    names_ = [c["name"] for c in columns]
    assert names_.index("Age") < min(names_.index(w) for w in wide), "wide columns come after Age"
    schema = version()["schema"]["openAPIV3Schema"]
    for c in columns:
        path = c["jsonPath"].lstrip(".")
        if not path.startswith("metadata."):
            node(schema, path)  # every column shows a field of the schema


@pytest.mark.parametrize("section", ["spec", "status"])
def test_fields_defaults_and_limits(section: str) -> None:
    schema = version()["schema"]["openAPIV3Schema"]
    root = schema["properties"][section]
    for field, rules in API[section].items():
        n = node(root, field)
        for key in ("default", "minimum", "maximum", "enum", "maxLength", "minLength", "maxItems"):
            if key in rules:
                assert n.get(key) == rules[key], (field, key, n.get(key))
        if rules.get("required"):
            parent = field.rsplit(".", 1)[0] if "." in field else None
            required = (node(root, parent) if parent else root).get("required", [])
            assert field.rsplit(".", 1)[-1] in required, field


def test_every_field_is_described_with_its_default_and_limits() -> None:
    """`kubectl explain agent.spec...` must say what a field does, its default and its limits."""
    schema = version()["schema"]["openAPIV3Schema"]
    missing = []

    def walk(n: dict[str, Any], path: str) -> None:
        for key, child in (n.get("properties") or {}).items():
            p = f"{path}.{key}" if path else key
            if p == "metadata":
                continue
            text = child.get("description", "")
            if not text:
                missing.append(p)
            default = child.get("default")
            shown = " ".join(f"{k}: {v}" for k, v in default.items()) if isinstance(default, dict) else str(default)
            if "default" in child and shown.lower() not in text.lower() and default not in ({}, []):
                missing.append(f"{p} (default {child['default']} not in the description)")
            for limit in ("minimum", "maximum", "maxLength"):
                if limit in child and not re.search(rf"\b{child[limit]}\b|{child[limit] // 1024} KiB", text):
                    missing.append(f"{p} ({limit} {child[limit]} not in the description)")
            walk(child, p)
            if "items" in child:
                walk(child["items"], p + "[]")

    walk(schema, "")
    assert not missing, missing


def test_root_rule_keeps_a_terminal_phase() -> None:
    schema = version()["schema"]["openAPIV3Schema"]
    (rule,) = schema["x-kubernetes-validations"]
    for phase in API["terminalPhases"]:
        assert f"'{phase}'" in rule["rule"]
    assert "!has(oldSelf.status)" in rule["rule"] and "has(self.status)" in rule["rule"]
    assert rule["fieldPath"] == ".status.phase"
    assert "x-kubernetes-validations" not in schema["properties"]["status"], "the root rule replaces it"
    spec_rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    assert any("terminate" in r["rule"] for r in spec_rules)


def test_status_policy_fields_exist_in_the_crd() -> None:
    status = version()["schema"]["openAPIV3Schema"]["properties"]["status"]
    writers = CONTRACT["statusWriters"]
    for field in writers["controllerOnly"] + writers["anyone"]:
        assert field in status["properties"], field
    assert set(writers["phasesAnyoneMaySet"]) < set(status["properties"]["phase"]["enum"])


def test_finalizer_and_child_labels() -> None:
    assert FINALIZER == API["finalizer"]
    labels = CONTRACT["childLabels"]
    assert (names.MANAGED_BY_LABEL, names.MANAGED_BY_VALUE) == ("app.kubernetes.io/managed-by",
                                                                 labels["app.kubernetes.io/managed-by"])
    assert names.AGENT_LABEL == labels["agent"] and names.AGENT_UID_LABEL == labels["agentUid"]


def test_run_flags() -> None:
    cli = pytest.importorskip("controller.cli")
    parser = cli.build_parser()
    run = next(a for a in parser._actions if a.dest and a.choices and "run" in a.choices).choices["run"]
    actions = {o: a for a in run._actions for o in a.option_strings}
    wanted = CONTRACT["commands"]["agent-controller run"]
    missing = [f for f in wanted if f not in actions]
    if set(missing) - {"--pod-security", "--leader-election"}:
        pytest.fail(f"agent-controller run lacks {missing}")
    if missing:
        pytest.skip(f"controller.cli has no {', '.join(missing)} yet")
    for flag, rules in wanted.items():
        action = actions[flag]
        if "choices" in rules:
            assert list(action.choices) == rules["choices"], flag
        if "default" in rules and not rules.get("env"):
            assert action.default == rules["default"], flag


def test_pod_security_levels_are_the_chart_values() -> None:
    import json

    schema = json.loads((ROOT / "helm" / "agent-controller" / "values.schema.json").read_text())
    assert schema["properties"]["podSecurity"]["enum"] == CONTRACT["podSecurityLevels"]
    from controller import podsecurity

    assert sorted(podsecurity.LEVELS) == sorted(CONTRACT["podSecurityLevels"])


def test_minimum_kubernetes_version() -> None:
    import yaml

    chart = yaml.safe_load((ROOT / "helm" / "agent-controller" / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={API['minimumKubernetes']}.0-0"
    for doc in ("README.md", "docs/install.md"):
        assert f"Kubernetes {API['minimumKubernetes']}" in (ROOT / doc).read_text(), doc
