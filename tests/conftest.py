"""Shared fixtures: one API emulator per session, a fresh namespace and controller per test."""

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


@pytest.fixture(scope="session")
def cluster() -> Iterator[Any]:
    from controller.devcluster import DevCluster

    c = DevCluster()
    c.start()
    c.apply_file(str(CRD))
    yield c
    c.stop()


@pytest.fixture
def api(cluster: Any) -> Any:
    from helpers import Api

    return Api(cluster.url, cluster.admin_token)


@pytest.fixture
def ns(cluster: Any, api: Any) -> Iterator[str]:
    name = f"t{os.getpid() % 1000}-{next(_counter)}"
    api.create_namespace(name)
    yield name
    cluster.faults.clear()


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
        token = overrides.pop("token", cluster.admin_token)
        priority = overrides.pop("peering_priority", None)   # with peering=NAME: fixed, not random
        options = controller_options(ns, overrides.pop("archive_dir", archive_dir), **overrides)
        config = ClientConfig(server=cluster.url, token=token, default_namespace=ns)
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
