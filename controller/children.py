"""Pure builders of an agent's child objects (SPEC §3). No I/O.

Every child carries the managed-by / agent / agent-uid labels and a controller ownerReference
(set with `kopf.adopt`-equivalent semantics, done here so the builders stay pure and testable).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from . import GROUP, KIND, VERSION
from .api import DEFAULT_GRACE_SECONDS
from .names import (
    POD_CONTAINER,
    PROMPT_FILE,
    PROMPT_KEY,
    PROMPT_MOUNT_DIR,
    child_labels,
    credentials_name,
    pod_name,
    prompt_configmap_name,
)

PROMPT_VOLUME = "agent-prompt"


class InvalidSpec(ValueError):
    """The Agent's spec passed the API schema but cannot be turned into a pod."""


def owner_reference(agent: Mapping[str, Any]) -> dict[str, Any]:
    meta = agent["metadata"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(agent: Mapping[str, Any], name: str) -> dict[str, Any]:
    meta = agent["metadata"]
    return {
        "name": name,
        "namespace": meta["namespace"],
        "labels": child_labels(meta["name"], meta["uid"]),
        "ownerReferences": [owner_reference(agent)],
    }


def prompt_configmap(agent: Mapping[str, Any]) -> dict[str, Any] | None:
    prompt = (agent.get("spec") or {}).get("prompt")
    if prompt is None:
        return None
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(agent, prompt_configmap_name(agent["metadata"]["name"])),
        "data": {PROMPT_KEY: prompt},
        "immutable": True,
    }


def service_account(agent: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(agent, credentials_name(agent["metadata"]["name"])),
    }


def role(agent: Mapping[str, Any]) -> dict[str, Any]:
    """The agent's own credentials: get on its own Agent, get/patch on its own agents/status."""
    name = agent["metadata"]["name"]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(agent, credentials_name(name)),
        "rules": [
            {"apiGroups": [GROUP], "resources": ["agents"], "resourceNames": [name], "verbs": ["get"]},
            {"apiGroups": [GROUP], "resources": ["agents/status"], "resourceNames": [name],
             "verbs": ["get", "patch"]},
        ],
    }


def role_binding(agent: Mapping[str, Any]) -> dict[str, Any]:
    meta = agent["metadata"]
    name = credentials_name(meta["name"])
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(agent, name),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": meta["namespace"]}],
    }


RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def pod(agent: Mapping[str, Any], pod_security: str = "restricted") -> dict[str, Any]:
    """The agent's pod: the generated spec wins over `spec.podTemplate`, lists merge by name."""
    meta = agent["metadata"]
    spec = agent.get("spec") or {}
    grace = int((spec.get("cleanup") or {}).get("gracePeriodSeconds", DEFAULT_GRACE_SECONDS))
    has_prompt = spec.get("prompt") is not None

    env: list[dict[str, Any]] = [dict(e) for e in (spec.get("env") or [])]
    env += [
        {"name": "AGENT_NAME", "value": meta["name"]},
        {"name": "AGENT_NAMESPACE", "value": meta["namespace"]},
        {"name": "AGENT_UID", "value": meta["uid"]},
        {"name": "AGENT_PROMPT_FILE", "value": PROMPT_FILE if has_prompt else ""},
        {"name": "AGENT_GRACE_SECONDS", "value": str(grace)},
    ]
    container: dict[str, Any] = {
        "name": POD_CONTAINER,
        "image": spec.get("image"),
        "env": env,
        "securityContext": copy.deepcopy(RESTRICTED_CONTAINER_SECURITY),
    }
    for key in ("command", "args", "resources"):
        if spec.get(key) is not None:
            container[key] = copy.deepcopy(spec[key])
    if has_prompt:
        container["volumeMounts"] = [{"name": PROMPT_VOLUME, "mountPath": PROMPT_MOUNT_DIR, "readOnly": True}]

    generated: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": credentials_name(meta["name"]),
        "automountServiceAccountToken": True,
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        "containers": [container],
    }
    if has_prompt:
        generated["volumes"] = [{
            "name": PROMPT_VOLUME,
            "configMap": {"name": prompt_configmap_name(meta["name"]), "items": [{"key": PROMPT_KEY, "path": PROMPT_KEY}]},
        }]

    template = spec.get("podTemplate") or {}
    if not isinstance(template, dict):
        raise InvalidSpec("spec.podTemplate must be an object")
    tmeta = template.get("metadata") or {}
    tspec = template.get("spec") or {}
    if not isinstance(tmeta, dict) or not isinstance(tspec, dict):
        raise InvalidSpec("spec.podTemplate.metadata and spec.podTemplate.spec must be objects")

    pod_spec = _merge_pod_spec(tspec, generated)
    security = dict(RESTRICTED_POD_SECURITY)
    user_security = tspec.get("securityContext") or {}
    if not isinstance(user_security, dict):
        raise InvalidSpec("spec.podTemplate.spec.securityContext must be an object")
    security.update(user_security)
    pod_spec["securityContext"] = security

    labels = {k: v for k, v in (tmeta.get("labels") or {}).items()}
    labels.update(child_labels(meta["name"], meta["uid"]))
    metadata = _metadata(agent, pod_name(meta["name"]))
    metadata["labels"] = labels
    if tmeta.get("annotations"):
        metadata["annotations"] = dict(tmeta["annotations"])
    _check_pod(pod_spec)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _merge_pod_spec(template: Mapping[str, Any], generated: Mapping[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(dict(template))
    for key, value in generated.items():
        if key in ("containers", "volumes") and key in result:
            result[key] = _merge_named(result[key], value, f"spec.podTemplate.spec.{key}")
        else:
            result[key] = copy.deepcopy(value)
    return result


def _merge_named(base: Any, ours: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    if not isinstance(base, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str) for i in base):
        raise InvalidSpec(f"{where} must be a list of objects with a name")
    merged = {item["name"]: copy.deepcopy(item) for item in base}
    for item in ours:
        current = merged.get(item["name"], {})
        current.update(copy.deepcopy(item))
        merged[item["name"]] = current
    return list(merged.values())


def _check_pod(spec: Mapping[str, Any]) -> None:
    for key in ("containers", "volumes"):
        items = spec.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("name"), str)
                                                  for i in items):
            raise InvalidSpec(f"spec.podTemplate.spec.{key} must be a list of objects with a name")
    for i, c in enumerate(spec.get("containers") or []):
        if not c.get("image"):
            raise InvalidSpec(f"containers[{i}] ({c.get('name')}) has no image")
    for key in ("nodeSelector",):
        if key in spec and not isinstance(spec[key], dict):
            raise InvalidSpec(f"spec.podTemplate.spec.{key} must be an object")
    for key in ("tolerations", "initContainers", "imagePullSecrets"):
        if key in spec and not isinstance(spec[key], list):
            raise InvalidSpec(f"spec.podTemplate.spec.{key} must be a list")
