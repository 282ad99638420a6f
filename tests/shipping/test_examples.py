"""The example Agents in manifests/examples/ are valid against the CRD's openAPIV3Schema."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from .shiputil import ROOT, load_yaml_docs

EXAMPLES = ROOT / "manifests" / "examples"
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def examples() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        (doc,) = load_yaml_docs(path)
        found[path.name] = doc
    return found


def test_the_expected_examples_exist() -> None:
    found = examples()
    assert "agent.yaml" in found, "manifests/examples/agent.yaml is the main example"
    specs = [d["spec"] for d in found.values()]
    assert any(set(s) == {"image", "command"} for s in specs), "a minimal example"
    assert any("prompt" in s for s in specs)
    assert any("activeDeadlineSeconds" in s for s in specs)
    assert any(s.get("cleanup", {}).get("logs") == "Delete" for s in specs)


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.yaml")))
def test_example_is_a_valid_agent(name: str, crd_schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    doc = examples()[name]
    assert doc["apiVersion"] == "agentcontroller.dev/v1alpha1"
    assert doc["kind"] == "Agent"
    assert DNS_1123_SUBDOMAIN.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 63
    assert "status" not in doc
    jsonschema.Draft7Validator(crd_schema).validate(doc)


def test_names_are_distinct() -> None:
    names = [d["metadata"]["name"] for d in examples().values()]
    assert len(names) == len(set(names))


def test_validation_is_not_vacuous(crd_schema: dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    good = examples()["agent.yaml"]
    for mutate in (
        lambda a: a["spec"].pop("image"),
        lambda a: a["spec"].__setitem__("image", ""),
        lambda a: a["spec"]["cleanup"].__setitem__("logs", "Keep"),
        lambda a: a["spec"]["cleanup"].__setitem__("gracePeriodSeconds", 7200),
        lambda a: a["spec"].__setitem__("activeDeadlineSeconds", 0),
    ):
        bad = copy.deepcopy(good)
        mutate(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(crd_schema).validate(bad)
