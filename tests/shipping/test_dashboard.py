"""The Grafana dashboard: valid against Grafana's dashboard schema, every query parses as PromQL
and uses only metrics the controller serves (the contract's, data/contract.yaml, and its extra
ones; and Prometheus' `up`), and it covers what an operator needs to see."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .shiputil import CHART, DATA, ROOT, CONTRACT_METRICS, promql_analyse, served_metric_names

DASHBOARD = ROOT / "deploy" / "grafana" / "agent-controller-dashboard.json"

# Grafana's built-in variables, replaced by representative values before parsing.
GRAFANA_MACROS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__rate_interval}": "5m",
    "${__interval}": "1m",
    "${__range}": "1h",
}


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])


def queries(d: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels(d) for t in p.get("targets", []) if "expr" in t]


def substitute(expr: str) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    # Dashboard variables ($job, ${job}) only ever stand inside label-matcher strings here.
    return re.sub(r"\$\{?\w+\}?", "x", expr)


def test_dashboard_matches_grafana_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((DATA / "grafana-dashboard.jsonschema.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(dashboard()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors[:10])


def test_schema_check_is_not_vacuous() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((DATA / "grafana-dashboard.jsonschema.json").read_text())
    broken = dashboard()
    broken["panels"][1]["gridPos"]["w"] = 30
    assert list(jsonschema.Draft7Validator(schema).iter_errors(broken))


def test_queries_parse_and_use_only_served_metrics() -> None:
    d = dashboard()
    found = queries(d)
    assert len(found) >= 15
    for (title, expr), result in zip(found, promql_analyse([substitute(e) for _, e in found])):
        assert result["error"] is None, f"{title}: {expr}: {result['error']}"
        assert result["metrics"], f"{title}: {expr}"
        unknown = set(result["metrics"]) - served_metric_names() - {"up"}
        assert not unknown, f"{title}: metrics the controller does not serve: {unknown}"
        for name in result["metrics"]:
            if name.endswith("_bucket"):
                assert "histogram_quantile" in expr, (
                    f"{title}: _bucket series are read through histogram_quantile"
                )


def test_template_variables_use_spec_metrics() -> None:
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            names = set(re.findall(r"agent_controller_\w+", query))
            assert names and names <= served_metric_names(), var


def test_dashboard_covers_the_operators_questions() -> None:
    d = dashboard()
    text = " ".join(expr for _, expr in queries(d))
    titles = " ".join(p.get("title", "") for p in panels(d)).lower()
    for needle in [
        "agents by phase",
        "cleanup",
        "failures",
        "p50",
        "p99",
        "leaked",
        "reaped",
        "archive",
        "sweep duration",
        "last successful sweep",
        "controller up",
        "stuck retrying",
        "incomplete logs",
        "log bytes shipped",
    ]:
        assert needle in titles, needle
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text
    assert "agent_controller_cleanup_duration_seconds_bucket" in text
    assert "by (kind, reason)" in text and 'result="failure"' in text and "by (trigger)" in text
    used = set(re.findall(r"agent_controller_\w+", text))
    base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    assert set(CONTRACT_METRICS) <= base, f"metrics never shown: {set(CONTRACT_METRICS) - base}"
    for name in ("agent_controller_cleanups_retrying", "agent_controller_cleanup_retrying_longest_seconds",
                 "agent_controller_sweep_interval_seconds", "agent_controller_shipped_bytes_total"):
        assert name in used, name
    assert 'up{job=~"$job"}' in text


def test_sweep_age_is_in_intervals_not_fixed_seconds() -> None:
    """The sweep's age is shown divided by the configured interval, so its thresholds (2, 3: /healthz
    fails) hold for any --sweep-interval; no panel has a threshold in seconds of a 60 s interval."""
    sweep_age = [p for p in panels(dashboard()) if "last successful sweep" in p.get("title", "").lower()]
    assert sweep_age
    for p in sweep_age:
        (target,) = p["targets"]
        assert "/ max(agent_controller_sweep_interval_seconds" in target["expr"], p["title"]
        steps = [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
        assert steps == [None, 2, 3], p["title"]
        assert p["fieldConfig"]["defaults"]["unit"] == "none"


def test_unique_panel_ids_and_grid() -> None:
    ids = [p["id"] for p in panels(dashboard())]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard()):
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_chart_packages_the_same_dashboard() -> None:
    packaged = CHART / "files" / "agent-controller-dashboard.json"
    assert packaged.read_bytes() == DASHBOARD.read_bytes(), "run scripts/generate-manifests.sh"
