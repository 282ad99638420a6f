"""Alert rules: promtool check + unit tests, one source for the PrometheusRule and the plain file,
every expression parses and uses only metrics the controller serves (and `up`), each alert is actionable."""

from __future__ import annotations

import re

import yaml

from .shiputil import ROOT, controller_metric_names, exposed_metric_names, promql_analyse, run, tool

RULES = ROOT / "deploy" / "prometheus" / "agent-controller-rules.yaml"
TESTS = ROOT / "deploy" / "prometheus" / "tests.yaml"
REQUIRED_ALERTS = {
    "AgentControllerLeakedResources",
    "AgentControllerCleanupsStuck",
    "AgentControllerSweepNotSucceeding",
    "AgentControllerDown",
    "AgentControllerIncompleteLogs",
}


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_rules() -> None:
    proc = run([tool("promtool"), "check", "rules", str(RULES)], check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests() -> None:
    proc = run([tool("promtool"), "test", "rules", str(TESTS)], check=False, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_each_alert_is_tested_firing_and_silent() -> None:
    doc = yaml.safe_load(TESTS.read_text())
    fired, silent = set(), set()
    for test in doc["tests"]:
        for check in test.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert REQUIRED_ALERTS <= fired, f"alerts never shown firing: {REQUIRED_ALERTS - fired}"
    assert REQUIRED_ALERTS <= silent, f"alerts never shown silent: {REQUIRED_ALERTS - silent}"


def test_alerts_are_actionable() -> None:
    found = {r["alert"]: r for r in rules()}
    assert set(found) == REQUIRED_ALERTS
    for name, rule in found.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"].strip(), name
        description = rule["annotations"]["description"]
        assert "kubectl" in description, f"{name}: the description must tell the person on call what to run"
    assert found["AgentControllerLeakedResources"]["for"] == "10m"
    assert found["AgentControllerLeakedResources"]["expr"].startswith("agent_controller_leaked_resources")
    # Stuck Agents, not a failure rate: a gauge of how long the oldest failing cleanup has failed.
    stuck = found["AgentControllerCleanupsStuck"]["expr"]
    assert "agent_controller_cleanup_retrying_longest_seconds" in stuck and stuck.endswith("> 900")
    assert "rate(" not in stuck
    assert found["AgentControllerIncompleteLogs"]["expr"].startswith(
        "sum by (job, reason) (agent_controller_incomplete_logs_total")
    assert "3 sweep" in found["AgentControllerSweepNotSucceeding"]["annotations"]["description"]
    assert found["AgentControllerSweepNotSucceeding"]["expr"].endswith("> 180"), (
        "3 x the default 60 s interval"
    )
    assert found["AgentControllerDown"]["expr"].startswith("absent(up{")


def test_values_render_as_counts_and_durations() -> None:
    """No rate or SI-prefixed unit in an alert's text ("3.333m failures/s"): counts print as they
    are, durations through humanizeDuration, thresholds as durations ("10m")."""
    for rule in rules():
        for key, text in rule["annotations"].items():
            assert "/s" not in text and "humanize }}" not in text and "humanize1024" not in text, (rule["alert"], key)
            for use in re.findall(r"\$value[^}]*", text):
                assert use.strip() in ("$value", "$value | humanizeDuration"), (rule["alert"], key, use)


def test_rule_expressions_parse_and_use_spec_metrics() -> None:
    allowed = exposed_metric_names() | controller_metric_names() | {"up"}
    results = promql_analyse([r["expr"] for r in rules()])
    for result in results:
        assert result["error"] is None, result
        assert result["metrics"], result
        unknown = set(result["metrics"]) - allowed
        assert not unknown, f"{result['expr']}: metrics the controller does not serve: {unknown}"
