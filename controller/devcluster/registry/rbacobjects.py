"""RBAC objects (Roles, ClusterRoles and their bindings): validation, and kube-apiserver's escalation and
bind checks on writes. (Authorization itself is ``devcluster/rbac.py``.)"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ..errors import ApiError, bad_request, ferr, forbidden
from ..rbac import Attributes
from .base import Strategy, Write

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Store


class RbacStrategy(Strategy):
    """``roles``, ``rolebindings``, ``clusterroles``, ``clusterrolebindings``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        validate(store, rt, obj, None, errs, w.user)

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        validate(store, rt, new, old, errs, w.user)


def validate(
    store: Store, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, errs: list[Any], user: Any
) -> None:
    """Rules of Roles/ClusterRoles, roleRef and subjects of bindings; then the escalation / bind check."""
    kind = rt.kind
    if kind in ("Role", "ClusterRole"):
        rules = obj.get("rules") or []
        if not isinstance(rules, list):
            raise bad_request("rules must be a list")
        for i, r in enumerate(rules):
            p = f"rules[{i}]"
            if not r.get("verbs"):
                errs.append(ferr(p + ".verbs", "FieldValueRequired", detail="verbs must contain at least one value"))
            if r.get("nonResourceURLs"):
                if kind == "Role":
                    errs.append(
                        ferr(
                            p + ".nonResourceURLs",
                            "FieldValueInvalid",
                            r["nonResourceURLs"],
                            "namespaced rules cannot apply to non-resource URLs",
                        )
                    )
            elif not r.get("apiGroups") and r.get("resources"):
                errs.append(
                    ferr(p + ".apiGroups", "FieldValueRequired", detail="resource rules must supply at least one api group")
                )
            elif not r.get("resources"):
                errs.append(
                    ferr(p + ".resources", "FieldValueRequired", detail="resource rules must supply at least one resource")
                )
        if not errs:
            check_escalation(store, rt, obj, rules, user)
    else:
        ref = obj.get("roleRef") or {}
        if not isinstance(ref, dict):
            raise bad_request("roleRef must be an object")
        allowed = ("Role", "ClusterRole") if kind == "RoleBinding" else ("ClusterRole",)
        if ref.get("apiGroup") != "rbac.authorization.k8s.io":
            errs.append(
                ferr("roleRef.apiGroup", "FieldValueNotSupported", ref.get("apiGroup", ""), 'supported values: "rbac.authorization.k8s.io"')
            )
        if ref.get("kind") not in allowed:
            errs.append(
                ferr("roleRef.kind", "FieldValueNotSupported", ref.get("kind", ""), "supported values: " + ", ".join(f'"{a}"' for a in allowed))
            )
        if not ref.get("name"):
            errs.append(ferr("roleRef.name", "FieldValueRequired"))
        if old is not None and old.get("roleRef") != ref:
            errs.append(ferr("roleRef", "FieldValueInvalid", "{...}", "cannot change roleRef"))
        for i, s in enumerate(obj.get("subjects") or ()):
            p = f"subjects[{i}]"
            sk = s.get("kind")
            if sk not in ("ServiceAccount", "User", "Group"):
                errs.append(ferr(p + ".kind", "FieldValueNotSupported", sk, 'supported values: "ServiceAccount", "User", "Group"'))
            if not s.get("name"):
                errs.append(ferr(p + ".name", "FieldValueRequired"))
            if sk == "ServiceAccount" and kind == "ClusterRoleBinding" and not s.get("namespace"):
                errs.append(ferr(p + ".namespace", "FieldValueRequired"))
            if sk in ("User", "Group") and s.get("apiGroup") != "rbac.authorization.k8s.io":
                errs.append(
                    ferr(p + ".apiGroup", "FieldValueNotSupported", s.get("apiGroup", ""), 'supported values: "rbac.authorization.k8s.io"')
                )
        if not errs:
            check_bind(store, rt, obj, ref, user)


def user_holds(store: Store, user: Any, ns: str, rules: list[dict[str, Any]]) -> list[str]:
    """The rules (as kube-apiserver prints them) ``user`` does not hold in ``ns``."""
    missing = []
    az = store.authorizer
    for r in rules:
        for verb in r.get("verbs") or ():
            if r.get("nonResourceURLs"):
                for url in r["nonResourceURLs"]:
                    ok, _ = az.authorize(user, Attributes(verb=verb, api_group="", resource="", path=url))
                    if not ok:
                        missing.append(f'{{NonResourceURLs:["{url}"], Verbs:["{verb}"]}}')
                continue
            for g in r.get("apiGroups") or ():
                for res in r.get("resources") or ():
                    resource, _, sub = res.partition("/")
                    for rn in r.get("resourceNames") or [""]:
                        ok, _ = az.authorize(
                            user,
                            Attributes(
                                verb=verb, api_group=g, resource=resource, subresource=sub, namespace=ns, name=rn
                            ),
                        )
                        if not ok:
                            names = f', ResourceNames:["{rn}"]' if rn else ""
                            missing.append(
                                f'{{APIGroups:["{g}"], Resources:["{res}"]{names}, Verbs:["{verb}"]}}'
                            )
    return missing


def is_privileged(store: Store, user: Any) -> bool:
    """The control plane, no authorizer, or ``system:masters``: no escalation checks."""
    return user is None or store.authorizer is None or "system:masters" in (user.groups or ())


def check_escalation(
    store: Store, rt: ResourceType, obj: dict[str, Any], rules: list[dict[str, Any]], user: Any
) -> None:
    """A (Cluster)Role may grant only what its writer holds, unless the writer may ``escalate``."""
    if is_privileged(store, user):
        return
    ns = obj["metadata"].get("namespace", "") if rt.namespaced else ""
    ok, _ = store.authorizer.authorize(
        user, Attributes(verb="escalate", api_group=rt.group, resource=rt.plural, namespace=ns, name=obj["metadata"]["name"])
    )
    if ok:
        return
    missing = user_holds(store, user, ns, rules)
    if missing:
        raise _not_held(rt, obj, user, missing)


def check_bind(store: Store, rt: ResourceType, obj: dict[str, Any], ref: dict[str, Any], user: Any) -> None:
    """A binding may grant only what its writer holds, unless the writer may ``bind`` the role."""
    if is_privileged(store, user):
        return
    ns = obj["metadata"].get("namespace", "") if rt.namespaced else ""
    role_res = "clusterroles" if ref.get("kind") == "ClusterRole" else "roles"
    ok, _ = store.authorizer.authorize(
        user,
        Attributes(verb="bind", api_group="rbac.authorization.k8s.io", resource=role_res, namespace=ns, name=ref.get("name", "")),
    )
    if ok:
        return
    if ref.get("kind") == "ClusterRole":
        e = store.buckets[("rbac.authorization.k8s.io", "clusterroles")].objects.get(("", ref.get("name", "")))
    else:
        e = store.buckets[("rbac.authorization.k8s.io", "roles")].objects.get((ns, ref.get("name", "")))
    rules = (e.obj.get("rules") or []) if e is not None else []
    missing = user_holds(store, user, ns, rules)
    if missing or e is None:
        raise _not_held(rt, obj, user, missing)


def _not_held(rt: ResourceType, obj: dict[str, Any], user: Any, missing: list[str]) -> ApiError:
    groups = " ".join(json.dumps(g) for g in user.groups)
    return forbidden(
        rt,
        obj["metadata"]["name"],
        f'user "{user.name}" (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n'
        + "\n".join(missing),
    )
