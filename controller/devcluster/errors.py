"""API errors of the devcluster emulator: :class:`ApiError` (answered as a ``Status``), its constructors
with kube-apiserver's wording, and the field errors (:class:`Cause`, :func:`ferr`) of 422 Invalid."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resources import ResourceType

MISSING: Any = object()  # "no value" (a field absent, as opposed to null)


class ApiError(Exception):
    """An error answered as a k8s ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``Status`` object of this error."""
        st: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.reason:
            del st["reason"]     # an unclassified error (e.g. a kubelet the API server cannot reach)
        if self.details is not None:
            st["details"] = self.details
        return st


def status_details(rt: ResourceType | None, name: str | None) -> dict[str, Any]:
    """``details`` of a Status about ``name`` of ``rt``."""
    d: dict[str, Any] = {}
    if name:
        d["name"] = name
    if rt is not None:
        if rt.group:
            d["group"] = rt.group
        d["kind"] = rt.plural
    return d


def not_found(rt: ResourceType, name: str) -> ApiError:
    """404 NotFound for ``name`` of ``rt``."""
    return ApiError(404, "NotFound", f'{rt.qualified} "{name}" not found', status_details(rt, name))


def already_exists(rt: ResourceType, name: str) -> ApiError:
    """409 AlreadyExists."""
    return ApiError(409, "AlreadyExists", f'{rt.qualified} "{name}" already exists', status_details(rt, name))


def conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    """409 Conflict (optimistic concurrency / preconditions)."""
    return ApiError(
        409, "Conflict", f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}', status_details(rt, name)
    )


def precondition_conflict(rt: ResourceType, name: str, why: str) -> ApiError:
    """409 Conflict of a DELETE whose preconditions do not hold. kube-apiserver's rest.BeforeDelete
    names the Kind here, not the resource: ``Operation cannot be fulfilled on ConfigMap "x": ...``
    (``Agent.agentcontroller.dev`` for a custom resource), and so do the details."""
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    details: dict[str, Any] = {"name": name, **({"group": rt.group} if rt.group else {}), "kind": rt.kind}
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {kind} "{name}": {why}', details)


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, "BadRequest", message)


def forbidden(rt: ResourceType, name: str, why: str) -> ApiError:
    """403 Forbidden."""
    target = f'{rt.qualified} "{name}"' if name else rt.qualified
    return ApiError(403, "Forbidden", f"{target} is forbidden: {why}", status_details(rt, name))


@dataclass
class Cause:
    """One field error of a 422 Invalid answer."""

    field: str
    type: str
    message: str  # full text "field: detail"


def _cause_text(type_: str) -> str:
    return {
        "FieldValueRequired": "Required value",
        "FieldValueInvalid": "Invalid value",
        "FieldValueNotSupported": "Unsupported value",
        "FieldValueDuplicate": "Duplicate value",
        "FieldValueNotFound": "Not found",
        "FieldValueForbidden": "Forbidden",
        "FieldValueTooLong": "Too long",
        "FieldValueTooMany": "Too many",
        "FieldValueTypeInvalid": "Invalid value",
    }.get(type_, "Invalid value")


def _q(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def ferr(path: str, type_: str, value: Any = MISSING, detail: str = "") -> Cause:
    """Build a field error with the kube text, e.g. ``spec.x: Invalid value: "v": detail``."""
    text = f"{path}: {_cause_text(type_)}"
    if value is not MISSING and type_ not in ("FieldValueRequired", "FieldValueForbidden", "FieldValueTooLong"):
        text += f": {_q(value)}"
    if detail:
        text += f": {detail}"
    return Cause(path, type_, text)


def invalid(rt: ResourceType, name: str, causes: list[Any]) -> ApiError:
    """422 Invalid with ``details.causes``; ``causes`` are :class:`Cause` or schema FieldErrors."""
    msgs = [c.message for c in causes]
    joined = msgs[0] if len(msgs) == 1 else "[" + ", ".join(msgs) + "]"
    kind = rt.kind + ("." + rt.group if rt.group else "")
    out_causes = []
    for c in causes:
        m = c.message
        prefix = f"{c.field}: "
        if c.field and m.startswith(prefix):
            m = m[len(prefix) :]
        out_causes.append({"reason": c.type, "message": m, "field": c.field})
    details: dict[str, Any] = {"name": name, "kind": rt.kind, "causes": out_causes}
    if rt.group:
        details["group"] = rt.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {joined}', details)
