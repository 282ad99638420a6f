"""Helpers for the agentctl tests: run the real CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
AGENTCTL = [sys.executable, "-m", "controller.agentctl.cli"]
DEADLINE = 60.0
"""Generous upper bound for any subprocess in these tests."""


def clean_env(**extra: str) -> dict[str, str]:
    """An environment without Kubernetes settings (no AGENT_NAME, no in-cluster, no kubeconfig)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_", "KUBERNETES_")) and k != "KUBECONFIG"
    }
    env["KUBECONFIG"] = "/nonexistent/kubeconfig"
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def agentctl(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.CompletedProcess[bytes]:
    """Run ``agentctl ARGS`` to completion and capture its output."""
    return subprocess.run(
        [*AGENTCTL, *args],
        env=env if env is not None else clean_env(),
        cwd=REPO,
        capture_output=True,
        check=False,
        timeout=DEADLINE,
        **kw,
    )


def popen_agentctl(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
    """Start ``agentctl ARGS`` with piped stdout/stderr."""
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([*AGENTCTL, *args], env=env if env is not None else clean_env(), cwd=REPO, **kw)


class Output:
    """Collects a subprocess's stdout and stderr in background threads."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        import threading

        self.proc = proc
        self.out = bytearray()
        self.err = bytearray()
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._pump, args=(proc.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, buf: bytearray) -> None:
        if stream is None:
            return
        fd = stream.fileno()
        while True:
            chunk = os.read(fd, 65536)
            with self._cond:
                if not chunk:
                    self._cond.notify_all()
                    return
                buf.extend(chunk)
                self._cond.notify_all()

    def wait_for(self, token: bytes, timeout: float = DEADLINE, stream: str = "out") -> None:
        """Block until ``token`` appeared on stdout (or stderr); fail after ``timeout``."""
        import time

        buf = self.out if stream == "out" else self.err
        end = time.monotonic() + timeout
        with self._cond:
            while token not in buf:
                left = end - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{token!r} not seen within {timeout}s; stdout={bytes(self.out)!r} "
                        f"stderr={bytes(self.err)!r}"
                    )
                self._cond.wait(min(left, 0.5))

    def finish(self, timeout: float = DEADLINE) -> int:
        """Wait for the process and the readers; return its exit code."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        for t in self._threads:
            t.join(timeout)
        return rc


def write_kubeconfig(path: Path, server: str, token: str, namespace: str = "default") -> Path:
    """Write a kubeconfig with one context (bearer-token user) and return its path."""
    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: \"{server}\"}}}}]\n"
        f"users: [{{name: u, user: {{token: \"{token}\"}}}}]\n"
        f"contexts: [{{name: x, context: {{cluster: c, user: u, namespace: \"{namespace}\"}}}}]\n"
        "current-context: x\n"
    )
    return path
