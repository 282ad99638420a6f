"""The `backend` facade (tests/backends.py) behaves the same on either backend: run with
`--backend emulator` (default) or `--backend control-plane`."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import yaml

from backends import RESTRICTED


def test_a_namespace_an_agent_and_the_controllers_client(backend: Any, backend_ns: str) -> None:
    from controller.kube.client import AGENTS, KubeClient

    api = backend.api()
    labels = api.call("GET", f"/api/v1/namespaces/{backend_ns}")["metadata"].get("labels", {})
    if backend.name == "control-plane":
        assert RESTRICTED.items() <= labels.items()
    api.create_agent(backend_ns, "facade", {"image": "example/agent:1", "command": ["run"]})

    async def names() -> list[str]:
        client = KubeClient(backend.controller_config(backend_ns))
        try:
            return [a["metadata"]["name"] for a in (await client.list(AGENTS, backend_ns))["items"]]
        finally:
            await client.close()

    assert asyncio.run(names()) == ["facade"]


def test_the_admin_kubeconfig_points_at_the_backend(backend: Any) -> None:
    with open(backend.kubeconfig) as fh:
        config = yaml.safe_load(fh)
    server = config["clusters"][0]["cluster"]["server"]
    if backend.name == "control-plane":
        assert server == backend.url
        ready = subprocess.run([str(backend.cp.kubectl_path), "--kubeconfig", backend.kubeconfig, "get", "--raw",
                                "/readyz"], capture_output=True, text=True, timeout=60, check=False)
        assert ready.stdout.strip() == "ok", ready.stderr
    else:
        assert server.startswith("https://127.0.0.1:") or server == backend.url
