"""Fixtures of the devcluster tests: one emulator per session, a fresh namespace per test."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CRD = ROOT / "manifests" / "crd.yaml"
_ids = itertools.count(1)


@pytest.fixture(scope="session")
def dc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A started DevCluster with the Agent CRD applied (shared by the session)."""
    from controller.devcluster import DevCluster

    c = DevCluster(bookmark_interval=0.5)
    c.start()
    c.apply_file(str(CRD))
    yield c
    c.stop()


@pytest.fixture(scope="session")
def kubeconfig(dc: Any, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An admin kubeconfig (https, CA embedded)."""
    return str(dc.kubeconfig_path(str(tmp_path_factory.mktemp("kc") / "config")))


@pytest.fixture(scope="session")
def k8s(kubeconfig: str) -> Any:
    """An official ``kubernetes`` ApiClient for the admin kubeconfig."""
    from kubernetes import config

    return config.new_client_from_config(kubeconfig)


@pytest.fixture
def ns(dc: Any) -> Iterator[str]:
    """A fresh namespace (faults cleared afterwards)."""
    name = f"dc-{os.getpid() % 10000}-{next(_ids)}"
    dc.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    dc.faults.clear()


@pytest.fixture
def kubectl(kubeconfig: str, tmp_path: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """``kubectl(*args, input=None, check=True)`` with the admin kubeconfig."""
    cache = tmp_path / "kcache"

    def run(*args: str, input: str | None = None, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = ["kubectl", "--kubeconfig", kubeconfig, "--cache-dir", str(cache), *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    return run
