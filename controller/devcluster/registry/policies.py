"""ValidatingAdmissionPolicies and their bindings (``admissionregistration.k8s.io``): checked by the
admission plugin (``devcluster/admission.py``), which compiles them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Strategy, Write

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Store


class PolicyStrategy(Strategy):
    """``validatingadmissionpolicies``, ``validatingadmissionpolicybindings``."""

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if store.admission is not None:
            errs.extend(store.admission.check(rt.bucket_key[1], obj))

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        if store.admission is not None and w.subresource != "status":
            errs.extend(store.admission.check(rt.bucket_key[1], new))
