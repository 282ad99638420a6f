"""Resource types: :class:`ResourceType` (one served group/version/plural and how it behaves) and the
built-in types the emulator serves (custom resources are registered from CRDs, ``registry/crds.py``)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

STANDARD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
STATUS_VERBS = ("get", "patch", "update")


@dataclass(eq=False)
class ResourceType:
    """One served resource (group, version, plural) and how it behaves."""

    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = STANDARD_VERBS
    subresources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    storage_group: str | None = None  # bucket (group, plural); default: own
    storage_version: str | None = None  # apiVersion version objects are stored with
    convert_out: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    convert_in: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    name_check: str = "subdomain"  # subdomain | label | path
    return_deleted: bool = False
    field_selectors: tuple[str, ...] = ()
    crd: str | None = None  # name of the CRD that registered this type
    schema: Any = None  # StructuralSchema for custom resources
    printer_columns: list[dict[str, Any]] | None = None
    virtual: bool = False  # create-only review APIs, never stored

    @property
    def api_version(self) -> str:
        """``group/version`` or ``v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def stored_api_version(self) -> str:
        """The apiVersion objects are stored with."""
        v = self.storage_version or self.version
        g = self.storage_group if self.storage_group is not None else self.group
        return f"{g}/{v}" if g else v

    @property
    def bucket_key(self) -> tuple[str, str]:
        """Key of the storage bucket shared by all versions/views of this resource."""
        return (self.storage_group if self.storage_group is not None else self.group, self.plural)

    @property
    def qualified(self) -> str:
        """``plural.group`` (``pods`` for core), as used in error messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def view_key(self) -> str:
        """Cache key of the serialised form of this view ("" when stored form is served)."""
        return "" if (self.convert_out is None and self.api_version == self.stored_api_version) else self.api_version

    @property
    def status_subresource(self) -> bool:
        """Whether writes of the main resource ignore ``status``."""
        return "status" in self.subresources

    @property
    def list_kind(self) -> str:
        """Kind of the list object."""
        return self.kind + "List"

    def to_view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stored form -> served form (a new dict if anything changes)."""
        if self.convert_out is not None:
            return self.convert_out(obj)
        if obj.get("apiVersion") != self.api_version:
            out = dict(obj)
            out["apiVersion"] = self.api_version
            return out
        return obj

    def from_view(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Served form -> stored form (in place when possible)."""
        if self.convert_in is not None:
            return self.convert_in(obj)
        obj["apiVersion"] = self.stored_api_version
        return obj


_POD_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "spec.nodeName",
    "spec.restartPolicy",
    "spec.schedulerName",
    "spec.serviceAccountName",
    "spec.hostNetwork",
    "status.phase",
    "status.podIP",
    "status.nominatedNodeName",
)
_EVENT_FIELDS = (
    "metadata.name",
    "metadata.namespace",
    "involvedObject.kind",
    "involvedObject.namespace",
    "involvedObject.name",
    "involvedObject.uid",
    "involvedObject.apiVersion",
    "involvedObject.resourceVersion",
    "involvedObject.fieldPath",
    "reason",
    "reportingComponent",
    "source",
    "type",
)
_EVENT_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("reportingComponent", "reportingController"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
)


def _renamed(obj: dict[str, Any], api_version: str, renames: Iterable[tuple[str, str]]) -> dict[str, Any]:
    out = dict(obj)
    out["apiVersion"] = api_version
    for old, new in renames:
        if old in out:
            out[new] = out.pop(old)
    return out


def _event_out(obj: dict[str, Any]) -> dict[str, Any]:
    """core/v1 Event -> events.k8s.io/v1 Event."""
    return _renamed(obj, "events.k8s.io/v1", _EVENT_RENAMES)


def _event_in(obj: dict[str, Any]) -> dict[str, Any]:
    """events.k8s.io/v1 Event -> core/v1 Event."""
    return _renamed(obj, "v1", ((new, core) for core, new in _EVENT_RENAMES))


def builtin_types() -> list[ResourceType]:
    """The built-in resources the emulator serves."""
    rbac = "rbac.authorization.k8s.io"
    return [
        ResourceType(
            "", "v1", "namespaces", "namespace", "Namespace", False, ("ns",),
            verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
            subresources={"status": STATUS_VERBS, "finalize": ("update",)},
            name_check="label", return_deleted=True,
            field_selectors=("metadata.name", "status.phase"),
        ),
        ResourceType(
            "", "v1", "pods", "pod", "Pod", True, ("po",), ("all",),
            subresources={"status": STATUS_VERBS, "log": ("get",)},
            return_deleted=True, field_selectors=_POD_FIELDS,
        ),
        ResourceType("", "v1", "configmaps", "configmap", "ConfigMap", True, ("cm",)),
        ResourceType(
            "", "v1", "secrets", "secret", "Secret", True,
            field_selectors=("metadata.name", "metadata.namespace", "type"),
        ),
        ResourceType(
            "", "v1", "serviceaccounts", "serviceaccount", "ServiceAccount", True, ("sa",),
            subresources={"token": ("create",)},
        ),
        ResourceType("", "v1", "events", "event", "Event", True, ("ev",), field_selectors=_EVENT_FIELDS),
        ResourceType(
            "events.k8s.io", "v1", "events", "event", "Event", True, ("ev",),
            storage_group="", storage_version="v1", convert_out=_event_out, convert_in=_event_in,
        ),
        ResourceType(rbac, "v1", "roles", "role", "Role", True, name_check="path"),
        ResourceType(rbac, "v1", "rolebindings", "rolebinding", "RoleBinding", True, name_check="path"),
        ResourceType(rbac, "v1", "clusterroles", "clusterrole", "ClusterRole", False, name_check="path"),
        ResourceType(
            rbac, "v1", "clusterrolebindings", "clusterrolebinding", "ClusterRoleBinding", False,
            name_check="path",
        ),
        ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True),
        ResourceType(
            "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", "validatingadmissionpolicy",
            "ValidatingAdmissionPolicy", False, ("vap",), ("api-extensions",),
            subresources={"status": STATUS_VERBS},
        ),
        ResourceType(
            "admissionregistration.k8s.io", "v1", "validatingadmissionpolicybindings",
            "validatingadmissionpolicybinding", "ValidatingAdmissionPolicyBinding", False, ("vapb",),
            ("api-extensions",),
        ),
        ResourceType(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions", "customresourcedefinition",
            "CustomResourceDefinition", False, ("crd", "crds"), ("api-extensions",),
            subresources={"status": STATUS_VERBS}, return_deleted=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "selfsubjectaccessreviews", "selfsubjectaccessreview",
            "SelfSubjectAccessReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "selfsubjectrulesreviews", "selfsubjectrulesreview",
            "SelfSubjectRulesReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authorization.k8s.io", "v1", "subjectaccessreviews", "subjectaccessreview",
            "SubjectAccessReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authentication.k8s.io", "v1", "selfsubjectreviews", "selfsubjectreview",
            "SelfSubjectReview", False, verbs=("create",), virtual=True,
        ),
        ResourceType(
            "authentication.k8s.io", "v1", "tokenreviews", "tokenreview",
            "TokenReview", False, verbs=("create",), virtual=True,
        ),
    ]


def version_priority(v: str) -> tuple[int, int, int]:
    """Kubernetes version ordering key (v1 > v1beta2 > v1beta1 > v1alpha1 > other); higher is better."""
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (0, 0, 0)
    stage = {"alpha": 1, "beta": 2, None: 3}[m.group(2)]
    return (stage, int(m.group(1)), int(m.group(3) or 0))
