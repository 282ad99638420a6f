"""Pure builders of an agent's child objects (SPEC §3). No I/O.

Every child carries the managed-by / agent / agent-uid labels and a controller ownerReference
(set with `kopf.adopt`-equivalent semantics, done here so the builders stay pure and testable).

The pod (:func:`pod`) is held to a Pod Security level (controller/podsecurity.py): every container
(the agent's, and the init containers and sidecars of `spec.podTemplate`) gets the restricted
security context where the user did not set one, and a template asking for more than the level
allows raises :class:`InvalidSpec` naming the field. Fields of the agent container given in the
template merge with the generated ones: env by name, volumeMounts by mountPath, resources by
resource name, securityContext field by field.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from . import GROUP, KIND, VERSION
from . import podsecurity
from .api import DEFAULT_GRACE_SECONDS
from .names import (
    POD_CONTAINER,
    PROMPT_FILE,
    PROMPT_KEY,
    PROMPT_MOUNT_DIR,
    SHIP_TOKEN_VOLUME,
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


RESTRICTED_CONTAINER_SECURITY = podsecurity.RESTRICTED_CONTAINER_SECURITY
RESTRICTED_POD_SECURITY = podsecurity.RESTRICTED_POD_SECURITY

T = "spec.podTemplate"
TS = "spec.podTemplate.spec"

# Pod fields the controller sets; the template's values are replaced (the ones that matter for
# security are checked first: a different serviceAccountName is refused, not silently replaced).
_GENERATED_POD_FIELDS = ("restartPolicy", "terminationGracePeriodSeconds", "enableServiceLinks")
_LIST_FIELDS = ("tolerations", "imagePullSecrets", "initContainers", "containers", "volumes", "hostAliases",
                "topologySpreadConstraints", "readinessGates", "resourceClaims", "schedulingGates")
_OBJECT_FIELDS = ("nodeSelector", "affinity", "securityContext", "dnsConfig", "overhead", "os", "resources")
_CONTAINER_LIST_FIELDS = ("command", "args", "env", "envFrom", "ports", "volumeMounts", "volumeDevices",
                          "resizePolicy")
_CONTAINER_OBJECT_FIELDS = ("resources", "securityContext", "livenessProbe", "readinessProbe", "startupProbe",
                            "lifecycle")


def pod(agent: Mapping[str, Any], pod_security: str = podsecurity.DEFAULT_LEVEL) -> dict[str, Any]:
    """The agent's pod: the generated spec over `spec.podTemplate`, held to `pod_security`.

    Raises :class:`InvalidSpec` (its message names the field) for a template of the wrong shape,
    nested too deep, with duplicate container names, invalid resource quantities, or fields the
    level does not allow.
    """
    podsecurity.check_level(pod_security)
    meta = agent["metadata"]
    spec = agent.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidSpec("spec must be an object")
    deep = podsecurity.check_depth(spec, podsecurity.MAX_DEPTH + 2)
    if deep is not None:
        raise InvalidSpec(f"spec.{_short(deep)}: nested more than {podsecurity.MAX_DEPTH} levels deep")
    grace = int((spec.get("cleanup") or {}).get("gracePeriodSeconds", DEFAULT_GRACE_SECONDS))
    has_prompt = spec.get("prompt") is not None
    own_sa = credentials_name(meta["name"])

    template = spec.get("podTemplate") or {}
    if not isinstance(template, dict):
        raise InvalidSpec(f"{T} must be an object")
    tmeta = template.get("metadata") or {}
    tspec = template.get("spec") or {}
    if not isinstance(tmeta, dict):
        raise InvalidSpec(f"{T}.metadata must be an object")
    if not isinstance(tspec, dict):
        raise InvalidSpec(f"{TS} must be an object")
    _check_template_shape(tspec)
    _check_spec_fields(spec)
    labels_in = tmeta.get("labels") or {}
    annotations_in = tmeta.get("annotations") or {}
    for key, value in (("labels", labels_in), ("annotations", annotations_in)):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise InvalidSpec(f"{T}.metadata.{key} must be a map of strings")

    # --- containers -------------------------------------------------------------------------
    container_paths: dict[tuple[str, str], str] = {}
    init_containers: list[dict[str, Any]] = []
    for i, c in enumerate(tspec.get("initContainers") or []):
        container_paths[("initContainers", c["name"])] = f"{TS}.initContainers[{i}]"
        init_containers.append(podsecurity.container_defaults(c))
    containers: list[dict[str, Any]] = []
    agent_container: dict[str, Any] | None = None
    for i, c in enumerate(tspec.get("containers") or []):
        container_paths[("containers", c["name"])] = f"{TS}.containers[{i}]"
        if c["name"] == POD_CONTAINER:
            agent_container = _agent_container(agent, spec, c, grace, has_prompt)
            containers.append(agent_container)
        else:
            containers.append(podsecurity.container_defaults(c))
    if agent_container is None:
        containers.insert(0, _agent_container(agent, spec, {}, grace, has_prompt))
    if not isinstance(spec.get("image"), str) or not spec.get("image"):
        raise InvalidSpec("spec.image: Required value")
    for key, items in (("initContainers", init_containers), ("containers", containers)):
        for c in items:
            if not c.get("image"):
                where = container_paths[(key, c["name"])]
                raise InvalidSpec(f"{where}.image: Required value (container {c['name']!r} has no image)")

    # --- volumes ----------------------------------------------------------------------------
    volumes = [podsecurity._copy(v) for v in tspec.get("volumes") or []]
    volume_paths = {v["name"]: f"{TS}.volumes[{i}]" for i, v in enumerate(volumes)}
    for reserved in (PROMPT_VOLUME, SHIP_TOKEN_VOLUME):
        if reserved in volume_paths:
            raise InvalidSpec(f"{volume_paths[reserved]}.name: the volume name {reserved!r} is the controller's")
    if has_prompt:
        volumes.append({
            "name": PROMPT_VOLUME,
            "configMap": {"name": prompt_configmap_name(meta["name"]), "items": [{"key": PROMPT_KEY, "path": PROMPT_KEY}]},
        })

    # --- the pod spec -----------------------------------------------------------------------
    pod_spec: dict[str, Any] = {k: podsecurity._copy(v) for k, v in tspec.items()}
    pod_spec.update({
        "restartPolicy": "Never",
        "terminationGracePeriodSeconds": grace,
        "enableServiceLinks": False,
        "containers": containers,
    })
    if init_containers:
        pod_spec["initContainers"] = init_containers
    if volumes:
        pod_spec["volumes"] = volumes
    pod_spec["securityContext"] = podsecurity.pod_defaults(tspec.get("securityContext") or {})
    found = podsecurity.violations(
        pod_spec, pod_security, annotations=annotations_in,
        paths=podsecurity.Paths(TS, container_paths, volume_paths, own_service_account=own_sa),
    )
    if found:
        raise InvalidSpec("; ".join(str(v) for v in found[:5]) + (f" (and {len(found) - 5} more)" if len(found) > 5 else ""))
    # The agent's own account and token, unless the level lets the template choose (privileged).
    pod_spec["serviceAccountName"] = tspec.get("serviceAccountName") or tspec.get("serviceAccount") or own_sa
    pod_spec.pop("serviceAccount", None)
    pod_spec["automountServiceAccountToken"] = tspec.get("automountServiceAccountToken", True)

    labels = dict(labels_in)
    labels.update(child_labels(meta["name"], meta["uid"]))
    metadata = _metadata(agent, pod_name(meta["name"]))
    metadata["labels"] = labels
    if annotations_in:
        metadata["annotations"] = dict(annotations_in)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec}


def _short(path: str, keep: int = 6) -> str:
    parts = path.split(".")
    return path if len(parts) <= keep else ".".join(parts[:keep]) + "..."


def _agent_container(agent: Mapping[str, Any], spec: Mapping[str, Any], template: Mapping[str, Any],
                     grace: int, has_prompt: bool) -> dict[str, Any]:
    """The template's "agent" container with the generated fields merged over it."""
    meta = agent["metadata"]
    c: dict[str, Any] = {k: podsecurity._copy(v) for k, v in template.items()}
    c["name"] = POD_CONTAINER
    c["image"] = spec.get("image")
    for key in ("command", "args"):
        if spec.get(key) is not None:
            c[key] = list(spec[key])
    resources = _merge_resources(template.get("resources") or {}, spec.get("resources") or {})
    if resources:
        c["resources"] = resources
    generated_env = [dict(e) for e in (spec.get("env") or [])] + [
        {"name": "AGENT_NAME", "value": meta["name"]},
        {"name": "AGENT_NAMESPACE", "value": meta["namespace"]},
        {"name": "AGENT_UID", "value": meta["uid"]},
        {"name": "AGENT_PROMPT_FILE", "value": PROMPT_FILE if has_prompt else ""},
        {"name": "AGENT_GRACE_SECONDS", "value": str(grace)},
    ]
    c["env"] = _merge_by(template.get("env") or [], generated_env, "name")
    mounts = [{"name": PROMPT_VOLUME, "mountPath": PROMPT_MOUNT_DIR, "readOnly": True}] if has_prompt else []
    merged_mounts = _merge_by(template.get("volumeMounts") or [], mounts, "mountPath")
    if merged_mounts:
        c["volumeMounts"] = merged_mounts
    return podsecurity.container_defaults(c)


def _merge_by(base: list[dict[str, Any]], ours: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """`base` with each of `ours` replacing the item with the same `key` in place, or appended."""
    out = [podsecurity._copy(item) for item in base]
    index = {item.get(key): i for i, item in enumerate(out)}
    for item in ours:
        i = index.get(item.get(key))
        if i is None:
            index[item.get(key)] = len(out)
            out.append(podsecurity._copy(item))
        else:
            out[i] = podsecurity._copy(item)
    return out


def _merge_resources(template: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: podsecurity._copy(v) for k, v in template.items()}
    for key, value in ours.items():
        if key in ("limits", "requests") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = podsecurity._copy(value)
    return out


def _check_quantities(resources: Any, where: str) -> None:
    if resources is None:
        return
    if not isinstance(resources, dict):
        raise InvalidSpec(f"{where} must be an object")
    for part in ("limits", "requests"):
        values = resources.get(part)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InvalidSpec(f"{where}.{part} must be a map of resource name to quantity")
        for name, value in values.items():
            why = podsecurity.quantity_error(value)
            if why is not None:
                raise InvalidSpec(f"{where}.{part}.{name}: {why}")


def _check_spec_fields(spec: Mapping[str, Any]) -> None:
    _check_quantities(spec.get("resources"), "spec.resources")
    env = spec.get("env")
    if env is not None and not (isinstance(env, list) and all(isinstance(e, dict) and isinstance(e.get("name"), str)
                                                              for e in env)):
        raise InvalidSpec("spec.env must be a list of objects with a name")


def _check_field_types(obj: Mapping[str, Any], where: str, lists: Iterable[str], objects: Iterable[str]) -> None:
    """The fields of `obj` that must be lists or objects are (when set)."""
    for key in lists:
        if key in obj and obj[key] is not None and not isinstance(obj[key], list):
            raise InvalidSpec(f"{where}.{key} must be a list")
    for key in objects:
        if key in obj and obj[key] is not None and not isinstance(obj[key], dict):
            raise InvalidSpec(f"{where}.{key} must be an object")


def _check_template_shape(tspec: Mapping[str, Any]) -> None:
    """The template's structure, before anything is merged (each error names the field)."""
    _check_field_types(tspec, TS, _LIST_FIELDS, _OBJECT_FIELDS)
    if tspec.get("ephemeralContainers"):
        raise InvalidSpec(f"{TS}.ephemeralContainers: cannot be set when a pod is created")
    seen: dict[str, str] = {}
    for key in ("initContainers", "containers"):
        for i, c in enumerate(tspec.get(key) or []):
            where = f"{TS}.{key}[{i}]"
            if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
                raise InvalidSpec(f"{where} must be an object with a name")
            if c["name"] in seen or (key == "initContainers" and c["name"] == POD_CONTAINER):
                first = seen.get(c["name"], "the agent container")
                raise InvalidSpec(f"{where}.name: Duplicate value: {c['name']!r} (also {first}); "
                                  "container names must be unique across containers and initContainers")
            seen[c["name"]] = where
            _check_field_types(c, where, _CONTAINER_LIST_FIELDS, _CONTAINER_OBJECT_FIELDS)
            for j, e in enumerate(c.get("env") or []):
                if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                    raise InvalidSpec(f"{where}.env[{j}] must be an object with a name")
            for j, m in enumerate(c.get("volumeMounts") or []):
                if not isinstance(m, dict) or not isinstance(m.get("mountPath"), str):
                    raise InvalidSpec(f"{where}.volumeMounts[{j}] must be an object with a mountPath")
            _check_quantities(c.get("resources"), f"{where}.resources")
            sc = c.get("securityContext") or {}
            for field in ("capabilities", "seccompProfile", "seLinuxOptions", "windowsOptions", "appArmorProfile"):
                if field in sc and sc[field] is not None and not isinstance(sc[field], dict):
                    raise InvalidSpec(f"{where}.securityContext.{field} must be an object")
    names: dict[str, int] = {}
    for i, v in enumerate(tspec.get("volumes") or []):
        if not isinstance(v, dict) or not isinstance(v.get("name"), str) or not v["name"]:
            raise InvalidSpec(f"{TS}.volumes[{i}] must be an object with a name")
        if v["name"] in names:
            raise InvalidSpec(f"{TS}.volumes[{i}].name: Duplicate value: {v['name']!r} "
                              f"(also {TS}.volumes[{names[v['name']]}])")
        names[v["name"]] = i
    _check_quantities(tspec.get("resources"), f"{TS}.resources")
    for name, value in (tspec.get("overhead") or {}).items():
        why = podsecurity.quantity_error(value)
        if why is not None:
            raise InvalidSpec(f"{TS}.overhead.{name}: {why}")
    psc = tspec.get("securityContext") or {}
    for field in ("seccompProfile", "seLinuxOptions", "windowsOptions", "appArmorProfile"):
        if field in psc and psc[field] is not None and not isinstance(psc[field], dict):
            raise InvalidSpec(f"{TS}.securityContext.{field} must be an object")
    if "sysctls" in psc and not isinstance(psc["sysctls"], list):
        raise InvalidSpec(f"{TS}.securityContext.sysctls must be a list")
    for key in ("serviceAccountName", "serviceAccount", "nodeName"):
        if key in tspec and not isinstance(tspec[key], str):
            raise InvalidSpec(f"{TS}.{key} must be a string")
    if "automountServiceAccountToken" in tspec and not isinstance(tspec["automountServiceAccountToken"], bool):
        raise InvalidSpec(f"{TS}.automountServiceAccountToken must be a boolean")
