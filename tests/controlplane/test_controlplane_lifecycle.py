"""Starting, restarting and stopping a control plane of its own (not the session's), and the
command line `python -m controller.controlplane`. Processes are checked by PID (psutil, which
also compares creation times, so a recycled PID is not mistaken for ours)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil
import pytest

from helpers import wait_for

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bin_dir() -> Path:
    from controller.controlplane import BinariesUnavailable, ensure_binaries

    try:
        return ensure_binaries()
    except BinariesUnavailable as exc:
        pytest.skip(f"no control plane: {exc}")


def processes(pids: dict[str, int]) -> list[psutil.Process]:
    return [psutil.Process(pid) for pid in pids.values()]


def assert_all_gone(procs: list[psutil.Process]) -> None:
    alive = [p.pid for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"still running: {alive}"


def test_restarts_keep_the_data_and_stop_leaves_no_process(bin_dir: Path, tmp_path: Path) -> None:
    from controller.controlplane import ControlPlane

    cp = ControlPlane(workdir=tmp_path / "cp", bin_dir=bin_dir, die_with_parent=True)
    seen: list[psutil.Process] = []
    try:
        cp.start()
        assert set(cp.pids) == {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
        seen += processes(cp.pids)
        cp.create_namespace("kept", {"survives": "restarts"})

        etcd_pid = cp.pids["etcd"]
        cp.restart_etcd()
        assert cp.pids["etcd"] != etcd_pid
        seen += processes(cp.pids)
        assert cp.request("GET", "/api/v1/namespaces/kept")["metadata"]["labels"]["survives"] == "restarts"

        apiserver_pid, url = cp.pids["kube-apiserver"], cp.url
        cp.restart_apiserver()
        assert cp.pids["kube-apiserver"] != apiserver_pid and cp.url == url
        seen += processes(cp.pids)
        assert cp.kubectl("get", "namespace", "kept", "-o", "name").stdout.strip() == "namespace/kept"
    finally:
        cp.stop()
    assert cp.pids == {}
    assert_all_gone(seen)
    assert (tmp_path / "cp" / "logs" / "kube-apiserver.log").exists()     # a given workdir is kept


def test_a_failed_start_names_the_process_and_shows_its_log(bin_dir: Path, tmp_path: Path) -> None:
    from controller.controlplane import ControlPlane, ControlPlaneError

    cp = ControlPlane(workdir=tmp_path / "cp", bin_dir=bin_dir,
                      extra_args={"kube-apiserver": ["--no-such-flag"]})
    with pytest.raises(ControlPlaneError) as err:
        cp.start()
    message = str(err.value)
    assert "kube-apiserver exited" in message and "unknown flag: --no-such-flag" in message
    assert cp.pids == {}                     # etcd, started first, was stopped


def test_the_command_line_prints_ready_and_stops_everything_on_sigterm(bin_dir: Path, tmp_path: Path) -> None:
    kubeconfig = tmp_path / "admin.kubeconfig"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AGENT_CONTROLLER_CONTROLPLANE_BIN=str(bin_dir))
    proc = subprocess.Popen([sys.executable, "-m", "controller.controlplane", "--kubeconfig-out", str(kubeconfig),
                             "--nodes", "0", "--workdir", str(tmp_path / "work")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read(stream: Any) -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, args=(proc.stdout,), daemon=True).start()
    children: list[psutil.Process] = []
    try:
        first = lines.get(timeout=300)                  # failsafe: the first start may build
        assert first.strip() == "ready", first
        ready = subprocess.run([str(bin_dir / "kubectl"), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
                               capture_output=True, text=True, timeout=60, check=False)
        assert ready.stdout.strip() == "ok", ready.stderr
        children = psutil.Process(proc.pid).children()
        names = sorted(Path(c.exe()).name for c in children)
        assert names == ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for(lambda: not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children),
             message="the CLI's children to be gone")
    assert_all_gone(children)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux only")
def test_the_command_line_stops_everything_when_its_parent_dies(bin_dir: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               AGENT_CONTROLLER_CONTROLPLANE_BIN=str(bin_dir))
    cli = (f"'{sys.executable}' -m controller.controlplane --kubeconfig-out '{tmp_path / 'kc'}' --nodes 0 "
           f"--workdir '{tmp_path / 'work'}'")
    parent = subprocess.Popen(["sh", "-c", f"{cli} & echo $!; wait"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def read(stream: Any) -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, args=(parent.stdout,), daemon=True).start()
    cli_process: psutil.Process | None = None
    try:
        cli_process = psutil.Process(int(lines.get(timeout=60)))
        assert lines.get(timeout=300).strip() == "ready"
        children = cli_process.children()
        assert len(children) == 4
        parent.kill()                                   # SIGKILL: no chance to clean up itself
        parent.wait()
        everything = [cli_process, *children]
        wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in everything),
                 timeout=120, message="the CLI and its children to stop after its parent died")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if cli_process is not None and cli_process.is_running() and cli_process.status() != psutil.STATUS_ZOMBIE:
            cli_process.terminate()                     # a failed test must not leave it running
