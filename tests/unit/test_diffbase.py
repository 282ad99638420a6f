"""The controller's diff-base storage builds exactly the essence kopf's own does (only cheaper)."""

from __future__ import annotations

import copy
import json

import kopf
import pytest

from controller import GROUP
from controller.handlers import LeanDiffBaseStorage

KEY = "last-handled-configuration"

BODIES = [
    {"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
     "metadata": {"name": "a", "namespace": "ns", "uid": "u", "resourceVersion": "7", "generation": 2,
                  "labels": {"team": "x"}, "finalizers": ["agentcontroller.dev/cleanup"],
                  "annotations": {f"{GROUP}/{KEY}": '{"spec":{}}\n', f"{GROUP}/kopf-managed": "yes",
                                  "kopf.zalando.org/last-handled-configuration": "{}",
                                  "kubectl.kubernetes.io/last-applied-configuration": "{}", "note": "kept"},
                  "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
     "spec": {"image": "i", "prompt": "p" * 100, "env": [{"name": "A", "value": "1"}],
              "cleanup": {"logs": "Archive", "gracePeriodSeconds": 5}, "podTemplate": {"spec": {"x": [1, {"y": None}]}}},
     "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
    {"apiVersion": "v1", "kind": "Pod",
     "metadata": {"name": "p", "uid": "u2", "labels": {"app.kubernetes.io/managed-by": "agent-controller"},
                  "ownerReferences": [{"kind": "Agent", "name": "a", "uid": "u"}]},
     "spec": {"containers": [{"name": "agent", "image": "i", "env": [{"name": "B", "value": "2"}]}]},
     "status": {"phase": "Running"}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare"}},
]


@pytest.mark.parametrize("body", BODIES[:1])
@pytest.mark.parametrize("extra", [[], [("spec",)], [("spec",), ("status", "phase")], [("status",)]])
def test_same_essence_as_kopf(body: dict, extra: list) -> None:
    theirs = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key=KEY)
    ours = LeanDiffBaseStorage(prefix=GROUP, key=KEY)
    before = copy.deepcopy(body)
    expected = theirs.build(body=kopf.Body(copy.deepcopy(body)), extra_fields=extra)
    got = ours.build(body=kopf.Body(body), extra_fields=extra)
    assert got == expected
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert body == before                      # the body is never modified
    progress = kopf.AnnotationsProgressStorage(prefix=GROUP)
    assert progress.clear(essence=got) == progress.clear(essence=expected)
    assert body == before


@pytest.mark.parametrize("body", BODIES[1:])
def test_no_essence_for_pods(body: dict) -> None:
    """Pods have no change-detecting handler: kopf computes their essence and never uses it."""
    assert LeanDiffBaseStorage(prefix=GROUP, key=KEY).build(body=kopf.Body(body), extra_fields=[]) == {}


def test_pods_have_no_change_handlers() -> None:
    from kopf._cogs.structs import references

    from controller.handlers import registry

    pods = references.Resource("", "v1", "pods", namespaced=True)
    agents = references.Resource(GROUP, "v1alpha1", "agents", namespaced=True)
    assert not registry._changing.has_handlers(resource=pods)
    assert not registry._spawning.has_handlers(resource=pods)
    assert registry._changing.has_handlers(resource=agents)
