"""The controller under test, as its own process: `agent-controller run --kubeconfig ...`.

A separate process gives the controller its own interpreter (its own GIL, its own core), as in a
real deployment, and lets psutil measure its RSS alone (the emulator's memory is not counted).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import IO

import psutil

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ControllerProcess:
    def __init__(self, kubeconfig: str, namespace: str, archive_dir: str, log_path: str,
                 sweep_interval: float = 3600.0, extra_args: list[str] | None = None,
                 env: dict[str, str] | None = None):
        self.kubeconfig = kubeconfig
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(env or {})
        self.namespace = namespace
        self.archive_dir = archive_dir
        self.log_path = log_path
        self.sweep_interval = sweep_interval
        self.metrics_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ControllerProcess:
        # BENCH_CONTROLLER_WRAPPER=script.py runs `python script.py run ...` instead (e.g. a memory
        # profiler that then calls controller.cli.main).
        wrapper = os.environ.get("BENCH_CONTROLLER_WRAPPER")
        entry = [wrapper] if wrapper else ["-m", "controller.cli"]
        cmd = [sys.executable, *entry, "run", "--kubeconfig", self.kubeconfig,
               "--namespace", self.namespace, "--archive-dir", self.archive_dir,
               "--metrics-port", str(self.metrics_port), "--health-port", str(self.health_port),
               "--sweep-interval", str(self.sweep_interval), *self.extra_args,
               *(["-v"] if os.environ.get("BENCH_CONTROLLER_VERBOSE") else [])]
        env = {**os.environ, **self.extra_env}
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop(), the process outlives this call
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"controller did not become healthy in {timeout}s; see {self.log_path}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / (1024 * 1024)

    def cpu_seconds(self) -> float:
        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def sweeps(self) -> tuple[float, float]:
        """(count, total seconds) of the sweep-duration histogram."""
        text = self.metrics()
        count = _sample(text, "agent_controller_sweep_duration_seconds_count")
        total = _sample(text, "agent_controller_sweep_duration_seconds_sum")
        return count, total

    def kill(self) -> None:
        """SIGKILL: the controller dies at whatever line it was on (the chaos run)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def signal(self, sig: int) -> None:
        """SIGSTOP / SIGCONT (a paused replica)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM, then SIGKILL after `timeout` (a failsafe: the controller exits at once): the bench
        measures nothing of the shutdown, and every scenario starts a fresh controller in a fresh namespace."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None


def _sample(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else 0.0
