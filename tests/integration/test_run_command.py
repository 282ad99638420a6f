"""`agent-controller run` as a process: how it starts, refuses to start, and stops."""

from __future__ import annotations

import signal
import subprocess
import sys

from helpers import script, wait_for

from controller.devcluster import DevCluster


def run_command(kubeconfig: str, tmp_path) -> list[str]:
    return [sys.executable, "-m", "controller.cli", "run", "--kubeconfig", kubeconfig,
            "--archive-dir", str(tmp_path / "archive"), "--metrics-port", "0", "--health-port", "0"]


def test_run_without_the_crd_is_a_one_line_error(tmp_path):
    """Without the Agent CRD the controller refuses to start (kopf would run and serve nothing)."""
    with DevCluster() as bare:
        kubeconfig = bare.kubeconfig_path(str(tmp_path / "kubeconfig"), user="admin")
        done = subprocess.run(run_command(kubeconfig, tmp_path), capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "agent-controller: the API server does not serve agents.agentcontroller.dev/v1alpha1: install the CRD "
        "first (kubectl apply -f manifests/crd.yaml, or the Helm chart)")
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr


def test_sigterm_stops_it_cleanly(tmp_path, cluster, api, ns):
    """SIGTERM (the pod is being stopped): kopf's shutdown runs, the process exits 0 without waiting
    for lingering tasks. The wait below is a failsafe, not a timing assertion."""
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "kubeconfig"), user="admin")
    proc = subprocess.Popen(run_command(kubeconfig, tmp_path) + ["--namespace", ns, "--verbose"],
                            stderr=subprocess.PIPE, text=True)
    try:
        api.create_agent(ns, "term", {"image": "agent:1", "env": script([{"sleep": 3600}])})
        wait_for(lambda: api.agent(ns, "term").get("status", {}).get("phase") == "Running")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "Activity 'shutdown' succeeded" in err
    assert "Traceback" not in err
    # kopf found no task of ours still running once its root tasks had stopped (it would give such
    # tasks 5 s, then cancel them: "Hung tasks are stopped ...").
    assert "Hung tasks stopping is skipped: no tasks given." in err
