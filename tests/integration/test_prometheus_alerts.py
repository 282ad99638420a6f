"""The shipped alert rules in a real Prometheus, scraping a real controller's /metrics.

The rules are the chart's (helm/agent-controller/templates/_alerts.tpl), rendered by `helm
template` with short thresholds (`prometheusRule.alerts.*`, `sweepInterval`) so that each situation
is reached in seconds; Prometheus (Debian's package, unpacked by scripts/install-test-tools.sh)
runs on 127.0.0.1 with a 1 s scrape and evaluation interval. Each test starts from a healthy
controller, checks that no alert is pending or firing once Prometheus has evaluated the rules on it
for longer than any alert's `for`, creates the situation an alert is for, waits (failsafe timeouts
only) for that alert to fire — and only that one —, checks its text, removes the situation and
waits for the alert to resolve.

Incomplete logs: an agent whose container the node garbage-collected before its log was read is
archived incomplete (`container_gone`), and the controller counts it in
agent_controller_incomplete_logs_total. A stand-in /metrics endpoint (job agent-controller) serves
only the test that compares the loaded rules with the shipped ones.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import script, wait_for
from test_archive_completeness import simulated
from test_lifecycle import cleaned

ROOT = Path(__file__).resolve().parents[2]
TOOLS = Path(os.environ.get("AGENT_CONTROLLER_TOOLS", ROOT / ".tools"))
JOB = "agent-controller"
SWEEP = 2            # the controller's --sweep-interval in these tests (and the chart's sweepInterval)
# prometheusRule.alerts.* for the tests (seconds); the longest `for` is the sweep's: 2 intervals.
ALERT_VALUES = {"leakedForSeconds": 2, "cleanupStuckSeconds": 3, "downForSeconds": 2,
                "incompleteLogsWindowSeconds": 20}
LONGEST_FOR = 2 * SWEEP
ALERTS = ("AgentControllerLeakedResources", "AgentControllerCleanupsStuck", "AgentControllerSweepNotSucceeding",
          "AgentControllerDown", "AgentControllerIncompleteLogs")
WAIT = 120.0         # failsafe timeout of every wait on Prometheus


def _tool(*candidates: Path | str | None) -> str | None:
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


PROMETHEUS = _tool(TOOLS / "prometheus" / "usr" / "bin" / "prometheus", shutil.which("prometheus"))
HELM = _tool(os.environ.get("HELM"), TOOLS / "bin" / "helm", shutil.which("helm"))

if PROMETHEUS is None or HELM is None:
    why = "prometheus and helm are needed (scripts/install-test-tools.sh .tools)"
    if os.environ.get("CI"):
        pytest.fail(why, pytrace=False)
    pytestmark = pytest.mark.skip(reason=why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def render_rules(directory: Path) -> Path:
    """The chart's alert rules with the tests' thresholds, as a Prometheus rules file."""
    values = {"sweepInterval": SWEEP, "prometheusRule": {"enabled": True, "alerts": ALERT_VALUES}}
    values_file = directory / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    env = {**os.environ}
    for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
        env.setdefault(var, str(TOOLS / "helm-home" / sub))
    assert HELM is not None
    out = subprocess.run([HELM, "template", JOB, str(ROOT / "helm" / "agent-controller"), "--namespace", JOB,
                          "-f", str(values_file), "--show-only", "templates/prometheusrule.yaml"],
                         capture_output=True, text=True, timeout=120, env=env, check=True).stdout
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump(yaml.safe_load(out)["spec"]))
    return rules


class Prometheus:
    """A Prometheus server on 127.0.0.1 scraping `targets` as job agent-controller."""

    def __init__(self, directory: Path, targets: list[str]):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        rules = render_rules(directory)
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]}],
        }
        (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(directory / "prometheus.log", "wb")
        assert PROMETHEUS is not None
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={directory / 'prometheus.yml'}",
             f"--storage.tsdb.path={directory / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--log.level=warn"], stdout=self.log, stderr=subprocess.STDOUT, cwd=directory)
        wait_for(self._ready, timeout=WAIT, interval=0.2, message="prometheus ready")

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited: " + (self.directory / "prometheus.log").read_text()[-2000:])
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=5) as resp:
                return resp.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()          # by PID: this process only
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    # -- the HTTP API
    def get(self, path: str, **params: str) -> Any:
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return list(self.get("/api/v1/query", query=expr)["result"])

    def value(self, expr: str) -> float:
        """The value of a scalar, or of a vector of exactly one element."""
        data = self.get("/api/v1/query", query=expr)
        if data["resultType"] == "scalar":
            return float(data["result"][1])
        (result,) = data["result"]
        return float(result["value"][1])

    def alerts(self, state: str | None = None) -> list[dict[str, Any]]:
        found = self.get("/api/v1/alerts")["alerts"]
        return [a for a in found if state is None or a["state"] == state]

    def firing(self, name: str) -> list[dict[str, Any]]:
        return [a for a in self.alerts("firing") if a["labels"]["alertname"] == name]

    def wait_firing(self, name: str, **labels: str) -> dict[str, Any]:
        def fired() -> dict[str, Any] | None:
            return next((a for a in self.firing(name) if all(a["labels"].get(k) == v for k, v in labels.items())),
                        None)
        return dict(wait_for(fired, timeout=WAIT, interval=0.5, message=f"{name} firing"))

    def wait_resolved(self, name: str) -> None:
        wait_for(lambda: not [a for a in self.alerts() if a["labels"]["alertname"] == name], timeout=WAIT,
                 interval=0.5, message=f"{name} resolved")

    def evaluated_for(self, seconds: float) -> None:
        """Wait until the rules have been evaluated, on scraped data, for `seconds` from now: after
        it, an alert whose condition held all along would be firing."""
        start = self.value("time()")
        wait_for(lambda: self.value(f'max(timestamp(up{{job="{JOB}"}}))') > start + seconds and
                 self._last_evaluation() > start + seconds, timeout=WAIT, interval=0.5,
                 message=f"rules evaluated for {seconds}s")

    def _last_evaluation(self) -> float:
        import datetime

        (group,) = self.get("/api/v1/rules")["groups"]
        stamp = str(group["lastEvaluation"])
        stamp = re.sub(r"(\.\d{6})\d+", r"\1", stamp).replace("Z", "+00:00")
        return datetime.datetime.fromisoformat(stamp).timestamp()

    def quiet(self, *, allowed: tuple[str, ...] = ()) -> None:
        """No alert pending or firing except `allowed`, with the log of the last alerts if not."""
        noisy = [a for a in self.alerts() if a["labels"]["alertname"] not in allowed]
        assert not noisy, json.dumps(noisy, indent=1)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: list[str]) -> Prometheus:
        directory = tmp_path / f"prometheus-{len(started)}"
        directory.mkdir()
        prom = Prometheus(directory, targets)
        started.append(prom)
        return prom

    yield start
    for prom in started:
        prom.stop()


def target(ctl: Any) -> str:
    return urllib.parse.urlsplit(ctl.metrics_url).netloc


def healthy(make_controller: Callable[..., Any], **options: Any) -> Any:
    """A controller sweeping every SWEEP seconds, once it has swept successfully (its
    last-sweep gauge is 0 until the first sweep, one interval after the start)."""
    # (a sweep may take seconds on a loaded machine: only a hung one may time out)
    ctl = make_controller(sweep_interval=float(SWEEP), sweep_timeout=4.0, **options)
    wait_for(lambda: ctl.sweeper.last_success is not None, timeout=WAIT, message="first sweep")
    return ctl


def test_a_leak_fires_leaked_resources_and_nothing_else(api, ns, make_controller, prometheus, archive_dir):
    ctl = healthy(make_controller)
    prom = prometheus([target(ctl)])
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet()
    # An orphan pod (its Agent never existed) that the sweep cannot remove: a foreign finalizer.
    labels = {"app.kubernetes.io/managed-by": "agent-controller", "agentcontroller.dev/agent": "gone",
              "agentcontroller.dev/agent-uid": "00000000-0000-0000-0000-00000000dead"}
    api.create_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "clingy", "labels": labels, "finalizers": ["example.com/hold"]},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "agent", "image": "agent:1", "env": script([{"log": "orphan output\n"}, {"sleep": 3600}])}]}})
    alert = prom.wait_firing("AgentControllerLeakedResources", kind="pod", reason="orphaned")
    assert alert["annotations"]["summary"] == "1 leaked agent pod object(s), reason orphaned, for more than 2s"
    assert alert["labels"]["severity"] == "warning"
    # Sweeps go on, each finding it again and failing to remove it: nothing counts as reaped, and it
    # was detected once. The dashboard's "Leaks reaped" query stays at 0.
    prom.evaluated_for(3 * SWEEP)
    assert prom.value(f'sum(agent_controller_leaks_reaped_total{{job="{JOB}"}})') == 0
    assert prom.value(f'sum(increase(agent_controller_leaks_reaped_total{{job=~"{JOB}"}}[10s]))') == 0
    assert prom.value(f'sum(agent_controller_leaks_detected_total{{job="{JOB}", kind="pod"}})') == 1
    prom.quiet(allowed=("AgentControllerLeakedResources",))
    # Removed: the alert resolves.
    api.call("PATCH", f"/api/v1/namespaces/{ns}/pods/clingy", {"metadata": {"finalizers": None}},
             "application/merge-patch+json")
    wait_for(lambda: api.pod(ns, "clingy") is None, timeout=WAIT)
    prom.wait_resolved("AgentControllerLeakedResources")
    prom.quiet()


def test_a_hung_api_fires_sweep_not_succeeding(api, ns, cluster, make_controller, prometheus):
    ctl = healthy(make_controller)
    prom = prometheus([target(ctl)])
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet()
    cluster.faults.inject(verb="list", resource="agents", namespace=ns, hang=True, times=None)
    alert = prom.wait_firing("AgentControllerSweepNotSucceeding")
    assert alert["labels"]["severity"] == "critical"
    assert re.fullmatch(r"No agent-controller sweep has succeeded for [\d.]+s \(more than 3 sweep intervals of 2s\)",
                        alert["annotations"]["summary"]), alert["annotations"]["summary"]
    prom.quiet(allowed=("AgentControllerSweepNotSucceeding",))
    cluster.faults.clear()
    prom.wait_resolved("AgentControllerSweepNotSucceeding")
    prom.quiet()


def test_a_stopped_controller_fires_down_and_nothing_else(api, ns, make_controller, prometheus):
    ctl = healthy(make_controller)
    prom = prometheus([target(ctl)])
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet()
    ctl.stop()
    alert = prom.wait_firing("AgentControllerDown", job=JOB)
    assert alert["annotations"]["summary"] == "agent-controller is down or its metrics are not scraped, for more than 2s"
    assert prom.value(f'up{{job="{JOB}"}}') == 0
    # Its other series went stale with the target: no sweep alert on top of it.
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet(allowed=("AgentControllerDown",))


def test_an_unwritable_archive_fires_cleanups_stuck(api, ns, make_controller, prometheus, tmp_path):
    blocker = tmp_path / "volume"
    blocker.write_text("")           # the archive root lies below a file: it cannot be created
    archive_dir = blocker / "archive"
    ctl = healthy(make_controller, archive_dir=archive_dir)
    prom = prometheus([target(ctl)])
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet()
    api.create_agent(ns, "stuck", {"image": "agent:1", "env": script([{"log": "keep me\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "stuck").get("status", {}).get("phase") == "Running", timeout=WAIT)
    api.patch_agent(ns, "stuck", {"status": {"phase": "Failed", "message": "gave up"}}, status=True)
    alert = prom.wait_firing("AgentControllerCleanupsStuck")
    assert re.fullmatch(r"1 Agent cleanup\(s\) failing, the oldest for [\d.]+s", alert["annotations"]["summary"]), \
        alert["annotations"]["summary"]
    assert "(more than 3s)" in alert["annotations"]["description"]
    # The pod kept for its logs is a leak too (reason archive_failed); nothing else fires.
    prom.quiet(allowed=("AgentControllerCleanupsStuck", "AgentControllerLeakedResources"))
    assert all(a["labels"]["reason"] == "archive_failed" for a in prom.alerts()
               if a["labels"]["alertname"] == "AgentControllerLeakedResources")
    blocker.unlink()
    archive_dir.mkdir(parents=True)
    wait_for(lambda: (api.agent(ns, "stuck")["status"].get("cleanup") or {}).get("state") == "Succeeded",
             timeout=WAIT, message="the cleanup succeeds once the archive is writable")
    assert (archive_dir / ns / "stuck").is_dir()
    prom.wait_resolved("AgentControllerCleanupsStuck")
    prom.wait_resolved("AgentControllerLeakedResources")
    prom.quiet()


class StandIn:
    """A /metrics endpoint serving agent_controller_incomplete_logs_total (see the module docstring)."""

    def __init__(self) -> None:
        self.counts = {"rotated": 0, "stream_broken": 0, "kubelet_unreachable": 0, "container_gone": 0,
                       "pod_gone": 0}
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                lines = ["# TYPE agent_controller_incomplete_logs_total counter"]
                lines += [f'agent_controller_incomplete_logs_total{{reason="{r}"}} {n}'
                          for r, n in stand_in.counts.items()]
                body = ("\n".join(lines) + "\n").encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_incomplete_log_fires_for_its_window_then_resolves(api, ns, make_controller, prometheus):
    ctl = healthy(make_controller)
    prom = prometheus([target(ctl)])
    prom.evaluated_for(LONGEST_FOR + 2)
    prom.quiet()
    # Its container garbage-collected by the node before its log was read: archived incomplete.
    api.create_agent(ns, "gone", {"image": "agent:1", "podTemplate": simulated(
        [{"log": "lost forever\n"}, {"exit": 0}], gc_after_exit="true")})
    agent = wait_for(cleaned(api, ns, "gone"), timeout=WAIT)
    assert agent["status"]["cleanup"]["logsComplete"] is False
    alert = prom.wait_firing("AgentControllerIncompleteLogs", reason="container_gone")
    assert alert["annotations"]["summary"] == \
        "1 agent log(s) archived incomplete in the last 20s, reason container_gone"
    assert alert["labels"]["severity"] == "warning"
    prom.quiet(allowed=("AgentControllerIncompleteLogs",))
    # No further incomplete log: it resolves once the window has passed.
    prom.wait_resolved("AgentControllerIncompleteLogs")
    prom.quiet()


def test_the_rules_prometheus_loaded_are_the_shipped_ones(prometheus, tmp_path):
    """The rules rendered for these tests differ from deploy/prometheus/agent-controller-rules.yaml
    only in the thresholds the values set."""
    stand_in = StandIn()
    try:
        prom = prometheus([stand_in.target])
        (group,) = prom.get("/api/v1/rules")["groups"]
        loaded = {r["name"]: r for r in group["rules"]}
        assert set(loaded) == set(ALERTS)
        shipped = yaml.safe_load((ROOT / "deploy" / "prometheus" / "agent-controller-rules.yaml").read_text())
        for rule in shipped["groups"][0]["rules"]:
            strip = lambda e: re.sub(r"\d+[smh]?\b", "N", re.sub(r"\s+", " ", e)).strip()  # noqa: E731
            assert strip(loaded[rule["alert"]]["query"]) == strip(rule["expr"]), rule["alert"]
    finally:
        stand_in.close()
