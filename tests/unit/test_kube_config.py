"""Where the controller's credentials come from: the service account in a pod, or a kubeconfig."""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import pytest
import yaml

from controller.kube import config
from controller.kube.client import ClientConfig


def service_account(tmp_path, token="tok-1\n", namespace="agents"):
    (tmp_path / "token").write_text(token)
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "namespace").write_text(namespace)
    return str(tmp_path)


def test_in_cluster_reads_the_service_account(tmp_path):
    sa = service_account(tmp_path)
    got = config.in_cluster(sa, {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert got == {"server": "https://10.0.0.1:443", "token": "tok-1", "token_file": os.path.join(sa, "token"),
                   "ca_file": os.path.join(sa, "ca.crt"), "verify_ssl": True, "default_namespace": "agents"}


def test_in_cluster_ipv6_host_is_bracketed(tmp_path):
    got = config.in_cluster(service_account(tmp_path),
                            {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert got["server"] == "https://[fd00::1]:443"


@pytest.mark.parametrize("env,token,match", [
    ({}, "t", "KUBERNETES_SERVICE_HOST"),
    ({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"}, "", "is empty"),
])
def test_in_cluster_errors_are_one_line(tmp_path, env, token, match):
    with pytest.raises(config.ConfigError, match=match) as err:
        config.in_cluster(service_account(tmp_path, token=token), env)
    assert "\n" not in str(err.value)


def test_rotated_token_is_read_again(tmp_path):
    sa = service_account(tmp_path)
    cfg = ClientConfig(server="https://h:1", token="tok-1", token_file=os.path.join(sa, "token"))
    (tmp_path / "token").write_text("tok-2\n")
    assert cfg.auth_headers() == {"Authorization": "Bearer tok-1"}      # read at most once a minute
    assert cfg._tokens is not None
    cfg._tokens._read_at -= config.TOKEN_REREAD_SECONDS
    assert cfg.auth_headers() == {"Authorization": "Bearer tok-2"}
    (tmp_path / "token").unlink()                                        # unreadable: keep the last one
    cfg._tokens._read_at -= config.TOKEN_REREAD_SECONDS
    assert cfg.current_token() == "tok-2"


def kubeconfig(tmp_path, user):
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": "c",
           "clusters": [{"name": "k", "cluster": {"server": "https://k.example:6443",
                                                  "certificate-authority-data": base64.b64encode(b"CA PEM\n").decode()}}],
           "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": "team"}}],
           "users": [{"name": "u", "user": user}]}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_kubeconfig_token_and_certificate_data(tmp_path):
    path = kubeconfig(tmp_path, {"client-certificate-data": base64.b64encode(b"CERT PEM\n").decode(),
                                 "client-key-data": base64.b64encode(b"KEY PEM\n").decode()})
    cfg = ClientConfig.load(path)
    assert (cfg.server, cfg.token, cfg.default_namespace, cfg.verify_ssl) == ("https://k.example:6443", None, "team", True)
    for name, content in ((cfg.ca_file, "CA PEM\n"), (cfg.cert_file, "CERT PEM\n"), (cfg.key_file, "KEY PEM\n")):
        assert name is not None and open(name).read() == content
        assert stat.S_IMODE(os.stat(name).st_mode) == 0o600
    assert cfg.ca_file is not None and stat.S_IMODE(os.stat(os.path.dirname(cfg.ca_file)).st_mode) == 0o700


def test_kubeconfig_exec_plugin_works(tmp_path):
    """Auth methods of the official loader work: here an exec credential plugin."""
    plugin = tmp_path / "plugin.py"
    plugin.write_text('import json; print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1", '
                      '"kind": "ExecCredential", "status": {"token": "from-exec"}}))\n')
    path = kubeconfig(tmp_path, {"exec": {"apiVersion": "client.authentication.k8s.io/v1", "command": sys.executable,
                                          "args": [str(plugin)], "interactiveMode": "Never"}})
    assert ClientConfig.load(path).token == "from-exec"


def test_bad_kubeconfig_is_a_one_line_error(tmp_path):
    with pytest.raises(config.ConfigError, match="kubeconfig: .*") as err:
        ClientConfig.load(str(tmp_path / "missing"))
    assert "\n" not in str(err.value)


def test_run_never_imports_the_kubernetes_client(tmp_path):
    """`agent-controller run` keeps the official client's ~22 MB of generated models out of its process."""
    code = ("import sys; from controller import cli; cli._without_kubernetes_client(); "
            "import controller.operator, controller.handlers; "
            "print(sorted(m for m in sys.modules if m.startswith('kubernetes') and sys.modules[m] is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_kubeconfig_from_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "controller.cli", "run", "--kubeconfig", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("agent-controller: kubeconfig: ") and done.stderr.count("\n") == 1
