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


def read_until(proc: subprocess.Popen, lines: list[str], done, deadline: float) -> None:
    """Read the demo's stdout into `lines` until done(line) (a failsafe deadline, not a timing assertion)."""
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("the demo ended early:\n" + "".join(lines))
        lines.append(line)
        if done(line):
            return
    raise AssertionError("timed out reading the demo's output:\n" + "".join(lines))


def kubectl(kubeconfig: Path, *args: str) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubeconfig), *args], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def archive_total(archive: Path) -> int:
    """Bytes of every sealed archive under `archive` (agents' and orphans')."""
    return sum(p.stat().st_size for m in archive.glob("*/*/*/MANIFEST.json") for p in m.parent.iterdir()
               if p.is_file())


def test_demo_runs_serves_metrics_kubectl_and_shuts_down_cleanly(tmp_path):
    port = free_port()
    archive = tmp_path / "archive"
    # The default kubeconfig (./demo.kubeconfig), as a user gets it: the demo runs in tmp_path.
    kubeconfig = tmp_path / "demo.kubeconfig"
    proc = subprocess.Popen(DEMO + ["--archive-dir", str(archive), "--metrics-port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    kubectl_out = ""
    try:
        deadline = time.monotonic() + 150

        def watch(line: str) -> bool:
            nonlocal kubectl_out
            if not kubectl_out and kubeconfig.exists() and shutil.which("kubectl") and "phase=Running" in line:
                kubectl_out = kubectl(kubeconfig, "get", "agents")     # the context namespace is demo
            return line.startswith(("DONE", "NOT DONE"))

        read_until(proc, lines, watch, deadline)
        text = "".join(lines)
        assert any(ln.startswith("DONE") for ln in lines), text
        assert "byte-identical" in text
        assert "kubeconfig: demo.kubeconfig (context namespace demo" in text
        assert "apply -f " in text and "examples/demo/" in text
        read_until(proc, lines, lambda line: line.startswith("Their archived logs:"), deadline)
        # Still serving: the metrics say nothing is leaking, and count every archive (the orphan's too).
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        leaked = [float(v) for v in re.findall(r"^agent_controller_leaked_resources\{[^}]*\} (\S+)$", metrics, re.MULTILINE)]
        assert leaked and sum(leaked) == 0
        assert re.search(r'^agent_controller_leaks_reaped_total\{kind="pod"\} 1\.0$', metrics, re.MULTILINE)
        archived = float(re.search(r"^agent_controller_archived_bytes_total (\S+)$", metrics, re.MULTILINE).group(1))
        assert archived == archive_total(archive) > 0
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


EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "demo"


@pytest.mark.skipif(not shutil.which("kubectl"), reason="kubectl is not installed")
def test_your_own_agents_really_run_in_the_demo(tmp_path):
    """`kubectl apply -f examples/demo/` against the demo, as its output says: the Agents run as real
    processes, report, end, and their real output is archived; the metric counts their archives."""
    port = free_port()
    archive = tmp_path / "archive"
    kubeconfig = tmp_path / "demo.kubeconfig"
    proc = subprocess.Popen(DEMO + ["--archive-dir", str(archive), "--metrics-port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 240
        read_until(proc, lines, lambda line: line.startswith("Their archived logs:"), deadline)
        out = kubectl(kubeconfig, "apply", "-f", str(EXAMPLES))
        assert "agent.agentcontroller.dev/hello created" in out, out

        def agent(name: str) -> dict:
            return json.loads(kubectl(kubeconfig, "get", "agent", name, "-o", "json"))

        read_until(proc, lines, lambda line: line.startswith("[") and "long-task: phase=Working" in line, deadline)
        agentctl = Path(sys.executable).parent / "agentctl"
        killed = subprocess.run([str(agentctl), "kill", "long-task"], capture_output=True, text=True, timeout=60,
                                env={**os.environ, "KUBECONFIG": str(kubeconfig)})
        assert killed.returncode == 0, killed.stderr
        archived_lines: dict[str, str] = {}

        def all_archived(line: str) -> bool:
            m = re.match(r"^\[\s*[\d.]+s\] ([a-z-]+): .*archived in (\S+)/$", line)
            if m:
                archived_lines[m.group(1)] = m.group(2)
            return set(archived_lines) >= {"hello", "crash", "long-task"}

        read_until(proc, lines, all_archived, deadline)
        hello, crash, long_task = agent("hello"), agent("crash"), agent("long-task")
        assert hello["status"]["phase"] == "Completed" and hello["status"]["progress"] == 50
        assert crash["status"]["phase"] == "Failed" and "exited with code 3" in crash["status"]["message"]
        assert long_task["status"]["phase"] == "Terminated" and long_task["status"]["reason"] == "Killed"
        for a in (hello, crash, long_task):
            assert a["status"]["cleanup"]["state"] == "Succeeded" and a["status"]["cleanup"]["verifiedNoLeaks"]
            directory = archive / "demo" / a["metadata"]["name"] / a["metadata"]["uid"]
            assert archived_lines[a["metadata"]["name"]] == str(directory.resolve())
        log = lambda a: (archive / "demo" / a["metadata"]["name"] / a["metadata"]["uid"] / "agent.log").read_text()  # noqa: E731
        assert log(hello) == ("hello from hello in namespace demo\nmy prompt: Say hello to the demo.\ndone\n")
        assert log(crash) == "calling the tool\nerror: the tool timed out\n"
        assert log(long_task).startswith("step 1\n") and "SIGTERM: saving my notes\n" in log(long_task)
        assert (archive / "demo" / "hello" / hello["metadata"]["uid"] / "prompt.txt").read_text() == \
            "Say hello to the demo."
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        archived = float(re.search(r"^agent_controller_archived_bytes_total (\S+)$", metrics, re.MULTILINE).group(1))
        assert archived == archive_total(archive)
        described = kubectl(kubeconfig, "describe", "agent", "hello")
        assert "PodCreated" in described and "CleanedUp" in described
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


SUMMARY_ARCHIVES = re.compile(r"^  archives: +7 \(6 agents \+ 1 orphan pod; (\d+) bytes = "
                              r"agent_controller_archived_bytes_total\) under ", re.MULTILINE)


def test_demo_exit_when_done(tmp_path):
    archive = tmp_path / "a"
    proc = subprocess.run(DEMO + ["--exit-when-done", "--archive-dir", str(archive),
                                  "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "DONE: every agent cleaned up" in proc.stdout
    assert "leaks:             1 found by the sweep, 1 reaped" in proc.stdout
    m = SUMMARY_ARCHIVES.search(proc.stdout)
    assert m, proc.stdout
    assert int(m.group(1)) == archive_total(archive)
    check_archives(archive, build_samples(7))
    # A second run in the same archive directory counts its own archives only.
    first = archive_total(archive)
    again = subprocess.run(DEMO + ["--exit-when-done", "--archive-dir", str(archive),
                                   "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=300,
                           cwd=tmp_path)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    m2 = SUMMARY_ARCHIVES.search(again.stdout)
    assert m2, again.stdout
    assert int(m2.group(1)) == archive_total(archive) - first


@pytest.mark.slow
def test_demo_200_agents(tmp_path):
    proc = subprocess.run(DEMO + ["--agents", "200", "--exit-when-done", "--archive-dir", str(tmp_path / "a"),
                                  "--metrics-port", str(free_port())], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
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
        os.chdir(tmp_path)
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


def test_demo_examples_are_valid_agents_for_the_simulator():
    """examples/demo/*.yaml: Agents the API accepts, whose image the node simulator runs as a local
    process (sim.local/) through `agentctl run` (all but big-log-bare.yaml, the same agent as big-log.yaml
    without it)."""
    import yaml

    from controller.devcluster import DevCluster

    files = sorted(EXAMPLES.glob("*.yaml"))
    assert {p.name for p in files} >= {"hello.yaml", "crash.yaml", "long-task.yaml"}
    with DevCluster() as cluster:
        cluster.apply_file(str(Path(__file__).resolve().parents[2] / "manifests" / "crd.yaml"))
        cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
        for path in files:
            (doc,) = list(yaml.safe_load_all(path.read_text()))
            assert doc["spec"]["image"].startswith("sim.local/"), path.name
            if path.name != "big-log-bare.yaml":         # (the one that shows what happens without it)
                assert doc["spec"]["command"][:3] == ["agentctl", "run", "--"], path.name
            stored = cluster.create(doc, namespace="demo")      # validated against the CRD
            assert stored["spec"]["cleanup"]["logs"] == "Archive", path.name


def test_an_agent_that_never_had_a_pod_has_no_log_to_compare(tmp_path):
    """A deadline that passes before the pod is created (a loaded machine): nothing was served,
    so the demo's check of archived logs skips it instead of reporting a difference."""
    import json as _json

    from controller.demo import _never_had_a_pod

    (tmp_path / "agent.json").write_text(_json.dumps({"status": {"phase": "Failed", "reason": "DeadlineExceeded"}}))
    assert _never_had_a_pod(tmp_path)
    (tmp_path / "agent.json").write_text(_json.dumps({"status": {"phase": "Failed", "podName": "x"}}))
    assert not _never_had_a_pod(tmp_path)
    assert not _never_had_a_pod(tmp_path / "missing")
