"""Per-kind rules of the devcluster store, as kube-apiserver's registry strategies
(``pkg/registry/<group>/<resource>/strategy.go``).

The generic store (``store.py``: create/update/patch/apply/delete, commit, lists, watches) asks
:func:`strategy_for` for the :class:`~.base.Strategy` of the resource it writes and calls its hooks;
a kind with no entry in :data:`STRATEGIES` gets the no-op :class:`~.base.Strategy`, every custom
resource gets :class:`~.crds.CustomResourceStrategy`. The controllers that act on every kind — the
garbage collector (``gc.py``) and the namespace controller's ``namespaces.content_removed`` — are
called by the store directly.

To give a built-in kind rules: subclass ``Strategy`` in the module of its API group (or a new one),
override the hooks it needs, and add it to :data:`STRATEGIES` under its bucket key (storage group,
plural).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Strategy, Write
from .core import ConfigMapStrategy, SecretStrategy
from .crds import CrdStrategy, CustomResourceStrategy
from .namespaces import NamespaceStrategy
from .pods import PodStrategy
from .policies import PolicyStrategy
from .rbacobjects import RbacStrategy

if TYPE_CHECKING:
    from ..resources import ResourceType

__all__ = ["STRATEGIES", "Strategy", "Write", "strategy_for"]

_RBAC = RbacStrategy()
_POLICIES = PolicyStrategy()

STRATEGIES: dict[tuple[str, str], Strategy] = {
    ("", "pods"): PodStrategy(),
    ("", "namespaces"): NamespaceStrategy(),
    ("", "configmaps"): ConfigMapStrategy(),
    ("", "secrets"): SecretStrategy(),
    ("apiextensions.k8s.io", "customresourcedefinitions"): CrdStrategy(),
    ("rbac.authorization.k8s.io", "roles"): _RBAC,
    ("rbac.authorization.k8s.io", "rolebindings"): _RBAC,
    ("rbac.authorization.k8s.io", "clusterroles"): _RBAC,
    ("rbac.authorization.k8s.io", "clusterrolebindings"): _RBAC,
    ("admissionregistration.k8s.io", "validatingadmissionpolicies"): _POLICIES,
    ("admissionregistration.k8s.io", "validatingadmissionpolicybindings"): _POLICIES,
}
CUSTOM_RESOURCE = CustomResourceStrategy()
GENERIC = Strategy()  # kinds without rules of their own (serviceaccounts, events, leases, ...)


def strategy_for(rt: ResourceType) -> Strategy:
    """The strategy of ``rt``'s resource (by bucket key; every custom resource shares one)."""
    if rt.crd is not None:
        return CUSTOM_RESOURCE
    return STRATEGIES.get(rt.bucket_key, GENERIC)
