"""Fixtures of the node-simulator tests: the same tests against both backends.

``backend`` is parametrised: ``emulator`` (DevCluster, its kubelet is the simulator's emulator
adapter) and ``real`` (etcd + kube-apiserver + kube-controller-manager + kube-scheduler v1.37.2 from
tests/nodesim/minicluster.py, with a NodeSimulator node registered through the Node authorizer).
The real backend is skipped when the binaries or ``cryptography`` are missing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from minicluster import MiniCluster, find_bin_dir  # noqa: E402
from ns_helpers import NODE, ROOT, Backend, EmulatorBackend, RealBackend, _ids  # noqa: E402


@pytest.fixture(scope="session")
def emulator_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorBackend]:
    from controller.devcluster import DevCluster

    dc = DevCluster(node_options={"workdir": str(tmp_path_factory.mktemp("emu-pods"))}).start()
    dc.apply_file(str(ROOT / "manifests" / "crd.yaml"))
    kc = dc.kubeconfig_path(str(tmp_path_factory.mktemp("emu-kc") / "config"))
    yield EmulatorBackend(dc, kc)
    dc.stop()


@pytest.fixture(scope="session")
def minicluster() -> Iterator[MiniCluster]:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("kube-apiserver/etcd not built: run scripts/install-control-plane.sh (or set NODESIM_K8S_BIN)")
    pytest.importorskip("cryptography")
    mc = MiniCluster(Path(tempfile.mkdtemp(prefix="nodesim-cp-")), bin_dir).start()
    yield mc
    mc.stop()
    shutil.rmtree(mc.workdir, ignore_errors=True)


@pytest.fixture(scope="session")
def real_backend(minicluster: MiniCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealBackend]:
    from controller.nodesim.sim import NodeSimulator

    kc = minicluster.kubeconfig("node-1", f"system:node:{NODE}", ("system:nodes",))
    sim = NodeSimulator({NODE: kc}, client_ca=minicluster.kubelet_client_ca, heartbeat_seconds=1.0,
                        status_seconds=5.0, workdir=str(tmp_path_factory.mktemp("real-pods")),
                        restart_backoff=0.2, max_backoff=2.0).start()
    yield RealBackend(minicluster, sim)
    sim.stop()


@pytest.fixture(params=["emulator", "real"])
def backend(request: pytest.FixtureRequest) -> Backend:
    b: Backend = request.getfixturevalue(f"{request.param}_backend")
    return b


@pytest.fixture
def ns(backend: Backend) -> str:
    return backend.new_namespace()


@pytest.fixture
def lossy(backend: Backend) -> Iterator[Callable[..., dict[str, Any]]]:
    """``lossy(ns, name, **pod)``: a pod whose node the test may lose (``backend.lose``). On the real
    backend it runs on a node of its own (tainted, so nothing else lands there), removed afterwards."""
    if backend.name == "emulator":
        def make_emu(ns: str, name: str, **kw: Any) -> dict[str, Any]:
            return backend.create_pod(ns, name, **kw)

        yield make_emu
        return
    assert isinstance(backend, RealBackend)
    node = f"lossy-{os.getpid() % 10000}-{next(_ids)}"
    kc = backend.mc.kubeconfig(node, f"system:node:{node}", ("system:nodes",))
    backend.sim.add_node(node, kc, taints=[{"key": "sim.agentcontroller.dev/dedicated", "effect": "NoSchedule"}])

    def lose(ns: str, pod: str) -> None:
        backend.sim.lose_node(node)

    backend.lose = lose  # type: ignore[method-assign]
    backend.lossy_node = node  # type: ignore[attr-defined]

    def make(ns: str, name: str, **kw: Any) -> dict[str, Any]:
        return backend.create_pod(ns, name, nodeName=node, **kw)

    try:
        yield make
    finally:
        del backend.lose  # type: ignore[attr-defined]
        backend.sim.remove_node(node)


