"""Label and field selectors (``labelSelector=``, ``fieldSelector=``) of lists and watches."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from .errors import bad_request

_SET_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s+(in|notin)\s*\((.*)\)\s*$")
_OP_RE = re.compile(r"^\s*([^\s!=<>,()]+)\s*(==|=|!=|>|<)\s*([^\s,()]*)\s*$")
_EXISTS_RE = re.compile(r"^\s*(!?)\s*([^\s!=<>,()]+)\s*$")


def _split_top(s: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in s:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p for p in parts if p.strip()]


class LabelSelector:
    """A parsed label selector (``a=b,c!=d,e in (x,y),f notin (z),g,!h``)."""

    __slots__ = ("reqs", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.reqs: list[tuple[str, str, tuple[str, ...]]] = []
        for part in _split_top(text):
            m = _SET_RE.match(part)
            if m:
                vals = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
                self.reqs.append((m.group(1), m.group(2), vals))
                continue
            m = _OP_RE.match(part)
            if m:
                op = {"==": "=", "=": "="}.get(m.group(2), m.group(2))
                if op in (">", "<"):
                    try:
                        int(m.group(3))
                    except ValueError:
                        raise bad_request(
                            "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                        ) from None
                self.reqs.append((m.group(1), op, (m.group(3),)))
                continue
            m = _EXISTS_RE.match(part)
            if m:
                self.reqs.append((m.group(2), "!" if m.group(1) else "exists", ()))
                continue
            raise bad_request(f"unable to parse requirement: found '{part.strip()}', expected: in, notin, =, ==, !=, gt, lt")

    def matches(self, labels: dict[str, str] | None) -> bool:
        """Whether ``labels`` satisfy every requirement."""
        labels = labels or {}
        for key, op, vals in self.reqs:
            v = labels.get(key)
            if op == "=":
                if v != vals[0]:
                    return False
            elif op == "!=":
                if v == vals[0]:
                    return False
            elif op == "in":
                if v is None or v not in vals:
                    return False
            elif op == "notin":
                if v is not None and v in vals:
                    return False
            elif op == "exists":
                if v is None:
                    return False
            elif op == "!":
                if v is not None:
                    return False
            elif op in (">", "<"):
                try:
                    iv = int(v) if v is not None else None
                except ValueError:
                    return False
                if iv is None or (op == ">" and not iv > int(vals[0])) or (op == "<" and not iv < int(vals[0])):
                    return False
        return True

    def index_candidates(self) -> list[tuple[str, tuple[str, ...]]]:
        """Requirements that can be answered from the label index (key, allowed values)."""
        return [(k, vals) for k, op, vals in self.reqs if op in ("=", "in")]


def _get_path(obj: dict[str, Any], dotted: str) -> Any:
    cur: Any = obj
    for p in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(p)
    return cur


class FieldSelector:
    """A parsed field selector (``metadata.name=x,status.phase!=Running``)."""

    __slots__ = ("reqs", "text")

    def __init__(self, text: str, allowed: Iterable[str]) -> None:
        self.text = text
        self.reqs: list[tuple[str, bool, str]] = []
        allowed = tuple(allowed)
        for part in _split_top(text):
            m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
            if not m:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
            key = m.group(1)
            if key not in allowed:
                raise bad_request(
                    f'"{key}" is not a known field selector: only "' + '", "'.join(allowed) + '"'
                )
            self.reqs.append((key, m.group(2) != "!=", m.group(3)))

    def name(self) -> str | None:
        """The ``metadata.name=`` value, if the selector pins one."""
        for key, eq, val in self.reqs:
            if key == "metadata.name" and eq:
                return val
        return None

    def matches(self, obj: dict[str, Any]) -> bool:
        """Whether ``obj`` satisfies every requirement."""
        for key, eq, val in self.reqs:
            v = _get_path(obj, key)
            if isinstance(v, bool):
                v = "true" if v else "false"
            elif v is None:
                v = ""
            elif not isinstance(v, str):
                v = str(v)
            if (v == val) != eq:
                return False
        return True


def label_selector_matches(sel: Any, labels: dict[str, str] | None) -> bool:
    """A ``metav1.LabelSelector`` object (matchLabels + matchExpressions) against labels; an empty or
    absent selector matches everything."""
    if not isinstance(sel, dict):
        return True
    labels = labels or {}
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for req in sel.get("matchExpressions") or ():
        key = req.get("key", "")
        op = req.get("operator", "")
        values = req.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True
