"""Structural-schema pruning, defaulting and validation of custom resources, like kube-apiserver.

Pure module (no I/O). A :class:`StructuralSchema` compiles an ``openAPIV3Schema`` once into a tree
of ``_Node`` objects (CEL programs included); :meth:`~StructuralSchema.prune`,
:meth:`~StructuralSchema.default` and :meth:`~StructuralSchema.validate` then only walk the object.

Error texts follow kube-apiserver (``apiextensions-apiserver`` + ``kube-openapi`` +
``apimachinery/pkg/util/validation/field``), e.g.::

    spec.image: Required value
    status.progress: Invalid value: 150: status.progress in body should be less than or equal to 100
    status.phase: Unsupported value: "Bogus": supported values: "Pending", "Running", ...
    spec: Invalid value: spec.terminate cannot be set back to false once it is true

CEL rules (``x-kubernetes-validations``) are evaluated with the ``cel`` package
(common-expression-language, a Rust CEL interpreter), compiled once per distinct expression.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import cel

__all__ = ["FieldError", "SchemaError", "StructuralSchema"]

# ----------------------------------------------------------------------------------------------
# errors


@dataclass
class FieldError:
    """One validation failure, as a kube-apiserver ``StatusCause``."""

    field: str  # path of the failing node, e.g. "spec.image"
    type: str  # FieldValueRequired | FieldValueInvalid | FieldValueNotSupported | ...
    message: str  # full text, e.g. "spec.image: Required value"

    def __str__(self) -> str:
        return self.message


class SchemaError(ValueError):
    """The schema itself is unusable (e.g. a CEL rule does not compile, a bad regex)."""


REQUIRED = "FieldValueRequired"
INVALID = "FieldValueInvalid"
NOT_SUPPORTED = "FieldValueNotSupported"
TYPE_INVALID = "FieldValueTypeInvalid"
TOO_LONG = "FieldValueTooLong"
TOO_MANY = "FieldValueTooMany"
FORBIDDEN = "FieldValueForbidden"
DUPLICATE = "FieldValueDuplicate"

_TYPE_TEXT = {
    REQUIRED: "Required value",
    INVALID: "Invalid value",
    NOT_SUPPORTED: "Unsupported value",
    TYPE_INVALID: "Invalid value",
    TOO_LONG: "Too long",
    TOO_MANY: "Too many",
    FORBIDDEN: "Forbidden",
    DUPLICATE: "Duplicate value",
}
# error types whose body never shows the bad value (field.Error.ErrorBody)
_NO_VALUE = {REQUIRED, FORBIDDEN, TOO_LONG}
# schema errors that stop CEL evaluation (apiextensions strategy.go hasBlockingErr)
_BLOCKING = {NOT_SUPPORTED, REQUIRED, TOO_LONG, TOO_MANY, TYPE_INVALID}
_NIL = "<nil>"


def _go_quote(s: str) -> str:
    """Approximation of Go's strconv.Quote / %q."""
    return json.dumps(s, ensure_ascii=False)


def _go_num(x: float) -> str:
    """Go ``%v`` of a JSON number (int64 or float64)."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if math.isfinite(x) and x == int(x) and abs(x) < 1e21:
        return str(int(x))
    r = repr(x)
    return {"inf": "+Inf", "-inf": "-Inf", "nan": "NaN"}.get(r, r)


def _go_value(v: Any) -> str:
    """The bad value as kube's field.Error.ErrorBody prints it (1.37: objects and lists as JSON,
    e.g. ``Duplicate value: {"name":"x"}``)."""
    if v is None:
        return "null"
    if isinstance(v, str):
        return _go_quote(v)
    if isinstance(v, (bool, int, float)):
        return _go_num(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


_OMIT = object()  # field.OmitValueType: the body shows no value (a failed CEL rule on an object or a list)


def _err(etype: str, path: str, value: Any, detail: str) -> FieldError:
    """Build a FieldError with kube's ``<field>: <body>`` text."""
    field = path or _NIL
    body = _TYPE_TEXT[etype]
    if etype not in _NO_VALUE and value is not _OMIT:
        body = f"{body}: {_go_value(value)}"
    if detail:
        body = f"{body}: {detail}"
    return FieldError(field, etype, f"{field}: {body}")


def _too_many(path: str, actual: int, maximum: int) -> FieldError:
    field = path or _NIL
    return FieldError(field, TOO_MANY, f"{field}: Too many: {actual}: must have at most {maximum} items")


# ----------------------------------------------------------------------------------------------
# JSON helpers

_KIND: dict[type, str] = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
}


def _kind(v: Any) -> str:
    k = _KIND.get(type(v))
    if k is not None:
        return k
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "object"
    if isinstance(v, (list, tuple)):
        return "array"
    return type(v).__name__


def _json_copy(v: Any) -> Any:
    """Deep copy of a JSON value (only used for default values: small)."""
    if isinstance(v, dict):
        return {k: _json_copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_copy(x) for x in v]
    return v


def _json_eq(a: Any, b: Any) -> bool:
    """JSON equality (booleans are not numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_json_eq(x, b[k]) for k, x in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_json_eq(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _json_key(v: Any) -> str:
    """Hashable canonical form of a JSON value (for set/map list uniqueness)."""
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------
# formats

_DATE_TIME = re.compile(
    r"^\d{4}-\d{2}-\d{2}(?:[Tt ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?$"
)
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

_FORMATS: dict[str, Callable[[str], bool]] = {
    "date-time": lambda s: _DATE_TIME.match(s) is not None,
    "datetime": lambda s: _DATE_TIME.match(s) is not None,
    "date": lambda s: _DATE.match(s) is not None,
    "uuid": lambda s: _UUID.match(s) is not None,
}


def _parse_timestamp(s: str) -> Any:
    """RFC 3339 text -> aware datetime for CEL (the string itself if unparsable)."""
    try:
        t = _dt.datetime.fromisoformat(s.replace("z", "Z"))
    except ValueError:
        return s
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.UTC)
    return t


_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_duration(s: str) -> Any:
    """Go duration text ("1h30m", "5s") -> timedelta for CEL (the string itself if unparsable)."""
    body = s[1:] if s[:1] in "+-" else s
    if body == "0":
        return _dt.timedelta(0)
    pos, total = 0, 0.0
    for m in _DURATION_PART.finditer(body):
        if m.start() != pos:
            return s
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos != len(body) or pos == 0:
        return s
    return _dt.timedelta(seconds=-total if s.startswith("-") else total)


# ----------------------------------------------------------------------------------------------
# CEL

_PROGRAMS: dict[str, Any] = {}
_PROGRAMS_LOCK = threading.Lock()


def _compile(src: str) -> Any:
    """Compile a CEL expression once per process (cache keyed by source)."""
    prog = _PROGRAMS.get(src)
    if prog is None:
        try:
            prog = cel.compile(src)
        except Exception as e:  # ValueError on syntax errors
            raise SchemaError(f"compilation failed for CEL expression {src!r}: {e}") from e
        with _PROGRAMS_LOCK:
            _PROGRAMS[src] = prog
    return prog


def _is_sorted(xs: list[Any]) -> bool:
    return all(a <= b for a, b in itertools.pairwise(xs))


def _index_of(container: Any, item: Any, offset: int = 0) -> int:
    if isinstance(container, str):
        i = container.find(item, offset)
        return i
    for i, x in enumerate(container):
        if _json_eq(x, item):
            return i
    return -1


def _last_index_of(container: Any, item: Any, offset: int | None = None) -> int:
    if isinstance(container, str):
        return container.rfind(item) if offset is None else container.rfind(item, 0, offset + len(item))
    for i in range(len(container) - 1, -1, -1):
        if _json_eq(container[i], item):
            return i
    return -1


def _regex_find(s: str, pattern: str) -> str:
    m = re.search(pattern, s)
    return m.group(0) if m else ""


def _regex_find_all(s: str, pattern: str, limit: int = -1) -> list[str]:
    out = [m.group(0) for m in re.finditer(pattern, s)]
    return out if limit < 0 else out[:limit]


def _ext_functions() -> dict[str, Callable[..., Any]]:
    """Kubernetes CEL library functions the Rust interpreter lacks (cel.stdlib + a few more)."""
    funcs: dict[str, Callable[..., Any]] = {}
    try:
        from cel import stdlib as _stdlib

        funcs.update(getattr(_stdlib, "STDLIB_FUNCTIONS", {}))
    except ImportError:  # pragma: no cover - older cel releases
        pass
    # natively implemented in the interpreter; never shadow them
    for native in ("contains", "size", "matches", "startsWith", "endsWith", "bool"):
        funcs.pop(native, None)
    funcs.update(
        {
            "isSorted": _is_sorted,
            "indexOf": _index_of,
            "lastIndexOf": _last_index_of,
            "find": _regex_find,
            "findAll": _regex_find_all,
        }
    )
    return funcs


_EXT_FUNCS = _ext_functions()
# the interpreter reports "math.greatest" as "greatest": index by last component
_EXT_BY_SHORT: dict[str, list[str]] = {}
for _name in _EXT_FUNCS:
    _EXT_BY_SHORT.setdefault(_name.rsplit(".", 1)[-1], []).append(_name)

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STRING_LIT = re.compile(
    r"""[rRbB]{0,2}(?:'\'\'[\s\S]*?'\'\'|\"\"\"[\s\S]*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*")"""
)
_VAR_USE = re.compile(r"(?<![.\w])(self|oldSelf)(?!\w)")
_FIELD_AFTER = re.compile(r"\s*\.\s*([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()")


def _access_plan(sources: Iterable[str]) -> dict[str, frozenset[str]] | None:
    """Fields of ``self`` / ``oldSelf`` the expressions read, or None if they use them whole.

    Converting a Python dict into a CEL map costs ~2 us per key, so a rule that only reads
    ``self.a`` and ``has(self.b)`` gets ``{"a": .., "b": ..}`` instead of the whole node.
    """
    keys: dict[str, set[str]] = {"self": set(), "oldSelf": set()}
    for src in sources:
        code = _STRING_LIT.sub('""', src)
        for m in _VAR_USE.finditer(code):
            f = _FIELD_AFTER.match(code, m.end())
            if f is None:
                return None
            keys[m.group(1)].add(f.group(1))
    return {k: frozenset(v) for k, v in keys.items()}


def _clean_cel_error(e: Exception) -> str:
    """cel-go flavoured text of an evaluation error."""
    if isinstance(e, KeyError):
        return f"no such key: {e.args[0] if e.args else ''}"
    msg = str(e).strip()
    if msg.startswith("No such overload"):
        return "no such overload"
    if msg.startswith("Undefined variable or function"):
        return msg.split(". ", 1)[0].replace("Undefined variable or function", "undeclared reference to")
    if isinstance(e, ZeroDivisionError):
        return "division by zero"
    return msg.split("\n", 1)[0] or type(e).__name__


class _Rule:
    """One compiled ``x-kubernetes-validations`` entry."""

    __slots__ = (
        "convert",
        "field_path",
        "funcs",
        "message",
        "msg_prog",
        "optional_old",
        "plan_old",
        "plan_self",
        "prog",
        "reason",
        "rule",
        "rule_text",
        "transition",
    )

    def __init__(self, spec: dict[str, Any], node_path: str) -> None:
        rule = spec.get("rule")
        if not isinstance(rule, str) or not rule.strip():
            raise SchemaError(f"{node_path or '<root>'}: x-kubernetes-validations entry without rule")
        self.rule = rule
        msg = spec.get("message")
        # ruleMessageOrDefault
        self.message = msg.strip() if isinstance(msg, str) and msg.strip() else f"failed rule: {rule.strip()}"
        # ruleErrorString
        self.rule_text = msg.strip() if isinstance(msg, str) and msg.strip() else rule.strip()
        self.prog = _compile(rule)
        mexpr = spec.get("messageExpression")
        self.msg_prog = _compile(mexpr) if isinstance(mexpr, str) and mexpr.strip() else None
        names = set(self.prog.variables())
        fnames = set(self.prog.functions())
        if self.msg_prog is not None:
            names |= set(self.msg_prog.variables())
            fnames |= set(self.msg_prog.functions())
        self.transition = "oldSelf" in names
        self.optional_old = bool(spec.get("optionalOldSelf")) and self.transition
        self.reason = spec.get("reason") or INVALID
        fp = spec.get("fieldPath") or ""
        fp = re.sub(r"\[['\"]([^'\"]*)['\"]\]", r".\1", fp).lstrip(".")
        self.field_path = fp
        needed: dict[str, Callable[..., Any]] = {}
        for f in fnames:
            for full in _EXT_BY_SHORT.get(f, ()):
                needed[full] = _EXT_FUNCS[full]
        self.funcs = needed or None
        self.convert = False  # set by the node: rule reads date-time/duration/number fields
        plan = _access_plan([rule] + ([str(mexpr)] if self.msg_prog is not None else []))
        self.plan_self: frozenset[str] | None = plan["self"] if plan is not None else None
        self.plan_old: frozenset[str] | None = plan["oldSelf"] if plan is not None else None

    def evaluate(
        self, node: _Node, val: Any, old: Any, has_old: bool, path: str, errs: list[FieldError]
    ) -> None:
        """Run the rule on ``val`` (``old`` bound as oldSelf when ``has_old``); append failures."""
        if self.transition and not has_old and not self.optional_old:
            return
        # A rule that evaluates to false shows the value itself, or none for an object or a list
        # (apiextensions-apiserver cel/validation.go); evaluation errors show the type name.
        bad_value = _OMIT if node.type in ("object", "array") else val
        keys = self.plan_self
        if keys is not None and type(val) is dict:
            val = {k: val[k] for k in keys if k in val}
        keys = self.plan_old
        if has_old and keys is not None and type(old) is dict:
            old = {k: old[k] for k in keys if k in old}
        if self.convert:
            val = node.to_cel(val)
            if has_old:
                old = node.to_cel(old)
        act: dict[str, Any] = {"self": val}
        if self.transition:
            if self.optional_old:
                act["oldSelf"] = cel.OptionalValue.of(old) if has_old else cel.OptionalValue.none()
            else:
                act["oldSelf"] = old
        ctx: Any = act if self.funcs is None else cel.Context(variables=act, functions=self.funcs)
        type_name = node.type_name
        try:
            result = self.prog.execute(ctx)
        except Exception as e:  # noqa: BLE001 - any evaluation error becomes a field error
            errs.append(
                _err(INVALID, path, type_name, f"{_clean_cel_error(e)} evaluating rule: {self.rule_text}")
            )
            return
        if result is True:
            return
        if result is not False:
            errs.append(
                _err(
                    INVALID,
                    path,
                    type_name,
                    f"rule did not evaluate to bool evaluating rule: {self.rule_text}",
                )
            )
            return
        fpath = path
        if self.field_path:
            fpath = f"{path}.{self.field_path}" if path else self.field_path
        detail = self.message
        if self.msg_prog is not None:
            if self.funcs is None:
                mctx: Any = act
            else:
                mctx = cel.Context(variables=act, functions=self.funcs)
            try:
                m = self.msg_prog.execute(mctx)
            except Exception:  # noqa: BLE001 - kube falls back to the static message
                m = None
            if m is not None:
                if not isinstance(m, str):
                    errs.append(_err(INVALID, path, type_name, "messageExpression must evaluate to a string"))
                    return
                if not m.strip():
                    errs.append(
                        _err(
                            INVALID,
                            path,
                            type_name,
                            "messageExpression should evaluate to a non-empty string",
                        )
                    )
                    return
                if "\n" in m:
                    errs.append(
                        _err(INVALID, path, type_name, "messageExpression should not contain line breaks")
                    )
                    return
                detail = m
        if self.reason == FORBIDDEN:
            errs.append(_err(FORBIDDEN, fpath, "", detail))
        elif self.reason == REQUIRED:
            errs.append(_err(REQUIRED, fpath, "", detail))
        elif self.reason == DUPLICATE:
            errs.append(_err(DUPLICATE, fpath, bad_value, ""))
        else:
            errs.append(_err(INVALID, fpath, bad_value, detail))


# ----------------------------------------------------------------------------------------------
# compiled schema nodes


def _child_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


class _Node:
    """One compiled schema node. Attributes are plain values so the walkers stay cheap."""

    __slots__ = (
        "additional",
        "all_of",
        "any_of",
        "cel_below",
        "cel_conv",
        "conv_names",
        "default",
        "defaults_below",
        "embedded",
        "enum",
        "enum_str",
        "enum_values",
        "excl_max",
        "excl_min",
        "format",
        "format_check",
        "has_default",
        "items",
        "list_type",
        "map_keys",
        "max_items",
        "max_len",
        "max_props",
        "maximum",
        "min_items",
        "min_len",
        "min_props",
        "minimum",
        "multiple_of",
        "not_",
        "nullable",
        "one_of",
        "pattern",
        "pattern_src",
        "plain",
        "preserve",
        "props",
        "prunes",
        "required",
        "rules",
        "type",
        "type_name",
        "types",
        "unique",
    )

    def __init__(self, s: Any, path: str) -> None:
        if not isinstance(s, dict):
            raise SchemaError(f"{path or '<root>'}: schema must be an object")
        t = s.get("type")
        self.type: str | None = t if isinstance(t, str) and t else None
        int_or_string = bool(s.get("x-kubernetes-int-or-string"))
        if int_or_string:
            self.types: frozenset[str] | None = frozenset(("integer", "string"))
            self.type_name = ""
        elif self.type is not None:
            self.types = frozenset((self.type,))
            self.type_name = self.type
        else:
            self.types = None
            self.type_name = ""
        self.nullable = bool(s.get("nullable"))
        self.preserve = bool(s.get("x-kubernetes-preserve-unknown-fields"))
        self.embedded = bool(s.get("x-kubernetes-embedded-resource"))
        props = s.get("properties")
        self.props: dict[str, _Node] | None = (
            {k: _Node(v, _child_path(path, k)) for k, v in props.items()} if isinstance(props, dict) else None
        )
        ap = s.get("additionalProperties")
        self.additional: _Node | None = None
        if isinstance(ap, dict):
            self.additional = _Node(ap, _child_path(path, "*"))
        elif ap is True:
            self.preserve = True
        it = s.get("items")
        self.items: _Node | None = _Node(it, path + "[*]") if isinstance(it, dict) else None
        req = s.get("required")
        self.required: tuple[str, ...] = tuple(req) if isinstance(req, list) else ()
        en = s.get("enum")
        self.enum: list[Any] | None = list(en) if isinstance(en, list) else None
        self.enum_str = frozenset(v for v in self.enum or () if isinstance(v, str))
        self.enum_values = (
            [v if isinstance(v, str) else json.dumps(v, separators=(",", ":")) for v in self.enum]
            if self.enum is not None
            else []
        )
        self.minimum: float | int | None = s.get("minimum")
        self.maximum: float | int | None = s.get("maximum")
        self.excl_min = bool(s.get("exclusiveMinimum"))
        self.excl_max = bool(s.get("exclusiveMaximum"))
        self.multiple_of: float | int | None = s.get("multipleOf")
        self.min_len: int | None = s.get("minLength")
        self.max_len: int | None = s.get("maxLength")
        self.pattern_src: str | None = s.get("pattern")
        self.pattern: re.Pattern[str] | None = None
        if isinstance(self.pattern_src, str):
            try:
                self.pattern = re.compile(self.pattern_src)
            except re.error as e:
                raise SchemaError(f"{path}: invalid pattern {self.pattern_src!r}: {e}") from e
        fmt = s.get("format")
        self.format: str = fmt if isinstance(fmt, str) else ""
        self.format_check = _FORMATS.get(self.format) if self.type == "string" else None
        self.min_items: int | None = s.get("minItems")
        self.max_items: int | None = s.get("maxItems")
        self.unique = bool(s.get("uniqueItems"))
        self.min_props: int | None = s.get("minProperties")
        self.max_props: int | None = s.get("maxProperties")
        self.list_type: str | None = s.get("x-kubernetes-list-type")
        mk = s.get("x-kubernetes-list-map-keys")
        self.map_keys: tuple[str, ...] = tuple(mk) if isinstance(mk, list) else ()
        self.has_default = "default" in s
        self.default = s.get("default")
        self.all_of = [_Node(x, path) for x in s.get("allOf") or ()]
        self.any_of = [_Node(x, path) for x in s.get("anyOf") or ()]
        self.one_of = [_Node(x, path) for x in s.get("oneOf") or ()]
        self.not_: _Node | None = _Node(s["not"], path) if isinstance(s.get("not"), dict) else None
        self.rules = [_Rule(r, path) for r in s.get("x-kubernetes-validations") or ()]

        # scalar node without any constraint: a value of exactly this Python type needs no walk
        self.plain: type | None = None
        if (
            self.type in ("string", "boolean", "integer")
            and self.enum is None
            and self.min_len is None
            and self.max_len is None
            and self.pattern is None
            and self.format_check is None
            and self.minimum is None
            and self.maximum is None
            and not self.multiple_of
            and not (self.all_of or self.any_of or self.one_of or self.not_ is not None)
        ):
            self.plain = {"string": str, "boolean": bool, "integer": int}[self.type]

        children = self._children()
        self.cel_below: bool = any(c.rules or c.cel_below for c in children)
        # defaulting walks every structured node (defaults, and nulls to drop, may be anywhere)
        self.defaults_below = bool(children)
        # can pruning remove anything at or below this node?
        self.prunes: bool = (
            (self.type == "object" and not self.preserve) or self.embedded or any(c.prunes for c in children)
        )
        # CEL value conversion (date-time -> timestamp, duration -> duration, number -> double)
        self.conv_names = self._conv_names()
        self.cel_conv = bool(self.conv_names)
        for r in self.rules:
            if self.cel_conv:
                idents = set(_IDENT.findall(r.rule))
                r.convert = self._self_converts() or bool(idents & self.conv_names)

    def _children(self) -> list[_Node]:
        out: list[_Node] = []
        if self.props:
            out.extend(self.props.values())
        if self.additional is not None:
            out.append(self.additional)
        if self.items is not None:
            out.append(self.items)
        return out

    def _self_converts(self) -> bool:
        return (self.type == "string" and self.format in ("date-time", "datetime", "duration")) or (
            self.type == "number"
        )

    def _conv_names(self) -> set[str]:
        """Property names in this subtree whose CEL value differs from the JSON value."""
        names: set[str] = set()
        if self._self_converts():
            names.add("self")
        if self.props:
            for k, c in self.props.items():
                sub = c.conv_names
                if sub:
                    names |= sub - {"self"}
                    if "self" in sub:
                        names.add(k)
        for sub_node in (self.additional, self.items):
            if sub_node is not None and sub_node.conv_names:
                names |= sub_node.conv_names - {"self"}
                if "self" in sub_node.conv_names:
                    names.add("self")
        return names

    # -- CEL value conversion ------------------------------------------------------------------

    def to_cel(self, v: Any) -> Any:
        """The value as Kubernetes CEL sees it (timestamps, durations, doubles); copies only as needed."""
        if v is None:
            return v
        if self.type == "string" and isinstance(v, str):
            if self.format in ("date-time", "datetime"):
                return _parse_timestamp(v)
            if self.format == "duration":
                return _parse_duration(v)
            return v
        if self.type == "number" and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        if not self.cel_conv:
            return v
        if isinstance(v, dict):
            out = dict(v)
            if self.props:
                for k, c in self.props.items():
                    if c.cel_conv and k in out:
                        out[k] = c.to_cel(out[k])
            if self.additional is not None and self.additional.cel_conv:
                a = self.additional
                for k, x in out.items():
                    if self.props is None or k not in self.props:
                        out[k] = a.to_cel(x)
            return out
        if isinstance(v, list) and self.items is not None and self.items.cel_conv:
            return [self.items.to_cel(x) for x in v]
        return v


# ----------------------------------------------------------------------------------------------
# walkers


_META_KEYS = frozenset(("apiVersion", "kind", "metadata"))


def _prune(node: _Node, obj: Any, path: str, removed: list[str] | None, root: bool) -> None:
    if isinstance(obj, dict):
        props = node.props
        if node.type == "object" or props is not None or node.additional is not None:
            keep_meta = root or node.embedded
            if props is not None or node.additional is not None or not node.preserve:
                drop: list[str] | None = None
                for k, v in obj.items():
                    if keep_meta and k in _META_KEYS:
                        continue
                    child = props.get(k) if props is not None else None
                    if child is None:
                        child = node.additional
                    if child is not None:
                        if child.prunes and isinstance(v, (dict, list)):
                            _prune(child, v, _child_path(path, k), removed, False)
                    elif not node.preserve:
                        if drop is None:
                            drop = []
                        drop.append(k)
                if drop:
                    for k in drop:
                        del obj[k]
                        if removed is not None:
                            removed.append(_child_path(path, k))
    elif isinstance(obj, list):
        items = node.items
        if items is not None and items.prunes:
            for i, v in enumerate(obj):
                if isinstance(v, (dict, list)):
                    _prune(items, v, f"{path}[{i}]", removed, False)


def _default(node: _Node, obj: Any) -> None:
    if isinstance(obj, dict):
        props = node.props
        if props is not None:
            for k, child in props.items():
                if child.has_default:
                    cur = obj.get(k, _MISSING)
                    if cur is _MISSING or (cur is None and not child.nullable):
                        obj[k] = _json_copy(child.default)
                elif not child.nullable and k in obj and obj[k] is None:
                    # PruneNonNullableNullsWithoutDefaults
                    del obj[k]
        add = node.additional
        for k, v in obj.items():
            sub = props.get(k) if props is not None else None
            if sub is None:
                sub = add
                if sub is None:
                    continue
                if v is None and not sub.nullable and sub.has_default:
                    v = obj[k] = _json_copy(sub.default)
            if sub.defaults_below and isinstance(v, (dict, list)):
                _default(sub, v)
    elif isinstance(obj, list):
        items = node.items
        if items is not None:
            for i, v in enumerate(obj):
                if v is None and not items.nullable and items.has_default:
                    v = obj[i] = _json_copy(items.default)
                if items.defaults_below and isinstance(v, (dict, list)):
                    _default(items, v)


_MISSING: Any = object()


def _validate(node: _Node, val: Any, path: str, errs: list[FieldError]) -> None:
    """kube-openapi style structural validation of ``val`` against ``node``."""
    types = node.types
    if val is None:
        if types is not None and not node.nullable:
            tn = ",".join(sorted(types)) if len(types) > 1 else node.type_name
            errs.append(_err(TYPE_INVALID, path, "null", f'{path} in body must be of type {tn}: "null"'))
        return
    kind = _KIND.get(type(val)) or _kind(val)
    if types is not None and kind not in types:
        if kind == "number" and "integer" in types and float(val).is_integer():
            kind = "integer"
        elif kind == "integer" and "number" in types:
            kind = "number"
        else:
            tn = ",".join(sorted(types)) if len(types) > 1 else node.type_name
            errs.append(
                _err(TYPE_INVALID, path, kind, f"{path} in body must be of type {tn}: {_go_quote(kind)}")
            )
            return
    if node.enum is not None and not (kind == "string" and val in node.enum_str):
        for e in node.enum:
            if _json_eq(val, e):
                break
        else:
            detail = "supported values: " + ", ".join(_go_quote(v) for v in node.enum_values)
            errs.append(_err(NOT_SUPPORTED, path, val, detail))
    if kind == "string":
        _validate_string(node, val, path, errs)
    elif kind == "object":
        _validate_object(node, val, path, errs)
    elif kind == "array":
        _validate_array(node, val, path, errs)
    elif kind == "integer" or kind == "number":
        _validate_number(node, val, path, errs)
    if node.all_of or node.any_of or node.one_of or node.not_ is not None:
        _validate_combinators(node, val, path, errs)


def _validate_string(node: _Node, val: str, path: str, errs: list[FieldError]) -> None:
    n = node.min_len
    if n is not None and len(val) < n:
        errs.append(_err(INVALID, path, val, f"{path} in body should be at least {n} chars long"))
    n = node.max_len
    if n is not None and len(val) > n:
        errs.append(_err(TOO_LONG, path, val, f"may not be longer than {n}"))
    if node.pattern is not None and node.pattern.search(val) is None:
        errs.append(_err(INVALID, path, val, f"{path} in body should match '{node.pattern_src}'"))
    if node.format_check is not None and not node.format_check(val):
        errs.append(
            _err(TYPE_INVALID, path, val, f"{path} in body must be of type {node.format}: {_go_quote(val)}")
        )


def _validate_number(node: _Node, val: float, path: str, errs: list[FieldError]) -> None:
    m = node.minimum
    if m is not None and (val <= m if node.excl_min else val < m):
        op = "greater than" if node.excl_min else "greater than or equal to"
        errs.append(_err(INVALID, path, val, f"{path} in body should be {op} {_go_num(m)}"))
    m = node.maximum
    if m is not None and (val >= m if node.excl_max else val > m):
        op = "less than" if node.excl_max else "less than or equal to"
        errs.append(_err(INVALID, path, val, f"{path} in body should be {op} {_go_num(m)}"))
    m = node.multiple_of
    if m:
        q = val / m
        if q != int(q):
            errs.append(_err(INVALID, path, val, f"{path} in body should be a multiple of {_go_num(m)}"))


def _validate_object(node: _Node, val: dict[str, Any], path: str, errs: list[FieldError]) -> None:
    for r in node.required:
        if r not in val:
            errs.append(_err(REQUIRED, _child_path(path, r), "", ""))
    n = node.min_props
    if n is not None and len(val) < n:
        errs.append(_err(INVALID, path, len(val), f"{path} in body should have at least {n} properties"))
    n = node.max_props
    if n is not None and len(val) > n:
        errs.append(_too_many(path, len(val), n))
    props = node.props
    add = node.additional
    if props is not None:
        if add is None:
            for k, v in val.items():
                child = props.get(k)
                if child is not None and child.plain is not type(v):
                    _validate(child, v, f"{path}.{k}" if path else k, errs)
            return
        for k, v in val.items():
            child = props.get(k) or add
            if child.plain is not type(v):
                _validate(child, v, f"{path}.{k}" if path else k, errs)
    elif add is not None:
        if add.plain is not None:
            plain = add.plain
            for k, v in val.items():
                if type(v) is not plain:
                    _validate(add, v, f"{path}.{k}" if path else k, errs)
        else:
            for k, v in val.items():
                _validate(add, v, f"{path}.{k}" if path else k, errs)


def _validate_array(node: _Node, val: list[Any], path: str, errs: list[FieldError]) -> None:
    items = node.items
    if items is not None:
        plain = items.plain
        for i, v in enumerate(val):
            if type(v) is not plain:
                _validate(items, v, f"{path}[{i}]", errs)
    n = node.min_items
    if n is not None and len(val) < n:
        errs.append(_err(INVALID, path, len(val), f"{path} in body should have at least {n} items"))
    n = node.max_items
    if n is not None and len(val) > n:
        errs.append(_too_many(path, len(val), n))
    if node.unique or node.list_type == "set":
        seen: set[str] = set()
        for i, v in enumerate(val):
            k = _json_key(v)
            if k in seen:
                if node.list_type == "set":
                    errs.append(_err(DUPLICATE, f"{path}[{i}]", v, ""))
                else:
                    errs.append(_err(INVALID, path, "", f"{path} in body shouldn't contain duplicates"))
                    break
            seen.add(k)
    elif node.list_type == "map" and node.map_keys:
        seen_keys: set[str] = set()
        for i, v in enumerate(val):
            if not isinstance(v, dict):
                continue
            k = _json_key([v.get(mk) for mk in node.map_keys])
            if k in seen_keys:
                errs.append(
                    _err(DUPLICATE, f"{path}[{i}]", {mk: v.get(mk) for mk in node.map_keys if mk in v}, "")
                )
            seen_keys.add(k)


def _validate_combinators(node: _Node, val: Any, path: str, errs: list[FieldError]) -> None:
    for sub in node.all_of:
        _validate(sub, val, path, errs)
    if node.any_of:
        first: list[FieldError] | None = None
        for sub in node.any_of:
            e: list[FieldError] = []
            _validate(sub, val, path, e)
            if not e:
                break
            if first is None:
                first = e
        else:
            errs.append(_err(INVALID, path, "", f"{path} in body must validate at least one schema (anyOf)"))
            errs.extend(first or ())
    if node.one_of:
        ok = 0
        for sub in node.one_of:
            e = []
            _validate(sub, val, path, e)
            ok += not e
        if ok != 1:
            what = "at least one" if ok == 0 else "one and only one"
            errs.append(_err(INVALID, path, "", f"{path} in body must validate {what} schema (oneOf)"))
    if node.not_ is not None:
        e = []
        _validate(node.not_, val, path, e)
        if not e:
            errs.append(_err(INVALID, path, "", f"{path} in body must not validate the schema (not)"))


def _cel_walk(node: _Node, val: Any, old: Any, has_old: bool, path: str, errs: list[FieldError]) -> None:
    """Evaluate the CEL rules at and below ``node``; old values correlate by property / map key."""
    if val is None:
        return
    for r in node.rules:
        r.evaluate(node, val, old, has_old, path, errs)
    if not node.cel_below:
        return
    if isinstance(val, dict):
        old_d = old if has_old and isinstance(old, dict) else None
        props = node.props
        if props is not None:
            for k, child in props.items():
                if (child.rules or child.cel_below) and k in val:
                    if old_d is not None and k in old_d:
                        _cel_walk(child, val[k], old_d[k], True, _child_path(path, k), errs)
                    else:
                        _cel_walk(child, val[k], None, False, _child_path(path, k), errs)
        add = node.additional
        if add is not None and (add.rules or add.cel_below):
            for k, v in val.items():
                if props is not None and k in props:
                    continue
                # a map value's rules report the path with the key as field.Path.Key does: spec.counts[y]
                if old_d is not None and k in old_d:
                    _cel_walk(add, v, old_d[k], True, f"{path}[{k}]", errs)
                else:
                    _cel_walk(add, v, None, False, f"{path}[{k}]", errs)
    elif isinstance(val, list):
        items = node.items
        if items is None or not (items.rules or items.cel_below):
            return
        old_index: dict[str, Any] | None = None
        keys = node.map_keys
        if has_old and isinstance(old, list) and node.list_type == "map" and keys:
            old_index = {}
            for o in old:
                if isinstance(o, dict):
                    old_index[_json_key([o.get(k) for k in keys])] = o
        for i, v in enumerate(val):
            if old_index is not None and isinstance(v, dict):
                o = old_index.get(_json_key([v.get(k) for k in keys]), _MISSING)
                if o is not _MISSING:
                    _cel_walk(items, v, o, True, f"{path}[{i}]", errs)
                    continue
            _cel_walk(items, v, None, False, f"{path}[{i}]", errs)


# ----------------------------------------------------------------------------------------------
# public


class StructuralSchema:
    """A compiled CRD ``openAPIV3Schema``: prune, default and validate custom resources.

    Construction compiles every node and CEL rule once and raises :class:`SchemaError` if the
    schema is unusable (a rule that does not parse, a bad regex). The three operations are
    thread-safe and do not copy the object.
    """

    def __init__(self, openapi_v3_schema: dict[str, Any]) -> None:
        self._root = _Node(openapi_v3_schema, "")

    @property
    def has_rules(self) -> bool:
        """Whether any ``x-kubernetes-validations`` rule exists in the schema."""
        return bool(self._root.rules) or self._root.cel_below

    def prune(self, obj: dict[str, Any], removed: list[str] | None = None) -> None:
        """Remove, in place, fields the schema does not know (apiVersion/kind/metadata are kept).

        Fields under ``x-kubernetes-preserve-unknown-fields`` are kept; ``additionalProperties``
        maps keep their keys. If ``removed`` is given, the pruned paths are appended to it
        (for ``unknown field`` warnings).
        """
        _prune(self._root, obj, "", removed, True)

    def default(self, obj: dict[str, Any]) -> None:
        """Apply ``default:`` values in place, like the apiserver's structural defaulting.

        A property's default applies when its parent object exists and the property is missing
        (or null and not nullable); a defaulted object then receives its own children's defaults.
        Non-nullable nulls without a default are dropped.
        """
        _default(self._root, obj)

    def validate(self, obj: dict[str, Any], old: dict[str, Any] | None = None) -> list[FieldError]:
        """Structural validation plus CEL rules; ``old`` enables transition rules (update).

        As in kube-apiserver, CEL rules are skipped when a blocking schema error (type,
        required, enum, too long, too many) exists; a note error is added instead.
        """
        errs: list[FieldError] = []
        _validate(self._root, obj, "", errs)
        root = self._root
        if root.rules or root.cel_below:
            for e in errs:
                if e.type in _BLOCKING:
                    errs.append(
                        _err(
                            INVALID,
                            "",
                            None,
                            "some validation rules were not checked because the object was invalid; "
                            "correct the existing errors to complete validation",
                        )
                    )
                    return errs
            _cel_walk(root, obj, old, old is not None, "", errs)
        return errs
