"""A tiny kopf 1.45 operator runs against the emulator: create handler, finalizer-held deletion."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

kopf = pytest.importorskip("kopf")

OPERATOR = textwrap.dedent(
    """
    import kopf

    @kopf.on.startup()
    def configure(settings: kopf.OperatorSettings, **_):
        settings.watching.server_timeout = 30
        settings.posting.level = 20

    @kopf.on.create("agentcontroller.dev", "v1alpha1", "agents")
    def created(name, body, patch, **_):
        patch.status["phase"] = "Running"
        patch.status["message"] = "created by kopf: " + name
        kopf.info(body, reason="Handled", message="handled " + name)

    @kopf.on.delete("agentcontroller.dev", "v1alpha1", "agents")
    def deleted(name, namespace, **_):
        import kubernetes
        kubernetes.config.load_kube_config()
        kubernetes.client.CoreV1Api().create_namespaced_config_map(
            namespace, {"metadata": {"name": "deleted-" + name}})
    """
)


def test_kopf_operator_create_and_finalizer(dc: Any, ns: str, kubeconfig: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import kubernetes.config.kube_config as kc
    from kopf.testing import KopfRunner

    monkeypatch.setenv("KUBECONFIG", kubeconfig)
    monkeypatch.setattr(kc, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    op = tmp_path / "operator.py"
    op.write_text(OPERATOR)
    with KopfRunner(["run", "--standalone", "--namespace", ns, "--verbose", str(op)], timeout=60) as runner:
        dc.create({"apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent",
                   "metadata": {"name": "k1", "namespace": ns}, "spec": {"image": "x"}})
        dc.wait_for(lambda: (dc.get("agents", "k1", ns) or {}).get("status", {}).get("phase") == "Running", 30)
        a = dc.get("agents", "k1", ns)
        assert a["status"]["message"] == "created by kopf: k1"
        assert a["metadata"].get("finalizers"), "kopf adds its finalizer for the on.delete handler"
        # kopf reports handler results as Kubernetes events
        dc.wait_for(lambda: [e for e in dc.list("events", ns) if e.get("involvedObject", {}).get("name") == "k1"], 30)
        ev = [e for e in dc.list("events", ns) if e.get("reason") == "Handled"][0]
        assert ev["message"] == "handled k1" and ev["involvedObject"]["uid"] == a["metadata"]["uid"]
        dc.delete("agents", "k1", ns)
        # the finalizer holds the object until the delete handler ran
        dc.wait_for(lambda: dc.get("agents", "k1", ns) is None, 30)
        assert dc.get("configmaps", "deleted-k1", ns) is not None
    assert runner.exit_code == 0, runner.output
    assert runner.exception is None
    assert dc.requests[("watch", "agents")] >= 1 and dc.requests[("patch", "agents/status")] >= 1
