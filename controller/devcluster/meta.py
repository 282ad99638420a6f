"""ObjectMeta validation (names, labels, annotations, ownerReferences, finalizers) shared by every kind."""

from __future__ import annotations

import re
from typing import Any

from .errors import Cause, bad_request, ferr
from .resources import ResourceType

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QNAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_QNAME_MSG = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with "
    "an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation "
    "is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
_LVALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', "
    "regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
_STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion", "customresourcecleanup.apiextensions.k8s.io"}
GEN_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def name_errors(name: str, check: str) -> list[str]:
    """Why ``name`` is not a valid object name under ``check`` (subdomain/label/path)."""
    if check == "label":
        errs = []
        if len(name) > 63:
            errs.append("must be no more than 63 characters")
        if not DNS1123_LABEL.match(name):
            errs.append(LABEL_MSG)
        return errs
    if check == "path":
        if name in (".", ".."):
            return [f"may not be '{name}'"]
        for bad in ("/", "%"):
            if bad in name:
                return [f"may not contain '{bad}'"]
        return []
    errs = []
    if len(name) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(name):
        errs.append(_SUBDOMAIN_MSG)
    return errs


def qualified_name_errors(key: str) -> list[str]:
    """Why ``key`` is not a valid qualified name (label / annotation key)."""
    prefix, sep, name = key.rpartition("/")
    errs = []
    if sep:
        if not prefix:
            errs.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _DNS1123_SUBDOMAIN.match(prefix):
            errs.append("prefix part " + _SUBDOMAIN_MSG)
    if not name:
        errs.append("name part must be non-empty")
    else:
        if len(name) > 63:
            errs.append("name part must be no more than 63 characters")
        if not _QNAME.match(name):
            errs.append(_QNAME_MSG)
    return errs


def validate_meta(rt: ResourceType, obj: dict[str, Any], errs: list[Cause]) -> None:
    """Generic ObjectMeta validation (name, labels, annotations, ownerReferences, finalizers)."""
    md = obj["metadata"]
    name = md.get("name") or ""
    for e in name_errors(name, rt.name_check):
        errs.append(ferr("metadata.name", "FieldValueInvalid", name, e))
    labels = md.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            raise bad_request(f"{rt.kind} in version \"{rt.version}\" cannot be handled as a {rt.kind}: metadata.labels must be a map of strings")
        for k, v in labels.items():
            if not isinstance(v, str):
                raise bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    f"json: cannot unmarshal {type(v).__name__} into Go struct field ObjectMeta.metadata.labels of type string"
                )
            for e in qualified_name_errors(k):
                errs.append(ferr("metadata.labels", "FieldValueInvalid", k, e))
            if len(v) > 63:
                errs.append(ferr("metadata.labels", "FieldValueInvalid", v, "must be no more than 63 characters"))
            if not _LABEL_VALUE.match(v):
                errs.append(ferr("metadata.labels", "FieldValueInvalid", v, _LVALUE_MSG))
    ann = md.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict) or not all(isinstance(v, str) for v in ann.values()):
            raise bad_request(f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: metadata.annotations must be a map of strings')
        total = 0
        for k, v in ann.items():
            for e in qualified_name_errors(k.lower()):
                errs.append(ferr("metadata.annotations", "FieldValueInvalid", k, e))
            total += len(k) + len(v)
        if total > 262144:
            errs.append(ferr("metadata.annotations", "FieldValueTooLong", detail="must have at most 262144 bytes"))
    refs = md.get("ownerReferences")
    if refs is not None:
        if not isinstance(refs, list):
            raise bad_request("metadata.ownerReferences must be a list")
        controllers = []
        for i, r in enumerate(refs):
            p = f"metadata.ownerReferences[{i}]"
            if not isinstance(r, dict):
                raise bad_request(f"{p} must be an object")
            for f in ("apiVersion", "kind", "name"):
                if not r.get(f):
                    errs.append(ferr(f"{p}.{f}", "FieldValueInvalid", r.get(f, ""), f"{f} must not be empty"))
            if not r.get("uid"):
                errs.append(ferr(f"{p}.uid", "FieldValueInvalid", r.get("uid", ""), "uid must not be empty"))
            if r.get("controller") is True:
                controllers.append(r.get("name", ""))
        if len(controllers) > 1:
            errs.append(
                ferr(
                    "metadata.ownerReferences",
                    "FieldValueInvalid",
                    "[...]",
                    "Only one reference can have Controller set to true. Found \"true\" in references for "
                    + " and ".join(controllers),
                )
            )
    fins = md.get("finalizers")
    if fins is not None:
        if not isinstance(fins, list) or not all(isinstance(f, str) for f in fins):
            raise bad_request("metadata.finalizers must be a list of strings")
        for i, f in enumerate(fins):
            if "/" not in f and f not in _STANDARD_FINALIZERS:
                errs.append(
                    ferr(
                        f"metadata.finalizers[{i}]",
                        "FieldValueInvalid",
                        f,
                        "name is neither a standard finalizer name nor is it fully qualified",
                    )
                )
            elif "/" in f:
                for e in qualified_name_errors(f):
                    errs.append(ferr(f"metadata.finalizers[{i}]", "FieldValueInvalid", f, e))
