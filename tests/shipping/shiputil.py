"""Helpers of the shipping tests: the Helm chart, plain manifests, alert rules, dashboard,
Dockerfile and docs.

The external tools come from `.tools/` (or $AGENT_CONTROLLER_TOOLS), installed by
`scripts/install-test-tools.sh`. When that directory is missing the tests that need a tool are
skipped, with the reason, unless the environment variable CI is set: in CI, or when the directory
exists but lacks a tool, a missing tool is a failure.
"""

from __future__ import annotations

import functools
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Any

import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "agent-controller"
DATA = pathlib.Path(__file__).resolve().parent / "data"
TOOLS = pathlib.Path(os.environ.get("AGENT_CONTROLLER_TOOLS", ROOT / ".tools"))
TOOLS_BIN = TOOLS / "bin"
VENV_PYTHON = TOOLS / "venv" / "bin" / "python"

RELEASE = "agent-controller"
NAMESPACE = "agent-controller"
FULLNAME = "agent-controller"       # the release is named after the chart: its objects are named so

# The parts of the product contract these tests check, kept in the repository (data/contract.yaml).
CONTRACT: dict[str, Any] = yaml.safe_load((DATA / "contract.yaml").read_text())
CONTRACT_METRICS: dict[str, str] = {name: m["type"] for name, m in CONTRACT["metrics"].items()}


def exposed_metric_names() -> set[str]:
    """Every series name Prometheus can hold for the contract's metrics: counters as declared
    (`..._total`, prometheus_client also exports `..._created`), histograms as
    `_bucket`/`_sum`/`_count`, gauges as declared."""
    names: set[str] = set()
    for name, kind in CONTRACT_METRICS.items():
        if kind == "histogram":
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


# Metrics announced by work in progress, not exported by the controller yet (none today). A name
# here that the controller exports is dropped by `served_metric_names()`.
PENDING_METRICS: set[str] = set()


@functools.cache
def controller_metric_names() -> set[str]:
    """Every series name the controller's /metrics serves (the contract's metrics and the extra
    ones, such as agent_controller_cleanups_retrying): read from the controller's own registry."""
    from controller.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        for sample in family.samples:
            names.add(sample.name)
    return names


def served_metric_names() -> set[str]:
    """What a dashboard or an alert rule may use: what the controller serves, and the pending names."""
    served = controller_metric_names()
    return exposed_metric_names() | served | (PENDING_METRICS - served)


def _missing_tools(names: list[str]) -> list[str]:
    missing = []
    for name in names:
        path = VENV_PYTHON if name == "python" else TOOLS_BIN / name
        if not (path.exists() and os.access(path, os.X_OK)):
            missing.append(str(path))
    return missing


def require_tools(*names: str) -> None:
    missing = _missing_tools(list(names))
    if not missing:
        return
    message = f"missing {', '.join(missing)}: run scripts/install-test-tools.sh"
    if not TOOLS.is_dir() and not os.environ.get("CI"):
        pytest.skip(message)
    reason = "CI is set, so the shipping tests must run" if os.environ.get("CI") else f"{TOOLS} is incomplete"
    pytest.fail(f"{message} ({reason})", pytrace=False)


def tool(name: str) -> str:
    require_tools(name)
    return str(TOOLS_BIN / name)


def run(
    cmd: list[str], *, check: bool = True, env_extra: dict[str, str] | None = None, **kwargs: Any
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(TOOLS / "helm-home" / "cache"),
        "HELM_CONFIG_HOME": str(TOOLS / "helm-home" / "config"),
        "HELM_DATA_HOME": str(TOOLS / "helm-home" / "data"),
        # Never reach for a cluster.
        "KUBECONFIG": os.devnull,
        **(env_extra or {}),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"command failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def _helm(subcommand: list[str], values: dict[str, Any] | None, extra: tuple[str, ...],
          check: bool) -> subprocess.CompletedProcess[str]:
    """`helm <subcommand>` with these values, passed as a values file (typed exactly, unlike --set)."""
    with tempfile.TemporaryDirectory() as tmp:
        args: list[str] = []
        if values:
            path = pathlib.Path(tmp) / "values.yaml"
            path.write_text(yaml.safe_dump(values))
            args = ["-f", str(path)]
        return run([tool("helm"), *subcommand, "--namespace", NAMESPACE, *args, *extra], check=check)


def helm_template(
    values: dict[str, Any] | None = None, *extra: str, check: bool = True, chart: pathlib.Path = CHART
) -> subprocess.CompletedProcess[str]:
    return _helm(["template", RELEASE, str(chart)], values, extra, check)


def helm_lint(values: dict[str, Any] | None = None, *extra: str) -> subprocess.CompletedProcess[str]:
    return _helm(["lint", "--strict", str(CHART)], values, extra, check=False)


@functools.cache
def _render_cached(key: str) -> str:
    values = yaml.safe_load(key)
    return helm_template(values).stdout


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The documents `helm template` renders for these values (hooks included, CRDs not)."""
    text = _render_cached(yaml.safe_dump(values or {}, sort_keys=True))
    return [d for d in yaml.safe_load_all(text) if d]


def render_text(values: dict[str, Any] | None = None) -> str:
    return _render_cached(yaml.safe_dump(values or {}, sort_keys=True))


def render_notes(values: dict[str, Any] | None = None) -> str:
    """NOTES.txt as `helm install` would print it. `helm install --dry-run` needs a cluster, so
    render it from a copy of the chart where NOTES.txt is wrapped into an ordinary template."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = pathlib.Path(tmp) / "agent-controller"
        shutil.copytree(CHART, chart)
        notes = (chart / "templates" / "NOTES.txt").read_text()
        (chart / "templates" / "NOTES.txt").unlink()
        (chart / "templates" / "_notes_render.tpl").write_text(
            '{{- define "test.notes" -}}\n' + notes + "\n{{- end }}\n"
        )
        (chart / "templates" / "notes_render.yaml").write_text(
            'kind: RenderedNotes\nnotes: {{ include "test.notes" . | toJson }}\n'
        )
        out = helm_template(values, "--show-only", "templates/notes_render.yaml", chart=chart).stdout
        return str(yaml.safe_load(out)["notes"])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of `kind` (named `name`: the chart has a second ClusterRole, ClusterRoleBinding
    and Service for the ship endpoint, "<fullname>-ship")."""
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}{f' {name}' if name else ''}, got {len(found)}"
    return found[0]


def load_yaml_docs(path: pathlib.Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# The values the chart is rendered with in the tests: defaults and one case per feature.
MATRIX: dict[str, dict[str, Any]] = {
    "default": {},
    "watch-namespaces": {"watchNamespaces": ["team-a", "team-b"]},
    "existing-claim": {"archive": {"persistence": {"existingClaim": "my-archive"}}},
    "monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True},
    },
    "no-persistence": {"archive": {"persistence": {"enabled": False}}},
    "ha": {"replicas": 2, "archive": {"persistence": {"accessModes": ["ReadWriteMany"]}}},
    "ha-namespaced": {
        "replicas": 3,
        "watchNamespaces": ["team-a", "team-b"],
        "archive": {"persistence": {"accessModes": ["ReadWriteMany"], "storageClass": "nfs"}},
    },
    "baseline-no-status-policy": {"podSecurity": "baseline", "statusPolicy": {"enabled": False}},
}

# prometheus-operator kinds: no schema in kubernetes-validate, checked against data/*.schema.json.
MONITORING_KINDS = {
    "ServiceMonitor": "servicemonitor.schema.json",
    "PrometheusRule": "prometheusrule.schema.json",
}


def promql_analyse(exprs: list[str]) -> list[dict[str, Any]]:
    """Parse PromQL with promql-parser (in the tools' virtualenv): error and metric names of each."""
    import json

    require_tools("python")
    script = pathlib.Path(__file__).with_name("promql_names.py")
    proc = subprocess.run(
        [str(VENV_PYTHON), str(script)],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return list(json.loads(proc.stdout))
