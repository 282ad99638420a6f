"""The interface of a kind's strategy: what the generic store asks of a kind on its writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..resources import ResourceType
    from ..store import Bucket, Entry, Store


@dataclass(frozen=True, slots=True)
class Write:
    """Who writes and how: what a strategy may need beyond the objects."""

    user: Any  # rbac.UserInfo; None for the control plane (privileged)
    warnings: list[str] | None  # where warnings go (None: nobody listens)
    strict: bool  # fieldValidation=Strict: unknown fields are a 400, not a warning
    subresource: str = ""  # of an update ("", "status", "finalize")
    internal: bool = False  # an update by the control plane (kubelet, GC, namespace controller)


class Strategy:
    """A kind's rules on top of the generic store, like kube-apiserver's registry strategies
    (``PrepareForCreate``/``Validate``, ``PrepareForUpdate``/``ValidateUpdate``) together with the
    controllers that react to the kind's writes. Every method is a no-op here: a kind overrides what
    it needs. Field errors go to ``errs`` (a 422 Invalid); other errors are raised as ApiError.

    The hooks run inside one write, synchronously; work for later goes through ``store.defer``."""

    graceful = False  # deletion waits out a grace period (pods): see deletion_grace
    validates_status = False  # writes to ``/status`` are validated too (custom resources)

    def prepare_create(
        self, store: Store, rt: ResourceType, ns: str, obj: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        """Default, validate and complete a new object (metadata is validated by the store after)."""

    def prepare_update(
        self, store: Store, rt: ResourceType, new: dict[str, Any], old: dict[str, Any], errs: list[Any], w: Write
    ) -> None:
        """Default and validate an update of ``old`` to ``new`` (not run for ``/status`` of built-in kinds)."""

    def update_subresource(self, subresource: str, new: dict[str, Any], old: Entry) -> dict[str, Any] | None:
        """The object a write to a kind-specific subresource stores (None: the kind has none such)."""
        return None

    def deletion_grace(self, obj: dict[str, Any], grace_opt: Any) -> int:
        """Seconds the deletion of ``obj`` waits (``gracePeriodSeconds`` of the request or None)."""
        return 0

    def begin_delete(self, store: Store, rt: ResourceType, b: Bucket, entry: Entry) -> dict[str, Any] | None:
        """Take over a DELETE of an object not yet deleting: the answer (None: the generic deletion)."""
        return None

    def after_create(self, store: Store, b: Bucket, entry: Entry) -> None:
        """React to a committed create."""

    def after_update(self, store: Store, b: Bucket, entry: Entry, old: Entry) -> None:
        """React to a committed update."""

    def after_deletion_started(self, store: Store, b: Bucket, entry: Entry) -> None:
        """React to a deletionTimestamp being set (finalizers or a grace period remain)."""

    def after_remove(self, store: Store, b: Bucket, final: Entry) -> None:
        """React to an object being gone (``final``: its last state)."""
