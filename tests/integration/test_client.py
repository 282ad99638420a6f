"""The controller's API client on a real cluster's terms (issue "Correct on a real cluster", items 13
and 15): credentials that expire or are revoked are loaded again, and throttling (429 with
`Retry-After`) is waited out instead of failing the cleanup."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from helpers import script, wait_for
from test_lifecycle import cleaned
from test_sweep import sample, scrape

from controller import api as capi


def exec_kubeconfig(tmp_path: Path, server: str, token_file: Path, expires_in: int) -> Path:
    """A kubeconfig whose user is an exec plugin (as EKS, GKE and OIDC helpers are): it prints the token
    the file holds now, with an expiry."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent(f"""
        import datetime, json
        token = open({str(token_file)!r}).read().strip()
        expiry = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds={expires_in})
        print(json.dumps({{"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential",
                           "status": {{"token": token, "expirationTimestamp": expiry.strftime("%Y-%m-%dT%H:%M:%SZ")}}}}))
    """))
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "users": [{"name": "u", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                  "command": sys.executable, "args": [str(plugin)],
                                                  "interactiveMode": "Never"}}}],
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.emulator_only("add_user")
def test_13_revoked_exec_plugin_credentials_are_loaded_again(tmp_path, api, ns, cluster, archive_dir):
    from controller.kube.client import ClientConfig
    from controller.operator import BackgroundController, Options

    first = cluster.add_user("plugin-user-1", ["system:masters"])
    token_file = tmp_path / "token"
    token_file.write_text(first)
    config = ClientConfig.load(str(exec_kubeconfig(tmp_path, cluster.url, token_file, expires_in=3600)))
    assert config.token == first and config.expires_at is not None
    options = Options(namespaces=[ns], archive_dir=str(archive_dir), metrics_port=0, health_port=0,
                      sweep_interval=3600.0, listen_host="127.0.0.1", force_delete_after=2.0)
    ctl = BackgroundController(options, config).start()
    try:
        api.create_agent(ns, "before", {"image": "agent:1", "env": script([{"exit": 0}])})
        wait_for(cleaned(api, ns, "before"))
        # The plugin now hands out a new token, and the old one is revoked.
        second = cluster.add_user("plugin-user-2", ["system:masters"])
        token_file.write_text(second)
        cluster.run(lambda: cluster.auth.tokens.pop(first))
        api.create_agent(ns, "after", {"image": "agent:1", "env": script([{"log": "x\n"}, {"exit": 0}])})
        agent = wait_for(cleaned(api, ns, "after"), timeout=120)
        assert agent["status"]["phase"] == "Completed"
        assert config.token == second and config.refreshed >= 1
        assert ctl.error is None
    finally:
        ctl.stop()


@pytest.mark.emulator_only("add_user")
def test_13_credentials_about_to_expire_are_refreshed_before(tmp_path, cluster):
    import asyncio

    from controller.kube.client import ClientConfig, KubeClient

    token = cluster.add_user("plugin-user-3", ["system:masters"])
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = ClientConfig.load(str(exec_kubeconfig(tmp_path, cluster.url, token_file, expires_in=30)))
    assert config.expiring(__import__("time").time())      # within the refresh margin already

    async def call() -> dict:
        client = KubeClient(config)
        try:
            return await client.request("GET", "/api/v1/namespaces")
        finally:
            await client.close()
    assert asyncio.run(call())["items"] is not None
    assert config.refreshed == 1                              # loaded again before the request


def test_15_throttling_is_waited_out_with_retry_after(api, ns, cluster, controller):
    """API Priority and Fairness answers 429 with Retry-After: the client waits as told and retries,
    and the cleanup succeeds at its first attempt (it used to give up after ~1.4 s)."""
    inject = cluster.faults.inject          # the emulator's, or the fault proxy's on the control plane
    api.create_agent(ns, "throttled", {"image": "agent:1", "env": script([{"log": "x\n"}, {"sleep": 3600}])})
    wait_for(lambda: api.agent(ns, "throttled").get("status", {}).get("phase") == "Running")
    fault = inject(verb="delete", resource="pods", namespace=ns, status=429, times=4)
    api.patch_agent(ns, "throttled", {"status": {"phase": "Completed"}}, status=True)
    agent = wait_for(cleaned(api, ns, "throttled"), timeout=120)
    assert fault.hits == 4
    assert agent["status"]["cleanup"]["attempts"] == 1 and not agent["status"]["cleanup"].get("errors")
    text = scrape(controller)
    assert sum(sample(text, "agent_controller_cleanups_total", trigger=t, result="failure")
               for t in capi.TRIGGERS) == 0
    assert json.dumps(agent["status"]["cleanup"]["verifiedNoLeaks"]) == "true"


def test_13_tls_server_name_and_proxy_url_are_honoured(tmp_path, cluster):
    """kubeconfig `tls-server-name`: the server's certificate is checked for that name, not the URL's
    host (a wrong one fails, the certificate's own name works); `proxy-url`: requests go through it."""
    import asyncio

    from controller.kube.client import ApiError, ClientConfig, KubeClient

    path = Path(cluster.kubeconfig_path(str(tmp_path / "kubeconfig")))

    def load(**cluster_fields: str) -> ClientConfig:
        config = yaml.safe_load(path.read_text())
        config["clusters"][0]["cluster"].update(cluster_fields)
        target = tmp_path / "edited"
        target.write_text(yaml.safe_dump(config))
        return ClientConfig.load(str(target))

    async def version(config: ClientConfig) -> dict:
        client = KubeClient(config, retries=0)
        try:
            return await client.request("GET", "/version")
        finally:
            await client.close()

    wrong = load(**{"tls-server-name": "not-the-server.invalid"})
    assert wrong.tls_server_name == "not-the-server.invalid"
    try:
        asyncio.run(version(wrong))
    except ApiError as exc:
        assert "not-the-server.invalid" in str(exc) or "certificate" in str(exc).lower(), exc
    else:
        raise AssertionError("a certificate checked for the wrong name was accepted")
    assert asyncio.run(version(load(**{"tls-server-name": "localhost"})))      # its own name

    seen: list[str] = []

    async def through_proxy() -> dict:
        async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            seen.append((await reader.readline()).decode().split(" ")[0])
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(proxy, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await version(load(**{"proxy-url": f"http://127.0.0.1:{port}"}))
        finally:
            server.close()

    try:
        asyncio.run(through_proxy())
    except ApiError:
        pass                          # the proxy refused the tunnel: what matters is that it was asked
    assert seen == ["CONNECT"]
