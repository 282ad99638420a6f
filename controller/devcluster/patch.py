"""Patch algorithms of the devcluster API server: JSON merge patch (RFC 7386), JSON patch
(RFC 6902, incl. ``test``) and strategic-merge patch for the built-in kinds we serve.

All functions are pure: they never mutate their inputs' nested values that end up shared; the
caller passes a private copy of the current object and gets the patched object back.
Errors raise :class:`PatchError` with the HTTP status the apiserver would answer (400 for a
malformed patch document, 422 for a patch that cannot be applied, e.g. a failed ``test``).
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = [
    "PatchError",
    "json_equal",
    "json_patch",
    "merge_patch",
    "smp_list_keys",
    "strategic_merge_patch",
]


class PatchError(Exception):
    """A patch that is malformed (status 400) or cannot be applied (status 422)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values (``True != 1``, ``1 == 1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return False
        return all(json_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        if not isinstance(b, list) or len(a) != len(b):
            return False
        return all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------------------------------
# JSON merge patch


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 merge patch; returns the result (``target`` may be modified in place)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    for k, v in patch.items():
        if v is None:
            target.pop(k, None)
        elif isinstance(v, dict):
            target[k] = merge_patch(target.get(k), v)
        else:
            target[k] = copy.deepcopy(v)
    return target


# ------------------------------------------------------------------------------------------
# JSON patch


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("json patch: path must be a string", 400)
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"json patch: invalid path {path!r}: must start with '/'", 400)
    return [_unescape(t) for t in path[1:].split("/")]


def _index(token: str, length: int, allow_end: bool, path: str) -> int:
    if token == "-" and allow_end:
        return length
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"unable to access invalid index: {token} (path {path})")
    i = int(token)
    if i > length or (i == length and not allow_end):
        raise PatchError(f"unable to access invalid index: {i} (path {path})")
    return i


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    cur = doc
    for t in tokens[:-1]:
        if isinstance(cur, dict):
            if t not in cur:
                raise PatchError(f"doc is missing path: {path}: missing value")
            cur = cur[t]
        elif isinstance(cur, list):
            cur = cur[_index(t, len(cur), False, path)]
        else:
            raise PatchError(f"doc is missing path: {path}: missing value")
    return cur


def _get(doc: Any, tokens: list[str], path: str) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"doc is missing path: {path}: missing value")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), False, path)]
    raise PatchError(f"doc is missing path: {path}: missing value")


def _add(doc: Any, tokens: list[str], value: Any, path: str) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), True, path), value)
    else:
        raise PatchError(f"doc is missing path: {path}: missing value")
    return doc


def _remove(doc: Any, tokens: list[str], path: str) -> tuple[Any, Any]:
    if not tokens:
        raise PatchError("json patch: cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to remove nonexistent key: {last}: missing value")
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent), False, path))
    raise PatchError(f"doc is missing path: {path}: missing value")


def json_patch(doc: Any, ops: Any) -> Any:
    """Apply RFC 6902 operations to ``doc`` (modified in place) and return the result."""
    if not isinstance(ops, list):
        raise PatchError("json patch: the patch must be a JSON array of operations", 400)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError("json patch: every operation needs an 'op'", 400)
        kind = op["op"]
        path: str = op.get("path")  # type: ignore[assignment]
        tokens = _pointer(path)
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"json patch: {kind} operation does not have a value", 400)
        if kind == "add":
            doc = _add(doc, tokens, copy.deepcopy(op["value"]), path)
        elif kind == "remove":
            doc, _ = _remove(doc, tokens, path)
        elif kind == "replace":
            _get(doc, tokens, path)  # must exist
            if not tokens:
                doc = copy.deepcopy(op["value"])
            else:
                parent = _parent(doc, tokens, path)
                if isinstance(parent, dict):
                    parent[tokens[-1]] = copy.deepcopy(op["value"])
                else:
                    parent[_index(tokens[-1], len(parent), False, path)] = copy.deepcopy(op["value"])
        elif kind == "move":
            frm: str = op.get("from")  # type: ignore[assignment]
            ftokens = _pointer(frm)
            doc, value = _remove(doc, ftokens, frm)
            doc = _add(doc, tokens, value, path)
        elif kind == "copy":
            frm2: str = op.get("from")  # type: ignore[assignment]
            value = copy.deepcopy(_get(doc, _pointer(frm2), frm2))
            doc = _add(doc, tokens, value, path)
        elif kind == "test":
            try:
                current = _get(doc, tokens, path)
            except PatchError:
                current = None
                if op["value"] is not None:
                    raise PatchError(f"testing value {path} failed: test failed") from None
            if not json_equal(current, op["value"]):
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"json patch: unexpected operation {kind!r}", 400)
    return doc


# ------------------------------------------------------------------------------------------
# strategic merge patch

_PRIMITIVE_MERGE = "<primitive-merge>"

# (kind or "*", path of the list without indices) -> merge key, or _PRIMITIVE_MERGE for
# lists of scalars merged as sets. Lists not listed here are replaced, like JSON merge patch.
_LIST_KEYS: dict[tuple[str, str], str] = {
    ("*", "metadata.ownerReferences"): "uid",
    ("*", "metadata.finalizers"): _PRIMITIVE_MERGE,
}
_POD_SPEC_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "containers.env": "name",
    "initContainers.env": "name",
    "ephemeralContainers.env": "name",
    "containers.ports": "containerPort",
    "initContainers.ports": "containerPort",
    "containers.volumeMounts": "mountPath",
    "initContainers.volumeMounts": "mountPath",
    "ephemeralContainers.volumeMounts": "mountPath",
    "containers.volumeDevices": "devicePath",
    "initContainers.volumeDevices": "devicePath",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
for _k, _v in _POD_SPEC_KEYS.items():
    _LIST_KEYS[("Pod", "spec." + _k)] = _v
_LIST_KEYS[("Pod", "status.conditions")] = "type"
_LIST_KEYS[("Pod", "status.podIPs")] = "ip"
_LIST_KEYS[("Pod", "status.hostIPs")] = "ip"
_LIST_KEYS[("ServiceAccount", "secrets")] = "name"
_LIST_KEYS[("ServiceAccount", "imagePullSecrets")] = "name"
_LIST_KEYS[("Namespace", "status.conditions")] = "type"


def smp_list_keys(kind: str, path: str) -> str | None:
    """The strategic-merge key of the list at ``path`` (dotted, no indices) of ``kind``."""
    return _LIST_KEYS.get((kind, path)) or _LIST_KEYS.get(("*", path))


def strategic_merge_patch(original: dict[str, Any], patch: Any, kind: str) -> dict[str, Any]:
    """Apply a strategic-merge patch (with ``$patch``, ``$retainKeys``,
    ``$setElementOrder/…`` and ``$deleteFromPrimitiveList/…`` directives) for ``kind``."""
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch: the patch must be a JSON object", 400)
    result = _smp_map(original if isinstance(original, dict) else {}, patch, kind, "")
    if result is None:
        raise PatchError("strategic merge patch: cannot delete the whole object")
    return result


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _smp_map(orig: dict[str, Any], patch: dict[str, Any], kind: str, path: str) -> dict[str, Any] | None:
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if not k.startswith("$")}
    if directive not in (None, "merge"):
        raise PatchError(f"strategic merge patch: unknown patch type {directive!r}", 400)
    retain = patch.get("$retainKeys")
    out = orig
    for k, v in patch.items():
        if k.startswith("$"):
            if k.startswith("$deleteFromPrimitiveList/"):
                field = k.split("/", 1)[1]
                cur = out.get(field)
                if isinstance(cur, list) and isinstance(v, list):
                    out[field] = [x for x in cur if not any(json_equal(x, d) for d in v)]
            continue
        sub = _join(path, k)
        if v is None:
            out.pop(k, None)
            continue
        cur = out.get(k)
        if isinstance(v, dict):
            merged = _smp_map(cur if isinstance(cur, dict) else {}, v, kind, sub)
            if merged is None:
                out.pop(k, None)
            else:
                out[k] = merged
        elif isinstance(v, list):
            key = smp_list_keys(kind, sub)
            if key is None:
                out[k] = [_strip(x) for x in v]
            elif key == _PRIMITIVE_MERGE:
                base = list(cur) if isinstance(cur, list) else []
                for x in v:
                    if not any(json_equal(x, y) for y in base):
                        base.append(copy.deepcopy(x))
                out[k] = base
            else:
                out[k] = _smp_keyed_list(cur if isinstance(cur, list) else [], v, key, kind, sub)
        else:
            out[k] = v
    if isinstance(retain, list):
        keep = set(retain)
        for k in list(out.keys()):
            if k not in keep and k not in patch:
                del out[k]
    return out


def _strip(v: Any) -> Any:
    """Drop directives from a value that replaces (rather than merges into) the original."""
    if isinstance(v, dict):
        return {k: _strip(x) for k, x in v.items() if not k.startswith("$")}
    if isinstance(v, list):
        return [_strip(x) for x in v]
    return v


def _smp_keyed_list(
    orig: list[Any], patch: list[Any], key: str, kind: str, path: str
) -> list[Any]:
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [_strip(p) for p in patch if not (isinstance(p, dict) and p.get("$patch") == "replace")]
    out = list(orig)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(f"strategic merge patch: {path}: items must be objects keyed by {key}")
        if key not in item:
            raise PatchError(f"map: {item} does not contain declared merge key: {key}")
        kv = item[key]
        idx = next(
            (i for i, o in enumerate(out) if isinstance(o, dict) and json_equal(o.get(key), kv)), None
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_strip(item))
        else:
            merged = _smp_map(out[idx], item, kind, path)
            if merged is None:
                out.pop(idx)
            else:
                out[idx] = merged
    return out
