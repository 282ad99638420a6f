"""The documented way out of an uninstall done in the wrong order: with the controller gone,
deleted Agents hang on the finalizer agentcontroller.dev/cleanup. controller/uninstall.py
releases them (only our finalizer, only Agents being deleted unless told otherwise), and so does
the kubectl loop printed in docs/install.md, which this test runs as written."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from controller import FINALIZER
from controller.kube.client import ClientConfig, KubeClient
from controller.uninstall import release_finalizers, report, uninstall_command
from helpers import HttpError, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "install.md"


def held_agent(api: Any, ns: str, name: str, finalizers: list[str]) -> dict[str, Any]:
    """An Agent as the controller leaves it: our finalizer, a child pod owned by it."""
    agent = api.create_agent(ns, name, {"image": "agent:1"}, finalizers=finalizers)
    meta = agent["metadata"]
    api.create_pod(ns, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "ownerReferences": [{
            "apiVersion": "agentcontroller.dev/v1alpha1", "kind": "Agent", "name": name, "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"containers": [{"name": "agent", "image": "agent:1"}]},
    })
    return agent


def release(cluster: Any, ns: str, **kwargs: Any) -> Any:
    async def go() -> Any:
        client = KubeClient(ClientConfig(server=cluster.url, token=cluster.admin_token,
                                         ca_file=getattr(cluster, "ca_file", None)))
        try:
            return await release_finalizers(client, [ns], **kwargs)
        finally:
            await client.close()
    return asyncio.run(go())


def test_release_finalizers_frees_deleted_agents_only(cluster: Any, api: Any, ns: str) -> None:
    held_agent(api, ns, "deleted", [FINALIZER])
    held_agent(api, ns, "running", [FINALIZER])
    held_agent(api, ns, "shared", ["example.com/keep", FINALIZER])
    api.delete_agent(ns, "deleted")
    api.delete_agent(ns, "shared")
    assert api.agent(ns, "deleted")["metadata"].get("deletionTimestamp")  # stuck: no controller

    dry = release(cluster, ns, dry_run=True)
    assert sorted(dry.released) == [f"{ns}/deleted", f"{ns}/shared"] and api.agent_or_none(ns, "deleted")

    result = release(cluster, ns)
    assert sorted(result.released) == [f"{ns}/deleted", f"{ns}/shared"]
    assert result.skipped == [f"{ns}/running"] and result.failed == {}
    wait_for(lambda: api.agent_or_none(ns, "deleted") is None, timeout=30)
    wait_for(lambda: api.pod(ns, "deleted") is None, timeout=180, message="the garbage collector takes the pod")
    assert api.agent(ns, "shared")["metadata"]["finalizers"] == ["example.com/keep"]  # not ours: kept
    assert api.agent(ns, "running")["metadata"]["finalizers"] == [FINALIZER]

    result = release(cluster, ns, all_agents=True)
    assert result.released == [f"{ns}/running"]
    assert FINALIZER not in (api.agent(ns, "running")["metadata"].get("finalizers") or [])

    import io
    out = io.StringIO()
    assert report(result, out) == 0 and f"released {ns}/running" in out.getvalue()


def test_uninstall_command_lists_then_releases(cluster: Any, api: Any, ns: str) -> None:
    import io

    held_agent(api, ns, "left", [FINALIZER])
    api.delete_agent(ns, "left")
    config = ClientConfig(server=cluster.url, token=cluster.admin_token, ca_file=getattr(cluster, "ca_file", None))
    out = io.StringIO()
    assert asyncio.run(uninstall_command(config, [ns], release=False, out=out)) == 1
    assert f"{ns}/left (being deleted)" in out.getvalue()
    out = io.StringIO()
    assert asyncio.run(uninstall_command(config, [ns], release=True, out=out)) == 0
    assert f"released {ns}/left" in out.getvalue()
    wait_for(lambda: api.agent_or_none(ns, "left") is None, timeout=30)
    assert asyncio.run(uninstall_command(config, [ns], release=False, out=io.StringIO())) == 0


def documented_loop() -> str:
    text = DOC.read_text()
    block = text.split("<!-- release-finalizers:start -->", 1)[1].split("<!-- release-finalizers:end -->", 1)[0]
    (code,) = re.findall(r"```sh\n(.*?)```", block, re.S)
    return code


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_documented_kubectl_loop_releases_deleted_agents(cluster: Any, api: Any, ns: str, tmp_path: Path) -> None:
    held_agent(api, ns, "stuck", [FINALIZER])
    held_agent(api, ns, "alive", [FINALIZER])
    api.delete_agent(ns, "stuck")
    kubeconfig = cluster.kubeconfig_path(str(tmp_path / "config"), namespace=ns)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", documented_loop()], capture_output=True, text=True,
                          timeout=120, env={"KUBECONFIG": kubeconfig, "PATH": "/usr/local/bin:/usr/bin:/bin",
                                            "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wait_for(lambda: api.agent_or_none(ns, "stuck") is None, timeout=30)
    assert api.agent(ns, "alive")["metadata"]["finalizers"] == [FINALIZER]  # only Agents being deleted
    with pytest.raises(HttpError):
        api.agent(ns, "stuck")
