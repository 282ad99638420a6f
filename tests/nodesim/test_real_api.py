"""What only a real API server shows: the Node object, its Lease, the kubelet API's TLS, a restart."""

from __future__ import annotations

import json
import os
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
from ns_helpers import A, NODE, RealBackend, script, wait_for


@pytest.fixture
def real(real_backend: RealBackend) -> RealBackend:
    return real_backend


def test_node_is_registered_ready_with_its_kubelet_port_and_lease(real: RealBackend) -> None:
    node = real.json("GET", f"/api/v1/nodes/{NODE}")
    st = node["status"]
    conds = {c["type"]: c for c in st["conditions"]}
    assert (conds["Ready"]["status"], conds["Ready"]["reason"]) == ("True", "KubeletReady")
    for t in ("MemoryPressure", "DiskPressure", "PIDPressure"):
        assert conds[t]["status"] == "False"
    assert {"type": "InternalIP", "address": "127.0.0.1"} in st["addresses"]
    assert st["daemonEndpoints"]["kubeletEndpoint"]["Port"] == real.sim.kubelet_port(NODE)
    assert st["allocatable"]["pods"] == "110" and st["nodeInfo"]["kubeletVersion"] == "v1.37.2"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == NODE
    path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}"
    lease = real.json("GET", path)
    assert lease["spec"]["holderIdentity"] == NODE and lease["spec"]["leaseDurationSeconds"] == 40
    assert lease["metadata"]["ownerReferences"][0]["uid"] == node["metadata"]["uid"]
    wait_for(lambda: real.json("GET", path)["spec"]["renewTime"] != lease["spec"]["renewTime"],
             message="a heartbeat")
    out = real.kubectl("get", "nodes", NODE, "--no-headers", text=True).stdout
    assert out.split()[:2] == [NODE, "Ready"]


def test_kubelet_api_needs_a_client_certificate_of_the_api_servers_ca(real: RealBackend) -> None:
    port = real.sim.kubelet_port(NODE)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw) as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                if not tls.recv(100):
                    raise ConnectionResetError("closed")
    mc = real.mc
    ctx.load_cert_chain(str(mc.workdir / "admin.crt"), str(mc.workdir / "admin.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(4096):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok")


def test_a_restarted_simulator_reregisters_and_runs_what_was_bound_meanwhile(real: RealBackend, tmp_path: Path) -> None:
    from controller.nodesim.sim import NodeSimulator

    mc = real.mc
    name = f"restart-{os.getpid() % 10000}"
    kc = mc.kubeconfig(name, f"system:node:{name}", ("system:nodes",))
    opts: dict[str, Any] = {"client_ca": mc.kubelet_client_ca, "heartbeat_seconds": 1.0, "workdir": str(tmp_path),
                            "taints": [{"key": "sim.agentcontroller.dev/dedicated", "effect": "NoSchedule"}]}
    ns = real.new_namespace()
    sim = NodeSimulator({name: kc}, **opts).start()
    try:
        real.create_pod(ns, "first", nodeName=name, annotations={A + "script": script([{"log": "1\n"}, {"exit": 0}])})
        wait_for(lambda: real.phase(ns, "first") == "Succeeded")
    finally:
        sim.stop()
    real.create_pod(ns, "second", nodeName=name, annotations={A + "script": script([{"log": "2\n"}, {"exit": 0}])})
    sim = NodeSimulator({name: kc}, **opts).start()
    try:
        wait_for(lambda: real.phase(ns, "second") == "Succeeded", message="the pod bound while it was down")
        assert real.kubectl("logs", "second", "-n", ns).stdout == b"2\n"
        node = real.json("GET", f"/api/v1/nodes/{name}")
        assert node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"] == sim.kubelet_port(name)
        assert real.phase(ns, "first") == "Succeeded"        # an earlier run's pod is left alone
    finally:
        sim.stop()
        real.raw("DELETE", f"/api/v1/nodes/{name}")


def test_pod_status_patches_carry_the_uid_precondition(real: RealBackend) -> None:
    """A pod deleted and re-created under the same name is never written with the old pod's status."""
    ns = real.new_namespace()
    real.create_pod(ns, "same", annotations={A + "script": script([{"sleep": 3600}])})
    wait_for(lambda: real.phase(ns, "same") == "Running")
    old_uid = real.pod(ns, "same")["metadata"]["uid"]  # type: ignore[index]
    real.json("DELETE", f"/api/v1/namespaces/{ns}/pods/same", {"gracePeriodSeconds": 0})
    wait_for(lambda: real.pod(ns, "same") is None)
    real.create_pod(ns, "same", annotations={A + "script": script([{"log": "new\n"}, {"exit": 4}])})
    wait_for(lambda: real.phase(ns, "same") == "Failed")
    pod = real.pod(ns, "same")
    assert pod is not None and pod["metadata"]["uid"] != old_uid
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 4


def test_token_request_is_bound_to_the_pod(real: RealBackend) -> None:
    import base64

    ns = real.new_namespace()
    cmd = 'cat "$AGENT_SERVICEACCOUNT_DIR/token"'
    real.create_pod(ns, "tok", containers=[{"name": "c", "image": "sim.local/shell", "command": ["sh", "-c", cmd]}])
    wait_for(lambda: real.phase(ns, "tok") == "Succeeded")
    token = real.sim.written_output(ns, "tok").decode().strip()
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    pod = real.pod(ns, "tok")
    assert pod is not None
    k = claims["kubernetes.io"]
    assert (k["namespace"], k["pod"]["name"], k["pod"]["uid"]) == (ns, "tok", pod["metadata"]["uid"])
    assert k["node"]["name"] == NODE and k["serviceaccount"]["name"] == "default"
    review = real.json("POST", "/apis/authentication.k8s.io/v1/tokenreviews",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
    assert review["status"]["authenticated"] is True


def test_command_line_runs_nodes_until_sigterm(real: RealBackend) -> None:
    import signal
    import subprocess
    import sys

    from ns_helpers import ROOT

    mc = real.mc
    name = f"cli-{os.getpid() % 10000}"
    kc = mc.kubeconfig(name, f"system:node:{name}", ("system:nodes",))
    p = subprocess.Popen([sys.executable, "-m", "controller.nodesim", "--node", f"{name}={kc}",
                          "--client-ca", mc.kubelet_client_ca, "--heartbeat-seconds", "1"],
                         cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        lines = []
        for line in p.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        assert lines[-1] == "ready", (lines, p.stderr.read() if p.stderr else "")
        node = real.json("GET", f"/api/v1/nodes/{name}")
        port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        assert lines[0] == f"node {name} kubelet port {port}"
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
        real.raw("DELETE", f"/api/v1/nodes/{name}")
