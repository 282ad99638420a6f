"""`agent-controller demo` as a user runs it: a subprocess, its output, its archive, its metrics, kubectl."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from controller.demo import build_samples

DEMO = [sys.executable, "-m", "controller.cli", "demo"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def check_archives(archive: Path, samples) -> None:
    ns_dir = archive / "demo"
    for s in samples:
        dirs = list((ns_dir / s.name).glob("*/MANIFEST.json")) if (ns_dir / s.name).exists() else []
        if not s.archive:
            assert dirs == [], s.name
            continue
        assert len(dirs) == 1, (s.name, dirs)
        directory = dirs[0].parent
        manifest = json.loads(dirs[0].read_text())
        names = {f["name"] for f in manifest["files"]}
        assert {"agent.log", "agent.json"} <= names
        assert (directory / "agent.log").read_bytes() == s.expected_log, s.name
    orphans = list((ns_dir / "_orphans").glob("*/MANIFEST.json"))
    assert len(orphans) == 1
    assert (orphans[0].parent / "agent.log").read_bytes() == b"orphaned helper still running\n"


def test_demo_runs_serves_metrics_kubectl_and_shuts_down_cleanly(tmp_path):
    port = free_port()
    archive = tmp_path / "archive"
    kubeconfig = tmp_path / "kubeconfig"
    proc = subprocess.Popen(DEMO + ["--archive-dir", str(archive), "--metrics-port", str(port),
                                    "--kubeconfig-out", str(kubeconfig)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    kubectl_out = ""
    try:
        deadline = time.monotonic() + 150
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if not kubectl_out and kubeconfig.exists() and shutil.which("kubectl") and "phase=Running" in line:
                result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), "get", "agents", "-n", "demo"],
                                        capture_output=True, text=True, timeout=60)
                assert result.returncode == 0, result.stderr
                kubectl_out = result.stdout
            if line.startswith("DONE") or line.startswith("NOT DONE"):
                break
        text = "".join(lines)
        assert any(ln.startswith("DONE") for ln in lines), text
        assert "byte-identical" in text
        # Still serving: the metrics say nothing is leaking.
        time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        leaked = [float(v) for v in re.findall(r"^agent_controller_leaked_resources\{[^}]*\} (\S+)$", metrics, re.MULTILINE)]
        assert leaked and sum(leaked) == 0
        assert re.search(r'^agent_controller_leaks_reaped_total\{kind="pod"\} 1\.0$', metrics, re.MULTILINE)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if shutil.which("kubectl"):
        header = kubectl_out.splitlines()[0].split()
        assert header == ["NAME", "PHASE", "REASON", "PROGRESS", "POD", "CLEANUP", "AGE"], kubectl_out
        assert "researcher" in kubectl_out
    check_archives(archive, build_samples(7))


def test_demo_exit_when_done(tmp_path):
    archive = tmp_path / "a"
    proc = subprocess.run(DEMO + ["--exit-when-done", "--archive-dir", str(archive),
                                  "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DONE: every agent cleaned up" in proc.stdout
    assert "leaks:             1 found by the sweep, 1 reaped" in proc.stdout
    check_archives(archive, build_samples(7))


@pytest.mark.slow
def test_demo_200_agents(tmp_path):
    proc = subprocess.run(DEMO + ["--agents", "200", "--exit-when-done", "--archive-dir", str(tmp_path / "a"),
                                  "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    check_archives(tmp_path / "a", build_samples(200))


@pytest.mark.parametrize("args,needle", [
    (["--agents", "0"], "out of range: 0 (must be 1..5000)"),
    (["--agents", "x"], "not a number"),
    (["--metrics-port", "99999"], "port out of range"),
    (["--bogus"], "unrecognized arguments"),
])
def test_bad_flags_give_one_line(args, needle):
    proc = subprocess.run(DEMO + args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_taken_port_gives_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(DEMO + ["--metrics-port", str(port), "--archive-dir", str(tmp_path)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "already in use" in proc.stderr, proc.stderr


def test_live_view_refreshes_in_place_on_a_tty(tmp_path):
    import pty

    port = free_port()
    pid, fd = pty.fork()
    if pid == 0:  # child: the demo on a terminal
        os.execv(sys.executable, DEMO + ["--exit-when-done", "--archive-dir", str(tmp_path / "a"),
                                         "--metrics-port", str(port)])
    out = b""
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, out[-2000:]
    assert b"\x1b[" in out and b"NO-LEAKS" in out and b"DONE" in out
