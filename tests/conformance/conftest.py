"""Fixtures of the API conformance tests: every test runs once on the emulator (controller/devcluster)
and once on a real control plane (controller/controlplane), whatever `--backend` says. The real
control plane is the judge; its tests skip, with the reason, when its binaries cannot be had.

`conf` is one run's context: the backend facade (tests/backends.py), the tests' synchronous REST
client as the admin (tests/helpers.py `Api`), a fresh namespace, and `run()`, which runs a
coroutine with the controller's own async client (controller/kube/client.py) under a failsafe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from backends import BACKENDS, Backend, EmulatorBackend
from helpers import Api

T = TypeVar("T")
FAILSAFE_SECONDS = 60.0          # a hang fails the test; never an assertion on speed
_ids = itertools.count(1)


@dataclass
class Conformance:
    backend: Backend
    api: Api
    ns: str

    @property
    def name(self) -> str:
        return self.backend.name

    def client(self) -> Any:
        """The controller's async client, authenticated as the admin."""
        from controller.kube.client import ClientConfig, KubeClient

        return KubeClient(ClientConfig(server=self.backend.url, token=self.backend.admin_token,
                                       ca_file=self.backend.ca_file, default_namespace=self.ns),
                          retries=2, retry_budget=10.0)

    def run(self, scenario: Callable[[Any], Awaitable[T]]) -> T:
        """``await scenario(client)`` in a fresh event loop, the client closed afterwards."""
        async def guarded() -> T:
            client = self.client()
            try:
                task = asyncio.ensure_future(scenario(client))
                done, _ = await asyncio.wait({task}, timeout=FAILSAFE_SECONDS)
                if not done:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
                    raise AssertionError(f"the scenario did not finish within its failsafe of {FAILSAFE_SECONDS}s")
                return task.result()
            finally:
                await client.close()
        return asyncio.run(guarded())


@pytest.fixture(scope="session", params=BACKENDS)
def conformance_backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """Each backend in turn, whatever `--backend` says: the emulator (the session's `emulator`), then the
    real control plane (the session's `control_plane`)."""
    if request.param == "control-plane":
        backend: Backend = request.getfixturevalue("control_plane")
        return backend
    return EmulatorBackend(request.getfixturevalue("emulator"), tmp_path_factory.mktemp("conformance-emulator"))


@pytest.fixture
def conf(conformance_backend: Backend) -> Iterator[Conformance]:
    name = f"conf-{os.getpid() % 1000}-{next(_ids)}"
    conformance_backend.create_namespace(name)
    api = conformance_backend.api()
    yield Conformance(conformance_backend, api, name)
    with contextlib.suppress(Exception):
        api.call("DELETE", f"/api/v1/namespaces/{name}")
