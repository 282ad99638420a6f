"""The kinds of child objects an Agent has: one table, used by every module (creation, cleanup,
verification, the sweep, metrics). Pure."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import children
from .kube.resources import CONFIGMAPS, PODS, ROLEBINDINGS, ROLES, SERVICEACCOUNTS, Resource
from .names import credentials_name, pod_name, prompt_configmap_name

Builder = Callable[[Mapping[str, Any], str], "dict[str, Any] | None"]


@dataclass(frozen=True)
class ChildKind:
    label: str                   # the metric label and the key everywhere: "pod", "configmap", ...
    resource: Resource
    api_version: str
    kind: str
    name: Callable[[str], str]   # the child's name, from the Agent's name
    build: Builder               # (agent, pod security level) -> the object to create, or None
    create_stage: int            # created after every kind of a lower stage exists
    credential: bool = False     # counted in status.cleanup.credentialsDeleted


def _ignore_level(build: Callable[[Mapping[str, Any]], dict[str, Any] | None]) -> Builder:
    return lambda agent, _level: build(agent)


def _pod(agent: Mapping[str, Any], level: str) -> dict[str, Any]:
    return children.pod(agent, pod_security=level)


POD = ChildKind("pod", PODS, "v1", "Pod", pod_name, _pod, create_stage=2)
CONFIGMAP = ChildKind("configmap", CONFIGMAPS, "v1", "ConfigMap", prompt_configmap_name,
                      _ignore_level(children.prompt_configmap), create_stage=0)
SERVICEACCOUNT = ChildKind("serviceaccount", SERVICEACCOUNTS, "v1", "ServiceAccount", credentials_name,
                           _ignore_level(children.service_account), create_stage=0, credential=True)
ROLE = ChildKind("role", ROLES, "rbac.authorization.k8s.io/v1", "Role", credentials_name,
                 _ignore_level(children.role), create_stage=0, credential=True)
# After its Role: the API server checks a RoleBinding against the stored Role (no escalation).
ROLEBINDING = ChildKind("rolebinding", ROLEBINDINGS, "rbac.authorization.k8s.io/v1", "RoleBinding",
                        credentials_name, _ignore_level(children.role_binding), create_stage=1, credential=True)

CHILD_KINDS: tuple[ChildKind, ...] = (POD, CONFIGMAP, SERVICEACCOUNT, ROLE, ROLEBINDING)
BY_LABEL: dict[str, ChildKind] = {k.label: k for k in CHILD_KINDS}
LABELS: tuple[str, ...] = tuple(k.label for k in CHILD_KINDS)
CREATE_STAGES: tuple[tuple[ChildKind, ...], ...] = tuple(
    tuple(k for k in CHILD_KINDS if k.create_stage == stage)
    for stage in sorted({k.create_stage for k in CHILD_KINDS}))
