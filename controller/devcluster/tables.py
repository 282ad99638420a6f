"""Server-side printing (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``).

Custom resources print their CRD's ``additionalPrinterColumns`` (Name first, JSONPath cells,
``date`` columns as ages); pods print NAME/READY/STATUS/RESTARTS/AGE (+ wide columns); a few
other built-ins have their kubectl columns; everything else prints NAME/AGE.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from .codec import parse_time
from .resources import ResourceType

__all__ = ["column_definitions", "human_duration", "jsonpath", "table", "table_row"]

_NAME_COL = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name automatically. "
    "Name is primarily intended for creation idempotence and configuration definition. Cannot be updated. "
    "More info: https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names",
    "priority": 0,
}
_AGE_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients may "
    "not set this value. It is represented in RFC3339 form and is in UTC."
)


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        sec = s % 60
        return f"{minutes}m" if sec == 0 else f"{minutes}m{sec}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if dy == 0 else f"{hours // 24 // 365}y{dy}d"
    return f"{hours // 24 // 365}y"


def _age(ts: Any, now: float) -> str:
    if not isinstance(ts, str):
        return "<unknown>"
    t = parse_time(ts)
    if t is None:
        return "<invalid>"
    return human_duration(now - t)


# ------------------------------------------------------------------------------------------
# a small JSONPath (the subset printer columns use)

_TOKEN = re.compile(r"""\.([A-Za-z0-9_\-$@]+)|\[(\d+|\*)\]|\[\?\(@\.([A-Za-z0-9_.\-]+)\s*(==|!=)\s*['"]?([^'"\)]*)['"]?\)\]|\['([^']+)'\]|\.\*""")


def jsonpath(obj: Any, path: str) -> list[Any]:
    """Evaluate a kubectl-style JSONPath (``.a.b``, ``[0]``, ``[*]``, ``[?(@.k=="v")]``)."""
    p = path.strip()
    if p.startswith("{") and p.endswith("}"):
        p = p[1:-1]
    p = p.removeprefix("$")
    if p and not p.startswith((".", "[")):
        p = "." + p
    cur = [obj]
    pos = 0
    while pos < len(p):
        m = _TOKEN.match(p, pos)
        if not m:
            return []
        pos = m.end()
        nxt: list[Any] = []
        for c in cur:
            if m.group(1) is not None or m.group(6) is not None:
                key = m.group(1) if m.group(1) is not None else m.group(6)
                if isinstance(c, dict) and key in c:
                    nxt.append(c[key])
            elif m.group(2) is not None:
                if isinstance(c, list):
                    if m.group(2) == "*":
                        nxt.extend(c)
                    elif int(m.group(2)) < len(c):
                        nxt.append(c[int(m.group(2))])
            elif m.group(3) is not None:
                if isinstance(c, list):
                    for item in c:
                        v: Any = item
                        for part in m.group(3).split("."):
                            v = v.get(part) if isinstance(v, dict) else None
                        sv = v if isinstance(v, str) else ("" if v is None else str(v).lower() if isinstance(v, bool) else str(v))
                        if (sv == m.group(5)) == (m.group(4) == "=="):
                            nxt.append(item)
            else:  # .*
                if isinstance(c, dict):
                    nxt.extend(c.values())
                elif isinstance(c, list):
                    nxt.extend(c)
        cur = nxt
    return cur


def _go_float(v: float) -> str:
    """Go's fmt %v of a float64: the shortest digits, in %e form when the exponent is < -4 or >= 6
    (``1e-05``, ``1.2345675e+06``, ``0.5``)."""
    if v == 0:
        return "0"
    sign = "-" if v < 0 else ""
    d = Decimal(repr(abs(v)))
    _, digits, exponent = d.as_tuple()
    text = "".join(map(str, digits)).rstrip("0") or "0"
    assert isinstance(exponent, int)
    exp = len(digits) + exponent - 1
    if exp < -4 or exp >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{sign}{mantissa}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    return sign + format(d.normalize(), "f")


def _go_json(v: Any) -> str:
    """encoding/json.Marshal (sorted keys, no spaces, <>& escaped)."""
    text = json.dumps(v, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _jsonpath_text(v: Any) -> str:
    """How kubectl's JSONPath (k8s.io/client-go/util/jsonpath) prints one value."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    return _go_json(v)


def _cell(ctype: str, values: list[Any], now: float) -> Any:
    """apiextensions tableconvertor.cellForJSONValue (first value only); a `string` column prints
    any value as JSONPath does (kube-apiserver: column.PrintResults)."""
    if not values:
        return None
    v = values[0]
    if v is None:
        return None
    if ctype == "string":
        return _jsonpath_text(v)
    if ctype == "integer":
        if isinstance(v, bool):
            return None
        if isinstance(v, int):
            return v
        if isinstance(v, float):
            return int(v)
        return None
    if ctype == "number":
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return v
        return None
    if ctype == "boolean":
        return v if isinstance(v, bool) else None
    if ctype == "date":
        if isinstance(v, str):
            return _age(v, now)
        return None
    return None


# ------------------------------------------------------------------------------------------
# per-kind columns

Column = tuple[dict[str, Any], Callable[[dict[str, Any], float], Any]]


def _col(name: str, type_: str = "string", priority: int = 0, desc: str = "", fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": type_, "format": fmt, "description": desc or name, "priority": priority}


def _pod_status(pod: dict[str, Any]) -> tuple[str, int, int, int]:
    """(reason, ready, total, restarts) like kubectl's printPod."""
    st = pod.get("status") or {}
    spec = pod.get("spec") or {}
    reason = st.get("reason") or st.get("phase") or "Pending"
    total = len(spec.get("containers") or ())
    ready = 0
    restarts = 0
    initializing = False
    for i, cs in enumerate(st.get("initContainerStatuses") or ()):
        restarts += int(cs.get("restartCount") or 0)
        state = cs.get("state") or {}
        term = state.get("terminated")
        if term and term.get("exitCode") == 0:
            continue
        if term:
            reason = "Init:" + (term.get("reason") or f"ExitCode:{term.get('exitCode')}")
        elif (state.get("waiting") or {}).get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
        else:
            reason = f"Init:{i}/{len(spec.get('initContainers') or ())}"
        initializing = True
        break
    if not initializing:
        has_running = False
        for cs in reversed(st.get("containerStatuses") or ()):
            restarts += int(cs.get("restartCount") or 0)
            state = cs.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                term = state["terminated"]
                if term.get("reason"):
                    reason = term["reason"]
                elif term.get("signal"):
                    reason = f"Signal:{term['signal']}"
                else:
                    reason = f"ExitCode:{term.get('exitCode')}"
            elif state.get("running") and cs.get("ready"):
                has_running = True
                ready += 1
            elif state.get("running"):
                has_running = True
        if reason == "Completed" and has_running:
            conds = {c.get("type"): c.get("status") for c in st.get("conditions") or ()}
            reason = "Running" if conds.get("Ready") == "True" else "NotReady"
    md = pod.get("metadata") or {}
    if md.get("deletionTimestamp") and st.get("reason") == "NodeLost":
        reason = "Unknown"
    elif md.get("deletionTimestamp") and st.get("phase") not in ("Succeeded", "Failed"):
        reason = "Terminating"
    return reason, ready, total, restarts


def _pod_columns() -> list[Column]:
    def ready(o: dict[str, Any], now: float) -> str:
        _, r, t, _ = _pod_status(o)
        return f"{r}/{t}"

    return [
        (_col("Ready", desc="The aggregate readiness state of this pod for accepting traffic."), ready),
        (_col("Status", desc="The aggregate status of the containers in this pod."), lambda o, n: _pod_status(o)[0]),
        (_col("Restarts", desc="The number of times the containers in this pod have been restarted."), lambda o, n: str(_pod_status(o)[3])),
        (_col("Age", desc=_AGE_DESC), lambda o, n: _age((o.get("metadata") or {}).get("creationTimestamp"), n)),
        (_col("IP", priority=1, desc="IP address allocated to the pod."), lambda o, n: (o.get("status") or {}).get("podIP") or "<none>"),
        (_col("Node", priority=1, desc="Name of the node the pod is assigned to."), lambda o, n: (o.get("spec") or {}).get("nodeName") or "<none>"),
        (_col("Nominated Node", priority=1), lambda o, n: (o.get("status") or {}).get("nominatedNodeName") or "<none>"),
        (_col("Readiness Gates", priority=1), lambda o, n: "<none>"),
    ]


def _age_col() -> Column:
    return (_col("Age", desc=_AGE_DESC), lambda o, n: _age((o.get("metadata") or {}).get("creationTimestamp"), n))


def _created_at() -> Column:
    return (
        _col("Created At", "date", desc=_AGE_DESC),
        lambda o, n: (o.get("metadata") or {}).get("creationTimestamp"),
    )


def _builtin_columns(rt: ResourceType) -> list[Column]:
    g, p = rt.group, rt.plural
    if g == "" and p == "pods":
        return _pod_columns()
    if g == "" and p == "namespaces":
        return [(_col("Status"), lambda o, n: (o.get("status") or {}).get("phase", "")), _age_col()]
    if g == "" and p == "configmaps":
        return [
            (_col("Data", "integer"), lambda o, n: len(o.get("data") or {}) + len(o.get("binaryData") or {})),
            _age_col(),
        ]
    if g == "" and p == "secrets":
        return [
            (_col("Type"), lambda o, n: o.get("type", "")),
            (_col("Data", "integer"), lambda o, n: len(o.get("data") or {})),
            _age_col(),
        ]
    if g == "" and p == "serviceaccounts":
        return [(_col("Secrets", "integer"), lambda o, n: len(o.get("secrets") or ())), _age_col()]
    if p == "events" and g in ("", "events.k8s.io"):

        def last_seen(o: dict[str, Any], now: float) -> str:
            ts = o.get("lastTimestamp") or o.get("deprecatedLastTimestamp") or o.get("eventTime")
            return _age(ts, now) if ts else "<unknown>"

        def obj(o: dict[str, Any], now: float) -> str:
            ref = o.get("involvedObject") or o.get("regarding") or {}
            return f"{str(ref.get('kind', '')).lower()}/{ref.get('name', '')}"

        return [
            (_col("Last Seen"), last_seen),
            (_col("Type"), lambda o, n: o.get("type", "")),
            (_col("Reason"), lambda o, n: o.get("reason", "")),
            (_col("Object"), obj),
            (_col("Message"), lambda o, n: o.get("message") or o.get("note") or ""),
        ]
    if g == "rbac.authorization.k8s.io" and p in ("roles", "clusterroles"):
        return [_created_at()]
    if g == "rbac.authorization.k8s.io" and p in ("rolebindings", "clusterrolebindings"):

        def role(o: dict[str, Any], now: float) -> str:
            r = o.get("roleRef") or {}
            return f"{r.get('kind', '')}/{r.get('name', '')}"

        return [(_col("Role"), role), _age_col()]
    if g == "coordination.k8s.io" and p == "leases":
        return [(_col("Holder"), lambda o, n: (o.get("spec") or {}).get("holderIdentity", "")), _age_col()]
    if g == "apiextensions.k8s.io":
        return [_created_at()]
    return [_age_col()]


def _crd_columns(rt: ResourceType) -> list[Column]:
    cols: list[Column] = []
    pcs = rt.printer_columns
    if pcs is None:
        return [_age_col()]
    for pc in pcs:
        name = pc.get("name", "")
        ctype = pc.get("type", "string")
        path = pc.get("jsonPath", "")
        d = {
            "name": name,
            "type": ctype,
            "format": pc.get("format", ""),
            # kube-apiserver's tableconvertor: a column without a description gets this one
            "description": pc.get("description") or f"Custom resource definition column (in JSONPath format): {path}",
            "priority": int(pc.get("priority", 0)),
        }

        def fn(o: dict[str, Any], now: float, path: str = path, ctype: str = ctype) -> Any:
            return _cell(ctype, jsonpath(o, path), now)

        cols.append((d, fn))
    return cols


def _columns(rt: ResourceType) -> list[Column]:
    return _crd_columns(rt) if rt.crd is not None else _builtin_columns(rt)


def column_definitions(rt: ResourceType) -> list[dict[str, Any]]:
    """The ``columnDefinitions`` of a table of ``rt``."""
    return [dict(_NAME_COL)] + [c for c, _ in _columns(rt)]


def _partial(obj: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata") or {}}


def table_row(
    rt: ResourceType,
    obj: dict[str, Any],
    include_object: str = "Metadata",
    now: float | None = None,
    cols: list[Column] | None = None,
) -> dict[str, Any]:
    """One ``TableRow`` for ``obj`` (served form)."""
    now = time.time() if now is None else now
    cols = _columns(rt) if cols is None else cols
    cells: list[Any] = [(obj.get("metadata") or {}).get("name", "")]
    for _, fn in cols:
        try:
            cells.append(fn(obj, now))
        except Exception:  # noqa: BLE001 - a bad cell must not break the listing
            cells.append(None)
    row: dict[str, Any] = {"cells": cells}
    if include_object == "Object":
        row["object"] = obj
    elif include_object != "None":
        row["object"] = _partial(obj)
    return row


def table(
    rt: ResourceType,
    objs: list[dict[str, Any]],
    resource_version: str,
    include_object: str = "Metadata",
    with_columns: bool = True,
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Table of ``objs``."""
    now = time.time()
    cols = _columns(rt)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions(rt) if with_columns else None,
        "rows": [table_row(rt, o, include_object, now, cols) for o in objs],
    }
