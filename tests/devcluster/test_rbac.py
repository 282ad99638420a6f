"""RBAC Authorizer: bindings, roles, subresources, resourceNames, wildcards, non-resource URLs."""

from __future__ import annotations

from typing import Any

import pytest

from controller.devcluster.rbac import Attributes, Authorizer, UserInfo

GROUP = "agentcontroller.dev"


class Store:
    """A stand-in for the API server's store of RBAC objects."""

    def __init__(self) -> None:
        self.objects: dict[str, list[dict[str, Any]]] = {
            "Role": [],
            "RoleBinding": [],
            "ClusterRole": [],
            "ClusterRoleBinding": [],
        }
        self.calls = 0

    def list(self, kind: str) -> list[dict[str, Any]]:
        self.calls += 1
        return list(self.objects[kind])

    def add(self, obj: dict[str, Any]) -> None:
        self.objects[obj["kind"]].append(obj)


def role(ns: str, name: str, rules: list[dict[str, Any]], kind: str = "Role") -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if kind == "Role":
        md["namespace"] = ns
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": md, "rules": rules}


def binding(
    ns: str,
    name: str,
    ref_kind: str,
    ref_name: str,
    subjects: list[dict[str, Any]],
    kind: str = "RoleBinding",
) -> dict[str, Any]:
    md: dict[str, Any] = {"name": name}
    if kind == "RoleBinding":
        md["namespace"] = ns
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": md,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": ref_kind, "name": ref_name},
        "subjects": subjects,
    }


def sa_user(ns: str, name: str) -> UserInfo:
    return UserInfo(
        f"system:serviceaccount:{ns}:{name}",
        ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"],
    )


def agents(verb: str, ns: str = "ns", name: str = "", sub: str = "") -> Attributes:
    return Attributes(verb=verb, api_group=GROUP, resource="agents", subresource=sub, namespace=ns, name=name)


@pytest.fixture()
def store() -> Store:
    s = Store()
    # the per-agent Role of SPEC §3
    s.add(
        role(
            "ns",
            "a1-agent",
            [
                {"apiGroups": [GROUP], "resources": ["agents"], "resourceNames": ["a1"], "verbs": ["get"]},
                {
                    "apiGroups": [GROUP],
                    "resources": ["agents/status"],
                    "resourceNames": ["a1"],
                    "verbs": ["get", "patch"],
                },
            ],
        )
    )
    s.add(
        binding(
            "ns",
            "a1-agent",
            "Role",
            "a1-agent",
            [{"kind": "ServiceAccount", "name": "a1-agent", "namespace": "ns"}],
        )
    )
    return s


def test_agent_role_allows_only_its_own_status(store: Store) -> None:
    authz = Authorizer(store.list)
    u = sa_user("ns", "a1-agent")
    ok, reason = authz.authorize(u, agents("patch", name="a1", sub="status"))
    assert ok
    assert reason == (
        'RBAC: allowed by RoleBinding "a1-agent/ns" of Role "a1-agent" to ServiceAccount "ns/a1-agent"'
    )
    assert authz.authorize(u, agents("get", name="a1", sub="status"))[0]
    assert authz.authorize(u, agents("get", name="a1"))[0]
    # not another agent's status
    assert not authz.authorize(u, agents("patch", name="a2", sub="status"))[0]
    # not the main resource (its spec)
    assert not authz.authorize(u, agents("patch", name="a1"))[0]
    assert not authz.authorize(u, agents("update", name="a1"))[0]
    # resourceNames never match a request without a name
    assert not authz.authorize(u, agents("list"))[0]
    assert not authz.authorize(u, agents("watch"))[0]
    # not in another namespace
    assert not authz.authorize(u, agents("patch", ns="other", name="a1", sub="status"))[0]
    # another service account gets nothing
    assert not authz.authorize(sa_user("ns", "a2-agent"), agents("get", name="a1"))[0]
    assert not authz.authorize(sa_user("other", "a1-agent"), agents("get", name="a1"))[0]


def test_forbidden_messages(store: Store) -> None:
    authz = Authorizer(store.list)
    u = sa_user("ns", "a1-agent")
    assert authz.forbidden_message(u, agents("patch", name="a1", sub="status")) == (
        'agents.agentcontroller.dev "a1" is forbidden: User "system:serviceaccount:ns:a1-agent" cannot patch '
        'resource "agents/status" in API group "agentcontroller.dev" in the namespace "ns"'
    )
    assert authz.forbidden_message(u, agents("list")) == (
        'agents.agentcontroller.dev is forbidden: User "system:serviceaccount:ns:a1-agent" cannot list '
        'resource "agents" in API group "agentcontroller.dev" in the namespace "ns"'
    )
    assert authz.forbidden_message(UserInfo("bob", []), Attributes("list", "", "nodes")) == (
        'nodes is forbidden: User "bob" cannot list resource "nodes" in API group "" at the cluster scope'
    )
    assert authz.forbidden_message(UserInfo("bob", []), Attributes("get", "", "", path="/metrics")) == (
        'forbidden: User "bob" cannot get path "/metrics"'
    )


def test_masters_always_allowed() -> None:
    authz = Authorizer(Store().list)
    assert authz.authorize(
        UserInfo("admin", ["system:masters"]), Attributes("delete", "", "nodes", name="n")
    )[0]
    assert not authz.authorize(UserInfo("admin", []), Attributes("delete", "", "nodes", name="n"))[0]


def test_cluster_role_binding_for_controller() -> None:
    s = Store()
    s.add(
        role(
            "",
            "agent-controller",
            [
                {
                    "apiGroups": [GROUP],
                    "resources": ["agents", "agents/status"],
                    "verbs": ["get", "list", "watch", "patch"],
                },
                {"apiGroups": [""], "resources": ["pods", "pods/log", "configmaps"], "verbs": ["*"]},
                {
                    "apiGroups": ["rbac.authorization.k8s.io"],
                    "resources": ["roles", "rolebindings"],
                    "verbs": ["create", "delete"],
                },
            ],
            kind="ClusterRole",
        )
    )
    s.add(
        binding(
            "",
            "agent-controller",
            "ClusterRole",
            "agent-controller",
            [{"kind": "ServiceAccount", "name": "agent-controller", "namespace": "system"}],
            kind="ClusterRoleBinding",
        )
    )
    authz = Authorizer(s.list)
    u = sa_user("system", "agent-controller")
    ok, reason = authz.authorize(u, agents("watch", ns=""))  # all namespaces
    assert ok
    assert reason == (
        'RBAC: allowed by ClusterRoleBinding "agent-controller" of ClusterRole "agent-controller" '
        'to ServiceAccount "system/agent-controller"'
    )
    assert authz.authorize(u, agents("patch", ns="team-a", name="x", sub="status"))[0]
    assert authz.authorize(u, Attributes("get", "", "pods", "log", "team-b", "p"))[0]
    assert authz.authorize(u, Attributes("deletecollection", "", "configmaps", namespace="x"))[0]
    assert not authz.authorize(u, Attributes("get", "", "pods", "exec", "team-b", "p"))[0]
    assert not authz.authorize(u, agents("delete", ns="team-a", name="x"))[0]
    assert not authz.authorize(u, Attributes("get", "", "secrets", namespace="x", name="s"))[0]
    assert not authz.authorize(u, Attributes("create", "apps", "roles", namespace="x"))[0]  # wrong group


def test_role_binding_to_cluster_role_is_namespaced() -> None:
    s = Store()
    s.add(
        role(
            "",
            "view-agents",
            [{"apiGroups": [GROUP], "resources": ["agents"], "verbs": ["get", "list"]}],
            "ClusterRole",
        )
    )
    s.add(binding("team-a", "bob-view", "ClusterRole", "view-agents", [{"kind": "User", "name": "bob"}]))
    s.add(binding("team-b", "devs-view", "ClusterRole", "view-agents", [{"kind": "Group", "name": "devs"}]))
    authz = Authorizer(s.list)
    bob = UserInfo("bob", ["system:authenticated"])
    ok, reason = authz.authorize(bob, agents("list", ns="team-a"))
    assert (
        ok
        and reason
        == 'RBAC: allowed by RoleBinding "bob-view/team-a" of ClusterRole "view-agents" to User "bob"'
    )
    assert not authz.authorize(bob, agents("list", ns="team-b"))[0]
    assert not authz.authorize(bob, agents("list", ns=""))[0]  # all namespaces needs a ClusterRoleBinding
    carol = UserInfo("carol", ["devs", "system:authenticated"])
    assert authz.authorize(carol, agents("get", ns="team-b", name="x"))[0]
    assert not authz.authorize(carol, agents("get", ns="team-a", name="x"))[0]


def test_service_account_subject_defaults_to_binding_namespace() -> None:
    s = Store()
    s.add(role("ns", "r", [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]))
    s.add(binding("ns", "b", "Role", "r", [{"kind": "ServiceAccount", "name": "sa"}]))
    s.add(
        role(
            "", "all-sa", [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}], "ClusterRole"
        )
    )
    s.add(
        binding("ns", "g", "ClusterRole", "all-sa", [{"kind": "Group", "name": "system:serviceaccounts:ns"}])
    )
    authz = Authorizer(s.list)
    assert authz.authorize(sa_user("ns", "sa"), Attributes("get", "", "pods", namespace="ns", name="p"))[0]
    assert authz.authorize(
        sa_user("ns", "other"), Attributes("get", "", "configmaps", namespace="ns", name="c")
    )[0]
    assert not authz.authorize(
        sa_user("x", "sa"), Attributes("get", "", "configmaps", namespace="ns", name="c")
    )[0]
    # a plain user subject naming the SA's user also works
    s.add(binding("ns", "u", "Role", "r", [{"kind": "User", "name": "system:serviceaccount:ns:u"}]))
    authz.invalidate()
    assert authz.authorize(sa_user("ns", "u"), Attributes("get", "", "pods", namespace="ns", name="p"))[0]


def test_wildcards_and_subresource_matching() -> None:
    s = Store()
    s.add(role("", "everything", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}], "ClusterRole"))
    s.add(
        role(
            "",
            "statuses",
            [{"apiGroups": ["*"], "resources": ["*/status"], "verbs": ["patch"]}],
            "ClusterRole",
        )
    )
    s.add(
        role(
            "", "main-only", [{"apiGroups": [GROUP], "resources": ["agents"], "verbs": ["*"]}], "ClusterRole"
        )
    )
    s.add(
        binding(
            "", "root", "ClusterRole", "everything", [{"kind": "User", "name": "root"}], "ClusterRoleBinding"
        )
    )
    s.add(
        binding("", "st", "ClusterRole", "statuses", [{"kind": "User", "name": "st"}], "ClusterRoleBinding")
    )
    s.add(
        binding("", "mo", "ClusterRole", "main-only", [{"kind": "User", "name": "mo"}], "ClusterRoleBinding")
    )
    authz = Authorizer(s.list)
    root, st, mo = UserInfo("root", []), UserInfo("st", []), UserInfo("mo", [])
    assert authz.authorize(root, Attributes("delete", "apps", "deployments", namespace="x", name="d"))[0]
    assert authz.authorize(root, agents("patch", name="a", sub="status"))[0]
    assert authz.authorize(st, agents("patch", name="a", sub="status"))[0]
    assert authz.authorize(st, Attributes("patch", "", "pods", "status", "ns", "p"))[0]
    assert not authz.authorize(st, agents("patch", name="a"))[0]
    assert not authz.authorize(st, agents("get", name="a", sub="status"))[0]
    assert authz.authorize(mo, agents("patch", name="a"))[0]
    assert not authz.authorize(mo, agents("patch", name="a", sub="status"))[
        0
    ]  # agents does not cover agents/status
    # resource rules never grant non-resource URLs
    assert not authz.authorize(root, Attributes("get", "", "", path="/healthz"))[0]


def test_non_resource_urls() -> None:
    s = Store()
    s.add(
        role(
            "",
            "probes",
            [{"nonResourceURLs": ["/healthz", "/metrics", "/debug/*"], "verbs": ["get"]}],
            "ClusterRole",
        )
    )
    s.add(
        binding(
            "",
            "probes",
            "ClusterRole",
            "probes",
            [{"kind": "Group", "name": "system:authenticated"}],
            "ClusterRoleBinding",
        )
    )
    # a RoleBinding can never grant non-resource URLs
    s.add(role("", "all-urls", [{"nonResourceURLs": ["*"], "verbs": ["*"]}], "ClusterRole"))
    s.add(binding("ns", "urls", "ClusterRole", "all-urls", [{"kind": "User", "name": "eve"}]))
    authz = Authorizer(s.list)
    u = UserInfo("bob", ["system:authenticated"])
    assert authz.authorize(u, Attributes("get", "", "", path="/healthz"))[0]
    assert authz.authorize(u, Attributes("get", "", "", path="/debug/pprof/heap"))[0]
    assert not authz.authorize(u, Attributes("post", "", "", path="/healthz"))[0]
    assert not authz.authorize(u, Attributes("get", "", "", path="/healthz/ready"))[0]
    assert not authz.authorize(u, Attributes("get", "", "", path="/debug"))[0]
    assert not authz.authorize(UserInfo("bob", []), Attributes("get", "", "", path="/healthz"))[0]
    assert not authz.authorize(UserInfo("eve", []), Attributes("get", "", "", path="/healthz"))[0]


def test_cache_and_invalidate(store: Store) -> None:
    authz = Authorizer(store.list)
    u = sa_user("ns", "a1-agent")
    attrs = agents("patch", name="a2", sub="status")
    assert not authz.authorize(u, attrs)[0]
    calls = store.calls
    for _ in range(10):
        authz.authorize(u, attrs)
        authz.authorize(u, agents("get", name="a1"))
    assert store.calls == calls  # served from the snapshot and caches
    store.objects["Role"][0]["rules"][1]["resourceNames"].append("a2")
    assert not authz.authorize(u, attrs)[0]  # stale until invalidated
    authz.invalidate()
    assert authz.authorize(u, attrs)[0]
    assert store.calls == calls + 4
    # deleting the binding revokes
    store.objects["RoleBinding"].clear()
    authz.invalidate()
    assert not authz.authorize(u, agents("get", name="a1"))[0]


def test_role_ref_to_missing_role_grants_nothing() -> None:
    s = Store()
    s.add(binding("ns", "b", "Role", "nope", [{"kind": "User", "name": "bob"}]))
    s.add(binding("", "cb", "Role", "r", [{"kind": "User", "name": "bob"}], "ClusterRoleBinding"))
    s.add(role("", "r", [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]))
    authz = Authorizer(s.list)
    assert not authz.authorize(UserInfo("bob", []), Attributes("get", "", "pods", namespace="ns", name="p"))[
        0
    ]


def test_aggregated_cluster_role() -> None:
    s = Store()
    agg = role("", "agg", [], "ClusterRole")
    agg["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {"aggregate-to-agg": "true"}}]}
    part = role(
        "", "part", [{"apiGroups": [GROUP], "resources": ["agents"], "verbs": ["get"]}], "ClusterRole"
    )
    part["metadata"]["labels"] = {"aggregate-to-agg": "true"}
    s.add(agg)
    s.add(part)
    s.add(binding("", "b", "ClusterRole", "agg", [{"kind": "User", "name": "bob"}], "ClusterRoleBinding"))
    authz = Authorizer(s.list)
    assert authz.authorize(UserInfo("bob", []), agents("get", name="x"))[0]


def test_incremental_invalidate_matches_full_rebuild(store: Store) -> None:
    """invalidate(kind, obj[, deleted]) keeps the index equal to a rebuild from the store."""
    inc = Authorizer(store.list)
    u = sa_user("ns", "a1-agent")
    bob = UserInfo("bob", ["devs"])
    requests = [
        (u, agents("patch", name="a1", sub="status")),
        (u, agents("get", name="a2")),
        (bob, agents("list", ns="ns")),
        (bob, agents("list", ns="")),
        (bob, Attributes("get", "", "", path="/healthz")),
    ]

    def check() -> None:
        full = Authorizer(store.list)
        for user, attrs in requests:
            assert inc.authorize(user, attrs) == full.authorize(user, attrs), (user, attrs)

    def write(obj: dict[str, Any], deleted: bool = False) -> None:
        kind = obj["kind"]
        objs = store.objects[kind]
        key = (obj["metadata"].get("namespace"), obj["metadata"]["name"])
        objs[:] = [o for o in objs if (o["metadata"].get("namespace"), o["metadata"]["name"]) != key]
        if not deleted:
            objs.append(obj)
        inc.invalidate(kind, obj, deleted)
        check()

    check()
    view = role(
        "", "view", [{"apiGroups": [GROUP], "resources": ["agents"], "verbs": ["list"]}], "ClusterRole"
    )
    write(view)
    write(binding("ns", "devs", "ClusterRole", "view", [{"kind": "Group", "name": "devs"}]))
    write(
        binding(
            "", "devs-all", "ClusterRole", "view", [{"kind": "User", "name": "bob"}], "ClusterRoleBinding"
        )
    )
    probes = role("", "probes", [{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}], "ClusterRole")
    write(probes)
    write(
        binding(
            "", "probes", "ClusterRole", "probes", [{"kind": "Group", "name": "devs"}], "ClusterRoleBinding"
        )
    )
    a1 = role(
        "ns",
        "a1-agent",
        [{"apiGroups": [GROUP], "resources": ["agents"], "resourceNames": ["a1", "a2"], "verbs": ["get"]}],
    )
    write(a1)  # update: a1's status access gone, a2 readable
    write(binding("", "devs-all", "ClusterRole", "view", [], "ClusterRoleBinding"))  # subjects emptied
    write(binding("ns", "devs", "ClusterRole", "view", [{"kind": "Group", "name": "devs"}]), deleted=True)
    write(view, deleted=True)
    write(a1, deleted=True)
    agg = role("", "agg", [], "ClusterRole")
    agg["aggregationRule"] = {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]}
    write(agg)  # falls back to a full rebuild
    labelled = role(
        "", "part", [{"apiGroups": [GROUP], "resources": ["agents"], "verbs": ["list"]}], "ClusterRole"
    )
    labelled["metadata"]["labels"] = {"x": "y"}
    write(labelled)
    write(binding("", "agg", "ClusterRole", "agg", [{"kind": "User", "name": "bob"}], "ClusterRoleBinding"))
    assert inc.authorize(bob, agents("list", ns=""))[0]
