"""The anchor phase (issue #18): Jobs drained by kube-controller-manager's TTL-after-finished
controller and garbage collector, then as many Agents drained by ours, on the same real API server
— end to end with a few of each; and how it counts kube-controller-manager's requests."""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.anchor import KCM_USERS, audit_requests

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def bench(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_the_anchor_is_refused_on_the_emulator() -> None:
    proc = bench("--phases", "anchor", "--quick")
    assert proc.returncode != 0
    assert "the anchor phase needs --backend control-plane" in proc.stderr


def test_audit_lines_are_counted_by_controller_in_the_namespace_and_window(tmp_path: Path) -> None:
    t0 = datetime.datetime(2026, 12, 2, 8, 0, 0, tzinfo=datetime.UTC)

    def line(user: str, verb: str, ns: str, seconds: int, stage: str = "ResponseComplete", **ref: str) -> str:
        return json.dumps({"stage": stage, "verb": verb, "user": {"username": user},
                           "objectRef": {"namespace": ns, **ref},
                           "requestReceivedTimestamp": (t0 + datetime.timedelta(seconds=seconds)).isoformat()
                           .replace("+00:00", "Z")})

    log = tmp_path / "audit.log"
    log.write_text("\n".join([
        line(KCM_USERS + "ttl-after-finished-controller", "delete", "jobs", 1, resource="jobs"),
        line(KCM_USERS + "ttl-after-finished-controller", "get", "jobs", 2, resource="jobs"),
        line(KCM_USERS + "generic-garbage-collector", "delete", "jobs", 3, resource="pods"),
        line(KCM_USERS + "job-controller", "update", "jobs", 3, resource="jobs", subresource="status"),
        line(KCM_USERS + "job-controller", "update", "jobs", 3, stage="ResponseStarted", resource="jobs"),
        line(KCM_USERS + "job-controller", "update", "other", 3, resource="jobs"),       # another namespace
        line("system:node:nodesim-0", "delete", "jobs", 3, resource="pods"),            # the kubelet
        line(KCM_USERS + "job-controller", "create", "jobs", -5, resource="pods"),       # before the window
        "not json",
    ]) + "\n")
    counted = audit_requests(log, "jobs", t0, t0 + datetime.timedelta(seconds=10), KCM_USERS)
    assert counted == {"generic-garbage-collector delete pods": 1, "job-controller update jobs/status": 1,
                       "ttl-after-finished-controller delete jobs": 1, "ttl-after-finished-controller get jobs": 1}


@pytest.mark.slow
def test_anchor_burst_and_idle_on_the_control_plane(tmp_path: Path) -> None:
    from controller.controlplane import BinariesUnavailable, ensure_binaries

    try:
        ensure_binaries()
    except BinariesUnavailable as exc:
        pytest.skip(f"no control plane: {exc}")
    out = tmp_path / "anchor.json"
    proc = bench("--backend", "control-plane", "--phases", "anchor,burst,idle", "--agents", "4",
                 "--idle-agents", "2", "--output", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["backend"] == "control-plane"
    anchor = result["anchor"]
    assert anchor["agents"] == 4
    assert anchor["ours_all_gone"] is True and anchor["theirs_all_gone"] is True
    for key in ("ours_per_second", "theirs_per_second", "ratio", "ours_requests", "theirs_requests"):
        assert anchor[key] > 0, key
    assert any(k.startswith("ttl-after-finished-controller delete jobs") for k in anchor["theirs_requests_by"])
    assert result["burst"]["all_verified"] is True
    assert result["idle"] and result["api"]
    assert "## Anchor" in out.with_suffix(".md").read_text()


def test_the_ship_phase_ships_every_byte_exactly_once(tmp_path: Path) -> None:
    """`--phases ship --quick`: two agents' output through the real endpoint; figures named and exact."""
    import json
    import subprocess
    import sys

    out = tmp_path / "ship.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--phases", "ship", "--quick", "--output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ship = json.loads(out.read_text())["ship"]
    assert ship["backend"] == "ship-endpoint"
    assert (ship["exactly_once"], ship["final_acknowledged"]) == (ship["agents"], ship["agents"])
    for key in ("mib_per_second_total", "mib_per_second_per_agent_median", "controller_cpu_seconds_per_mib"):
        assert ship[key] > 0
    assert "## Ship" in out.with_suffix(".md").read_text()
