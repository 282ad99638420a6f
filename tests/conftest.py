"""Shared fixtures: one API emulator per session, a fresh namespace and controller per test.

The emulator fixtures (`cluster`, `api`, `ns`, `make_controller`, `controller`) are unchanged.
The backend choice (tests/backends.py): `backend` — the emulator or a real control plane, per
`--backend emulator|control-plane` or AGENT_TEST_BACKEND —, `backend_ns`, and `control_plane`
(always the real one; skipped, with the reason, when its binaries cannot be had).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parent.parent
CRD = ROOT / "manifests" / "crd.yaml"
_counter = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--backend", choices=("emulator", "control-plane"), default=None,
                     help="the API server of the `backend` fixture (default: $AGENT_TEST_BACKEND, else emulator)")


def pytest_configure(config: pytest.Config) -> None:
    from backends import backend_choice

    config.addinivalue_line("markers", "emulator_only(what): needs the emulator's own machinery; skips on "
                                       "the control plane")
    backend_choice(config.getoption("--backend"))      # an unknown AGENT_TEST_BACKEND: a usage error


@pytest.fixture(scope="session")
def backend_name(request: pytest.FixtureRequest) -> str:
    from backends import backend_choice

    return backend_choice(request.config.getoption("--backend"))


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real control plane for the session (tests/backends.py: CRDs, the chart's RBAC for the
    controller's ServiceAccount)."""
    from backends import start_control_plane

    backend = start_control_plane(tmp_path_factory.mktemp("controlplane"))
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def backend(request: pytest.FixtureRequest, backend_name: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The chosen backend's facade (tests/backends.py: url, admin_token, ca_file, kubeconfig,
    api(), create_namespace(), controller_config())."""
    from backends import EmulatorBackend

    if backend_name == "control-plane":
        return request.getfixturevalue("control_plane")
    return EmulatorBackend(request.getfixturevalue("emulator"), tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def backend_ns(backend: Any) -> str:
    """A fresh namespace on the chosen backend (Pod Security `restricted` on the control plane)."""
    name = f"t{os.getpid() % 1000}-{next(_counter)}"
    backend.create_namespace(name)
    return name


@pytest.fixture(scope="session")
def emulator() -> Iterator[Any]:
    from controller.devcluster import DevCluster

    c = DevCluster()
    c.start()
    c.apply_file(str(CRD))
    yield c
    c.stop()


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest, backend_name: str) -> Any:
    """The API server of the integration tests: the emulator, or — with `--backend control-plane` —
    a real control plane with simulated nodes, where the controller runs as its own ServiceAccount
    with the chart's RBAC (tests/backends.py ControlPlaneCluster), through the fault proxy."""
    if backend_name == "control-plane":
        from backends import ControlPlaneCluster

        return ControlPlaneCluster(request.getfixturevalue("control_plane"))
    return request.getfixturevalue("emulator")


@pytest.fixture
def api(cluster: Any) -> Any:
    from helpers import Api

    return Api(cluster.url, cluster.admin_token, getattr(cluster, "ca_file", None))


@pytest.fixture
def ns(cluster: Any, api: Any, backend_name: str) -> Iterator[str]:
    from backends import RESTRICTED

    name = f"t{os.getpid() % 1000}-{next(_counter)}"
    api.create_namespace(name, dict(RESTRICTED) if backend_name == "control-plane" else None)
    yield name
    cluster.faults.clear()
    if backend_name != "emulator":
        # The simulated nodes' room is finite: what a test left running goes with its namespace
        # (Agents held by the finalizer of a controller that is gone stay; their pods do not).
        try:
            api.call("DELETE", f"/api/v1/namespaces/{name}")
        except Exception:  # noqa: BLE001 - best effort
            pass


@pytest.fixture(autouse=True)
def _emulator_only(request: pytest.FixtureRequest, backend_name: str) -> None:
    """`@pytest.mark.emulator_only("faults")`: the test drives the emulator's own machinery (fault
    injection, its kubelet, its request log, its users): on the control plane it skips before it
    starts any work."""
    marker = request.node.get_closest_marker("emulator_only")
    if marker is not None and backend_name != "emulator":
        pytest.skip(f"needs the emulator's {marker.args[0] if marker.args else 'machinery'} (--backend emulator)")


@pytest.fixture
def node_of_its_own(backend_name: str, cluster: Any) -> Iterator[Any]:
    """``node_of_its_own()`` -> podTemplate ``spec`` fields that put the Agent's pod on a node no
    other test uses, for a test that loses that node: on the control plane a node is lost with every
    pod on it (docs/nodesim.md), so it gets a tainted simulated node of its own, removed afterwards;
    on the emulator a node is lost per pod, and nothing is needed."""
    added: list[str] = []

    def make() -> dict[str, Any]:
        if backend_name != "control-plane":
            return {}
        backend = cluster.backend
        name = f"lone-{os.getpid() % 1000}-{next(_counter)}"
        taint = {"key": "sim.agentcontroller.dev/dedicated", "value": name, "effect": "NoSchedule"}
        backend.sim.add_node(name, str(backend.cp.node_kubeconfig(name)),
                             labels={"sim.agentcontroller.dev/node": name}, taints=[taint])
        added.append(name)
        return {"nodeSelector": {"sim.agentcontroller.dev/node": name},
                "tolerations": [{"key": taint["key"], "operator": "Equal", "value": name, "effect": "NoSchedule"}]}

    yield make
    for name in added:
        try:
            cluster.backend.sim.remove_node(name)
        except Exception:  # noqa: BLE001 - best effort
            pass


@pytest.fixture
def archive_dir(tmp_path: Path) -> Path:
    d = tmp_path / "archive"
    d.mkdir()
    return d


def controller_options(ns: str, archive_dir: Path, **overrides: Any) -> Any:
    from controller.operator import Options

    defaults: dict[str, Any] = dict(namespaces=[ns], archive_dir=str(archive_dir), metrics_port=0, health_port=0,
                                    sweep_interval=3600.0, listen_host="127.0.0.1", force_delete_after=2.0,
                                    orphan_min_age=0.0)
    defaults.update(overrides)
    return Options(**defaults)


@pytest.fixture
def make_controller(cluster: Any, ns: str, archive_dir: Path) -> Iterator[Any]:
    """Start the real controller (kopf, in a thread) against the emulator, watching `ns`."""
    from controller.kube.client import ClientConfig
    from controller.operator import BackgroundController

    started: list[Any] = []

    def make(**overrides: Any) -> Any:
        # On the control plane the controller is its own ServiceAccount with the chart's RBAC.
        token = overrides.pop("token", getattr(cluster, "controller_token", None) or cluster.admin_token)
        priority = overrides.pop("peering_priority", None)   # with peering=NAME: fixed, not random
        options = controller_options(ns, overrides.pop("archive_dir", archive_dir), **overrides)
        # On the control plane through the fault proxy (plain HTTP on loopback, the token passed on).
        proxied = getattr(cluster, "controller_url", None)
        config = ClientConfig(server=proxied or cluster.url, token=token, default_namespace=ns,
                              ca_file=None if proxied else getattr(cluster, "ca_file", None))
        ctl = BackgroundController(options, config)
        if priority is not None:
            ctl.sweeper.peering.priority = priority
        started.append(ctl)
        return ctl.start()

    yield make
    for ctl in started:
        ctl.stop()


@pytest.fixture
def controller(make_controller: Any) -> Any:
    return make_controller()
