"""Kubernetes RBAC authorization for the devcluster API server (pure, no I/O).

:class:`Authorizer` reads Roles, RoleBindings, ClusterRoles and ClusterRoleBindings through a
``list_objects(kind)`` callback, indexes the bindings by subject, and caches per user (name +
groups) the compiled rules that apply to them, plus recent decisions. The server calls
:meth:`Authorizer.invalidate` after any write of an RBAC object; the index is rebuilt lazily on
the next request.

Semantics follow ``k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac``: deny unless a rule
allows; the group ``system:masters`` is always allowed (like kube-apiserver's privileged-group
authorizer); ClusterRoleBindings grant everywhere; RoleBindings grant inside their namespace
(their roleRef may name a Role or a ClusterRole) and never grant non-resource URLs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .selectors import label_selector_matches

__all__ = ["Attributes", "Authorizer", "UserInfo"]

MASTERS = "system:masters"
SA_PREFIX = "system:serviceaccount:"
_CACHE_MAX = 50_000


@dataclass
class UserInfo:
    """An authenticated user (groups already include system:authenticated etc.); ``uid`` and
    ``extra`` as a TokenReview or SelfSubjectReview shows them (RBAC looks at name and groups only)."""

    name: str
    groups: list[str]
    uid: str = ""
    extra: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class Attributes:
    """What a request wants to do (authorizer.Attributes)."""

    verb: str  # get list watch create update patch delete deletecollection (or a non-resource verb)
    api_group: str  # "" for core
    resource: str  # e.g. "pods", "agents"; "" for a non-resource request
    subresource: str = ""  # e.g. "status", "log"
    namespace: str = ""  # "" for cluster-scoped requests or all-namespace lists
    name: str = ""
    path: str = ""  # non-resource URL like "/healthz" (then resource == "")

    @property
    def is_resource_request(self) -> bool:
        """Resource requests name a resource; the others are non-resource URLs."""
        return bool(self.resource) or not self.path


class _Rule:
    """A compiled PolicyRule, with the binding that granted it (for the allow reason)."""

    __slots__ = ("groups", "names", "resources", "source", "url_prefixes", "urls", "verbs")

    def __init__(self, rule: dict[str, Any], source: str) -> None:
        self.verbs = frozenset(rule.get("verbs") or ())
        self.groups = frozenset(rule.get("apiGroups") or ())
        self.resources = frozenset(rule.get("resources") or ())
        self.names = frozenset(rule.get("resourceNames") or ())
        urls = [u for u in rule.get("nonResourceURLs") or () if isinstance(u, str)]
        self.urls = frozenset(u for u in urls if not u.endswith("*"))
        self.url_prefixes = tuple(u[:-1] for u in urls if u.endswith("*"))
        self.source = source

    def allows_resource(self, a: Attributes, combined: str) -> bool:
        """RuleAllows for a resource request (``combined`` is "resource[/subresource]")."""
        if a.verb not in self.verbs and "*" not in self.verbs:
            return False
        if a.api_group not in self.groups and "*" not in self.groups:
            return False
        res = self.resources
        if "*" not in res and combined not in res:
            sub = a.subresource
            if not sub or ("*/" + sub) not in res:
                return False
        if self.names:
            return a.name in self.names  # a request without a name is not matched
        return True

    def allows_url(self, a: Attributes) -> bool:
        """RuleAllows for a non-resource request."""
        if a.verb not in self.verbs and "*" not in self.verbs:
            return False
        path = a.path
        if path in self.urls:
            return True
        return any(path.startswith(p) for p in self.url_prefixes)


class _UserRules:
    """Rules that apply to one user: cluster-wide ones and per-namespace ones."""

    __slots__ = ("by_ns", "cluster")

    def __init__(self) -> None:
        self.cluster: list[_Rule] = []
        self.by_ns: dict[str, list[_Rule]] = {}


class _Subject:
    __slots__ = ("kind", "name", "namespace")

    def __init__(self, kind: str, name: str, namespace: str) -> None:
        self.kind = kind
        self.name = name
        self.namespace = namespace

    def describe(self, binding_ns: str) -> str:
        """describeSubject of the RBAC authorizer."""
        if self.kind == "ServiceAccount":
            return f"{self.kind} {_q((self.namespace or binding_ns) + '/' + self.name)}"
        return f"{self.kind} {_q(self.name)}"


# a grant: (binding namespace or "" for a ClusterRoleBinding, binding name, roleRef kind,
# roleRef name, subject)
_Grant = tuple[str, str, str, str, _Subject]


class _Index:
    """Snapshot of all RBAC objects: roles by name, bindings by subject key."""

    def __init__(self, list_objects: Callable[[str], list[dict[str, Any]]] | None) -> None:
        self.roles: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.cluster_roles: dict[str, list[dict[str, Any]]] = {}
        # ("User", name) / ("Group", name) / ("ServiceAccount", "ns/name") -> grants
        self.grants: dict[tuple[str, str], list[_Grant]] = {}
        # (binding namespace or "", binding name) -> the subject keys it was indexed under
        self.binding_keys: dict[tuple[str, str], list[tuple[str, str]]] = {}
        self.aggregated = False
        if list_objects is None:
            return
        for r in list_objects("Role") or ():
            md = r.get("metadata") or {}
            self.roles[(md.get("namespace") or "", md.get("name") or "")] = list(r.get("rules") or ())
        crs = list(list_objects("ClusterRole") or ())
        for r in crs:
            md = r.get("metadata") or {}
            self.cluster_roles[md.get("name") or ""] = list(r.get("rules") or ())
        self._aggregate(crs)
        for b in list_objects("ClusterRoleBinding") or ():
            self._add_binding(b, "")
        for b in list_objects("RoleBinding") or ():
            ns = (b.get("metadata") or {}).get("namespace") or ""
            if ns:
                self._add_binding(b, ns)

    def updated(self, kind: str, obj: dict[str, Any], deleted: bool) -> _Index | None:
        """A copy of this index with one object written or deleted; None if a full rebuild is needed.

        Copy-on-write: readers of the current index are never disturbed.
        """
        md = obj.get("metadata") or {}
        name = md.get("name") or ""
        ns = md.get("namespace") or ""
        new = _Index(None)
        new.roles = self.roles
        new.cluster_roles = self.cluster_roles
        new.grants = self.grants
        new.binding_keys = self.binding_keys
        new.aggregated = self.aggregated
        if kind == "Role":
            new.roles = dict(self.roles)
            if deleted:
                new.roles.pop((ns, name), None)
            else:
                new.roles[(ns, name)] = list(obj.get("rules") or ())
        elif kind == "ClusterRole":
            if self.aggregated or obj.get("aggregationRule"):
                return None
            new.cluster_roles = dict(self.cluster_roles)
            if deleted:
                new.cluster_roles.pop(name, None)
            else:
                new.cluster_roles[name] = list(obj.get("rules") or ())
        elif kind in ("RoleBinding", "ClusterRoleBinding"):
            bns = ns if kind == "RoleBinding" else ""
            if kind == "RoleBinding" and not ns:
                return None
            new.grants = dict(self.grants)
            new.binding_keys = dict(self.binding_keys)
            for key in new.binding_keys.pop((bns, name), ()):
                kept = [g for g in new.grants.get(key, ()) if not (g[0] == bns and g[1] == name)]
                if kept:
                    new.grants[key] = kept
                else:
                    new.grants.pop(key, None)
            if not deleted:
                new._add_binding(obj, bns, copy_on_write=True)
        else:
            return None
        return new

    def _aggregate(self, crs: list[dict[str, Any]]) -> None:
        """ClusterRole aggregationRule: union the rules of ClusterRoles matching the selectors."""
        for r in crs:
            agg = r.get("aggregationRule") or {}
            selectors = agg.get("clusterRoleSelectors") or ()
            if not selectors:
                continue
            self.aggregated = True
            name = (r.get("metadata") or {}).get("name") or ""
            rules = list(self.cluster_roles.get(name, ()))
            for other in crs:
                if other is r:
                    continue
                labels = (other.get("metadata") or {}).get("labels") or {}
                if any(label_selector_matches(sel, labels) for sel in selectors):
                    rules.extend(other.get("rules") or ())
            self.cluster_roles[name] = rules

    def _add_binding(self, b: dict[str, Any], ns: str, copy_on_write: bool = False) -> None:
        ref = b.get("roleRef") or {}
        ref_kind = ref.get("kind") or ""
        ref_name = ref.get("name") or ""
        if ns == "" and ref_kind != "ClusterRole":
            return  # a ClusterRoleBinding can only reference a ClusterRole
        bname = (b.get("metadata") or {}).get("name") or ""
        for s in b.get("subjects") or ():
            kind = s.get("kind") or ""
            name = s.get("name") or ""
            sns = s.get("namespace") or ""
            subj = _Subject(kind, name, sns)
            if kind == "ServiceAccount":
                sa_ns = sns or ns
                if not sa_ns:
                    continue  # a ClusterRoleBinding SA subject needs a namespace
                key = ("ServiceAccount", f"{sa_ns}/{name}")
            elif kind in ("User", "Group"):
                key = (kind, name)
            else:
                continue
            grant: _Grant = (ns, bname, ref_kind, ref_name, subj)
            if copy_on_write:
                self.grants[key] = [*self.grants.get(key, ()), grant]
            else:
                self.grants.setdefault(key, []).append(grant)
            self.binding_keys.setdefault((ns, bname), []).append(key)

    def rules_for(self, user: UserInfo) -> _UserRules:
        """Compile every rule granted to ``user`` (through User, Group and ServiceAccount subjects)."""
        keys: list[tuple[str, str]] = [("User", user.name)]
        keys.extend(("Group", g) for g in user.groups)
        if user.name.startswith(SA_PREFIX):
            rest = user.name[len(SA_PREFIX) :]
            sa_ns, sep, sa_name = rest.partition(":")
            if sep and sa_ns and sa_name and ":" not in sa_name:
                keys.append(("ServiceAccount", f"{sa_ns}/{sa_name}"))
        out = _UserRules()
        seen: set[tuple[str, str, int]] = set()
        for key in keys:
            for ns, bname, ref_kind, ref_name, subj in self.grants.get(key, ()):
                if ref_kind == "ClusterRole":
                    rules = self.cluster_roles.get(ref_name)
                elif ref_kind == "Role":
                    rules = self.roles.get((ns, ref_name))
                else:
                    rules = None
                if not rules:
                    continue
                if ns:
                    source = f"RoleBinding {_q(bname + '/' + ns)} of {ref_kind} {_q(ref_name)} to {subj.describe(ns)}"
                    target = out.by_ns.setdefault(ns, [])
                else:
                    source = (
                        f"ClusterRoleBinding {_q(bname)} of {ref_kind} {_q(ref_name)} to {subj.describe('')}"
                    )
                    target = out.cluster
                for i, r in enumerate(rules):
                    mark = (ns, bname, i)
                    if mark in seen or not isinstance(r, dict):
                        continue
                    seen.add(mark)
                    target.append(_Rule(r, source))
        return out




class _State:
    """One generation of the index with its caches."""

    __slots__ = ("decisions", "index", "users")

    def __init__(self, index: _Index) -> None:
        self.index = index
        self.users: dict[tuple[str, tuple[str, ...]], _UserRules] = {}
        self.decisions: dict[tuple[Any, ...], tuple[bool, str]] = {}


class Authorizer:
    """RBAC authorizer over the API server's store, with per-user caches.

    Thread-safe: :meth:`invalidate` drops the snapshot; the next request rebuilds it.
    """

    def __init__(self, list_objects: Callable[[str], list[dict[str, Any]]]) -> None:
        self._list_objects = list_objects
        self._lock = threading.Lock()
        self._generation = 0
        self._state: _State | None = None

    def invalidate(
        self, kind: str | None = None, obj: dict[str, Any] | None = None, deleted: bool = False
    ) -> None:
        """Call after any write of a Role/ClusterRole/RoleBinding/ClusterRoleBinding.

        Without arguments everything is dropped and rebuilt from ``list_objects`` on the next
        request. With ``kind`` and the written ``obj`` (the stored object after the write, or the
        deleted one with ``deleted=True``) the index is updated incrementally, which keeps
        creating thousands of per-agent Roles/RoleBindings linear instead of quadratic.
        Per-user caches are dropped in both cases.
        """
        with self._lock:
            self._generation += 1
            st = self._state
            if kind and obj is not None and st is not None:
                index = st.index.updated(kind, obj, deleted)
                if index is not None:
                    self._state = _State(index)
                    return
            self._state = None

    def _current(self) -> _State:
        st = self._state
        if st is not None:
            return st
        with self._lock:
            st = self._state
            if st is not None:
                return st
            gen = self._generation
        st = _State(_Index(self._list_objects))  # list outside the lock: the store may take its own
        with self._lock:
            if self._generation == gen and self._state is None:
                self._state = st
        return st

    def authorize(self, user: UserInfo, attrs: Attributes) -> tuple[bool, str]:
        """(allowed, reason): the reason names the granting binding, like kube's RBAC authorizer."""
        groups = user.groups
        if MASTERS in groups:
            return True, f'allowed by group "{MASTERS}"'
        st = self._current()
        gkey = tuple(groups)
        dkey = (
            user.name,
            gkey,
            attrs.verb,
            attrs.api_group,
            attrs.resource,
            attrs.subresource,
            attrs.namespace,
            attrs.name,
            attrs.path,
        )
        hit = st.decisions.get(dkey)
        if hit is not None:
            return hit
        ukey = (user.name, gkey)
        rules = st.users.get(ukey)
        if rules is None:
            rules = st.index.rules_for(user)
            st.users[ukey] = rules
        result = _decide(rules, attrs)
        if len(st.decisions) >= _CACHE_MAX:
            st.decisions.clear()
        st.decisions[dkey] = result
        return result

    def rules_review(self, user: UserInfo, namespace: str) -> list[dict[str, Any]]:
        """The rules that apply to ``user`` in ``namespace`` (for SelfSubjectRulesReview-like output)."""
        rules = self._current().index.rules_for(user)
        out: list[dict[str, Any]] = []
        for r in list(rules.cluster) + list(rules.by_ns.get(namespace, ())):
            d: dict[str, Any] = {"verbs": sorted(r.verbs)}
            if r.urls or r.url_prefixes:
                d["nonResourceURLs"] = sorted(r.urls) + [p + "*" for p in r.url_prefixes]
            else:
                d["apiGroups"] = sorted(r.groups)
                d["resources"] = sorted(r.resources)
                if r.names:
                    d["resourceNames"] = sorted(r.names)
            out.append(d)
        return out

    def forbidden_message(self, user: UserInfo, attrs: Attributes) -> str:
        """The exact text of kube-apiserver's 403 Status message for this request."""
        return forbidden_message(user, attrs)


def _decide(rules: _UserRules, a: Attributes) -> tuple[bool, str]:
    if not a.is_resource_request:
        for r in rules.cluster:
            if (r.urls or r.url_prefixes) and r.allows_url(a):
                return True, f"RBAC: allowed by {r.source}"
        return False, ""
    combined = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
    candidates: Iterable[_Rule] = rules.cluster
    for r in candidates:
        if r.resources and r.allows_resource(a, combined):
            return True, f"RBAC: allowed by {r.source}"
    if a.namespace:
        for r in rules.by_ns.get(a.namespace, ()):
            if r.resources and r.allows_resource(a, combined):
                return True, f"RBAC: allowed by {r.source}"
    return False, ""


def _q(s: str) -> str:
    """Go %q (close enough: JSON string syntax)."""
    return json.dumps(s, ensure_ascii=False)


def forbidden_message(user: UserInfo, attrs: Attributes) -> str:
    """apiserver responsewriters.forbiddenMessage wrapped by errors.NewForbidden."""
    if not attrs.is_resource_request:
        return f"forbidden: User {_q(user.name)} cannot {attrs.verb} path {_q(attrs.path)}"
    resource = attrs.resource + ("/" + attrs.subresource if attrs.subresource else "")
    detail = (
        f"User {_q(user.name)} cannot {attrs.verb} resource {_q(resource)} in API group {_q(attrs.api_group)}"
    )
    if attrs.namespace:
        detail += f" in the namespace {_q(attrs.namespace)}"
    else:
        detail += " at the cluster scope"
    qualified = attrs.resource + ("." + attrs.api_group if attrs.api_group else "")
    if attrs.name:
        return f"{qualified} {_q(attrs.name)} is forbidden: {detail}"
    return f"{qualified} is forbidden: {detail}"
