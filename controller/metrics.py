"""Prometheus metrics (SPEC §5). No label ever carries an agent's or a namespace's name."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import api
from .kinds import LABELS as KINDS

LEAK_REASONS = ("orphaned", "terminal", "archive_failed")
RESULTS = ("success", "failure")
ARCHIVE_ERROR_REASONS = ("not_writable", "log_read", "write", "invalid_name")
INCOMPLETE_LOG_REASONS = ("rotated", "stream_broken", "kubelet_unreachable", "container_gone", "pod_gone")

DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
SWEEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _StateCollector(Collector):
    """Gauges computed when scraped, from what the controller holds: Agents by phase (from the watch),
    and the cleanups that keep failing."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("agent_controller_agents", "Agents by phase, as the API reports them.",
                                   labels=["phase"])
        counts = self.metrics._phase_source()
        for phase in api.PHASES:
            family.add_metric([phase], counts.get(phase, 0))
        yield family
        retrying = list(self.metrics._retrying_source())
        yield GaugeMetricFamily("agent_controller_cleanups_retrying",
                                "Agents whose cleanup failed at least once and has not succeeded yet.",
                                value=len(retrying))
        now = time.time()
        yield GaugeMetricFamily("agent_controller_cleanup_retrying_longest_seconds",
                                "How long the longest-failing cleanup has been failing (0: none).",
                                value=max((now - since for since in retrying), default=0.0))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.phase_transitions = Counter("agent_controller_phase_transitions", "Agent phase transitions observed.",
                                         ["to"], registry=r)
        self.cleanups = Counter("agent_controller_cleanups", "Cleanups finished, by trigger and result.",
                                ["trigger", "result"], registry=r)
        self.cleanup_duration = Histogram("agent_controller_cleanup_duration_seconds",
                                          "From the terminal phase to verifiedNoLeaks.", ["trigger"],
                                          buckets=DURATION_BUCKETS, registry=r)
        self.leaked = Gauge("agent_controller_leaked_resources", "Leaked resources found by the latest sweep.",
                            ["kind", "reason"], registry=r)
        self.leaks_detected = Counter("agent_controller_leaks_detected", "Leaked resources detected by sweeps.",
                                      ["kind", "reason"], registry=r)
        self.leaks_reaped = Counter("agent_controller_leaks_reaped", "Leaked resources reaped by sweeps.",
                                    ["kind"], registry=r)
        self.archived_bytes = Counter("agent_controller_archived_bytes", "Bytes written to the archive.",
                                      registry=r)
        self.archive_errors = Counter("agent_controller_archive_errors", "Archive failures, by reason.",
                                      ["reason"], registry=r)
        self.sweep_duration = Histogram("agent_controller_sweep_duration_seconds", "Duration of sweeps.",
                                        buckets=SWEEP_BUCKETS, registry=r)
        self.last_sweep_success = Gauge("agent_controller_last_sweep_success_timestamp_seconds",
                                        "Unix time of the latest successful sweep.", registry=r)
        self.sweep_interval = Gauge("agent_controller_sweep_interval_seconds",
                                    "The configured --sweep-interval (dashboards show the sweep's age in intervals).",
                                    registry=r)
        self.incomplete_logs = Counter("agent_controller_incomplete_logs",
                                       "Archived logs known to miss bytes, by why.", ["reason"], registry=r)
        self.shipped_bytes = Counter("agent_controller_shipped_bytes",
                                     "Bytes of agent output agentctl run shipped to the controller.", registry=r)
        self._phase_source: Callable[[], Mapping[str, int]] = dict
        self._retrying_source: Callable[[], Iterable[float]] = tuple
        r.register(_StateCollector(self))
        # Every series exists from the start, so dashboards and alerts see zeros, not gaps.
        for phase in api.PHASES:
            self.phase_transitions.labels(to=phase)
        for trigger in api.TRIGGERS:
            self.cleanup_duration.labels(trigger=trigger)
            for result in RESULTS:
                self.cleanups.labels(trigger=trigger, result=result)
        for reason in ARCHIVE_ERROR_REASONS:
            self.archive_errors.labels(reason=reason)
        for reason in INCOMPLETE_LOG_REASONS:
            self.incomplete_logs.labels(reason=reason)
        for kind in KINDS:
            self.leaks_reaped.labels(kind=kind)
            for reason in LEAK_REASONS:
                self.leaked.labels(kind=kind, reason=reason).set(0)
                self.leaks_detected.labels(kind=kind, reason=reason)

    def set_phase_source(self, source: Callable[[], Mapping[str, int]]) -> None:
        self._phase_source = source

    def set_retrying_source(self, source: Callable[[], Iterable[float]]) -> None:
        """Unix times since when each failing cleanup has been failing."""
        self._retrying_source = source

    def render(self) -> bytes:
        return generate_latest(self.registry)
