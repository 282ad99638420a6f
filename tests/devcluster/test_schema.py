"""StructuralSchema against the real Agent CRD schema: prune, default, validate, CEL rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller.devcluster.schema import FieldError, SchemaError, StructuralSchema

CRD = Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"


@pytest.fixture(scope="module")
def schema() -> StructuralSchema:
    crd = yaml.safe_load(CRD.read_text())
    return StructuralSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def agent(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentcontroller.dev/v1alpha1",
        "kind": "Agent",
        "metadata": {"name": "a1", "namespace": "ns", "labels": {"x": "y"}, "finalizers": ["f"]},
        "spec": {"image": "img:1", **spec},
    }


def full_agent() -> dict[str, Any]:
    obj = agent(
        command=["run"],
        env=[
            {"name": "A", "value": "1"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
        ],
        prompt="hi",
        resources={"limits": {"cpu": "1"}},
        podTemplate={"nodeSelector": {"a": "b"}},
        activeDeadlineSeconds=60,
        terminate=False,
        cleanup={"logs": "Archive", "gracePeriodSeconds": 5, "delaySeconds": 0},
    )
    obj["status"] = {
        "phase": "Running",
        "reason": "Started",
        "progress": 10,
        "podName": "a1-agent",
        "startTime": "2024-01-01T00:00:00Z",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:01Z"}],
        "cleanup": {"state": "Pending", "errors": []},
    }
    return obj


def messages(errs: list[FieldError]) -> list[str]:
    return [e.message for e in errs]


# --- validation -------------------------------------------------------------------------------


def test_full_agent_is_valid(schema: StructuralSchema) -> None:
    obj = full_agent()
    assert schema.validate(obj) == []
    assert schema.validate(obj, copy.deepcopy(obj)) == []


def test_missing_image_is_required(schema: StructuralSchema) -> None:
    obj = agent()
    del obj["spec"]["image"]
    errs = schema.validate(obj)
    assert errs[0] == FieldError("spec.image", "FieldValueRequired", "spec.image: Required value")
    # as in kube-apiserver, the blocking schema error keeps the CEL rules from running
    assert errs[-1].message.startswith("<nil>: Invalid value: null: some validation rules were not checked")


def test_missing_spec_is_required(schema: StructuralSchema) -> None:
    obj = agent()
    del obj["spec"]
    assert messages(schema.validate(obj))[0] == "spec: Required value"


def test_empty_image_violates_min_length(schema: StructuralSchema) -> None:
    errs = schema.validate(agent(image=""))
    assert messages(errs) == [
        'spec.image: Invalid value: "": spec.image in body should be at least 1 chars long'
    ]
    assert errs[0].type == "FieldValueInvalid" and errs[0].field == "spec.image"


def test_negative_grace_period(schema: StructuralSchema) -> None:
    errs = schema.validate(agent(cleanup={"gracePeriodSeconds": -1}))
    assert messages(errs) == [
        (
            "spec.cleanup.gracePeriodSeconds: Invalid value: -1: "
            "spec.cleanup.gracePeriodSeconds in body should be greater than or equal to 0"
        )
    ]


def test_progress_above_maximum(schema: StructuralSchema) -> None:
    obj = agent()
    obj["status"] = {"progress": 150}
    assert messages(schema.validate(obj)) == [
        "status.progress: Invalid value: 150: status.progress in body should be less than or equal to 100"
    ]


def test_unknown_phase(schema: StructuralSchema) -> None:
    obj = agent()
    obj["status"] = {"phase": "Bogus"}
    errs = schema.validate(obj)
    assert errs[0].type == "FieldValueNotSupported"
    assert errs[0].message == (
        'status.phase: Unsupported value: "Bogus": supported values: "Pending", "Running", "Working", '
        '"Blocked", "Completed", "Failed", "Error", "Terminated"'
    )


def test_type_errors(schema: StructuralSchema) -> None:
    obj = agent(image=5, terminate=None)
    obj["status"] = {"progress": "x", "observedGeneration": 2.0, "startTime": "yesterday"}
    got = messages(schema.validate(obj))
    assert 'spec.image: Invalid value: "integer": spec.image in body must be of type string: "integer"' in got
    assert (
        'spec.terminate: Invalid value: "null": spec.terminate in body must be of type boolean: "null"' in got
    )
    assert (
        'status.progress: Invalid value: "string": status.progress in body must be of type integer: "string"'
        in got
    )
    assert (
        'status.startTime: Invalid value: "yesterday": status.startTime in body must be of type date-time: "yesterday"'
        in got
    )
    assert not any("observedGeneration" in m for m in got)  # 2.0 is an integer in JSON
    assert schema.validate(agent(image=True))[0].type == "FieldValueTypeInvalid"


def test_pattern_max_length_max_items(schema: StructuralSchema) -> None:
    obj = agent()
    obj["status"] = {
        "reason": "not camel",
        "message": "m" * 32769,
        "conditions": [{"type": "T", "status": "True"}] * 17,
    }
    got = messages(schema.validate(obj))
    assert (
        "status.reason: Invalid value: \"not camel\": status.reason in body should match '^([A-Z][A-Za-z0-9]*)?$'"
        in got
    )
    assert "status.message: Too long: may not be longer than 32768" in got
    assert "status.conditions: Too many: 17: must have at most 16 items" in got


def test_array_item_paths(schema: StructuralSchema) -> None:
    obj = agent(env=[{"name": "A"}, {"value": "x"}])
    assert messages(schema.validate(obj))[0] == "spec.env[1].name: Required value"


def test_date_time_is_lenient(schema: StructuralSchema) -> None:
    obj = agent()
    for ts in (
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00.123456+02:00",
        "2024-01-01 00:00:00",
        "2024-01-01",
    ):
        obj["status"] = {"startTime": ts}
        assert schema.validate(obj) == [], ts


# --- pruning ----------------------------------------------------------------------------------


def test_prune_unknown_fields(schema: StructuralSchema) -> None:
    obj = agent(bogus=1, podTemplate={"anything": {"deep": [1]}}, resources={"limits": {"cpu": "1"}, "x": 1})
    obj["spec"]["env"] = [{"name": "A", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    obj["status"] = {
        "kopf": {"progress": {}},
        "phase": "Running",
        "conditions": [{"type": "T", "status": "True", "x": 1}],
    }
    obj["metadata"]["annotations"] = {"kopf.zalando.org/last-handled-configuration": "{}"}
    obj["extraTopLevel"] = True
    removed: list[str] = []
    schema.prune(obj, removed)
    assert "bogus" not in obj["spec"]
    assert "kopf" not in obj["status"]
    assert "extraTopLevel" not in obj
    assert obj["status"]["conditions"] == [{"type": "T", "status": "True"}]
    # preserved
    assert obj["spec"]["podTemplate"] == {"anything": {"deep": [1]}}
    assert obj["spec"]["resources"] == {"limits": {"cpu": "1"}}  # typed: requests, limits, claims
    assert obj["spec"]["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert obj["metadata"]["annotations"] and obj["metadata"]["labels"] == {"x": "y"}
    assert obj["apiVersion"] and obj["kind"] == "Agent"
    assert sorted(removed) == [
        "extraTopLevel", "spec.bogus", "spec.resources.x", "status.conditions[0].x", "status.kopf"
    ]


def test_prune_is_idempotent_and_keeps_valid_object(schema: StructuralSchema) -> None:
    obj = full_agent()
    before = copy.deepcopy(obj)
    schema.prune(obj)
    schema.prune(obj)
    assert obj == before


# --- defaulting -------------------------------------------------------------------------------


def test_defaults(schema: StructuralSchema) -> None:
    obj = agent()
    schema.default(obj)
    assert obj["spec"]["cleanup"] == {
        "logs": "Archive", "gracePeriodSeconds": 5, "delaySeconds": 0, "logTimeoutSeconds": 300
    }
    assert obj["spec"]["terminate"] is False and obj["spec"]["startDeadlineSeconds"] == 600
    assert obj["status"] == {"phase": "Pending"}  # the CRD defaults status itself (the root is its parent)


def test_defaults_fill_partial_object_and_keep_values(schema: StructuralSchema) -> None:
    obj = agent(cleanup={"logs": "Delete"}, terminate=True)
    schema.default(obj)
    assert obj["spec"]["cleanup"] == {
        "logs": "Delete", "gracePeriodSeconds": 5, "delaySeconds": 0, "logTimeoutSeconds": 300
    }
    assert obj["spec"]["terminate"] is True


def test_defaults_replace_non_nullable_null(schema: StructuralSchema) -> None:
    obj = agent(cleanup=None, terminate=None, prompt=None)
    schema.default(obj)
    assert obj["spec"]["cleanup"]["gracePeriodSeconds"] == 5
    assert obj["spec"]["terminate"] is False
    assert "prompt" not in obj["spec"]  # null without default is dropped


def test_default_values_are_not_shared(schema: StructuralSchema) -> None:
    a, b = agent(), agent()
    schema.default(a)
    schema.default(b)
    a["spec"]["cleanup"]["logs"] = "Delete"
    assert b["spec"]["cleanup"]["logs"] == "Archive"


# --- CEL --------------------------------------------------------------------------------------


def with_phase(phase: str | None) -> dict[str, Any]:
    obj = agent(terminate=False)
    obj["status"] = {} if phase is None else {"phase": phase}
    return obj


# The rule is at the object's root (a rule on `status` is not evaluated when `status` is removed),
# reported at status.phase. Same text as kube-apiserver 1.37 (tests/security checks it on both).
TERMINAL_MSG = (
    "status.phase: Forbidden: status.phase is terminal (Completed, Failed, Error or Terminated): "
    "it cannot change, and neither status nor status.phase can be removed"
)


def test_terminal_phase_cannot_change(schema: StructuralSchema) -> None:
    errs = schema.validate(with_phase("Running"), with_phase("Completed"))
    assert errs == [FieldError("status.phase", "FieldValueForbidden", TERMINAL_MSG)]
    assert messages(schema.validate(with_phase(None), with_phase("Failed"))) == [TERMINAL_MSG]


def test_terminal_phase_cannot_be_removed_with_the_status(schema: StructuralSchema) -> None:
    for phase in ("Completed", "Failed", "Error", "Terminated"):
        no_status = agent(terminate=False)  # what a merge patch {"status": null} leaves
        assert messages(schema.validate(no_status, with_phase(phase))) == [TERMINAL_MSG], phase


def test_terminal_phase_transitions_allowed(schema: StructuralSchema) -> None:
    assert schema.validate(with_phase("Completed"), with_phase("Completed")) == []
    assert schema.validate(with_phase("Completed"), with_phase("Running")) == []
    assert schema.validate(with_phase("Running"), None) == []  # no old: transition rules skipped
    assert schema.validate(with_phase("Running"), agent()) == []  # no old status
    assert schema.validate(agent(), with_phase("Running")) == []  # not terminal: may be removed
    assert schema.validate(agent(), agent()) == []


def test_new_spec_fields_and_limits(schema: StructuralSchema) -> None:
    got = messages(schema.validate(agent(startDeadlineSeconds=0, cleanup={"logTimeoutSeconds": 86401})))
    assert got == [
        "spec.startDeadlineSeconds: Invalid value: 0: spec.startDeadlineSeconds in body should be greater than or equal to 1",
        "spec.cleanup.logTimeoutSeconds: Invalid value: 86401: "
        "spec.cleanup.logTimeoutSeconds in body should be less than or equal to 86400",
    ]
    obj = agent()
    obj["status"] = {"output": {"bytes": -1, "stdoutBytes": 0, "stderrBytes": 0},
                     "cleanup": {"logsComplete": True}, "nodeName": "n1"}
    assert messages(schema.validate(obj)) == [
        "status.output.bytes: Invalid value: -1: status.output.bytes in body should be greater than or equal to 0"
    ]


def test_quantities_and_duplicate_containers_are_refused(schema: StructuralSchema) -> None:
    """As kube-apiserver 1.37 words them (read off a real one)."""
    got = messages(schema.validate(agent(resources={"limits": {"cpu": "lots"}, "requests": {"memory": 1}})))
    assert got == [
        "spec.resources.limits.cpu: Invalid value: \"lots\": spec.resources.limits.cpu in body should match "
        "'^(\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\\+|-)?(([0-9]+(\\.[0-9]*)?)|(\\.[0-9]+))))?$'"
    ]
    template = {"spec": {"containers": [{"name": "x", "image": "a"}, {"name": "x", "image": "b"}]}}
    assert messages(schema.validate(agent(podTemplate=template))) == [
        'spec.podTemplate.spec.containers[1]: Duplicate value: {"name":"x"}'
    ]
    template = {"spec": {"initContainers": [{"image": "a"}]}}
    assert messages(schema.validate(agent(podTemplate=template)))[0] == (
        "spec.podTemplate.spec.initContainers[0].name: Required value"
    )
    template = {"spec": {"containers": [{"name": "s", "resources": {"requests": {"memory": "1GB"}}}],
                         "hostNetwork": True, "anything": {"deep": 1}}}
    got = messages(schema.validate(agent(podTemplate=template)))
    assert len(got) == 1 and got[0].startswith("spec.podTemplate.spec.containers[0].resources.requests.memory: ")


def test_terminate_cannot_be_unset(schema: StructuralSchema) -> None:
    errs = schema.validate(agent(terminate=False), agent(terminate=True))
    assert messages(errs) == [
        "spec: Invalid value: spec.terminate cannot be set back to false once it is true"
    ]
    assert messages(schema.validate(agent(), agent(terminate=True))) == messages(errs)
    assert schema.validate(agent(terminate=True), agent(terminate=False)) == []
    assert schema.validate(agent(terminate=True), agent(terminate=True)) == []


CUSTOM: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.start < self.end", "message": "start must be before end"},
                {
                    "rule": "self.name.lowerAscii() == self.name",
                    "messageExpression": "'name ' + self.name + ' must be lowercase'",
                    "reason": "FieldValueForbidden",
                    "fieldPath": ".name",
                },
                {"rule": "self.ratio < 1.0"},
                {"rule": "self.timeout <= duration('1m')", "message": "timeout too long"},
                {"rule": "self.missing == 1"},
            ],
            "properties": {
                "start": {"type": "string", "format": "date-time"},
                "end": {"type": "string", "format": "date-time"},
                "name": {"type": "string"},
                "ratio": {"type": "number"},
                "timeout": {"type": "string", "format": "duration"},
                "items": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["k"],
                    "items": {
                        "type": "object",
                        "properties": {"k": {"type": "string"}, "v": {"type": "integer"}},
                        "x-kubernetes-validations": [
                            {"rule": "self.v >= oldSelf.v", "message": "v cannot decrease"}
                        ],
                    },
                },
                "counts": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "integer",
                        "minimum": 0,
                        "x-kubernetes-validations": [{"rule": "self != 7", "message": "no sevens"}],
                    },
                },
                "port": {"x-kubernetes-int-or-string": True, "pattern": "^[a-z]+$"},
                "maybe": {"type": "string", "nullable": True},
            },
        }
    },
}


def test_cel_features_on_custom_schema() -> None:
    s = StructuralSchema(CUSTOM)
    obj: dict[str, Any] = {
        "spec": {
            "start": "2024-01-02T00:00:00Z",
            "end": "2024-01-01T00:00:00Z",
            "name": "Abc",
            "ratio": 1,
            "timeout": "2m30s",
            "items": [{"k": "a", "v": 1}, {"k": "b", "v": 5}],
            "counts": {"x": 1, "y": 7},
            "port": 8080,
            "maybe": None,
        }
    }
    old = {"spec": {"items": [{"k": "b", "v": 6}]}}
    got = messages(s.validate(obj, old))
    assert got == [
        # as kube-apiserver 1.37: a failed rule shows no value on an object or a list, the value itself
        # on a scalar; an evaluation error shows the type; a map value's path is spec.counts[y]
        "spec: Invalid value: start must be before end",
        "spec.name: Forbidden: name Abc must be lowercase",
        "spec: Invalid value: failed rule: self.ratio < 1.0",
        "spec: Invalid value: timeout too long",
        'spec: Invalid value: "object": no such key: missing evaluating rule: self.missing == 1',
        "spec.items[1]: Invalid value: v cannot decrease",
        "spec.counts[y]: Invalid value: 7: no sevens",
    ]
    obj["spec"]["port"] = "HTTP"
    obj["spec"]["counts"]["x"] = -1
    got = messages(s.validate(obj))
    assert "spec.port: Invalid value: \"HTTP\": spec.port in body should match '^[a-z]+$'" in got
    assert (
        "spec.counts.x: Invalid value: -1: spec.counts.x in body should be greater than or equal to 0" in got
    )


def test_bad_rule_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        StructuralSchema({"type": "object", "x-kubernetes-validations": [{"rule": "self.a =="}]})


def test_rules_compiled_once(schema: StructuralSchema) -> None:
    from controller.devcluster import schema as mod

    n = len(mod._PROGRAMS)
    crd = yaml.safe_load(CRD.read_text())
    StructuralSchema(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
    assert len(mod._PROGRAMS) == n
